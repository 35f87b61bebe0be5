"""The one training path (``active_learning.recipe``), self-training's pseudo-labels and the stopping
signal's arithmetic (``active_learning.stopping``)."""

from __future__ import annotations

import pytest
import torch
from sqlmodel import Session

from active_learning import recipe, stopping
from active_learning.recipe import PSEUDO_LABEL, RecipeInputs, SelfTraining, split_dev
from active_learning.simulation import AugmentInLoop, SimulationConfig, simulate
from active_learning.spans import Example
from active_learning.training import TrainConfig
from service import sync
from service.db import init_db
from service.models import Project
from service.settings import get_settings
from support import TINY_TRAIN
from tiny import LABELS, toy_corpus
from workers.lifecycle import JobRun
from workers.retrain import run_training, train_config

# ---- the stopping signal against hand-computed values ---------------------------------------------


def test_cohen_kappa_by_hand():
    # observed 4/5 = 0.8; expected (3*2 + 1*2 + 1*1) / 25 = 0.36; kappa (0.8 - 0.36) / 0.64
    assert stopping.cohen_kappa(list("OOBIO"), list("OBBIO")) == pytest.approx(0.6875)
    assert stopping.cohen_kappa(list("OOBI"), list("OOBI")) == 1.0
    assert stopping.cohen_kappa(list("OOOO"), list("OOOO")) == 1.0  # one label only: agreement by construction
    # observed 0; expected (2*2 + 2*2) / 16 = 0.5; kappa -1
    assert stopping.cohen_kappa(list("OOBB"), list("BBOO")) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        stopping.cohen_kappa(["O"], ["O", "O"])


def test_f1_slope_per_1k_tokens_by_hand():
    # x = 1, 2, 3 (thousands); y = 0.5, 0.6, 0.8: sxy = (-1)(-0.1333) + 0 + (1)(0.1667) = 0.3, sxx = 2
    assert stopping.f1_slope_per_1k_tokens([1000, 2000, 3000], [0.5, 0.6, 0.8]) == pytest.approx(0.15)
    assert stopping.f1_slope_per_1k_tokens([1000], [0.5]) is None


def test_stop_signal_fires_after_k_stable_versions_in_a_row():
    tokens = [1000, 2000, 3000, 4000, 5000, 6000]
    f1 = [0.5, 0.6, 0.7, 0.72, 0.73, 0.735]
    kappas = [None, 0.995, 0.98, 0.991, 0.992, 0.999]
    signal = stopping.stop_signal(kappas, tokens, f1, threshold=0.99, window=3)
    assert (signal.kappa, signal.stable_versions, signal.fired) == (0.999, 3, True)
    # last 4 versions: x = 3..6 (mean 4.5), y mean 0.72125: sxy = 1.5*0.02125 + 0.5*0.00125 + 0.5*0.00875 + 1.5*0.01375 = 0.0575, sxx 5
    assert signal.f1_slope_per_1k_tokens == pytest.approx(0.0115)
    assert signal.advice.startswith("you can stop")
    early = stopping.stop_signal(kappas[:5], tokens[:5], f1[:5], threshold=0.99, window=3)
    assert (early.stable_versions, early.fired) == (2, False) and early.advice.startswith("keep going")
    first = stopping.stop_signal([None], [1000], [0.5])
    assert (first.kappa, first.fired, first.f1_slope_per_1k_tokens) == (None, False, None)


def test_stop_set_is_hash_chosen_fixed_and_apart_from_the_dev_rule():
    digests = [recipe.content_hash(f"text {i}") for i in range(2000)]
    chosen = stopping.stop_set(digests, share=0.1, limit=10_000)
    assert 150 < len(chosen) < 250 and chosen == stopping.stop_set(list(digests), share=0.1, limit=10_000)
    assert stopping.stop_set(digests, share=0.1, limit=50) == chosen[:50]  # the lowest hash values: fixed as the corpus grows
    dev_share = sum(recipe.is_dev(digests[i], 0.2) for i in chosen) / len(chosen)
    assert 0.1 < dev_share < 0.3  # independent digits: the stop set is not skewed towards or away from dev


# ---- the dev rule and pseudo-labels -----------------------------------------------------------------


def test_the_service_uses_the_core_dev_rule():
    assert sync.is_dev is recipe.is_dev and sync.content_hash is recipe.content_hash
    examples = toy_corpus(200, seed=3)
    train, dev = split_dev(examples, 0.25)
    assert {e.text for e in dev} == {e.text for e in examples if sync.is_dev(sync.content_hash(e.text), 0.25)}
    assert len(train) + len(dev) == len(examples)


def test_pseudo_labels_keep_confident_texts_with_their_weight(trained_model):
    from active_learning.tagger import Tagger

    tagger = Tagger.load(str(trained_model))
    texts = [e.text for e in toy_corpus(30, seed=9)]
    predictions = tagger.predict(texts)
    confidences = recipe.task_confidences(predictions)
    threshold = float(sorted(confidences)[15])
    pseudo = recipe.pseudo_labels(texts, predictions, SelfTraining(True, threshold, 0.3))
    assert len(pseudo) == int((confidences >= threshold).sum()) and 0 < len(pseudo) < len(texts)
    assert all(e.meta == {PSEUDO_LABEL: True, "weight": 0.3} for e in pseudo)
    by_text = dict(zip(texts, predictions))
    assert all(list(e.spans) == by_text[e.text].entity_spans for e in pseudo)
    with pytest.raises(ValueError, match="threshold"):
        SelfTraining(True, 0.0, 0.5)


def test_a_scaled_warm_start_is_sized_to_the_share_of_new_examples_by_hand():
    gold = toy_corpus(100, seed=1)

    def sized(base_trained_on, scaling=1.0):
        config = TrainConfig(epochs=10, min_steps=1000, warm_start_scaling=scaling)
        return recipe.sized_for(RecipeInputs("base", list(LABELS), gold, [], config, base_trained_on=base_trained_on))

    assert sized(None) == TrainConfig(epochs=10, min_steps=1000, warm_start_scaling=1.0)  # a fresh start keeps it
    assert (sized(80).epochs, sized(80).min_steps) == (2, 200)  # 20 of 100 new: 10 * 0.2 epochs, 1000 * 0.2 steps
    assert (sized(96, 0.5).epochs, sized(96, 0.5).min_steps) == (2, 200)  # 4 new: 0.04 ** 0.5 = 0.2
    assert (sized(97).epochs, sized(97).min_steps) == (1, 30)  # at least one epoch
    assert (sized(120).epochs, sized(120).min_steps) == (1, 0)  # fewer than before (texts removed): one pass
    assert sized(80).learning_rate == TrainConfig.learning_rate
    assert (sized(80, 0.0).epochs, sized(80, 0.0).min_steps) == (10, 1000)  # 0: no scaling


def test_augmented_examples_join_at_most_the_ratio_per_real_one_a_seeded_sample_in_order():
    train = toy_corpus(6, seed=1)
    made = [Example(f"made {i}", [], {"made": i}) for i in range(10)]
    mixed = recipe.mix_augmented(train, made, 0.5, seed=3)
    assert mixed[:6] == train and len(mixed) == 6 + 3
    kept = [e.meta["made"] for e in mixed[6:]]
    assert kept == sorted(kept)  # in the order they were made
    assert recipe.mix_augmented(train, made, 0.5, seed=3) == mixed  # the same data, the same set
    assert {e.meta["made"] for e in recipe.mix_augmented(train, made, 0.5, seed=4)[6:]} != set(kept)
    assert recipe.mix_augmented(train, made, 2.0, seed=3) == [*train, *made]  # fewer than the cap: all
    with pytest.raises(ValueError, match="method"):
        AugmentInLoop(method="paraphrase")
    with pytest.raises(ValueError, match="ratio"):
        AugmentInLoop(ratio=0)


def test_the_recipe_refuses_a_pseudo_labelled_dev_example(tiny_encoder):
    gold = toy_corpus(5, seed=1)
    pseudo_dev = Example(gold[0].text, list(gold[0].spans), {PSEUDO_LABEL: True, "weight": 0.5})
    with pytest.raises(ValueError, match="gold only"):
        recipe.run_recipe(RecipeInputs(str(tiny_encoder), list(LABELS), gold[1:], [pseudo_dev], TrainConfig(**TINY_TRAIN)), None)


def test_the_recipe_learns_a_language_its_base_vocabulary_lacks(tiny_encoder):
    """Every character of the Chinese toy corpus is [UNK] to the tiny encoder: the recipe gives each a
    token of its own, whose row learns while the base model's rows stay fixed (the product's default),
    and learns the names; the same training without them cannot tell a name from a filler word."""
    from active_learning.metrics import evaluate
    from active_learning.tagger import Tagger
    from active_learning.training import train
    from tiny import toy_chinese_corpus

    config = TrainConfig(**{**TINY_TRAIN, "freeze_word_embeddings": True})
    train_set, dev, test = toy_chinese_corpus(200, seed=1), toy_chinese_corpus(40, seed=2), toy_chinese_corpus(60, seed=3)
    outcome = recipe.run_recipe(RecipeInputs(str(tiny_encoder), list(LABELS), train_set, dev, config), None)
    assert len(outcome.added_characters) == len({c for e in train_set for c in e.text})

    def f1(tagger):
        return evaluate(test, [p.entity_spans for p in tagger.predict([e.text for e in test])]).f1

    unknown = Tagger.load(str(tiny_encoder), labels=LABELS)
    base_rows = unknown.model.get_input_embeddings().weight.detach().clone()
    train(unknown, train_set, dev, config)
    assert f1(outcome.tagger) >= 0.9 > 0.5 >= f1(unknown)

    rows = outcome.tagger.model.get_input_embeddings().weight.detach()
    assert outcome.tagger.base_vocabulary_size == len(base_rows)
    assert torch.equal(rows[: len(base_rows)], base_rows)  # fixed: no gradient, no weight decay
    drawn = Tagger.load(str(tiny_encoder), labels=LABELS)
    drawn.add_unknown_characters([e.text for e in train_set])
    assert not torch.allclose(rows[len(base_rows) :], drawn.model.get_input_embeddings().weight[len(base_rows) :])  # trained


def record_recipe_calls(monkeypatch, stop_after_first: bool = False) -> list[tuple[RecipeInputs, object]]:
    calls = []
    real = recipe.run_recipe

    class Recorded(Exception):
        pass

    def spy(inputs, active_predict, *args, **kwargs):
        calls.append((inputs, active_predict))
        if stop_after_first:
            raise Recorded
        return real(inputs, active_predict, *args, **kwargs)

    monkeypatch.setattr(recipe, "run_recipe", spy)
    spy.Recorded = Recorded
    return calls


@pytest.mark.slow
def test_pseudo_labels_join_training_but_never_the_dev_set(tiny_encoder, monkeypatch):
    calls = record_recipe_calls(monkeypatch)
    pool, test = toy_corpus(80, seed=1), toy_corpus(20, seed=2)
    config = SimulationConfig(
        strategies=["mnlp+self_training"], seed_size=30, batch=10, rounds=2, base_model=str(tiny_encoder), full_pool=False,
        dev_share=0.25, self_training=SelfTraining(True, threshold=0.5, weight=0.5), train=TrainConfig(**TINY_TRAIN),
    )
    document = simulate(pool, test, LABELS, config)
    gold = {e.text for e in pool}
    assert len(calls) == 3 and not calls[0][0].pseudo  # round 0: no model yet to pseudo-label with
    assert any(inputs.pseudo for inputs, _ in calls[1:])
    for inputs, _ in calls:
        assert inputs.dev and all(not e.meta.get(PSEUDO_LABEL) for e in inputs.dev)
        assert all(e.meta[PSEUDO_LABEL] for e in inputs.pseudo)
        assert not {e.text for e in inputs.dev} & {e.text for e in inputs.pseudo}
        assert not {e.text for e in inputs.train} & {e.text for e in inputs.pseudo}  # pseudo-labels only for unlabelled texts
        assert {e.text for e in inputs.dev} <= gold
    assert [r["pseudo_labelled"] for r in document["rounds"]] == [len(inputs.pseudo) for inputs, _ in calls]


@pytest.mark.slow
def test_an_augment_arm_trains_on_augmentations_of_its_training_texts_never_of_dev(tiny_encoder, monkeypatch):
    calls = record_recipe_calls(monkeypatch)
    pool = [Example(e.text, e.spans, {"id": i}) for i, e in enumerate(toy_corpus(80, seed=1))]  # an augmentation names its source
    test = toy_corpus(20, seed=2)
    config = SimulationConfig(
        strategies=["random+augment"], seed_size=30, batch=10, rounds=1, base_model=str(tiny_encoder), full_pool=False,
        dev_share=0.25, augment=AugmentInLoop(n=2, ratio=0.5), train=TrainConfig(**TINY_TRAIN),
    )
    document = simulate(pool, test, LABELS, config)
    gold = {e.text for e in pool}
    assert len(calls) == len(document["rounds"]) == 2
    for (inputs, _), result in zip(calls, document["rounds"]):
        real = [e for e in inputs.train if e.text in gold]
        made = inputs.train[len(real) :]  # after the gold examples, as the service mixes them
        assert real == inputs.train[: len(real)] and made and all(e.meta["method"] == "mention_replacement" for e in made)
        assert len(made) == result["augmented"] == int(0.5 * len(real))  # two per text were made: the cap decides
        assert inputs.dev and {e.text for e in inputs.dev} <= gold
        assert {e.meta["source"] for e in made} <= {e.meta["id"] for e in real}  # made from training texts, never dev ones
    (first, _), (second, _) = calls
    assert second.base_trained_on == len(first.train)  # augmented ones count, as the train job counts them


@pytest.mark.slow
def test_the_simulation_sizes_a_warm_start_by_what_its_base_trained_on(tiny_encoder, monkeypatch):
    calls = record_recipe_calls(monkeypatch)
    train = TrainConfig(**{**TINY_TRAIN, "warm_start_scaling": 1.0})
    config = SimulationConfig(strategies=["mnlp"], seed_size=30, batch=10, rounds=1, base_model=str(tiny_encoder),
                              full_pool=False, dev_share=0.25, train=train)
    document = simulate(toy_corpus(80, seed=1), toy_corpus(20, seed=2), LABELS, config)
    (fresh, _), (warm, _) = calls
    assert fresh.base_trained_on is None and warm.base_trained_on == len(fresh.train) < len(warm.train)
    assert recipe.sized_for(warm).epochs < train.epochs  # 15 epochs scaled by the ~25% of examples that are new
    first, second = document["rounds"]
    assert second["steps"] < first["steps"]


# ---- one training path --------------------------------------------------------------------------------


def canonical(examples) -> list:
    return sorted((e.text, tuple(tuple(s) for s in e.spans)) for e in examples)


def test_the_simulation_and_the_train_job_run_the_same_recipe(tiny_encoder, tmp_path, monkeypatch):
    """For the same labelled set, both call ``recipe.run_recipe`` with the same start, configuration,
    train/dev split, no active model to compare with, and so the same promotion rule (``recipe.decide``)."""
    monkeypatch.setenv("NERLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NERLOOP_DATABASE_URL", f"sqlite:///{tmp_path / 'nerloop.db'}")
    monkeypatch.setenv("NERLOOP_BASE_MODEL", str(tiny_encoder))
    monkeypatch.setenv("NERLOOP_TRAIN_CONFIG", '{"epochs": 3, "min_steps": 0, "learning_rate": 0.003}')
    get_settings.cache_clear()
    try:
        labelled = toy_corpus(40, seed=5)
        engine = init_db(get_settings().database_url)
        with Session(engine) as session:
            project = Project(name="one-path", labels=list(LABELS))
            session.add(project)
            session.flush()
            sync.import_examples(session, project, labelled)
            session.commit()
            project_id = project.id

        calls = record_recipe_calls(monkeypatch, stop_after_first=True)
        with pytest.raises(recipe.run_recipe.Recorded):
            run_training(project_id, JobRun(0, "one-path"), train_config())
        with pytest.raises(recipe.run_recipe.Recorded):
            config = SimulationConfig(
                strategies=["mnlp"], seed_size=len(labelled), rounds=0, base_model=str(tiny_encoder), full_pool=False,
                dev_share=get_settings().dev_share, train=train_config(),
            )
            simulate(labelled, labelled[:5], LABELS, config)
    finally:
        get_settings.cache_clear()

    (job, job_active), (simulated, simulated_active) = calls
    assert job.base == simulated.base == str(tiny_encoder)  # fresh start: nothing active yet
    assert job.config == simulated.config
    assert job.labels == simulated.labels
    assert canonical(job.dev) == canonical(simulated.dev) and job.dev
    assert canonical(job.train) == canonical(simulated.train)
    assert job.pseudo == simulated.pseudo == []
    assert job.base_trained_on is simulated.base_trained_on is None
    assert job_active is None and simulated_active is None


# ---- bench/recipe_steps.py at tiny sizes, so the benchmark cannot rot -------------------------------


def test_the_recipe_steps_benchmark_runs_at_tiny_sizes(shared_data, tiny_encoder, tmp_path):
    import json
    import subprocess
    import sys

    from support import REPO

    out = tmp_path / "recipe_steps.json"
    command = [sys.executable, str(REPO / "bench" / "recipe_steps.py"), "--pool-size", "60", "--test-size", "20",
               "--shares", "0.5", "--min-steps", "2,6", "--epochs", "1", "--base-model", str(tiny_encoder), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["complete"] is True and document["pool"]["sentences"] == 60
    few, more = document["trainings"]
    assert few["sentences"] == more["sentences"] and few["tokens"] <= document["pool"]["tokens"] // 2
    assert few["train_sentences"] + few["dev_sentences"] == few["sentences"]
    assert few["steps"] < more["steps"] and more["steps"] >= 6


def test_the_vocabulary_benchmark_runs_at_tiny_sizes(shared_data, tiny_encoder, tmp_path):
    import json
    import subprocess
    import sys

    from support import REPO

    out = tmp_path / "vocabulary.json"
    command = [sys.executable, str(REPO / "bench" / "vocabulary.py"), "--data", str(shared_data / "weibo_ner"), "--pool-size", "40",
               "--test-size", "20", "--min-steps", "4", "--epochs", "1", "--base-model", str(tiny_encoder), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["complete"] is True and document["train"] + document["dev"] == 40 and document["test"] == 20
    recipe_run, base_run = document["trainings"]
    assert recipe_run["characters_added"] > 0 == base_run["characters_added"]
    assert recipe_run["test_unk_tokens"] < base_run["test_unk_tokens"] <= base_run["test_characters"]
