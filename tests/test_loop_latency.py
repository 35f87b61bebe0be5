"""bench/loop_latency.py runs in the suite at tiny sizes (tiny encoder, a few tasks, a real worker, a real
Label Studio it starts on a PostgreSQL database of its own, as deployed), so the benchmark cannot rot;
its JSON breaks the loop down into parts that add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest
from sqlalchemy.engine import make_url

from servers import POSTGRES_URL
from support import REPO, TINY_TRAIN


@pytest.mark.integration
def test_the_loop_latency_benchmark_runs_at_tiny_sizes(label_studio, tiny_encoder, tmp_path):
    # label_studio: the session's server is not used, but its fixture installs Label Studio's venv
    server = make_url(POSTGRES_URL).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    out = tmp_path / "loop_latency.json"
    command = [sys.executable, str(REPO / "bench" / "loop_latency.py"), "--labelled", "30", "--pool", "40",
               "--base-model", str(tiny_encoder), "--train-config", json.dumps({**TINY_TRAIN, "epochs": 3}),
               "--postgres-url", server, "--timeout", "240", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    document = json.loads(out.read_text())
    assert document["labelled"] == 30 and document["pool"] == 40
    assert document["new_version"] != document["first_version"]
    parts = document["seconds_by_part"]
    # at these sizes a training stage can be shorter than the 0.2 s heartbeat that reports it, so only these are sure
    sure = {"queued for training", "scoring (all pool predictions stored)", "push to Label Studio until it serves the new version"}
    assert sure <= set(parts), parts
    assert document["push_seconds_in_all"] > 0
    assert document["export_and_check_seconds_in_the_worker"]["export_seconds"] > 0
    assert sum(parts.values()) == pytest.approx(document["seconds_total"], abs=0.05)
    assert document["largest_part"] in parts and document["scoring_progress"]["scored"] == 40
    assert document["training_progress"]["stage"] == "done"
    # The timed training is the quick stage; the full stage, the configured recipe, follows its push.
    # At these sizes the rule may keep the quick stage back: then the loop is timed to the full stage.
    assert document["quick_retraining"]
    if document["kept_back_quick_stage"]:
        assert document["kept_back_quick_stage"]["retraining"] == "quick" and not document["kept_back_quick_stage"]["promoted"]
        assert document["training_progress"]["retraining"] == "full" and document["full_stage"] is None
    else:
        assert document["training_progress"]["retraining"] == "quick"
        full = document["full_stage"]
        assert full["retraining"] == "full" and full["version"] not in (document["first_version"], document["new_version"])
        assert full["seconds_until_trained"] > document["seconds_total"]
        served = full["seconds_until_served"]
        assert served is None if not full["promoted"] else served >= full["seconds_until_trained"]
    assert document["promoted"] == "by the rule" or document["promoted"].startswith("by hand (dev F1")
    assert document["label_studio_database"] == "postgresql"
    with psycopg.connect(server) as connection:  # the benchmark dropped the database it made
        left = connection.execute("SELECT datname FROM pg_database WHERE datname LIKE 'nerloop_bench_%'").fetchall()
    assert left == []
