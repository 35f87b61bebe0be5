"""The REST API (/api/v1) on a real SQLite database, with a tiny trained tagger as the active model.

The app per test (``client``), the trained model and the row helpers are shared: conftest.py, support.py.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from active_learning.corpus import read_conll, read_jsonl
from active_learning.spans import Span
from service import sync
from service.api import create_app
from service.api.deps import get_label_studio
from service.label_studio import LabelStudioClient
from service.models import Annotation, Job, ModelStatus, ModelVersion, Prediction, Project, Task, TaskState
from support import add_labelled_task, add_project, add_version, free_port, make_client, make_settings, snapshot
from tiny import toy_corpus

API = "/api/v1"


# ---- helpers ----------------------------------------------------------------------------------------


def add_labelled(client: TestClient, project_id: int, text_: str, spans: list, is_dev=False, accepted=True) -> int:
    """A labelled task with one annotation, as the sync stores them."""
    with Session(client.app.state.engine) as session:
        task = Task(project_id=project_id, text=text_, content_hash=sync.content_hash(text_), state=TaskState.labelled, is_dev=is_dev)
        session.add(task)
        session.flush()
        session.add(Annotation(task_id=task.id, spans=[list(s) for s in spans], accepted=accepted, annotator="ann@example.com"))
        session.commit()
        return task.id


def fields(response) -> list:
    return [error["field"] for error in response.json()["detail"]]


# ---- health, auth, docs ---------------------------------------------------------------------------


def test_health_answers_without_a_token(tmp_path):
    with make_client(tmp_path, api_token="s3cret") as client:
        response = client.get(f"{API}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_bearer_token_is_required_when_configured(tmp_path):
    with make_client(tmp_path, api_token="s3cret") as client:
        missing = client.get(f"{API}/projects")
        wrong = client.get(f"{API}/projects", headers={"Authorization": "Bearer nope"})
        basic = client.get(f"{API}/projects", headers={"Authorization": "Basic czNjcmV0"})
        right = client.get(f"{API}/projects", headers={"Authorization": "Bearer s3cret"})
        post = client.post(f"{API}/projects", json={"name": "x", "labels": ["PER"]})
    for response in (missing, wrong, basic, post):
        assert response.status_code == 401
        assert response.json() == {"detail": [{"field": "header.Authorization", "message": "missing or wrong bearer token"}]}
        assert response.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200


def test_no_token_needed_when_none_is_configured(client):
    assert client.get(f"{API}/projects").status_code == 200


def test_openapi_documents_every_route_and_the_error_shape(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        f"{API}/health",
        f"{API}/projects",
        f"{API}/projects/attach",
        f"{API}/projects/{{project_id}}",
        f"{API}/projects/{{project_id}}/report",
        f"{API}/projects/{{project_id}}/tasks",
        f"{API}/projects/{{project_id}}/tasks/upload",
        f"{API}/projects/{{project_id}}/annotations",
        f"{API}/projects/{{project_id}}/annotations/export",
        f"{API}/projects/{{project_id}}/models",
        f"{API}/projects/{{project_id}}/models/{{version_id}}/promote",
        f"{API}/projects/{{project_id}}/models/rollback",
        f"{API}/projects/{{project_id}}/predict",
        f"{API}/webhooks/label-studio",
        "/ml/health",
        "/ml/setup",
        "/ml/predict",
        "/ml/webhook",
    ):
        assert path in paths, path
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert paths[f"{API}/projects/{{project_id}}/predict"]["post"]["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert client.get("/docs").status_code == 200


# ---- projects -------------------------------------------------------------------------------------


def test_create_get_and_list_projects(client):
    created = client.post(f"{API}/projects", json={"name": " news ", "labels": ["PER", "LOC"]})
    assert created.status_code == 201
    project = created.json()
    assert project["name"] == "news" and project["labels"] == ["PER", "LOC"] and project["ls_project_id"] is None
    assert client.get(f"{API}/projects/{project['id']}").json() == project
    assert client.get(f"{API}/projects").json() == [project]
    assert client.get(f"{API}/projects/999").status_code == 404


def with_label_studio(client: TestClient, url: str, token: str) -> None:
    """Serve ``client``'s requests with a real Label Studio client (retrying briefly: failures are expected)."""
    client.app.dependency_overrides[get_label_studio] = lambda: LabelStudioClient(url, token, retries=1, backoff=0.1)


def test_create_project_in_label_studio_when_a_client_is_configured(client, label_studio):
    with_label_studio(client, label_studio.url, label_studio.token)
    created = client.post(f"{API}/projects", json={"name": "news", "labels": ["PER", "LOC"]}).json()
    assert created["ls_project_id"] is not None
    assert LabelStudioClient(label_studio.url, label_studio.token).read_project(created["ls_project_id"]).labels == ["PER", "LOC"]
    local = client.post(f"{API}/projects", json={"name": "local", "labels": ["PER"], "create_in_label_studio": False}).json()
    assert local["ls_project_id"] is None


def test_attach_reads_labels_and_tag_names_from_label_studio(client, label_studio):
    config = """<View><Labels name="ner" toName="doc"><Label value="PER"/><Label value="LOC"/><Label value="ORG"/></Labels>
    <Text name="doc" value="$body"/></View>"""
    ls_id = LabelStudioClient(label_studio.url, label_studio.token).sdk.projects.create(title="attach me", label_config=config).id
    with_label_studio(client, label_studio.url, label_studio.token)
    attached = client.post(f"{API}/projects/attach", json={"ls_project_id": ls_id})
    assert attached.status_code == 201
    body = attached.json()
    assert (body["ls_project_id"], body["labels"], body["from_name"], body["to_name"], body["text_key"]) == (
        ls_id, ["PER", "LOC", "ORG"], "ner", "doc", "body"
    )
    again = client.post(f"{API}/projects/attach", json={"ls_project_id": ls_id, "name": "twice"})
    assert again.status_code == 409 and fields(again) == ["body.ls_project_id"]


def test_attach_without_label_studio_configured_is_a_conflict(client):
    response = client.post(f"{API}/projects/attach", json={"ls_project_id": 7})
    assert response.status_code == 409
    assert "NERLOOP_LABEL_STUDIO_API_KEY" in response.json()["detail"][0]["message"]


def test_label_studio_failures_are_bad_gateway_and_store_nothing(client, label_studio):
    before = snapshot(client)
    with_label_studio(client, f"http://127.0.0.1:{free_port()}", label_studio.token)  # nothing listens there
    refused = client.post(f"{API}/projects", json={"name": "news", "labels": ["PER"]})
    with_label_studio(client, label_studio.url, label_studio.token)
    missing = client.post(f"{API}/projects/attach", json={"ls_project_id": 987654})  # no such Label Studio project
    for response in (refused, missing):
        assert response.status_code == 502
        assert response.json()["detail"][0]["message"].startswith("Label Studio: ")
    assert snapshot(client) == before


# ---- tasks ----------------------------------------------------------------------------------------


def test_import_json_tasks_deduplicates_by_content(client):
    project = add_project(client)
    body = {"tasks": [
        {"text": "alice met bob"}, {"text": "alice met bob"}, {"text": "bob went to oslo", "spans": [[12, 16, "LOC"]], "meta": {"id": 3}},
    ]}
    first = client.post(f"{API}/projects/{project.id}/tasks", json=body)
    assert first.status_code == 201
    assert first.json() == {"created": 2, "duplicates": 1}
    second = client.post(f"{API}/projects/{project.id}/tasks", json={"tasks": [{"text": "alice met bob"}, {"text": "new text"}]})
    assert second.json() == {"created": 1, "duplicates": 1}
    with Session(client.app.state.engine) as session:
        texts = sorted(t.text for t in session.exec(select(Task).where(Task.project_id == project.id)))
    assert texts == ["alice met bob", "bob went to oslo", "new text"]


def test_spans_may_be_objects_or_triples(client):
    project = add_project(client)
    body = {"tasks": [{"text": "alice in paris", "spans": [{"start": 0, "end": 5, "label": "PER"}, [9, 14, "LOC"]]}]}
    assert client.post(f"{API}/projects/{project.id}/tasks", json=body).json() == {"created": 1, "duplicates": 0}


@pytest.mark.parametrize(
    "filename, content, created",
    [
        ("tasks.jsonl", b'{"text": "alice met bob", "id": 1}\n\n{"text": "carol in lima", "spans": [[9, 13, "LOC"]]}\n', 2),
        ("tasks.csv", b"id,text\n1,alice met bob\n2,\"carol, from lima\"\n3,alice met bob\n", 2),
        ("tasks.tsv.conll", b"alice B-PER\nmet O\nbob B-PER\n\ncarol B-PER\nin O\nlima B-LOC\n", 2),
        ("semicolons.csv", "text;lang\nzoë in quito;en\n東京 in tokyo;ja\n".encode(), 2),
    ],
)
def test_upload_task_files(client, filename, content, created):
    project = add_project(client)
    response = client.post(f"{API}/projects/{project.id}/tasks/upload", files={"file": (filename, content)})
    assert response.status_code == 201, response.json()
    assert response.json()["created"] == created


def test_upload_format_may_be_named_explicitly(client):
    project = add_project(client)
    response = client.post(
        f"{API}/projects/{project.id}/tasks/upload", files={"file": ("data.bin", b"text\nhello\n")}, data={"format": "csv"}
    )
    assert response.json() == {"created": 1, "duplicates": 0}


# ---- annotations ----------------------------------------------------------------------------------


def test_list_and_export_accepted_annotations(client, tmp_path):
    project = add_project(client)
    add_labelled(client, project.id, "alice met bob in paris", [(0, 5, "PER"), (10, 13, "PER"), (17, 22, "LOC")])
    add_labelled(client, project.id, "carol went to oslo", [(0, 5, "PER"), (14, 18, "LOC")], is_dev=True)
    add_labelled(client, project.id, "a draft nobody accepted", [], accepted=False)

    listed = client.get(f"{API}/projects/{project.id}/annotations").json()
    assert [a["text"] for a in listed] == ["alice met bob in paris", "carol went to oslo", "a draft nobody accepted"]
    assert listed[0]["spans"] == [[0, 5, "PER"], [10, 13, "PER"], [17, 22, "LOC"]]
    accepted = client.get(f"{API}/projects/{project.id}/annotations", params={"accepted_only": True, "limit": 1, "offset": 1}).json()
    assert [a["text"] for a in accepted] == ["carol went to oslo"]

    expected = {
        "alice met bob in paris": [Span(0, 5, "PER"), Span(10, 13, "PER"), Span(17, 22, "LOC")],
        "carol went to oslo": [Span(0, 5, "PER"), Span(14, 18, "LOC")],
    }
    for format, reader in (("jsonl", read_jsonl), ("conll", read_conll)):
        response = client.get(f"{API}/projects/{project.id}/annotations/export", params={"format": format})
        assert response.status_code == 200
        assert f'filename="project-{project.id}.{format}"' in response.headers["content-disposition"]
        path = tmp_path / f"export.{format}"
        path.write_bytes(response.content)
        assert {e.text: e.spans for e in reader(path)} == expected


# ---- model versions and prediction ----------------------------------------------------------------


def test_promote_keeps_exactly_one_active_and_rollback_restores_the_previous(client, trained_model):
    project = add_project(client)
    v1 = add_version(client, project.id, "v1", trained_model, dev_f1=0.8)
    v2 = add_version(client, project.id, "v2", trained_model, dev_f1=0.9)
    v3 = add_version(client, project.id, "v3", trained_model, dev_f1=0.85)

    def statuses():
        return {v["name"]: v["status"] for v in client.get(f"{API}/projects/{project.id}/models").json()}

    for version_id in (v1, v2, v3):
        assert client.post(f"{API}/projects/{project.id}/models/{version_id}/promote").json()["status"] == "active"
    assert statuses() == {"v1": "retired", "v2": "retired", "v3": "active"}
    assert client.post(f"{API}/projects/{project.id}/models/{v3}/promote").json()["status"] == "active"  # idempotent
    assert client.post(f"{API}/projects/{project.id}/models/rollback").json()["name"] == "v2"
    assert statuses() == {"v1": "retired", "v2": "active", "v3": "retired"}
    assert client.post(f"{API}/projects/{project.id}/models/rollback").json()["name"] == "v1"
    assert statuses() == {"v1": "active", "v2": "retired", "v3": "retired"}


def test_promote_refuses_unusable_versions_and_other_projects(client, trained_model, tmp_path):
    project = add_project(client)
    other = add_project(client, name="other")
    unsaved = add_version(client, project.id, "unsaved", "")  # its model directory was never written
    missing = add_version(client, project.id, "gone", tmp_path / "no-such-dir")
    foreign = add_version(client, other.id, "theirs", trained_model)
    assert client.post(f"{API}/projects/{project.id}/models/{unsaved}/promote").status_code == 409
    assert client.post(f"{API}/projects/{project.id}/models/{missing}/promote").status_code == 409
    response = client.post(f"{API}/projects/{project.id}/models/{foreign}/promote")
    assert response.status_code == 404 and fields(response) == ["path.version_id"]
    rollback = client.post(f"{API}/projects/{project.id}/models/rollback")
    assert rollback.status_code == 409


def test_predict_with_the_active_model(client, trained_model):
    project = add_project(client)
    assert client.post(f"{API}/projects/{project.id}/predict", json={"texts": ["alice"]}).status_code == 409
    add_version(client, project.id, "v1", trained_model, status=ModelStatus.active)
    texts = ["yesterday alice met bob in paris .", "we went home ."]
    response = client.post(f"{API}/projects/{project.id}/predict", json={"texts": texts})
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == "v1" and len(body["predictions"]) == 2
    found = [(e["text"], e["label"]) for e in body["predictions"][0]["entities"]]
    assert found == [("alice", "PER"), ("bob", "PER"), ("paris", "LOC")]
    first = body["predictions"][0]["entities"][0]
    assert texts[0][first["start"] : first["end"]] == "alice" and 0 < first["score"] <= 1
    assert body["predictions"][1]["entities"] == []
    assert all(0 < p["score"] <= 1 for p in body["predictions"])


def test_report_counts_labels_tasks_and_versions(client, trained_model):
    project = add_project(client)
    add_labelled(client, project.id, "alice met bob in paris", [(0, 5, "PER"), (10, 13, "PER"), (17, 22, "LOC")])
    add_labelled(client, project.id, "carol went to oslo", [(0, 5, "PER"), (14, 18, "LOC")], is_dev=True)
    client.post(f"{API}/projects/{project.id}/tasks", json={"tasks": [{"text": "unlabelled one"}, {"text": "unlabelled two"}]})
    add_version(client, project.id, "v1", trained_model, status=ModelStatus.retired, dev_f1=0.5)
    add_version(client, project.id, "v2", trained_model, status=ModelStatus.active, dev_f1=0.75)
    report = client.get(f"{API}/projects/{project.id}/report").json()
    assert report["tasks"] == {"total": 4, "pool": 2, "labelled": 2, "dev": 1}
    assert report["labels"] == {"LOC": 2, "PER": 3}
    assert report["active_model"] == "v2"
    assert [(v["name"], v["status"], v["dev_f1"]) for v in report["model_versions"]] == [("v1", "retired", 0.5), ("v2", "active", 0.75)]
    assert report["stopping"] is None  # no training has computed the stopping signal


def test_report_shows_the_stopping_signal_of_the_newest_version_that_has_one(client, trained_model):
    from active_learning.stopping import stop_signal

    project = add_project(client)
    add_version(client, project.id, "v1", trained_model, status=ModelStatus.active, dev_f1=0.74)
    add_version(client, project.id, "v2", trained_model, dev_f1=0.75)
    signal = stop_signal([None, 0.995, 0.996, 0.999], [1000, 2000, 3000, 4000], [0.4, 0.5, 0.74, 0.75])
    with Session(client.app.state.engine) as session:
        version = session.exec(select(ModelVersion).where(ModelVersion.project_id == project.id, ModelVersion.name == "v1")).one()
        version.metrics = {"stopping": {**signal.as_dict(), "stop_set_size": 40, "advice": signal.advice}}
        session.add(version)
        session.commit()
    stopping = client.get(f"{API}/projects/{project.id}/report").json()["stopping"]
    assert (stopping["version"], stopping["verdict"], stopping["kappa"], stopping["stable_versions"]) == ("v1", "you can stop", 0.999, 3)
    assert stopping["stop_set_size"] == 40 and stopping["advice"].startswith("you can stop: kappa 0.9990")


# ---- Label Studio webhook into our API ------------------------------------------------------------


def test_label_studio_webhook_checks_the_secret_and_works_after_answering(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(sync, "handle_webhook", lambda session, project, payload: seen.append((project.id, payload["action"])) or {})
    with make_client(tmp_path, webhook_secret="hush", api_token="s3cret") as client:
        project = add_project(client, ls_project_id=5)
        annotation = {"id": 1, "result": [], "updated_at": "2026-01-01T00:00:00Z"}  # what processing needs (test_hardening)
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 5}, "annotation": annotation, "task": {"id": 9, "data": {"text": "a b"}}}
        url = f"{API}/webhooks/label-studio"
        assert client.post(url, json=event).status_code == 401
        wrong = client.post(url, json=event, headers={"X-Nerloop-Secret": "loud"})
        assert wrong.status_code == 401 and fields(wrong) == ["header.X-Nerloop-Secret"]
        assert seen == []
        accepted = client.post(url, json=event, headers={"X-Nerloop-Secret": "hush"})  # no bearer token needed
        assert accepted.status_code == 202 and accepted.json() == {"status": "accepted", "action": "ANNOTATION_CREATED"}
        assert seen == [(project.id, "ANNOTATION_CREATED")]
        unknown = client.post(url, json={**event, "project": {"id": 6}}, headers={"X-Nerloop-Secret": "hush"})
        assert unknown.status_code == 404 and fields(unknown) == ["body.project.id"]
        add_labelled_task(client, project.id)  # something to train on: a training is refused without
        training = client.post(url, json={"action": "START_TRAINING", "project": {"id": 5}}, headers={"X-Nerloop-Secret": "hush"})
        assert training.status_code == 202
        with Session(client.app.state.engine) as session:
            assert [(j.kind, j.status) for j in session.exec(select(Job))] == [("train", "queued")]


# ---- bad input: always 4xx, naming the field, and nothing stored ----------------------------------


def test_malformed_requests_get_4xx_naming_the_field_and_change_nothing(client, trained_model):
    project = add_project(client, ls_project_id=5)
    add_version(client, project.id, "v1", trained_model, status=ModelStatus.active)
    add_labelled(client, project.id, "alice met bob", [(0, 5, "PER")])
    p = f"{API}/projects/{project.id}"
    huge = 10**30
    json_posts = [
        # projects
        (f"{API}/projects", {}, "body.name"),
        (f"{API}/projects", {"name": "x"}, "body.labels"),
        (f"{API}/projects", {"name": "x", "labels": []}, "body.labels"),
        (f"{API}/projects", {"name": "x", "labels": "PER"}, "body.labels"),
        (f"{API}/projects", {"name": "x", "labels": ["PER", "PER"]}, "body.labels"),
        (f"{API}/projects", {"name": "x", "labels": ["B PER"]}, "body.labels[0]"),
        (f"{API}/projects", {"name": "x", "labels": [""]}, "body.labels[0]"),
        (f"{API}/projects", {"name": "x", "labels": [7]}, "body.labels[0]"),
        (f"{API}/projects", {"name": "", "labels": ["PER"]}, "body.name"),
        (f"{API}/projects", {"name": ["x"], "labels": ["PER"]}, "body.name"),
        (f"{API}/projects", {"name": "x\u0000y", "labels": ["PER"]}, "body.name"),
        (f"{API}/projects", {"name": "x", "labels": ["PER"], "colour": "red"}, "body.colour"),
        (f"{API}/projects", {"name": "x", "labels": ["PER"], "create_in_label_studio": "maybe"}, "body.create_in_label_studio"),
        (f"{API}/projects", [], "body"),
        (f"{API}/projects", "name", "body"),
        (f"{API}/projects/attach", {"ls_project_id": huge}, "body.ls_project_id"),
        (f"{API}/projects/attach", {"ls_project_id": -1}, "body.ls_project_id"),
        (f"{API}/projects/attach", {"ls_project_id": "7"}, "body.ls_project_id"),
        (f"{API}/projects/attach", {"ls_project_id": 7.5}, "body.ls_project_id"),
        (f"{API}/projects/attach", {"ls_project_id": True}, "body.ls_project_id"),
        # tasks
        (f"{p}/tasks", {}, "body.tasks"),
        (f"{p}/tasks", {"tasks": []}, "body.tasks"),
        (f"{p}/tasks", {"tasks": "alice"}, "body.tasks"),
        (f"{p}/tasks", {"tasks": [{"text": ""}]}, "body.tasks[0].text"),
        (f"{p}/tasks", {"tasks": [{"text": " \n\t "}]}, "body.tasks[0].text"),
        (f"{p}/tasks", {"tasks": [{"text": 12}]}, "body.tasks[0].text"),
        (f"{p}/tasks", {"tasks": [{"text": None}]}, "body.tasks[0].text"),
        (f"{p}/tasks", {"tasks": [{"txt": "alice"}]}, "body.tasks[0].text"),
        (f"{p}/tasks", {"tasks": [{"text": "a" * 100_001}]}, "body.tasks[0].text"),
        (f"{p}/tasks", {"tasks": [{"text": "ok"}, {"text": "nul\u0000"}]}, "body.tasks[1].text"),
        (f"{p}/tasks", {"tasks": [{"text": "alice in paris", "spans": [[0, 5, "PER"], [3, 8, "LOC"]]}]}, "body.tasks[0].spans"),
        (f"{p}/tasks", {"tasks": [{"text": "alice in paris", "spans": [[0, 5, "ORG"]]}]}, "body.tasks[0].spans[0]"),
        (f"{p}/tasks", {"tasks": [{"text": "alice", "spans": [[0, 50, "PER"]]}]}, "body.tasks[0].spans[0]"),
        (f"{p}/tasks", {"tasks": [{"text": "alice", "spans": [[3, 3, "PER"]]}]}, "body.tasks[0].spans[0]"),
        (f"{p}/tasks", {"tasks": [{"text": "alice", "spans": [[4, 2, "PER"]]}]}, "body.tasks[0].spans[0]"),
        (f"{p}/tasks", {"tasks": [{"text": "alice", "spans": [[-1, 2, "PER"]]}]}, "body.tasks[0].spans[0].start"),
        (f"{p}/tasks", {"tasks": [{"text": "alice", "spans": [[0, huge, "PER"]]}]}, "body.tasks[0].spans[0].end"),
        (f"{p}/tasks", {"tasks": [{"text": "alice", "spans": [["0", 5, "PER"]]}]}, "body.tasks[0].spans[0].start"),
        (f"{p}/tasks", {"tasks": [{"text": "alice", "spans": [[0.0, 5, "PER"]]}]}, "body.tasks[0].spans[0].start"),
        (f"{p}/tasks", {"tasks": [{"text": "alice", "spans": [[0, 5]]}]}, "body.tasks[0].spans[0]"),
        (f"{p}/tasks", {"tasks": [{"text": "alice", "spans": [{"start": 0, "end": 5}]}]}, "body.tasks[0].spans[0].label"),
        (f"{p}/tasks", {"tasks": [{"text": "alice", "spans": "0-5 PER"}]}, "body.tasks[0].spans"),
        (f"{p}/tasks", {"tasks": [{"text": "alice", "meta": ["not", "a", "dict"]}]}, "body.tasks[0].meta"),
        # prediction
        (f"{p}/predict", {}, "body.texts"),
        (f"{p}/predict", {"texts": []}, "body.texts"),
        (f"{p}/predict", {"texts": "alice"}, "body.texts"),
        (f"{p}/predict", {"texts": [1]}, "body.texts[0]"),
        (f"{p}/predict", {"texts": ["ok", ""]}, "body.texts[1]"),
        (f"{p}/predict", {"texts": ["ok"] * 257}, "body.texts"),
        (f"{p}/predict", {"texts": [None]}, "body.texts[0]"),
        (f"{p}/predict", {"texts": ["ok"], "extra": 1}, "body.extra"),
        # ids
        (f"{API}/projects/{huge}/predict", {"texts": ["ok"]}, "path.project_id"),
        (f"{API}/projects/0/predict", {"texts": ["ok"]}, "path.project_id"),
        (f"{API}/projects/abc/predict", {"texts": ["ok"]}, "path.project_id"),
        (f"{API}/projects/999/predict", {"texts": ["ok"]}, "path.project_id"),
        (f"{API}/projects/999/tasks", {"tasks": [{"text": "ok"}]}, "path.project_id"),
        (f"{p}/models/{huge}/promote", None, "path.version_id"),
        (f"{p}/models/999/promote", None, "path.version_id"),
        (f"{p}/models/-3/promote", None, "path.version_id"),
        # webhook
        (f"{API}/webhooks/label-studio", {"project": {"id": 5}}, "body.action"),
        (f"{API}/webhooks/label-studio", {"action": "ANNOTATION_CREATED"}, "body.project"),
        (f"{API}/webhooks/label-studio", {"action": "ANNOTATION_CREATED", "project": {"id": huge}}, "body.project.id"),
        (f"{API}/webhooks/label-studio", {"action": "ANNOTATION_CREATED", "project": 5}, "body.project"),
        (f"{API}/webhooks/label-studio", {"action": 3, "project": {"id": 5}}, "body.action"),
    ]
    raw_posts = [
        (f"{API}/projects", b'{"name": "x", "labels": ["PER"]', "body"),
        (f"{API}/projects", b"\xff\xfe{}", "body"),
        (f"{API}/projects", b"", "body"),
        (f"{API}/projects", b"[" * 50_000 + b"]" * 50_000, None),
        (f"{p}/predict", b'{"texts": ["ok", "\\ud800"]}', "body.texts[1]"),
        (f"{p}/predict", b'{"texts": NaN}', "body.texts"),
        (f"{p}/tasks", b'{"tasks": [{"text": "alice", "spans": [[0, 1e400, "PER"]]}]}', "body.tasks[0].spans[0].end"),
    ]
    uploads = [
        ("latin1.csv", "text\ncafé\n".encode("latin-1"), None),
        ("utf16.jsonl", '{"text": "x"}\n'.encode("utf-16"), None),
        ("tasks.jsonl", b'{"text": "alice"\n', None),
        ("tasks.jsonl", b'["alice"]\n', None),
        ("tasks.jsonl", b'{"text": ""}\n', None),
        ("tasks.jsonl", b'{"text": "alice in paris", "spans": [[0, 5, "PER"], [2, 9, "LOC"]]}\n', None),
        ("tasks.jsonl", b'{"text": "alice", "spans": [[0, 5, "ORG"]]}\n', None),
        ("tasks.jsonl", b'{"text": "nul \\u0000 here"}\n', None),
        ("tasks.jsonl", b'{"text": "lone \\ud800 surrogate"}\n', None),
        ("tasks.jsonl", b"", None),
        ("tasks.jsonl", b"\n\n", None),
        ("tasks.csv", b"id,body\n1,alice\n", None),
        ("tasks.csv", b"text\n\n", None),
        ("tasks.csv", b"text,id\n   ,1\n", None),
        ("tasks.conll", b"alice B-PER\nbob\n", None),
        ("tasks.conll", b"alice X-PER\n", None),
        ("tasks.conll", b"alice B-ORG\n", None),
        ("tasks.conll", b"\x00\x01\x02\x03", None),
        ("tasks.pdf", b"%PDF-1.4", None),
        ("tasks", b"text\nalice\n", None),
        ("tasks.csv", b"text\nalice\n", {"format": "yaml"}),
    ]
    before = snapshot(client)
    for url, body, field in json_posts:
        response = client.post(url, json=body)
        assert 400 <= response.status_code < 500, (url, body, response.status_code, response.text)
        assert field in fields(response), (url, body, response.json())
    for url, content, field in raw_posts:
        response = client.post(url, content=content, headers={"Content-Type": "application/json"})
        assert 400 <= response.status_code < 500, (url, content[:40], response.status_code, response.text)
        if field:
            assert field in fields(response), (url, content[:40], response.json())
    for filename, content, data in uploads:
        response = client.post(f"{p}/tasks/upload", files={"file": (filename, content)}, data=data or {})
        assert 400 <= response.status_code < 500, (filename, content, response.status_code, response.text)
        assert fields(response) == ["body.format" if data else "file"], (filename, response.json())
    not_multipart = client.post(f"{p}/tasks/upload", json={"file": "alice"})
    assert not_multipart.status_code == 422 and "body.file" in fields(not_multipart)
    for url, params, field in [
        (f"{p}/annotations/export", {"format": "xml"}, "query.format"),
        (f"{p}/annotations", {"limit": 0}, "query.limit"),
        (f"{p}/annotations", {"limit": "many"}, "query.limit"),
        (f"{p}/annotations", {"offset": 10**30}, "query.offset"),
        (f"{p}/annotations", {"accepted_only": "perhaps"}, "query.accepted_only"),
        (f"{API}/projects/{huge}", {}, "path.project_id"),
        (f"{API}/projects/999/report", {}, "path.project_id"),
        (f"{API}/projects/999/annotations/export", {}, "path.project_id"),
    ]:
        response = client.get(url, params=params)
        assert 400 <= response.status_code < 500, (url, params, response.status_code, response.text)
        assert field in fields(response), (url, params, response.json())
    unknown = client.get(f"{API}/no-such-thing")
    assert unknown.status_code == 404 and unknown.json() == {"detail": [{"field": None, "message": "Not Found"}]}
    assert client.delete(f"{API}/projects").status_code == 405
    assert snapshot(client) == before


# ---- the command line -----------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """The CLI reads settings from the environment: point them at a fresh home and database."""
    from service.cli import app
    from service.settings import get_settings

    monkeypatch.setenv("NERLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NERLOOP_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.delenv("NERLOOP_LABEL_STUDIO_API_KEY", raising=False)
    get_settings.cache_clear()
    with TestClient(create_app(get_settings())) as client:
        yield app, client
    get_settings.cache_clear()


def test_cli_configure_turns_self_training_on(cli_env):
    app, client = cli_env
    project = add_project(client)
    done = CliRunner().invoke(app, ["configure", "--project", str(project.id), "--self-training", "--self-training-threshold", "0.97"])
    assert done.exit_code == 0, done.output
    assert "self_training: True" in done.output and "self_training_threshold: 0.97" in done.output
    body = client.get(f"{API}/projects/{project.id}").json()
    assert (body["self_training"], body["self_training_threshold"], body["self_training_weight"]) == (True, 0.97, 0.5)


def test_cli_import_and_export(cli_env, tmp_path):
    app, client = cli_env
    project = add_project(client)
    add_labelled(client, project.id, "alice met bob", [(0, 5, "PER"), (10, 13, "PER")])
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps({"text": t}) for t in ["carol in lima", "alice met bob", "erin went home"]) + "\n")
    runner = CliRunner()
    imported = runner.invoke(app, ["import", str(tasks), "--project", str(project.id)])
    assert imported.exit_code == 0, imported.output
    assert "imported 2 tasks" in imported.output and "1 duplicates" in imported.output
    out = tmp_path / "out" / "labelled.conll"
    exported = runner.invoke(app, ["export", "--project", str(project.id), "--format", "conll", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert [(e.text, e.spans) for e in read_conll(out)] == [("alice met bob", [Span(0, 5, "PER"), Span(10, 13, "PER")])]


@pytest.mark.parametrize(
    "args, content, message",
    [
        (["import", "{file}", "--project", "{project}"], b'{"text": "alice", "spans": [[0, 5, "ORG"]]}\n', "unknown label 'ORG'"),
        (["import", "{file}", "--project", "{project}"], b"\xff\xfe", "not UTF-8"),
        (["import", "{missing}", "--project", "{project}"], None, "no such file"),
        (["import", "{file}", "--project", "999"], b'{"text": "a"}\n', "no such project"),
        (["import", "{file}", "--project", "{project}", "--format", "xml"], b"", "--format"),
        (["export", "--project", "{project}", "--format", "xml", "--out", "{file}"], None, "--format"),
        (["configure", "--project", "{project}", "--self-training-weight", "2"], None, "--self-training-weight"),
    ],
)
def test_cli_reports_bad_input_clearly(cli_env, tmp_path, args, content, message):
    app, client = cli_env
    project = add_project(client)
    file = tmp_path / "tasks.jsonl"
    if content is not None:
        file.write_bytes(content)
    filled = [a.format(file=file, project=project.id, missing=tmp_path / "missing.jsonl") for a in args]
    result = CliRunner().invoke(app, filled)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())  # the console wraps long lines


def test_retraining_is_due_after_every_n_labelled_tasks(tmp_path):
    """With retrain_every=3, a training is queued once 3 new non-dev tasks are labelled since the
    newest model version was trained, and only once while it waits (coalesced)."""
    from service.job_queue import retrain_if_due

    settings = make_settings(tmp_path, dev_share=0.0)
    with make_client(tmp_path, dev_share=0.0) as client:
        project = add_project(client, retrain_every=3)
        with Session(client.app.state.engine) as session:
            project = session.get(Project, project.id)
            sync.import_examples(session, project, toy_corpus(2, seed=1), dev_share=0.0)
            session.commit()
            assert retrain_if_due(session, project, settings) is None  # 2 < 3
            sync.import_examples(session, project, toy_corpus(3, seed=2)[2:], dev_share=0.0)
            session.commit()
            first = retrain_if_due(session, project, settings)
            assert first is not None and first.kind == "train"
            assert retrain_if_due(session, project, settings).id == first.id  # still queued: the same job
            session.add(ModelVersion(project_id=project.id, name="v1", train_size=3))
            session.commit()
            session.delete(first)
            session.commit()
            assert retrain_if_due(session, project, settings) is None  # v1 was trained on all 3


# ---- project settings and augmentation requests ---------------------------------------------------


def test_project_settings_change_and_bad_values_name_their_field(client):
    project = add_project(client)
    changed = client.patch(f"{API}/projects/{project.id}", json={"strategy": "bald", "augment": True, "augment_ratio": 1.5})
    assert changed.status_code == 200
    body = changed.json()
    assert (body["strategy"], body["augment"], body["augment_ratio"], body["retrain_every"]) == ("bald", True, 1.5, 20)
    assert (body["self_training"], body["self_training_threshold"], body["self_training_weight"]) == (False, 0.99, 0.5)  # off by default
    body = client.patch(f"{API}/projects/{project.id}", json={"self_training": True, "self_training_threshold": 0.95}).json()
    assert (body["self_training"], body["self_training_threshold"], body["self_training_weight"]) == (True, 0.95, 0.5)
    before = snapshot(client)
    for payload, field in (
        ({"strategy": "smartest"}, "body.strategy"),
        ({"retrain_every": 0}, "body.retrain_every"),
        ({"augment_ratio": -1}, "body.augment_ratio"),
        ({"name": "renamed"}, "body.name"),
        ({"self_training_threshold": 0}, "body.self_training_threshold"),
        ({"self_training_weight": 1.5}, "body.self_training_weight"),
    ):
        response = client.patch(f"{API}/projects/{project.id}", json=payload)
        assert response.status_code == 422 and fields(response) == [field], response.json()
    assert snapshot(client) == before


def test_augmentation_requests_are_checked_before_anything_is_queued(client):
    project = add_project(client)
    before = snapshot(client)
    for payload, field in (
        ({"method": "paraphrase"}, "body.method"),
        ({"method": "shuffle", "n": 0}, "body.n"),
        ({"method": "shuffle", "params": {"p": 3}}, "body.params.p"),
        ({"method": "synonym", "params": {"colour": 1}}, "body.params.colour"),
        ({"n": 2}, "body.method"),
    ):
        response = client.post(f"{API}/projects/{project.id}/augment", json=payload)
        assert response.status_code == 422 and fields(response) == [field], response.json()
    assert snapshot(client) == before
    queued = client.post(f"{API}/projects/{project.id}/augment", json={"method": "token_replacement", "n": 2, "params": {"p": 0.5}})
    assert queued.status_code == 202
    assert (queued.json()["kind"], queued.json()["status"]) == ("augment", "queued")


# ---- labelling without Label Studio ---------------------------------------------------------------


def test_next_tasks_follow_the_active_versions_scores_and_annotations_queue_a_retraining(client):
    project = add_project(client, retrain_every=2)
    texts = [f"alice met bob in paris on day {i} ." for i in range(5)]
    client.post(f"{API}/projects/{project.id}/tasks", json={"tasks": [{"text": t} for t in texts]})
    cold = client.get(f"{API}/projects/{project.id}/tasks/next", params={"limit": 5}).json()
    assert [t["text"] for t in cold] == sorted(texts, key=lambda t: sync.content_hash(t)[32:])  # unscored: a fixed shuffle
    assert all(t["score"] is None and t["predictions"] == [] for t in cold)

    version = add_version(client, project.id, "v1", "unused", status=ModelStatus.active)
    scores = {cold[0]["id"]: 0.9, cold[1]["id"]: 0.2, cold[2]["id"]: 0.5}
    with Session(client.app.state.engine) as session:
        for task_id, score in scores.items():
            session.add(Prediction(task_id=task_id, model_version_id=version, spans=[[0, 5, "PER", 0.8]], score=score))
        session.get(ModelVersion, version).train_size = 0  # trained on nothing: every new label counts
        session.commit()
    ranked = client.get(f"{API}/projects/{project.id}/tasks/next", params={"limit": 5}).json()
    assert [t["id"] for t in ranked[:3]] == [cold[1]["id"], cold[2]["id"], cold[0]["id"]]  # least confident first
    assert ranked[0]["model_version"] == "v1" and ranked[0]["predictions"][0]["text"] == "alice"
    assert {t["id"] for t in ranked[3:]} == {cold[3]["id"], cold[4]["id"]} and ranked[3]["score"] is None

    before = snapshot(client)
    first = ranked[0]
    for payload, field in (
        ({"spans": [[0, 5, "GPE"]]}, "body.spans[0]"),
        ({"spans": [[0, 500, "PER"]]}, "body.spans[0]"),
        ({"spans": [[0, 5, "PER"], [2, 8, "PER"]]}, "body.spans"),
        ({"spans": [], "colour": "red"}, "body.colour"),
    ):
        response = client.post(f"{API}/projects/{project.id}/tasks/{first['id']}/annotations", json=payload)
        assert response.status_code == 422 and fields(response) == [field], response.json()
    assert client.post(f"{API}/projects/{project.id}/tasks/99999/annotations", json={"spans": []}).status_code == 404
    assert snapshot(client) == before

    annotation = {"spans": [[0, 5, "PER"], [10, 13, "PER"]], "annotator": "demo"}
    made = client.post(f"{API}/projects/{project.id}/tasks/{first['id']}/annotations", json=annotation)
    assert made.status_code == 201 and made.json()["accepted"] and made.json()["spans"] == [[0, 5, "PER"], [10, 13, "PER"]]
    assert first["id"] not in [t["id"] for t in client.get(f"{API}/projects/{project.id}/tasks/next", params={"limit": 5}).json()]
    assert client.get(f"{API}/projects/{project.id}/jobs").json() == []  # 1 of retrain_every=2 (if not a dev task)
    for task in ranked[1:4]:
        client.post(f"{API}/projects/{project.id}/tasks/{task['id']}/annotations", json={"spans": []})
    with Session(client.app.state.engine) as session:
        training = select(Task).where(Task.project_id == project.id, Task.state == TaskState.labelled, Task.is_dev.is_(False))
        labelled = session.exec(training).all()
    trainings = [j for j in client.get(f"{API}/projects/{project.id}/jobs").json() if j["kind"] == "train"]
    assert len(labelled) >= 2  # dev tasks are hash-chosen: 4 labelled texts leave at least 2 for training here
    assert len(trainings) == 1 and trainings[0]["status"] == "queued"
