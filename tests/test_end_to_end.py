"""The whole loop with every real part: Label Studio, Redis, PostgreSQL, the API, a Celery worker
and the beat, each its own process.

300 tasks are imported through our API (and so into Label Studio); an annotator script labels them
through Label Studio's API in Label Studio's own next-task order; Label Studio's webhooks bring the
annotations to nerloop; once ``retrain_every`` of them are in, the worker trains a model, promotes
it, scores the pool and pushes the predictions; Label Studio then serves the least confident task
first. The export holds exactly what was labelled.
"""

from __future__ import annotations

import io
import json
import uuid

import httpx
import pytest
import redis

from active_learning.corpus import read_jsonl
from service.cli import demo
from support import TINY_TRAIN, empty_database, free_port
from tiny import LABELS, toy_corpus

API = "/api/v1"
TASKS = 300
RETRAIN_EVERY = 40


@pytest.fixture
def stack(tmp_path, label_studio, postgres_database, redis_url, tiny_encoder):
    prefix = f"nerloop-e2e-{uuid.uuid4().hex[:8]}:"
    port = free_port()
    secret = demo.new_secret()
    config = demo.DemoConfig(batch=RETRAIN_EVERY, rounds=0, train_config=TINY_TRAIN, job_timeout=300)
    env = demo.environment(tmp_path / "home", port, config, (label_studio.url, label_studio.token), secret)
    env.update(
        NERLOOP_DATABASE_URL=postgres_database,
        NERLOOP_BROKER_URL=redis_url,
        NERLOOP_RESULT_BACKEND=redis_url,
        NERLOOP_BROKER_TRANSPORT_OPTIONS=json.dumps({"global_keyprefix": prefix}),
        NERLOOP_RESULT_BACKEND_TRANSPORT_OPTIONS=json.dumps({"global_keyprefix": prefix}),
        NERLOOP_BASE_MODEL=str(tiny_encoder),
        NERLOOP_SCORE_SHARD_SIZE="64",
        OMP_NUM_THREADS="1",
    )
    running = demo.Stack(env, port, tmp_path / "logs", serve_options=demo.INSECURE_ON_LOOPBACK)
    running.secret, running.config = secret, config
    try:
        running.start()
        yield running
    finally:
        running.stop()
        empty_database(postgres_database)  # for the next test
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def test_label_studio_to_trained_model_to_ordered_predictions_and_back(stack, label_studio):
    corpus = toy_corpus(TASKS, seed=11)
    test_set = toy_corpus(60, seed=12)
    ls = (label_studio.url, label_studio.token)
    with httpx.Client(base_url=stack.url, timeout=120) as api:
        project = demo.create_project(api, LABELS, stack.config, corpus, with_label_studio=True)
        assert project["imported"] == TASKS and project["ls_project_id"] is not None
        demo.register_webhook(ls, project["ls_project_id"], stack.url, stack.secret)
        desk = demo.LabelStudioDesk(*ls, project["ls_project_id"])

        labelled: list[int] = []
        submit = desk.submit
        desk.submit = lambda task_id, text, spans: (labelled.append(task_id), submit(task_id, text, spans))
        [point] = demo.run_loop(stack, api, project["id"], desk, corpus, test_set, stack.config, lambda event, fields: None)

        # The webhooks brought every annotation in (the one that queued the training and any after it too).
        report = demo.checked(api.get(f"{API}/projects/{project['id']}/report"))
        assert report["tasks"]["labelled"] == len(labelled) >= RETRAIN_EVERY
        [version] = demo.checked(api.get(f"{API}/projects/{project['id']}/models"))
        assert version["status"] == "active" and version["name"] == point.version == "v1"
        assert point.test_f1 > 0.5  # the tiny model learns the toy pattern from 40 sentences
        scoring = [j for j in demo.checked(api.get(f"{API}/projects/{project['id']}/jobs")) if j["kind"] == "score_pool"]
        assert [j["status"] for j in scoring] == ["succeeded"]
        assert scoring[0]["progress"]["pushed"] == TASKS - len(labelled)

        # Label Studio holds the predictions with their scores and serves the least confident task first.
        http = desk.http
        tasks = []
        page = 1
        while True:
            answer = http.get("/api/tasks", params={"project": project["ls_project_id"], "page": page, "page_size": 100, "fields": "all"})
            if answer.status_code == 404:
                break
            batch = answer.json()["tasks"]
            tasks += batch
            if len(batch) < 100:
                break
            page += 1
        unlabelled = [t for t in tasks if not t["annotations"]]
        assert len(unlabelled) == TASKS - len(labelled)
        scores = {}
        for task in unlabelled:
            [prediction] = [p for p in task["predictions"] if p["model_version"] == "v1"]
            scores[task["id"]] = prediction["score"]
            assert 0 < prediction["score"] <= 1
        served = demo.checked(http.get(f"/api/projects/{project['ls_project_id']}/next"))
        assert scores[served["id"]] == pytest.approx(min(scores.values()))

        # The export is exactly what the annotator labelled.
        exported = api.get(f"{API}/projects/{project['id']}/annotations/export", params={"format": "jsonl"})
        assert exported.status_code == 200
        got = {e.text: e.spans for e in read_jsonl(io.StringIO(exported.text))}
        gold = {e.text: e.spans for e in corpus}
        labelled_texts = {t["data"]["text"] for t in tasks if t["annotations"]}
        assert set(got) == labelled_texts and all(got[text] == gold[text] for text in got)
