import json
import signal
import subprocess
import time
from dataclasses import astuple

import pytest
from typer.testing import CliRunner

from active_learning.corpus import write_jsonl
from active_learning.simulation import Arm, AugmentInLoop, SimulationConfig, merge_documents, simulate, summarize, token_count
from active_learning.training import TrainConfig
from service.cli import app
from support import NERLOOP
from tiny import LABELS, toy_corpus

# min_steps: tiny seed sets must learn reliably
FAST = TrainConfig(epochs=8, min_steps=40, learning_rate=3e-3, freeze_word_embeddings=False)


@pytest.mark.slow
def test_simulation_end_to_end_on_a_small_slice(tiny_encoder):
    pool, test = toy_corpus(120, seed=1), toy_corpus(40, seed=2)
    config = SimulationConfig(
        strategies=["mnlp", "bald", "random", "mnlp+diversity"], seed_size=150, batch=60, rounds=2, unit="tokens",
        base_model=str(tiny_encoder), mc_samples=3, train=FAST,
    )
    seen, partial = [], []
    document = simulate(pool, test, LABELS, config, on_result=seen.append, on_document=partial.append)
    rounds = document["rounds"]
    assert len(rounds) == 4 * 3 and len(seen) == 4 * 3 + 1  # + the full-pool run
    # the document so far after every training: the full pool's alone first, then a round more each time
    assert len(partial) == len(seen) and not any(d["complete"] for d in partial) and document["complete"]
    assert [len(d["rounds"]) for d in partial] == list(range(len(seen))) and partial[0]["summary"] == {}
    assert partial[-1]["rounds"] == rounds and partial[4]["summary"]["mnlp"]["final_f1"] == rounds[2]["f1"]
    pool_tokens = sum(token_count(e) for e in pool)
    assert document["pool"] == {"sentences": 120, "tokens": pool_tokens}
    for name in ("mnlp", "bald", "random", "mnlp+diversity"):
        curve = [r for r in rounds if r["strategy"] == name]
        assert [r["round"] for r in curve] == [0, 1, 2]
        assert curve[0]["tokens"] <= 150  # the token budget is respected
        for before, after in zip(curve, curve[1:]):
            assert 0 < after["tokens"] - before["tokens"] <= 60
        assert [r["f1"] for r in curve] == [r.f1 for r in seen if r.strategy == name]  # as reported while it ran
        assert curve[-1]["f1"] > 0.1  # the toy pattern is being learned
    # every strategy starts from the same seed set
    assert len({r["tokens"] for r in rounds if r["round"] == 0}) == 1
    assert 0.8 < document["full_pool_f1"]["0"] <= 1.0
    summary = document["summary"]
    assert summary["random"]["aulc_vs_random"] == pytest.approx(1.0)
    mnlp = summary["mnlp"]
    assert mnlp["full_pool_f1"] == document["full_pool_f1"]["0"] and mnlp["aulc_vs_random"] > 0
    assert mnlp["final_f1"] == [r["f1"] for r in rounds if r["strategy"] == "mnlp"][-1]
    assert mnlp["tokens_fraction_to_99pct_full_f1"] is None or 0 < mnlp["tokens_fraction_to_99pct_full_f1"] <= 1


def test_summary_against_a_hand_made_curve():
    def rows(name, points):
        return [
            {"strategy": name, "seed": 0, "round": i, "sentences": 0, "tokens": 0, "tokens_fraction": x, "f1": y}
            for i, (x, y) in enumerate(points)
        ]

    document = {
        "full_pool_f1": {"0": 0.80},
        "rounds": rows("mnlp", [(0.1, 0.5), (0.2, 0.795), (0.3, 0.8)]) + rows("random", [(0.1, 0.5), (0.2, 0.6), (0.3, 0.7)]),
    }
    summary = summarize(document)
    assert summary["mnlp"]["tokens_fraction_to_99pct_full_f1"] == pytest.approx(0.2)  # 0.795 >= 0.99 * 0.8
    assert summary["random"]["tokens_fraction_to_99pct_full_f1"] is None
    # trapezoids over [0.1, 0.3]: mnlp 0.1*(0.5+0.795)/2 + 0.1*(0.795+0.8)/2, random 0.1*(0.5+0.6)/2 + 0.1*(0.6+0.7)/2
    expected = (0.06475 + 0.07975) / (0.055 + 0.065)
    assert summary["mnlp"]["aulc_vs_random"] == pytest.approx(expected, rel=1e-3)


def _curve_document(arm: str, points: list[tuple[float, float]], full_pool_f1: float | None = 0.8, **config) -> dict:
    """A curve document as nerloop simulate writes it, one seed of one arm (None: without the full pool's training)."""
    return {
        "config": {"strategies": [arm], "seeds": [0], "rounds": len(points) - 1, "seed_size": 100, "batch": 50,
                   "full_pool": full_pool_f1 is not None, "train": {"min_steps": 1000}, **config},
        "complete": True, "pool": {"sentences": 10, "tokens": 500}, "test": {"sentences": 5}, "stop_set": {"sentences": 3},
        "full_pool_f1": {} if full_pool_f1 is None else {"0": full_pool_f1},
        "rounds": [{"strategy": arm, "seed": 0, "round": i, "sentences": 0, "tokens": 0, "tokens_fraction": x, "f1": y}
                   for i, (x, y) in enumerate(points)],
    }


def test_runs_of_one_protocol_merge_into_one_summary_and_others_are_refused():
    mnlp = _curve_document("mnlp", [(0.1, 0.5), (0.2, 0.795), (0.3, 0.8), (0.4, 0.81)])
    mnlp["complete"] = False  # stopped half-way: the merge says so
    random = _curve_document("random", [(0.1, 0.5), (0.2, 0.6), (0.3, 0.7)])
    merged = merge_documents([mnlp, random])
    assert merged["config"]["strategies"] == ["mnlp", "random"] and merged["config"]["rounds"] == 3
    assert merged["rounds"] == mnlp["rounds"] + random["rounds"] and merged["complete"] is False
    # AULC over the range both arms cover, [0.1, 0.3]: the hand-made summary's numbers
    assert merged["summary"]["mnlp"]["aulc_vs_random"] == pytest.approx((0.06475 + 0.07975) / (0.055 + 0.065), rel=1e-3)
    assert merged["summary"] == summarize(merged)
    # an arm run later without the full pool's training: the other run's full-pool F1 serves it
    later = merge_documents([mnlp, random, _curve_document("mnlp+self_training", [(0.1, 0.5), (0.2, 0.8)], full_pool_f1=None)])
    assert later["full_pool_f1"] == {"0": 0.8} and later["config"]["full_pool"] is True
    assert later["summary"]["mnlp+self_training"]["tokens_fraction_to_99pct_full_f1"] == pytest.approx(0.2)

    with pytest.raises(ValueError, match="differs from run 0 in train"):
        merge_documents([mnlp, _curve_document("random", [(0.1, 0.5)], train={"min_steps": 150})])
    with pytest.raises(ValueError, match="full-pool F1 for seed 0"):
        merge_documents([mnlp, _curve_document("random", [(0.1, 0.5)], full_pool_f1=0.7)])
    with pytest.raises(ValueError, match=r"repeats arm and seed \[\('mnlp', 0\)\]"):
        merge_documents([mnlp, mnlp])
    with pytest.raises(ValueError, match="not a curve document"):
        merge_documents([mnlp, {"rounds": []}])


def test_a_run_from_before_arms_carried_diversity_merges_when_its_switch_was_off():
    before = _curve_document("random", [(0.1, 0.5), (0.2, 0.6)], diversity=False)
    now = _curve_document("mnlp+diversity", [(0.1, 0.5), (0.2, 0.7)], full_pool_f1=None)
    assert merge_documents([before, now])["config"]["strategies"] == ["random", "mnlp+diversity"]
    with pytest.raises(ValueError, match="differs from run 0 in diversity"):  # every arm of that run was spread
        merge_documents([now, _curve_document("random", [(0.1, 0.5)], diversity=True)])


def test_an_arm_is_a_strategy_with_options():
    assert Arm.parse("mnlp") == Arm("mnlp")
    assert Arm.parse("mnlp+diversity+self_training") == Arm("mnlp", self_training=True, diversity=True)
    with pytest.raises(ValueError, match="unknown option 'diversty'"):
        Arm.parse("mnlp+diversty")
    with pytest.raises(ValueError, match="unknown strategy 'mnpl'"):
        SimulationConfig(strategies=["mnpl+diversity"])


def test_the_benchmark_summarises_separately_run_arms_as_one_result(tmp_path):
    import sys

    from support import REPO

    mnlp = _curve_document("mnlp", [(0.1, 0.5), (0.2, 0.795), (0.3, 0.8)])
    random = _curve_document("random", [(0.1, 0.5), (0.2, 0.6), (0.3, 0.7)])
    paths = []
    for name, document in (("mnlp", mnlp), ("random", random), ("other", {**random, "test": {"sentences": 6}})):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(document))
    bench = [sys.executable, str(REPO / "bench" / "al_conll2003.py"), "--name", "both", "--out", str(tmp_path), "--merge"]
    done = subprocess.run([*bench, *map(str, paths[:2])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "both.json").read_text())
    assert results["merged_from"] == [str(p) for p in paths[:2]] and (tmp_path / "both.png").stat().st_size > 0
    assert results["arms"]["mnlp"]["aulc_vs_random"]["per_seed"][0] == pytest.approx(1.2041, rel=1e-3)
    assert results["arms"]["mnlp"]["tokens_fraction_to_99pct_full_f1"]["mean"] == pytest.approx(0.2)
    refused = subprocess.run([*bench, str(paths[0]), str(paths[2])], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--merge: run 1 differs from run 0 in test" in refused.stderr
    # one arm under two recipes, plotted together: a plot, no result file
    overlay = [sys.executable, str(REPO / "bench" / "al_conll2003.py"), "--name", "recipes", "--out", str(tmp_path), "--overlay"]
    done = subprocess.run([*overlay, f"p = 0={paths[0]}", f"p = 1={paths[1]}", "--overlay-arm", "mnlp"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "recipes.png").stat().st_size > 0 and not (tmp_path / "recipes.json").exists()
    refused = subprocess.run([*overlay, str(paths[0])], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "expected LABEL=CURVE_JSON" in refused.stderr


@pytest.mark.slow
def test_cli_simulate_writes_curve_and_plot(tiny_encoder, tmp_path):
    data = tmp_path / "toy.jsonl"
    write_jsonl(toy_corpus(100, seed=4), data)
    out = tmp_path / "run"
    result = subprocess.run(
        [*NERLOOP, "simulate", "--data", str(data), "--base-model", str(tiny_encoder), "--strategies", "mnlp,random",
         "--seed-size", "20", "--batch", "20", "--rounds", "1", "--epochs", "3", "--min-steps", "0",
         "--learning-rate", "3e-3", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads((out / "curve.json").read_text())
    assert {r["strategy"] for r in document["rounds"]} == {"mnlp", "random"}
    assert document["pool"]["sentences"] == 80 and document["test"]["sentences"] == 20  # 20% held out
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "Summary" in result.stdout and "curve.png" in result.stdout


@pytest.mark.slow
def test_seeds_run_apart_share_the_pool_of_one_sample_seed_and_merge(tiny_encoder, tmp_path):
    data = tmp_path / "toy.jsonl"
    write_jsonl(toy_corpus(120, seed=4), data)

    def run(seed: int, *sample: str) -> dict:
        out = tmp_path / f"seed{seed}{''.join(sample)}"
        result = subprocess.run(
            [*NERLOOP, "simulate", "--data", str(data), "--base-model", str(tiny_encoder), "--strategies", "random",
             "--pool-size", "60", "--test-size", "10", "--seeds", str(seed), *sample, "--seed-size", "10", "--rounds", "0",
             "--epochs", "1", "--min-steps", "0", "--no-full-pool", "--out", str(out)],
            capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads((out / "curve.json").read_text())

    first, second, own = run(0), run(1, "--sample-seed", "0"), run(1)
    assert second["pool"] == first["pool"] and second["test"] == first["test"] and second["stop_set"] == first["stop_set"]
    assert sorted(merge_documents([first, second])["config"]["seeds"]) == [0, 1]
    assert own["pool"] != first["pool"]  # by default the sample follows the first of --seeds
    with pytest.raises(ValueError, match="pool"):
        merge_documents([first, own])


@pytest.mark.slow
def test_cli_simulate_stopped_half_way_keeps_what_it_measured(tiny_encoder, tmp_path):
    data = tmp_path / "toy.jsonl"
    write_jsonl(toy_corpus(100, seed=4), data)
    out = tmp_path / "run"
    simulation = subprocess.Popen(  # 60 rounds: far more than it can run before the interrupt
        [*NERLOOP, "simulate", "--data", str(data), "--base-model", str(tiny_encoder), "--strategies", "mnlp,random",
         "--seed-size", "20", "--batch", "1", "--rounds", "60", "--epochs", "1", "--min-steps", "0", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # a shell without job control starts background jobs with SIGINT ignored, and Python keeps it so
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while not (out / "curve.json").exists() and simulation.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    simulation.send_signal(signal.SIGINT)
    output, _ = simulation.communicate(timeout=120)
    assert simulation.returncode == 130, output
    assert "interrupted" in output
    document = json.loads((out / "curve.json").read_text())
    assert document["complete"] is False and "0" in document["full_pool_f1"]
    assert {r["strategy"] for r in document["rounds"]} <= {"mnlp"}  # random's turn never came


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped KeyboardInterrupt, on purpose
def test_an_interrupt_that_python_swallowed_still_stops_the_simulation():
    """A KeyboardInterrupt raised inside a weakref callback (or a finaliser) is printed as "Exception
    ignored" and dropped: the flag remembers it, so simulate's next step or stage stops the run."""
    import os
    import weakref

    from service.cli.simulate import interrupt_flag

    class Model:
        pass

    def finalised(_reference):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100_000):  # the signal handler runs in here, so its exception is dropped
            pass

    before = signal.getsignal(signal.SIGINT)
    with interrupt_flag() as interrupted:
        model = Model()
        reference = weakref.ref(model, finalised)
        del model  # no KeyboardInterrupt reaches this frame
        assert reference() is None and interrupted.is_set()
    assert signal.getsignal(signal.SIGINT) is before


def test_cli_simulate_trains_with_the_workers_defaults():
    import inspect

    from service.cli.simulate import simulate

    defaults = {name: p.default for name, p in inspect.signature(simulate).parameters.items()}
    for field in ("epochs", "min_steps", "learning_rate", "batch_size", "warm_start_scaling"):
        assert defaults[field] == getattr(TrainConfig, field), field
    augment = tuple(defaults[f"augment_{name}"].default for name in ("method", "n", "ratio"))  # typer.Option(default, ...)
    assert augment == astuple(AugmentInLoop())


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--strategies", "mnlp,nope"], "unknown strategy 'nope'"),
        (["--data", "/nonexistent/file.conll"], "no such file"),
        (["--unit", "pages"], "unit must be"),
        (["--seeds", "a,b"], "--seeds"),
        (["--strategies", "mnlp+augment", "--augment-method", "paraphrase"], "unknown augmentation method 'paraphrase'"),
        (["--strategies", "mnlp+augmented"], "unknown option 'augmented'"),
    ],
)
def test_cli_rejects_bad_input_with_a_clear_message(arguments, message, tmp_path):
    result = CliRunner().invoke(app, ["simulate", *arguments, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output
