"""`make demo` in small: `nerloop demo` starts the API, a worker and the beat, lets simulated
annotators label through nerloop's own endpoints in uncertainty order, and reports the curve."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from typer.testing import CliRunner

from service.cli import app
from support import NERLOOP, REPO, TINY_TRAIN


def nerloop(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run([*NERLOOP, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_demo_runs_the_loop_through_the_service(tmp_path, tiny_encoder):
    out = tmp_path / "demo"
    done = nerloop(
        # More test sentences than one /predict request takes (MAX_TEXTS, 64): the demo must send them in chunks.
        "demo", "--pool-size", "80", "--test-size", "70", "--batch", "12", "--rounds", "1",
        "--base-model", str(tiny_encoder), "--train-config", json.dumps(TINY_TRAIN), "--out", str(out),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    curve, versions = results["curve"], results["model_versions"]
    assert len(curve) == 2 and [v["name"] for v in versions] == ["v1", "v2"]
    assert curve[0]["labelled_tasks"] >= 12 and curve[1]["labelled_tasks"] >= curve[0]["labelled_tasks"] + 12
    assert curve[1]["labelled_tokens"] > curve[0]["labelled_tokens"]
    dev_f1 = {v["name"]: v["dev_f1"] for v in versions}
    assert all(p["dev_f1"] == dev_f1[p["version"]] for p in curve)  # each point is measured on the version it names
    assert versions[0]["train_size"] == 12 and versions[1]["train_size"] == 24  # each training waited for its batch
    assert (out / "curve.png").stat().st_size > 10_000
    assert "Model versions" in done.stdout and "curve.png" in done.stdout
    random_curve = results["random_curve"]  # the same corpus in random order, a second project in the same service
    assert len(random_curve) == 2 and random_curve[1]["labelled_tasks"] >= random_curve[0]["labelled_tasks"] + 12
    assert results["same_f1"]["f1"] == min(curve[-1]["test_f1"], random_curve[-1]["test_f1"]) and "The saving" in done.stdout
    assert all(p["stopping"].startswith(("you can stop", "keep going")) for p in curve)  # the stopping signal after each training
    for name in ("api", "worker", "beat"):
        assert (out / "logs" / f"{name}.log").is_file()
    assert "nerloop.score_pool" in (out / "logs" / "worker.log").read_text()


def test_demo_refuses_bad_options_before_starting_anything(tmp_path):
    for args, message in ((["--strategy", "smartest"], "--strategy"), (["--train-config", '{"bogus": 1}'], "--train-config")):
        done = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), *args])
        assert done.exit_code == 2 and message in done.output
        assert not (tmp_path / "demo" / "logs").exists()


def test_the_saving_compares_the_tokens_each_curve_needs_for_the_same_f1():
    from service.cli.demo import Point, saving, tokens_to_reach

    ours = [Point("v1", 10, 100, 0.5, None), Point("v2", 20, 200, 0.8, None)]
    random_order = [Point("v1", 10, 100, 0.5, None), Point("v2", 20, 200, 0.6, None), Point("v3", 30, 300, 0.7, None)]
    assert tokens_to_reach(ours, 0.65) == pytest.approx(150)  # halfway between 0.5 and 0.8
    assert tokens_to_reach(ours, 0.4) == 100 and tokens_to_reach(ours, 0.9) is None
    same = saving(ours, random_order, pool_tokens=1000)
    # the lower final F1 (0.7): ours at 100 + (0.2 / 0.3) * 100 tokens, random order at 300
    assert same["f1"] == 0.7 and same["tokens"] == pytest.approx(166.667, rel=1e-4) and same["random_tokens"] == 300
    assert same["tokens_share"] == pytest.approx(0.166667, rel=1e-4) and same["token_saving"] == pytest.approx(1 - 166.667 / 300, rel=1e-4)
