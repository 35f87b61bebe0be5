import numpy as np
import pytest

from active_learning.corpus import word_offsets
from active_learning.label_quality import (
    HeldOut,
    IssueKind,
    annotation_fingerprint,
    cross_fit,
    example_key,
    find_suspects,
    fold_of,
    score,
    span_differences,
)
from active_learning.spans import Example, Span, spans_to_bio
from active_learning.tagger import ScoredSpan, bio_tags
from active_learning.training import TrainConfig
from tiny import FILLER, LABELS, toy_corpus

TINY_FOLDS = TrainConfig(epochs=10, min_steps=0, learning_rate=3e-3, batch_size=16, freeze_word_embeddings=False)
TINY_TAGGER = {"max_length": 32, "stride": 8}


# ---- planting errors in the toy corpus (names are PER, cities LOC, every entity one word) ---------


def swap_type(e: Example) -> Example:
    first, *rest = e.spans
    return Example(e.text, [Span(first.start, first.end, "LOC" if first.label == "PER" else "PER"), *rest])


def drop_entity(e: Example) -> Example:
    return Example(e.text, e.spans[1:])


def widen(e: Example) -> Example:
    """Stretch the first entity over the word after it."""
    first, *rest = e.spans
    end = e.text.find(" ", first.end + 1)
    return Example(e.text, [Span(first.start, len(e.text) if end < 0 else end, first.label), *rest])


def spurious(e: Example) -> Example:
    """Mark the first filler word as a place."""
    start, end = next((s, t) for s, t in word_offsets(e.text) if not any(s < sp.end and sp.start < t for sp in e.spans))
    return Example(e.text, [*e.spans, Span(start, end, "LOC")])


PLANTS = {
    IssueKind.WRONG_TYPE: swap_type,
    IssueKind.MISSED_ENTITY: drop_entity,
    IssueKind.WRONG_BOUNDARY: widen,
    IssueKind.SPURIOUS_ENTITY: spurious,
}


def plant(corpus: list[Example]) -> tuple[list[Example], dict[int, IssueKind]]:
    """One error of each kind, each in its own sentence (one whose next word is filler, for ``widen``)."""
    noisy, planted = list(corpus), {}
    kinds = iter(PLANTS)
    kind = next(kinds)
    for i, e in enumerate(corpus):
        if not e.spans or e.text[e.spans[0].end + 1 :].split(" ")[0] not in FILLER:
            continue
        noisy[i], planted[i] = PLANTS[kind](e), kind
        kind = next(kinds, None)
        if kind is None:
            return noisy, planted
    raise AssertionError("toy corpus too small to plant every kind")


# ---- scoring on hand-made held-out predictions ---------------------------------------------------


def held_out_from(truth: Example, confidence: float = 0.9, fold: int = 0) -> HeldOut:
    """What a good model that did not train on ``truth`` would say: the true tags at ``confidence``."""
    tags = bio_tags(LABELS)
    words = word_offsets(truth.text)
    marginals = np.full((len(words), len(tags)), (1 - confidence) / (len(tags) - 1), dtype=np.float32)
    for w, tag in enumerate(spans_to_bio(truth.spans, words)):
        marginals[w, tags.index(tag)] = confidence
    return HeldOut(fold, words, marginals, [ScoredSpan(*s, confidence) for s in truth.spans])


@pytest.fixture(scope="module")
def truth():
    return toy_corpus(200, seed=4)


def test_span_differences_name_each_kind():
    annotated = [Span(0, 5, "PER"), Span(10, 15, "ORG"), Span(20, 30, "LOC"), Span(40, 45, "LOC"), Span(60, 65, "PER")]
    predicted = [Span(0, 5, "PER"), Span(10, 15, "LOC"), Span(20, 25, "LOC"), Span(50, 55, "ORG"), Span(60, 70, "ORG")]
    found = [(d.kind, d.annotated, d.suggested and d.suggested.span) for d in span_differences(annotated, predicted)]
    assert found == [
        (IssueKind.WRONG_TYPE, Span(10, 15, "ORG"), Span(10, 15, "LOC")),
        (IssueKind.WRONG_BOUNDARY, Span(20, 30, "LOC"), Span(20, 25, "LOC")),
        (IssueKind.SPURIOUS_ENTITY, Span(40, 45, "LOC"), None),
        (IssueKind.MISSED_ENTITY, None, Span(50, 55, "ORG")),
        (IssueKind.WRONG_TYPE, Span(60, 65, "PER"), Span(60, 70, "ORG")),  # type and boundary: type wins
    ]


def test_planted_errors_are_scored_and_classified(truth):
    noisy, planted = plant(truth)
    report = score(noisy, [held_out_from(t) for t in truth], LABELS)
    assert {a.index: a.kinds for a in report.suspects} == {i: [kind.value] for i, kind in planted.items()}
    assert {a.index for a in report.ranked()[: len(planted)]} == set(planted)
    for a in report.suspects:
        assert a.score < 0.2 and a.suggested == held_out_from(truth[a.index]).spans


def test_clean_annotations_give_no_suspects(truth):
    rng = np.random.default_rng(0)
    held = [held_out_from(t, confidence=float(rng.uniform(0.6, 0.99))) for t in truth]
    report = score(truth, held, LABELS)
    assert report.suspects == []
    assert all(a.score >= 0.6 for a in report.assessments)


def test_confirmed_reasons_are_not_flagged_again(truth):
    noisy, planted = plant(truth)
    held = [held_out_from(t) for t in truth]
    first = score(noisy, held, LABELS)
    confirmed_one = first.suspects[0]
    confirmed = {(confirmed_one.key, issue.reason) for issue in confirmed_one.issues}
    again = score(noisy, held, LABELS, confirmed=confirmed)
    assert confirmed_one.index not in {a.index for a in again.suspects}
    assert len(again.suspects) == len(planted) - 1
    assert again.assessments[confirmed_one.index].confirmed == confirmed_one.issues
    # the same reason on another example is not covered by that confirmation
    assert all(a.key != confirmed_one.key for a in again.suspects)


def test_keys_fingerprints_and_folds():
    e = Example("alice met bob", [Span(0, 5, "PER")], {"task_id": 17})
    assert example_key(e) == "17"
    assert example_key(Example("alice met bob")).startswith("text:")
    assert annotation_fingerprint(e) != annotation_fingerprint(Example(e.text, [Span(0, 5, "LOC")]))
    assert fold_of("alice met bob", 4) == fold_of("alice met bob", 4) and 0 <= fold_of("x", 4) < 4
    folds = [fold_of(t.text, 4) for t in toy_corpus(400, seed=9)]
    assert min(np.bincount(folds, minlength=4)) > 40  # roughly balanced


def test_unknown_labels_and_shapes_are_rejected(truth):
    with pytest.raises(ValueError, match="not among"):
        score([Example("alice", [Span(0, 5, "ORG")])], [held_out_from(Example("alice"))], LABELS)
    with pytest.raises(ValueError, match="held-out"):
        score(truth[:2], [held_out_from(truth[0])], LABELS)


# ---- the whole detector, cross-fitting included, with a tiny model ---------------------------------


@pytest.mark.slow
def test_cross_fitting_finds_planted_errors(tiny_encoder):
    """Held-out models rank the four planted errors first and suggest the fix of each.

    Whether cleanlab also flags each of them is left to the hand-made tests above: the toy corpus
    has no hard words, so a tiny model is about equally sure of every word, and confident learning
    (flag a word when the model is at least as sure of another class as it is on average) is then
    a coin flip on a third decimal."""
    corpus = toy_corpus(120, seed=1)
    noisy, planted = plant(corpus)
    progress = []
    report = find_suspects(
        noisy,
        LABELS,
        base_model=str(tiny_encoder),
        config=TINY_FOLDS,
        tagger_options=TINY_TAGGER,
        on_progress=lambda done, k: progress.append(done),
    )
    assert {a.index for a in report.ranked()[: len(planted)]} == set(planted)
    for i, kind in planted.items():
        suggestion = report.assessments[i].suggested
        assert [d.kind for d in span_differences(noisy[i].spans, suggestion)] == [kind]
        assert [s.span for s in suggestion] == corpus[i].spans
    assert report.suspects, "cleanlab flags none of the planted errors"
    assert all(a.kinds == [planted[a.index].value] for a in report.suspects if a.index in planted)
    assert sum(a.index not in planted for a in report.suspects) <= 1
    assert all(a.fold == fold_of(noisy[a.index].text, 4) for a in report.assessments)
    assert progress[-1] == 4 and progress == sorted(progress)
    assert report.folds == 4 and report.config["epochs"] == 10


@pytest.mark.slow
def test_cross_fitting_on_clean_data_gives_few_suspects(tiny_encoder):
    corpus = toy_corpus(120, seed=2)
    held = cross_fit(corpus, LABELS, k=3, base_model=str(tiny_encoder), config=TINY_FOLDS, tagger_options=TINY_TAGGER)
    assert {h.fold for h in held} == {0, 1, 2}
    assert len(score(corpus, held, LABELS).suspects) <= 2


def test_cross_fitting_refuses_a_trained_tagger(tiny_encoder, tmp_path):
    from active_learning.tagger import Tagger

    Tagger.load(str(tiny_encoder), labels=LABELS, **TINY_TAGGER).save(tmp_path / "active")
    with pytest.raises(ValueError, match="trained nerloop tagger"):
        cross_fit(toy_corpus(10), LABELS, base_model=str(tmp_path / "active"))


def test_benchmark_script_runs_tiny(tiny_encoder, shared_data, tmp_path):
    """bench/label_errors.py end to end at a toy size (its figures mean nothing here: the tiny
    encoder knows none of CoNLL's words)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "label_errors.json"
    script = Path(__file__).resolve().parents[1] / "bench" / "label_errors.py"
    tiny = ["--epochs", "1", "--min-steps", "0", "--fold-epochs", "1", "--fold-min-steps", "0"]
    sizes = ["--sentences", "60", "--test-sentences", "20", "--time-sizes", "40"]
    subprocess.run([sys.executable, str(script), *sizes, *tiny, "--base-model", str(tiny_encoder), "--out", str(out)], check=True)
    results = json.loads(out.read_text())
    assert set(results["noise"]) == {"0.05", "0.1"}
    for level in results["noise"].values():
        assert level["k"] == level["noised_sentences"] > 0
        assert 0.0 <= level["auroc"] <= 1.0
        assert set(level["f1"]) == {"noisy", "corrected_top_k", "clean"}
    assert results["timing"]["40"]["seconds"] > 0
    assert "bench/label_errors.py --sentences 60" in results["command"]
