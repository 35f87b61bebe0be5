import json
import signal
import subprocess
import time

import pytest
from typer.testing import CliRunner

from active_learning.corpus import write_jsonl
from active_learning.simulation import SimulationConfig, simulate, summarize, token_count
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
        strategies=["mnlp", "bald", "random"], seed_size=150, batch=60, rounds=2, unit="tokens",
        base_model=str(tiny_encoder), mc_samples=3, train=FAST,
    )
    seen, partial = [], []
    document = simulate(pool, test, LABELS, config, on_result=seen.append, on_document=partial.append)
    rounds = document["rounds"]
    assert len(rounds) == 3 * 3 and len(seen) == 3 * 3 + 1  # + the full-pool run
    # the document so far after every training: the full pool's alone first, then a round more each time
    assert len(partial) == len(seen) and not any(d["complete"] for d in partial) and document["complete"]
    assert [len(d["rounds"]) for d in partial] == list(range(len(seen))) and partial[0]["summary"] == {}
    assert partial[-1]["rounds"] == rounds and partial[4]["summary"]["mnlp"]["final_f1"] == rounds[2]["f1"]
    pool_tokens = sum(token_count(e) for e in pool)
    assert document["pool"] == {"sentences": 120, "tokens": pool_tokens}
    for name in ("mnlp", "bald", "random"):
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


def test_cli_simulate_trains_with_the_workers_defaults():
    import inspect

    from service.cli.simulate import simulate

    defaults = {name: p.default for name, p in inspect.signature(simulate).parameters.items()}
    for field in ("epochs", "min_steps", "learning_rate", "batch_size"):
        assert defaults[field] == getattr(TrainConfig, field), field


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--strategies", "mnlp,nope"], "unknown strategy 'nope'"),
        (["--data", "/nonexistent/file.conll"], "no such file"),
        (["--unit", "pages"], "unit must be"),
        (["--seeds", "a,b"], "--seeds"),
    ],
)
def test_cli_rejects_bad_input_with_a_clear_message(arguments, message, tmp_path):
    result = CliRunner().invoke(app, ["simulate", *arguments, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output
