"""Label Studio itself calls nerloop's ML backend: "Connect Model", then predictions for its tasks."""

import os

import httpx
from sqlmodel import Session

from service.db import get_engine, init_db
from service.models import ModelStatus, ModelVersion, Project
from support import make_settings, nerloop_serve
from tiny import LABELS


def test_label_studio_connects_and_shows_nerloop_predictions(label_studio, trained_model, tmp_path):
    browser = httpx.Client(base_url=label_studio.url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=120)
    labels = "".join(f'<Label value="{label}"/>' for label in LABELS)
    config = f'<View><Labels name="label" toName="text">{labels}</Labels><Text name="text" value="$text"/></View>'
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

    env = {**os.environ, "NERLOOP_HOME": str(settings.home), "NERLOOP_DATABASE_URL": settings.database_url}
    with nerloop_serve(env, tmp_path / "serve.log", insecure=True) as base:
        # "Connect Model": Label Studio checks /ml/health and asks /ml/setup for the model version.
        connected = browser.post("/api/ml", json={"project": ls_project, "url": f"{base}/ml", "title": "nerloop"})
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
        first = browser.get("/api/predictions/", params={"task": by_text[texts[0]]["id"]}).json()
        assert len(first) == 1 and first[0]["model_version"] == "v1"
        regions = {(r["value"]["text"], r["value"]["labels"][0]) for r in first[0]["result"]}
        assert regions == {("alice", "PER"), ("bob", "PER"), ("paris", "LOC")}
        assert 0 < first[0]["score"] <= 1
        empty = browser.get("/api/predictions/", params={"task": by_text[texts[1]]["id"]}).json()
        assert len(empty) == 1 and empty[0]["result"] == []  # one prediction per task, also with no entity
