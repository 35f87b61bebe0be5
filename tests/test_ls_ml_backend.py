"""Label Studio itself calls nerloop's ML backend: "Connect Model", then predictions for its tasks."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from service.db import get_engine, init_db
from service.models import ModelStatus, ModelVersion, Project
from servers import free_port
from test_api import make_settings, trained_model  # noqa: F401  (fixture)
from tiny import LABELS

NERLOOP = str(Path(sys.executable).parent / "nerloop")


def test_label_studio_connects_and_shows_nerloop_predictions(label_studio, trained_model, tmp_path):  # noqa: F811
    browser = httpx.Client(base_url=label_studio.url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=120)
    config = '<View><Labels name="label" toName="text">' + "".join(f'<Label value="{l}"/>' for l in LABELS) + '</Labels><Text name="text" value="$text"/></View>'
    ls_project = browser.post("/api/projects/", json={"title": "ml backend", "label_config": config}).json()["id"]
    texts = ["alice met bob in paris", "we went home"]
    assert browser.post(f"/api/projects/{ls_project}/import", json=[{"text": t} for t in texts]).status_code == 201

    settings = make_settings(tmp_path)
    init_db(settings.database_url)
    with Session(get_engine(settings.database_url)) as session:
        project = Project(name="ml backend", labels=list(LABELS), ls_project_id=ls_project)
        session.add(project)
        session.flush()
        session.add(ModelVersion(project_id=project.id, name="v1", path=str(trained_model), status=ModelStatus.active))
        session.commit()

    port = free_port()
    env = {**os.environ, "NERLOOP_HOME": str(settings.home), "NERLOOP_DATABASE_URL": settings.database_url}
    server = subprocess.Popen([NERLOOP, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ml/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("nerloop serve did not come up")
            time.sleep(0.3)

        # "Connect Model": Label Studio checks /ml/health and asks /ml/setup for the model version.
        connected = browser.post("/api/ml", json={"project": ls_project, "url": f"http://127.0.0.1:{port}/ml", "title": "nerloop"})
        assert connected.status_code == 201, connected.text
        backend = connected.json()
        assert backend["state"] in ("CO", "CONNECTED"), backend

        # "Retrieve predictions" on every task: Label Studio POSTs them to /ml/predict and stores the answers.
        action = browser.post(
            "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": ls_project},
            json={"selectedItems": {"all": True, "excluded": []}},
        )
        assert action.status_code == 200, action.text
        tasks = browser.get("/api/tasks/", params={"project": ls_project, "fields": "all"}).json()["tasks"]
        by_text = {t["data"]["text"]: t for t in tasks}
        first = browser.get(f"/api/predictions/", params={"task": by_text[texts[0]]["id"]}).json()
        assert len(first) == 1 and first[0]["model_version"] == "v1"
        regions = {(r["value"]["text"], r["value"]["labels"][0]) for r in first[0]["result"]}
        assert regions == {("alice", "PER"), ("bob", "PER"), ("paris", "LOC")}
        assert 0 < first[0]["score"] <= 1
        empty = browser.get(f"/api/predictions/", params={"task": by_text[texts[1]]["id"]}).json()
        assert len(empty) == 1 and empty[0]["result"] == []  # one prediction per task, also with no entity
    finally:
        server.terminate()
        server.wait(timeout=30)
