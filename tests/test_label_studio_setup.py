"""A real Label Studio set up for the loop by nerloop (issue 15): the "most uncertain first" view,
nerloop's /ml connected as the model (and kept, not doubled, on re-attach), "Start Training"
reaching nerloop as a job, and superseded predictions pruned after a push, annotations untouched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess

import httpx
import pytest
from sqlmodel import Session, select

from service.db import get_engine, init_db
from service.label_studio import HIDDEN_COLUMNS, UNCERTAIN_FIRST_VIEW, LabelStudioClient
from service.models import Job, ModelStatus, ModelVersion, Prediction, Project, Task, TaskState
from service.settings import get_settings
from support import NERLOOP, REPO, free_port, make_settings, nerloop_serve, wait_until
from tiny import LABELS

API = "/api/v1"


def label_studio_http(label_studio) -> httpx.Client:
    return httpx.Client(base_url=label_studio.url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=120)


def test_created_project_gets_the_view_and_the_model_and_start_training_queues_a_job(label_studio, tmp_path):
    settings = make_settings(tmp_path)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
    env.update(
        NERLOOP_HOME=str(settings.home), NERLOOP_DATABASE_URL=settings.database_url, NERLOOP_PUBLIC_URL=public,
        NERLOOP_LABEL_STUDIO_URL=label_studio.url, NERLOOP_LABEL_STUDIO_API_KEY=label_studio.token, NERLOOP_WEBHOOK_SECRET="s",
    )
    ls = label_studio_http(label_studio)
    with nerloop_serve(env, tmp_path / "serve.log", insecure=True, port=port) as base, httpx.Client(base_url=base, timeout=120) as api:
        created = api.post(f"{API}/projects", json={"name": "first hour", "labels": list(LABELS)})
        assert created.status_code == 201, created.text
        project = created.json()
        ls_id = project["ls_project_id"]

        def set_up_once():
            views = ls.get("/api/dm/views/", params={"project": ls_id}).json()
            views = [v for v in views if v["data"].get("title") == UNCERTAIN_FIRST_VIEW]
            backends = ls.get("/api/ml", params={"project": ls_id}).json()
            return views, backends

        [view], [backend] = set_up_once()
        assert view["data"]["ordering"] == ["tasks:predictions_score"]  # ascending: the lowest score first
        hidden = view["data"]["hiddenColumns"]["explore"]
        assert hidden == HIDDEN_COLUMNS
        assert "tasks:predictions_score" not in hidden and "tasks:predictions_model_versions" not in hidden
        assert backend["url"] == f"{public}/ml" and backend["state"] in ("CO", "CONNECTED"), backend

        # Attaching again (nerloop init --attach) keeps the one view and the one model.
        again = subprocess.run([*NERLOOP, "init", "--attach", str(ls_id)], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"project {project['id']}" in " ".join(again.stdout.split())
        views, backends = set_up_once()
        assert [v["id"] for v in views] == [view["id"]] and [b["id"] for b in backends] == [backend["id"]]

        # "Start Training" in Label Studio: refused while nothing is labelled, then a queued job.
        engine = get_engine(settings.database_url)
        assert ls.post(f"/api/ml/{backend['id']}/train").status_code == 200
        with Session(engine) as session:
            assert session.exec(select(Job).where(Job.kind == "train")).all() == []
            text = "Alice flew to Paris"
            session.add(Task(project_id=project["id"], text=text, content_hash=hashlib.sha256(text.encode()).hexdigest(),
                             state=TaskState.labelled))
            session.commit()
        assert ls.post(f"/api/ml/{backend['id']}/train").status_code == 200

        def training():
            with Session(engine) as session:
                return session.exec(select(Job).where(Job.kind == "train")).all()

        [job] = wait_until(training, 10, message="the training job Start Training asks for")
        assert job.project_id == project["id"]


@pytest.fixture
def pointed_at(monkeypatch, tmp_path, label_studio):
    """This process's settings on a database of its own and the real Label Studio."""
    settings = make_settings(tmp_path)
    for name, value in dict(
        NERLOOP_HOME=str(settings.home), NERLOOP_DATABASE_URL=settings.database_url,
        NERLOOP_LABEL_STUDIO_URL=label_studio.url, NERLOOP_LABEL_STUDIO_API_KEY=label_studio.token,
    ).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    init_db(settings.database_url)
    yield settings
    monkeypatch.undo()
    get_settings.cache_clear()


def predictions_per_task(ls: httpx.Client, task_ids) -> dict[int, list[str]]:
    return {t: sorted(p["model_version"] for p in ls.get("/api/predictions/", params={"task": t}).json()) for t in task_ids}


@pytest.mark.parametrize("keep", [1, 2])
def test_prune_after_a_push_removes_superseded_predictions_in_bulk_and_never_annotations(pointed_at, label_studio, monkeypatch, keep):
    from workers.scoring import prune, push

    monkeypatch.setenv("NERLOOP_KEEP_PREDICTION_VERSIONS", str(keep))
    get_settings.cache_clear()
    client = LabelStudioClient(label_studio.url, label_studio.token)
    ls_id = client.create_project(f"clean-up {keep}", list(LABELS))
    texts = ["alice met bob", "carol is in rome", "dave went home"]
    ls_tasks = client.import_tasks(ls_id, [{"text": t} for t in texts])
    ls = label_studio_http(label_studio)
    annotated = ls.post(f"/api/tasks/{ls_tasks[0]}/annotations/", json={"result": []})
    assert annotated.status_code == 201, annotated.text
    # Predictions nerloop did not make stay whatever happens.
    client.push_predictions(ls_id, [{"task": ls_tasks[1], "result": [], "score": 0.5}], model_version="someone-else")

    with Session(get_engine(pointed_at.database_url)) as session:
        project = Project(name="clean-up", labels=list(LABELS), ls_project_id=ls_id)
        session.add(project)
        session.flush()
        tasks = [
            Task(project_id=project.id, text=t, content_hash=hashlib.sha256(t.encode()).hexdigest(), ls_task_id=ls_task)
            for t, ls_task in zip(texts, ls_tasks)
        ]
        session.add_all(tasks)
        versions = [ModelVersion(project_id=project.id, name=n, path="/nowhere", status=ModelStatus.retired) for n in ("v1", "v2", "v3")]
        session.add_all(versions)
        session.flush()
        for version in versions:
            session.add_all(Prediction(task_id=t.id, model_version_id=version.id, spans=[[0, 5, "PER", 0.9]], score=0.4) for t in tasks)
        session.commit()
        project_id, version_ids = project.id, [v.id for v in versions]

    assert push(project_id, version_ids[0]) == len(texts) and push(project_id, version_ids[1]) == len(texts)
    assert predictions_per_task(ls, ls_tasks)[ls_tasks[0]] == ["v1", "v2"]  # the push alone removes nothing
    assert prune(project_id, version_ids[1]) == (len(texts) if keep == 1 else 0)
    assert push(project_id, version_ids[2]) == len(texts)
    prune(project_id, version_ids[2])
    kept = ["v3", "v2"][:keep]
    expected = {t: sorted(kept) for t in ls_tasks}
    expected[ls_tasks[1]] = sorted([*kept, "someone-else"])
    assert predictions_per_task(ls, ls_tasks) == expected

    # Push and prune can run again: nothing doubles, nothing more goes.
    assert push(project_id, version_ids[-1]) == len(texts)
    assert prune(project_id, version_ids[-1]) == 0
    assert predictions_per_task(ls, ls_tasks) == expected
    # A late prune of an older version never removes the active version's predictions.
    with Session(get_engine(pointed_at.database_url)) as session:
        session.get(ModelVersion, version_ids[-1]).status = ModelStatus.active
        session.commit()
    prune(project_id, version_ids[1])
    assert "v3" in predictions_per_task(ls, ls_tasks)[ls_tasks[0]]
    assert [a["id"] for a in ls.get(f"/api/tasks/{ls_tasks[0]}/annotations/").json()] == [annotated.json()["id"]]
    assert ls.get(f"/api/projects/{ls_id}").json()["model_version"] == "v3"


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def readme_block(begin: str = "<!-- first-hour:begin -->", end: str = "<!-- first-hour:end -->") -> str:
    text = (REPO / "README.md").read_text()
    block = text[text.index(begin) + len(begin) : text.index(end)].strip()
    assert block.startswith("```bash\n") and block.endswith("```")
    return block.removeprefix("```bash\n").removesuffix("```")


def test_the_readme_label_studio_sequence_works_as_pasted(label_studio, tmp_path):
    """The README's block, run by bash in a fresh directory, with two changes: a free port for 8000
    (others may hold it here), and scripts/labelstudio.sh answering with the test's Label Studio."""
    port = free_port()
    block = readme_block().replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("nerloop up ", f"nerloop up --port {port} ")
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    (tmp_path / "scripts").mkdir()
    stub = tmp_path / "scripts" / "labelstudio.sh"
    answer = f"LABEL_STUDIO_URL={label_studio.url}\\nLABEL_STUDIO_API_KEY={label_studio.token}\\n"
    stub.write_text(f'#!/bin/sh\n[ "$1" = start ] && printf "{answer}"\n')
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
    env.update(NERLOOP_PUBLIC_URL=f"http://127.0.0.1:{port}", OMP_NUM_THREADS="1")
    shell = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = shell.communicate(timeout=300)
        assert shell.returncode == 0, output + (tmp_path / "nerloop-up.log").read_text()[-3000:]
        dotenv = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines())
        assert dotenv["NERLOOP_LABEL_STUDIO_URL"] == label_studio.url and len(dotenv["NERLOOP_API_TOKEN"]) == 32
        token = {"Authorization": f"Bearer {dotenv['NERLOOP_API_TOKEN']}"}
        [project] = httpx.get(f"http://127.0.0.1:{port}{API}/projects", headers=token, timeout=30).json()
        ls = label_studio_http(label_studio)
        ls_id = project["ls_project_id"]
        assert len(ls.get("/api/tasks/", params={"project": ls_id}).json()["tasks"]) == 3
        views = [v["data"].get("title") for v in ls.get("/api/dm/views/", params={"project": ls_id}).json()]
        assert UNCERTAIN_FIRST_VIEW in views
        [backend] = ls.get("/api/ml", params={"project": ls_id}).json()
        assert backend["url"] == f"http://127.0.0.1:{port}/ml" and backend["state"] in ("CO", "CONNECTED"), backend
        assert "/ml" in (tmp_path / "nerloop-up.log").read_text()
    finally:
        # What the README's `kill %1` does: SIGTERM to nerloop up, which stops its API, worker and beat.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)
        wait_until(lambda: not port_in_use(port), 60, message=f"port {port} to be free after stopping nerloop up")
