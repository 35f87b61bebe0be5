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
        "demo", "--pool-size", "80", "--test-size", "30", "--batch", "12", "--rounds", "1",
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
    for name in ("api", "worker", "beat"):
        assert (out / "logs" / f"{name}.log").is_file()
    assert "nerloop.score_pool" in (out / "logs" / "worker.log").read_text()


def test_demo_refuses_bad_options_before_starting_anything(tmp_path):
    for args, message in ((["--strategy", "smartest"], "--strategy"), (["--train-config", '{"bogus": 1}'], "--train-config")):
        done = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), *args])
        assert done.exit_code == 2 and message in done.output
        assert not (tmp_path / "demo" / "logs").exists()
