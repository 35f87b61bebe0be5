import numpy as np
import pytest

from active_learning.metrics import evaluate
from active_learning.spans import Example, Span
from active_learning.tagger import LABELS_FILE, Tagger
from active_learning.training import TrainConfig, train
from tiny import LABELS, toy_corpus


@pytest.fixture(scope="module")
def trained(tiny_encoder, tmp_path_factory):
    """A tiny tagger trained on the toy pattern (shared by the tests that need a trained model).
    Its random word embeddings must be trained, unlike a pretrained model's."""
    tagger = Tagger.load(str(tiny_encoder), labels=LABELS, max_length=32, stride=8)
    dev = toy_corpus(40, seed=2)
    config = TrainConfig(epochs=15, min_steps=0, learning_rate=3e-3, batch_size=16, patience=4, freeze_word_embeddings=False)
    result = train(tagger, toy_corpus(300, seed=1), dev, config)
    return tagger, result


def test_early_stopping_waits_for_the_minimum_steps(tiny_encoder):
    """A tiny learning rate keeps dev F1 flat, which would stop training after ``patience`` epochs;
    the minimum number of steps comes first (small labelled sets must get their updates)."""
    tagger = Tagger.load(str(tiny_encoder), labels=LABELS, max_length=32, stride=8)
    config = TrainConfig(epochs=1, min_steps=12, batch_size=8, learning_rate=1e-9, patience=1, freeze_word_embeddings=False)
    result = train(tagger, toy_corpus(16, seed=1), toy_corpus(8, seed=2), config)  # 2 steps per epoch
    assert result.steps >= 12 and len(result.history) >= 6


def test_training_learns_the_toy_pattern(trained):
    tagger, result = trained
    test = toy_corpus(60, seed=3)
    scores = evaluate(test, [p.entity_spans for p in tagger.predict([e.text for e in test])])
    assert scores.f1 >= 0.9, scores.report
    assert result.dev_f1 >= 0.9
    losses = [log.loss for log in result.history]
    assert losses[-1] < losses[0] / 3


def test_predictions_are_character_spans_with_confidences(trained):
    tagger, _ = trained
    text = "yesterday  alice\tmet bob\nin paris ."
    (prediction,) = tagger.predict([text])
    assert [(text[s.start : s.end], s.label) for s in prediction.spans] == [("alice", "PER"), ("bob", "PER"), ("paris", "LOC")]
    assert all(0.0 < s.score <= 1.0 for s in prediction.spans)
    assert prediction.marginals.shape == (len(prediction.words), len(tagger.tags))
    assert np.allclose(prediction.marginals.sum(1), 1.0, atol=1e-4)


def test_long_text_is_windowed_not_truncated(trained):
    """max_length is 32 sub-words here: a 200-word text spans many windows, and the entities at its
    end are still found."""
    tagger, _ = trained
    filler = " ".join(["the very long trip"] * 50)
    text = f"alice went to {filler} and then bob met carol in oslo ."
    (prediction,) = tagger.predict([text])
    assert len(prediction.words) == len(text.split())
    assert (prediction.marginals.sum(1) > 0.99).all()  # every word got a prediction from some window
    found = {(text[s.start : s.end], s.label) for s in prediction.spans}
    assert {("alice", "PER"), ("bob", "PER"), ("carol", "PER"), ("oslo", "LOC")} <= found
    windows = tagger.training_windows([Example(text, [Span(text.index("oslo"), text.index("oslo") + 4, "LOC")])])
    assert len(windows) > 1
    labelled = [label for _, labels in windows for label in labels if label >= 0]
    assert labelled.count(tagger.tags.index("B-LOC")) >= 1  # the span at the very end is trained on


def test_odd_whitespace_emoji_and_unknown_characters(trained):
    tagger, _ = trained
    text = "😀 alice\u00a0met  东京 bob 😀\t\tin\n\nparis"
    (prediction,) = tagger.predict([text])
    for start, end in prediction.words:
        assert text[start:end].strip() == text[start:end] != ""
    found = {(text[s.start : s.end], s.label) for s in prediction.spans}
    assert ("paris", "LOC") in found and ("bob", "PER") in found


def test_chinese_characters_are_words_of_their_own(tiny_encoder):
    tagger = Tagger.load(str(tiny_encoder), labels=["LOC"])
    text = "我在东京工作"
    (prediction,) = tagger.predict([text])
    assert prediction.words == [(i, i + 1) for i in range(len(text))]
    windows = tagger.training_windows([Example(text, [Span(2, 4, "LOC")])])
    labels = [label for label in windows[0][1] if label >= 0]
    assert [tagger.tags[i] for i in labels] == ["O", "O", "B-LOC", "I-LOC", "O", "O"]


def test_save_load_keeps_labels_and_predictions(trained, tmp_path):
    tagger, _ = trained
    tagger.save(tmp_path / "model")
    assert (tmp_path / "model" / LABELS_FILE).is_file()
    again = Tagger.load(str(tmp_path / "model"))
    assert again.labels == tagger.labels and again.max_length == 32
    texts = [e.text for e in toy_corpus(10, seed=9)]
    a, b = tagger.predict(texts), again.predict(texts)
    assert [p.entity_spans for p in a] == [p.entity_spans for p in b]
    assert all(np.allclose(x.marginals, y.marginals, atol=1e-5) for x, y in zip(a, b))


def test_new_labels_keep_existing_tag_ids(trained, tmp_path):
    tagger, _ = trained
    tagger.save(tmp_path / "model")
    grown = Tagger.load(str(tmp_path / "model"), labels=["ORG", "PER"])
    assert grown.labels == ["LOC", "PER", "ORG"]
    assert grown.tags[: len(tagger.tags)] == tagger.tags
    old, new = tagger.model.classifier, grown.model.classifier
    assert new.out_features == len(tagger.tags) + 2
    assert np.allclose(new.weight[: old.out_features].detach().cpu(), old.weight.detach().cpu())


def test_mc_dropout_samples_and_embeddings(trained):
    tagger, _ = trained
    predictions = tagger.predict(["alice met bob in paris", "we went home"], mc_samples=4, embeddings=True)
    for p in predictions:
        assert p.samples.shape == (4, len(p.words), len(tagger.tags))
        assert p.embedding.shape == (32,)
    assert not np.allclose(predictions[0].samples[0], predictions[0].samples[1])  # dropout was on
    assert not tagger.model.training


def test_loading_a_plain_encoder_needs_labels(tiny_encoder):
    with pytest.raises(ValueError, match="labels"):
        Tagger.load(str(tiny_encoder))


def test_characters_unknown_to_the_vocabulary_get_tokens_of_their_own(tiny_encoder, tmp_path):
    tagger = Tagger.load(str(tiny_encoder), labels=LABELS)
    text = "alice 在北京 zebra"
    before = tagger.encode([text])
    unknown = tagger.tokenizer.unk_token_id
    assert before.windows[0].input_ids.count(unknown) == 4  # 在, 北, 京 and the word "zebra"
    old = tagger.model.get_input_embeddings().weight.detach().clone()

    assert tagger.add_unknown_characters([text, "北京"]) == sorted("在北京")
    after = tagger.encode([text])
    assert after.words == before.words  # no word boundary moved
    assert after.windows[0].input_ids.count(unknown) == 1  # a multi-character word stays [UNK]
    grown = tagger.model.get_input_embeddings().weight.detach()
    assert grown.shape[0] == old.shape[0] + 3 and tagger.model.config.vocab_size == grown.shape[0]
    assert np.array_equal(grown[: len(old)].numpy(), old.numpy())
    new_rows = grown[len(old) :].numpy()
    assert min(np.linalg.norm(new_rows[i] - new_rows[j]) for i in range(3) for j in range(i)) > 0  # distinct vectors
    assert tagger.add_unknown_characters([text]) == []  # known now

    tagger.save(tmp_path / "model")
    again = Tagger.load(str(tmp_path / "model"))
    assert again.encode([text]).windows[0].input_ids == after.windows[0].input_ids
    assert np.array_equal(again.model.get_input_embeddings().weight.detach().numpy(), grown.numpy())
