"""What got in a new user's way (issue 15), without servers: a training asked for with nothing
labelled is refused with the reason (API, CLI and Label Studio's "Start Training"), "Start Training"
is answered with the job, and `nerloop jobs` fits an 80-column terminal."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime

from sqlmodel import Session, select
from typer.testing import CliRunner

from service.models import Job, JobStatus
from support import NERLOOP, add_labelled_task, add_project, make_client

API = "/api/v1"


def test_training_with_nothing_labelled_is_refused_with_the_reason_and_queues_nothing(tmp_path):
    with make_client(tmp_path) as client:
        project = add_project(client, ls_project_id=7)
        add_labelled_task(client, project.id, is_dev=True)  # a dev task only evaluates
        refused = client.post(f"{API}/projects/{project.id}/train")
        assert refused.status_code == 409, refused.text
        message = refused.json()["detail"][0]["message"]
        assert "no labelled training task yet" in message and "1 labelled task is in the dev set" in message
        # Label Studio's "Start Training" gets the same answer, which it shows as the model's error.
        start = client.post("/ml/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
        assert start.status_code == 409 and "no labelled training task yet" in start.text
        with Session(client.app.state.engine) as session:
            assert session.exec(select(Job)).all() == []

        add_labelled_task(client, project.id, text="Bob works in Berlin")
        started = client.post("/ml/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
        assert started.status_code == 201, started.text
        with Session(client.app.state.engine) as session:
            [job] = session.exec(select(Job)).all()
        # Label Studio records "job" as its training job; the status says which one in words.
        assert started.json() == {"status": f"training job {job.id} of nerloop project {project.id}: queued", "action": "START_TRAINING",
                                  "job": str(job.id)}


def test_cli_train_refuses_with_the_reason_when_nothing_is_labelled(tmp_path, monkeypatch):
    from service.cli import app
    from service.settings import get_settings

    monkeypatch.setenv("NERLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NERLOOP_DATABASE_URL", f"sqlite:///{tmp_path / 'nerloop.db'}")
    get_settings.cache_clear()
    try:
        with make_client(tmp_path) as client:
            project = add_project(client)
        done = CliRunner().invoke(app, ["train", "--project", str(project.id), "--wait"])
        assert done.exit_code == 2, done.output
        assert "no labelled training task yet" in " ".join(done.output.split())
    finally:
        get_settings.cache_clear()


def test_jobs_table_fits_80_columns_with_progress_and_error_readable(tmp_path):
    with make_client(tmp_path) as client:
        project = add_project(client)
        when = datetime(2026, 12, 1, 22, 51, 47, tzinfo=UTC)
        with Session(client.app.state.engine) as session:
            session.add(Job(project_id=project.id, kind="score_pool", status=JobStatus.running, created_at=when,
                            progress={"stage": "scoring", "tasks": 149, "scored": 64}))
            session.add(Job(project_id=project.id, kind="train", status=JobStatus.failed, created_at=when, finished_at=when,
                            progress={"stage": "loading"}, error="ValueError: project 1 has no labelled training examples yet\nTraceback"))
            session.commit()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
    env.update(COLUMNS="80", LINES="50", NERLOOP_HOME=str(tmp_path / "home"), NERLOOP_DATABASE_URL=f"sqlite:///{tmp_path / 'nerloop.db'}")
    done = subprocess.run([*NERLOOP, "jobs"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, done.stdout
    text = " ".join(done.stdout.split())
    for header in ("id", "project", "kind", "status", "created", "finished", "progress", "error"):
        assert header in lines[1], done.stdout
    # The progress and the error read in full, wrapped within their columns.
    words = " ".join(done.stdout.replace("│", " ").split())
    for phrase in ("scoring", "scored 64/149", "ValueError:", "labelled", "training", "examples"):
        assert phrase in words, done.stdout
    assert "12-01 22:51" in text
