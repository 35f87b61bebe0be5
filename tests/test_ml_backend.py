"""The Label Studio ML-backend protocol under /ml, the predictor cache, and a real `nerloop serve`."""

from __future__ import annotations

import base64
import os
import shutil

import httpx
import numpy as np
import pytest
from sqlmodel import Session, select

from active_learning.strategies import make_strategy
from active_learning.tagger import TaggedText
from service import sync
from service.api.ml_backend import label_studio_project_id
from service.models import Job, ModelStatus
from service.predictor import Predictor, samples_for, task_confidence, task_scores
from support import add_labelled_task, add_project, add_version, make_client, make_settings, nerloop_serve, snapshot

LABEL_CONFIG = (
    '<View><Labels name="ner" toName="doc"><Label value="PER"/><Label value="LOC"/></Labels><Text name="doc" value="$body"/></View>'
)


@pytest.fixture
def served(client, trained_model):
    """A project attached to Label Studio project 12 with custom tag names and an active model."""
    project = add_project(client, ls_project_id=12, from_name="ner", to_name="doc", text_key="body")
    add_version(client, project.id, "v1", trained_model, status=ModelStatus.active)
    return client, project


def auth(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# ---- health and setup -----------------------------------------------------------------------------


def test_health(client):
    for path in ("/ml/health", "/ml/"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "UP", "model_class": "NerloopTagger"}


def test_setup_names_the_active_version(served):
    client, project = served
    body = {"project": "12.1717171717", "schema": LABEL_CONFIG, "hostname": "http://ls", "access_token": "t", "model_version": "x"}
    assert client.post("/ml/setup", json=body).json() == {"model_version": "v1"}
    assert client.post("/ml/setup", json={**body, "project": "13.1717171717"}).json() == {"model_version": "untrained"}
    assert client.post("/ml/setup", json={}).json() == {"model_version": "untrained"}


def test_setup_without_a_model_is_untrained(client):
    add_project(client, ls_project_id=12)
    assert client.post("/ml/setup", json={"project": "12.1", "schema": LABEL_CONFIG}).json() == {"model_version": "untrained"}


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("12.1717171717", 12), ("12", 12), (" 7.1", 7), ("x.1", None), ("12x", None), ("", None), (None, None),
        ("99999999999999999999.1", None), ("0.5", None),
    ],
)
def test_label_studio_project_reference(reference, expected):
    assert label_studio_project_id(reference) == expected


# ---- predict --------------------------------------------------------------------------------------


def test_predict_returns_one_result_per_task_with_regions(served):
    client, _ = served
    tasks = [
        {"id": 1, "data": {"body": "yesterday alice met bob in paris ."}},
        {"id": 2, "data": {"body": "we went home ."}},  # no entity
        {"id": 3, "data": {"text": "alice in lima"}},  # not the project's text key
        {"id": 4, "data": {"body": "   "}},
        {"id": 5},
        {"id": 6, "data": {"body": "carol went to oslo"}},
    ]
    body = {"tasks": tasks, "project": "12.1717171717", "label_config": LABEL_CONFIG, "params": {"context": None}}
    response = client.post("/ml/predict", json=body)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == len(tasks)
    assert all(r["model_version"] == "v1" for r in results)

    first = results[0]
    regions = [(r["value"]["text"], r["value"]["labels"]) for r in first["result"]]
    assert regions == [("alice", ["PER"]), ("bob", ["PER"]), ("paris", ["LOC"])]
    for region in first["result"]:
        assert (region["from_name"], region["to_name"], region["type"]) == ("ner", "doc", "labels")
        assert tasks[0]["data"]["body"][region["value"]["start"] : region["value"]["end"]] == region["value"]["text"]
        assert 0 < region["score"] <= 1
    assert 0 < first["score"] <= 1

    no_entity = results[1]
    assert no_entity["result"] == [] and 0 < no_entity["score"] <= 1
    for without_text in results[2:5]:
        assert without_text == {"result": [], "score": None, "model_version": "v1"}
    assert [r["value"]["text"] for r in results[5]["result"]] == ["carol", "oslo"]


def test_predict_untrained_and_unknown_projects_still_answer_every_task(client):
    add_project(client, ls_project_id=12)
    tasks = [{"id": i, "data": {"text": f"alice met bob {i}"}} for i in range(3)]
    for project in ("12.1717171717", 12, "404.1", None):
        response = client.post("/ml/predict", json={"tasks": tasks, "project": project, "label_config": LABEL_CONFIG})
        assert response.status_code == 200
        assert response.json() == {"results": [{"result": [], "score": None, "model_version": "untrained"}] * 3}
    assert client.post("/ml/predict", json={"tasks": []}).json() == {"results": []}


def test_predict_rejects_malformed_bodies_without_a_500(served):
    client, _ = served
    before = snapshot(client)
    for body, field in [
        ({}, "body.tasks"),
        ({"tasks": "alice"}, "body.tasks"),
        ({"tasks": ["alice"]}, "body.tasks[0]"),
        ({"tasks": [{"data": {"body": "x"}}], "project": ["12"]}, "body.project"),
        ({"tasks": [{"data": {"body": "x"}}], "project": "1" * 101}, "body.project"),
        ({"tasks": [{"data": {"body": "x"}}], "params": "fast"}, "body.params"),
        ([], "body"),
    ]:
        response = client.post("/ml/predict", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in [e["field"] for e in response.json()["detail"]], (body, response.json())
    odd = client.post(
        "/ml/predict",
        content=b'{"tasks": [{"data": {"body": "lone \\ud800"}}, {"data": {"body": 5}}], "project": "12.1"}',
        headers={"Content-Type": "application/json"},
    )
    assert odd.status_code == 200 and [r["result"] for r in odd.json()["results"]] == [[], []]
    assert snapshot(client) == before


# ---- webhook --------------------------------------------------------------------------------------


def test_webhook_answers_at_once_and_queues_training(client, monkeypatch):
    seen = []
    monkeypatch.setattr(sync, "handle_webhook", lambda session, project, payload: seen.append(payload["action"]) or {})
    project = add_project(client, ls_project_id=12)
    ls_project = {"id": 12, "label_config": LABEL_CONFIG}

    # Without basic auth on /ml anyone could post here: annotations come through the secret-checked
    # /api/v1/webhooks/label-studio instead.
    event = {"action": "ANNOTATION_CREATED", "project": ls_project, "annotation": {"id": 1}, "task": {"id": 2}}
    created = client.post("/ml/webhook", json=event)
    assert created.status_code == 200 and created.json()["status"].startswith("ignored")
    assert seen == []

    add_labelled_task(client, project.id)  # something to train on: a training is refused without
    for _ in range(2):  # a second click while one is queued adds nothing
        assert client.post("/ml/webhook", json={"action": "START_TRAINING", "project": ls_project}).status_code == 201
    with Session(client.app.state.engine) as session:
        jobs = session.exec(select(Job)).all()
    assert [(j.project_id, j.kind, j.status) for j in jobs] == [(project.id, "train", "queued")]

    ignored = client.post("/ml/webhook", json={"action": "PROJECT_UPDATED", "project": ls_project})
    assert ignored.status_code == 200 and ignored.json()["status"].startswith("ignored")
    assert client.post("/ml/webhook", json={"action": "START_TRAINING", "project": {"id": 99}}).status_code == 404
    assert client.post("/ml/webhook", json={"action": "START_TRAINING"}).status_code == 422
    assert client.post("/ml/webhook", json={"project": ls_project}).status_code == 422
    assert seen == []


def test_ml_webhook_takes_annotation_events_behind_basic_auth(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(sync, "handle_webhook", lambda session, project, payload: seen.append(payload["action"]) or {})
    with make_client(tmp_path, ml_basic_auth_user="ls", ml_basic_auth_password="pw") as client:
        add_project(client, ls_project_id=12)
        # Label Studio's payload carries what processing needs; one without it is refused (test_hardening)
        annotation = {"id": 1, "updated_at": "2026-01-01T00:00:00Z"}
        task = {"id": 2, "data": {"text": "a b"}}
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 12}, "annotation": annotation, "task": task}
        assert client.post("/ml/webhook", json=event, auth=("ls", "pw")).json() == {"status": "accepted", "action": "ANNOTATION_CREATED"}
    assert seen == ["ANNOTATION_CREATED"]


def test_webhook_failures_in_the_background_are_logged_not_raised(client, monkeypatch, caplog):
    def broken(session, project, payload):
        raise RuntimeError("Label Studio went away")

    monkeypatch.setattr(sync, "handle_webhook", broken)
    add_project(client, ls_project_id=12)
    # well-formed (a malformed event is refused before it is accepted: test_hardening), failing later
    event = {"action": "ANNOTATION_UPDATED", "project": {"id": 12}, "task": {"id": 2, "data": {"text": "a b"}},
             "annotation": {"id": 1, "updated_at": "2026-01-01T00:00:00Z"}}
    response = client.post("/api/v1/webhooks/label-studio", json=event)
    assert response.status_code == 202
    assert "ANNOTATION_UPDATED for project" in caplog.text and "Label Studio went away" in caplog.text


# ---- basic auth -----------------------------------------------------------------------------------


def test_basic_auth_on_ml_when_configured(tmp_path):
    with make_client(tmp_path, ml_basic_auth_user="ls", ml_basic_auth_password="pw", api_token="s3cret") as client:
        for path, method in (("/ml/health", "get"), ("/ml/setup", "post"), ("/ml/predict", "post"), ("/ml/webhook", "post")):
            kwargs = {"json": {"tasks": []}} if method == "post" else {}
            denied = getattr(client, method)(path, **kwargs)
            assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Basic")
            assert getattr(client, method)(path, headers=auth("ls", "wrong"), **kwargs).status_code == 401
        assert client.get("/ml/health", headers=auth("ls", "pw")).status_code == 200
        answer = client.post("/ml/predict", json={"tasks": [{"data": {"text": "x"}}]}, headers=auth("ls", "pw"))
        assert answer.json()["results"][0]["model_version"] == "untrained"


# ---- the predictor --------------------------------------------------------------------------------


def test_predictor_caches_by_path_and_follows_the_active_version(client, trained_model, tmp_path):
    project = add_project(client)
    predictor = Predictor(client.app.state.settings.database_url)
    assert predictor.active(project.id) is None

    copy = tmp_path / "copy"
    shutil.copytree(trained_model, copy)
    first = add_version(client, project.id, "v1", trained_model, status=ModelStatus.active)
    second = add_version(client, project.id, "v2", copy)
    one = predictor.active(project.id)
    assert predictor.active(project.id).tagger is one.tagger  # not reloaded while v1 stays active
    assert client.post(f"/api/v1/projects/{project.id}/models/{second}/promote").status_code == 200
    two = predictor.active(project.id)
    assert two.name == "v2" and two.tagger is not one.tagger
    assert client.post(f"/api/v1/projects/{project.id}/models/{first}/promote").status_code == 200
    assert predictor.active(project.id).tagger is one.tagger  # back to the cached v1

    (prediction,) = predictor.active(project.id).predict(["yesterday alice met bob in paris ."])
    assert [s.label for s in prediction.spans] == ["PER", "PER", "LOC"]


def test_task_confidence_is_the_geometric_mean_of_the_best_tag_probabilities():
    def prediction(*rows):
        marginals = np.array(rows, dtype=np.float32).reshape(len(rows), 3)
        return TaggedText(spans=[], words=[(i, i + 1) for i in range(len(rows))], marginals=marginals)

    sure = prediction([0.9, 0.05, 0.05], [0.1, 0.6, 0.3])
    assert task_confidence(sure) == pytest.approx((0.9 * 0.6) ** 0.5)
    unsure = prediction([0.4, 0.3, 0.3], [0.1, 0.6, 0.3])
    assert 0 < task_confidence(unsure) < task_confidence(sure) <= 1
    long_and_sure = prediction(*[[0.9, 0.05, 0.05]] * 50)
    assert task_confidence(long_and_sure) == pytest.approx(0.9)  # length does not drag it down
    assert task_confidence(prediction()) == 1.0


# ---- a real server --------------------------------------------------------------------------------


@pytest.mark.integration
def test_nerloop_serve_answers_over_http(tmp_path):
    settings = make_settings(tmp_path)
    env = {**os.environ, "NERLOOP_HOME": str(settings.home), "NERLOOP_DATABASE_URL": settings.database_url, "NERLOOP_API_TOKEN": "s3cret"}
    with nerloop_serve(env, tmp_path / "serve.log") as base:
        health = httpx.get(f"{base}/api/v1/health", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        # /ml can queue trainings: it takes the API token too (issue 14), and nothing without it.
        assert httpx.get(f"{base}/ml/health", timeout=5).status_code == 401
        ml_health = httpx.get(f"{base}/ml/health", headers={"Authorization": "Bearer s3cret"}, timeout=5)
        assert ml_health.json() == {"status": "UP", "model_class": "NerloopTagger"}
        assert httpx.get(f"{base}/api/v1/projects", timeout=5).status_code == 401
        assert httpx.get(f"{base}/api/v1/projects", headers={"Authorization": "Bearer s3cret"}, timeout=5).json() == []


def test_label_studio_scores_follow_the_project_strategy():
    """exp(-informativeness): MNLP gives the task confidence, and every strategy's most informative
    text gets the lowest score (Label Studio serves it first)."""
    rng = np.random.default_rng(0)
    predictions = []
    for length in (3, 5, 8, 2):
        marginals = rng.dirichlet(np.ones(3) * 0.7, size=length).astype(np.float32)
        samples = rng.dirichlet(np.ones(3) * 0.7, size=(4, length)).astype(np.float32)
        predictions.append(TaggedText(spans=[], words=[(i, i + 1) for i in range(length)], marginals=marginals, samples=samples))
    assert task_scores("mnlp", predictions) == pytest.approx([task_confidence(p) for p in predictions])
    for name in ("least_confidence", "entropy_mean", "entropy_max", "margin", "bald", "random"):
        scores = task_scores(name, predictions, seed=3)
        assert all(0 < s <= 1 for s in scores)
        informativeness = make_strategy(name, 3).scores(predictions)
        assert np.argmin(scores) == np.argmax(informativeness), name
    assert samples_for("bald") > 0 and samples_for("mnlp") == 0
