"""Issue 14, part a: bounded work per request, no poisoned rows, idempotent imports, strict webhooks,
and a schemathesis run against a real `nerloop serve` (the OpenAPI schema says what the API takes)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from active_learning.corpus import CorpusError, read_jsonl
from service import logs
from service.models import ModelStatus, Task
from service.predictor import ActiveModel
from support import add_project, add_version, make_client, make_settings, nerloop_serve

API = "/api/v1"
TOKEN = "s3cret-token"
SECRET = "hook-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def fields(response) -> list:
    return [error["field"] for error in response.json()["detail"]]


@pytest.fixture
def secured(tmp_path):
    with make_client(tmp_path, api_token=TOKEN, webhook_secret=SECRET) as client:
        yield client


# ---- 1: bounded work: size limit before parsing, auth before the body ----------------------------


def test_an_unauthenticated_body_is_refused_before_it_is_read(secured):
    project = add_project(secured)
    read = []

    def body():  # a streamed body: the server reads it only if it gets past the credentials
        for _ in range(64):
            read.append(1)
            yield b"x" * (1024 * 1024)

    refused = secured.post(f"{API}/projects/{project.id}/tasks", content=body(), headers={"Content-Type": "application/json"})
    assert refused.status_code == 401 and fields(refused) == ["header.Authorization"]
    assert len(read) <= 1  # the client may pull the first chunk before the answer; the other 63 MiB never
    webhook = secured.post(f"{API}/webhooks/label-studio", content=b"{" * 100_000, headers={"Content-Type": "application/json"})
    assert webhook.status_code == 401 and fields(webhook) == ["header.X-Nerloop-Secret"]
    read.clear()
    ml = secured.post("/ml/predict", content=body(), headers={"Content-Type": "application/json", "Authorization": "Basic bm9ib2R5"})
    assert ml.status_code == 401 and fields(ml) == ["header.Authorization"]
    assert len(read) <= 1
    allowed = secured.post("/ml/predict", json={"tasks": [{"data": {"text": "fine"}}]}, headers=AUTH)
    assert allowed.status_code == 200, allowed.text


def test_bodies_over_the_limit_get_413_declared_or_streamed(tmp_path):
    with make_client(tmp_path, max_request_bytes=64 * 1024) as client:
        project = add_project(client)
        url = f"{API}/projects/{project.id}/tasks"
        declared = client.post(url, content=b" " * (65 * 1024), headers={"Content-Type": "application/json"})
        assert declared.status_code == 413 and fields(declared) == ["body"]
        streamed = client.post(url, content=iter([b" " * 40_000] * 3), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413 and fields(streamed) == ["body"]
        assert client.post(url, json={"tasks": [{"text": "small enough"}]}).status_code == 201
        # file uploads have their own, larger limit
        upload = client.post(f"{url}/upload", files={"file": ("t.jsonl", b'{"text": "%s"}\n' % (b"a" * 70_000))})
        assert upload.status_code == 201, upload.text


def test_an_upload_of_more_tasks_than_one_request_stores_in_seconds_is_refused(secured):
    from service.operations.tasks import MAX_UPLOAD_TASKS

    project = add_project(secured)
    lines = b"".join(b'{"text": "task %d"}\n' % i for i in range(MAX_UPLOAD_TASKS + 1))
    refused = secured.post(f"{API}/projects/{project.id}/tasks/upload", files={"file": ("big.jsonl", lines)}, headers=AUTH)
    assert refused.status_code == 422 and fields(refused) == ["file"] and "nerloop import" in refused.text
    csv_rows = b"text\n" + b"".join(b"task %d\n" % i for i in range(MAX_UPLOAD_TASKS + 1))
    refused = secured.post(f"{API}/projects/{project.id}/tasks/upload", files={"file": ("big.csv", csv_rows)}, headers=AUTH)
    assert refused.status_code == 422 and fields(refused) == ["file"]
    with Session(secured.app.state.engine) as session:
        assert session.exec(select(Task)).all() == []  # nothing of a refused file is stored


def test_schema_limits_bound_one_request(secured):
    project = add_project(secured)
    too_many = secured.post(f"{API}/projects/{project.id}/tasks", json={"tasks": [{"text": f"t {i}"} for i in range(1001)]}, headers=AUTH)
    assert too_many.status_code == 422 and fields(too_many) == ["body.tasks"]
    spans = [[0, 1, "PER"]] * 1001
    crowded = secured.post(f"{API}/projects/{project.id}/tasks", json={"tasks": [{"text": "a b", "spans": spans}]}, headers=AUTH)
    assert crowded.status_code == 422 and fields(crowded) == ["body.tasks[0].spans"]
    long = secured.post(f"{API}/projects/{project.id}/predict", json={"texts": ["word " * 15_000] * 2}, headers=AUTH)
    assert long.status_code == 422 and fields(long) == ["body.texts"]
    ml = secured.post("/ml/predict", json={"tasks": [{"data": {"text": "x"}}] * 101}, headers=AUTH)
    assert ml.status_code == 422 and fields(ml) == ["body.tasks"]
    ml_long = secured.post("/ml/predict", json={"tasks": [{"data": {"text": "word " * 15_000}}] * 2}, headers=AUTH)
    assert ml_long.status_code == 422 and fields(ml_long) == ["body.tasks"]


# ---- 2: inference cannot starve small requests behind a huge one ---------------------------------


def test_inference_waits_a_bounded_time_and_in_batches(monkeypatch):
    from service import predictor
    from service.errors import Unavailable

    calls = []

    class Tagger:
        def predict(self, texts, mc_samples=0, logits=None):
            calls.append(len(texts))
            return [text.upper() for text in texts]

    model = ActiveModel(1, "v1", Tagger(), threading.Lock())
    texts = ["a" * 4000] * 6
    assert model.predict(texts) == [t.upper() for t in texts]
    assert calls == [2, 2, 2]  # 10,000 characters per batch, the lock taken per batch
    monkeypatch.setattr(predictor, "MODEL_WAIT_SECONDS", 0.2)
    model.lock.acquire()  # a huge request holds the model
    with pytest.raises(Unavailable, match="busy"):
        model.predict(["small"])


def test_a_busy_model_answers_503_not_a_hang(secured, trained_model, monkeypatch):
    from service import predictor

    project = add_project(secured)
    add_version(secured, project.id, "v1", trained_model, status=ModelStatus.active)
    monkeypatch.setattr(predictor, "MODEL_WAIT_SECONDS", 0.2)
    model = secured.app.state.predictor.active(project.id)
    with model.lock:
        busy = secured.post(f"{API}/projects/{project.id}/predict", json={"texts": ["alice met bob"]}, headers=AUTH)
    assert busy.status_code == 503 and "busy" in busy.json()["detail"][0]["message"]
    assert secured.post(f"{API}/projects/{project.id}/predict", json={"texts": ["alice met bob"]}, headers=AUTH).status_code == 200


def _largest_task_import() -> bytes:
    """A JSON import just under the 2 MiB default limit, as costly to validate as it allows: the most
    tasks per request, each with as many one-word spans as fit."""
    text = "Alice " * 80
    spans = [[6 * i, 6 * i + 5, "PER"] for i in range(80)]
    tasks = [{"text": f"{i} {text}", "spans": [[a + len(f"{i} "), b + len(f"{i} "), label] for a, b, label in spans]} for i in range(1000)]
    body = json.dumps({"tasks": tasks}).encode()
    assert 1.5 * 2**20 < len(body) <= 2 * 2**20, len(body)
    return body


@pytest.mark.integration
def test_health_answers_within_a_second_while_the_largest_requests_run(tmp_path, trained_model):
    """The largest import body, the largest task file and the largest prediction, all at once: the
    event loop stays free (the work, body validation included, runs in the thread pool, bounded by
    the limits), so /health keeps answering."""
    from service.db import get_engine
    from service.models import ModelVersion
    from service.operations.tasks import MAX_UPLOAD_TASKS
    from service.schemas import MAX_PREDICT_CHARACTERS

    settings = make_settings(tmp_path)
    env = {**os.environ, "NERLOOP_HOME": str(settings.home), "NERLOOP_DATABASE_URL": settings.database_url,
           "NERLOOP_API_TOKEN": TOKEN, "NERLOOP_WEBHOOK_SECRET": SECRET}
    line = b'{"text": "Bob went to Paris %d", "spans": [[0, 3, "PER"], [12, 17, "LOC"]]}\n'
    upload = b"".join(line % i for i in range(MAX_UPLOAD_TASKS))
    words = "alice met bob in paris "
    texts = [words * (MAX_PREDICT_CHARACTERS // 64 // len(words))] * 64
    with nerloop_serve(env, tmp_path / "serve.log") as base, httpx.Client(base_url=base, headers=AUTH, timeout=300) as http:
        for name in ("imports", "uploads", "predicts"):
            created = http.post(f"{API}/projects", json={"name": name, "labels": ["PER", "LOC"], "create_in_label_studio": False})
            assert created.status_code == 201, created.text
        with Session(get_engine(settings.database_url)) as session:
            session.add(ModelVersion(project_id=3, name="v1", path=str(trained_model), status=ModelStatus.active))
            session.commit()
        heavy = [
            lambda: http.post(f"{API}/projects/1/tasks", content=_largest_task_import(), headers={"Content-Type": "application/json"}),
            lambda: http.post(f"{API}/projects/2/tasks/upload", files={"file": ("big.jsonl", upload)}),
            lambda: http.post(f"{API}/projects/3/predict", json={"texts": texts}),
        ]
        latencies = []
        with ThreadPoolExecutor(len(heavy)) as pool, httpx.Client(base_url=base, timeout=5) as probe:
            running = [pool.submit(request) for request in heavy]
            while not all(f.done() for f in running):
                started = time.perf_counter()
                assert probe.get(f"{API}/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)
            answers = [f.result() for f in running]
    log = (tmp_path / "serve.log").read_text()
    assert [a.status_code for a in answers] == [201, 201, 200], ([a.text[:300] for a in answers], log[-4000:])
    assert len(latencies) >= 5  # the probe ran while the heavy requests did
    assert max(latencies) < 1.0, sorted(latencies)[-5:]


# ---- 3: task meta is validated at every entrance --------------------------------------------------


POISONED_META = [
    ('{"source": "\\ud800"}', "lone surrogate"),
    ('{"source": "a\\u0000b"}', "NUL"),
    ('{"deep": ' + "[" * 300 + "]" * 300 + "}", "nested deeper"),
    ('{"big": "' + "x" * 100_001 + '"}', "longer than"),
]


@pytest.mark.parametrize(("meta", "reason"), POISONED_META)
def test_poisoned_meta_is_refused_by_the_api_and_the_upload(secured, meta, reason):
    project = add_project(secured)
    body = ('{"tasks": [{"text": "alice met bob", "meta": ' + meta + "}]}").encode()
    refused = secured.post(f"{API}/projects/{project.id}/tasks", content=body, headers={**AUTH, "Content-Type": "application/json"})
    if reason in ("lone surrogate", "nested deeper"):  # the API's JSON parser (Pydantic's) refuses these itself
        assert refused.status_code == 422 and fields(refused) == ["body"], refused.text
        assert "not valid JSON" in refused.json()["detail"][0]["message"]
    else:
        assert refused.status_code == 422 and fields(refused) == ["body.tasks[0].meta"], refused.text
        assert reason in refused.json()["detail"][0]["message"]
    line = ('{"text": "alice met bob", "extra": ' + meta + "}\n").encode()
    uploaded = secured.post(f"{API}/projects/{project.id}/tasks/upload", files={"file": ("t.jsonl", line)}, headers=AUTH)
    assert uploaded.status_code == 422 and fields(uploaded) == ["file"], uploaded.text
    assert "t.jsonl:1" in uploaded.json()["detail"][0]["message"]
    assert secured.get(f"{API}/projects/{project.id}/tasks/next", params={"limit": 10}, headers=AUTH).json() == []


def test_nul_in_a_csv_column_is_refused_with_its_task(secured):
    project = add_project(secured)
    uploaded = secured.post(
        f"{API}/projects/{project.id}/tasks/upload", files={"file": ("t.csv", b"text,source\nalice met bob,a\x00b\n")}, headers=AUTH
    )
    assert uploaded.status_code == 422 and "NUL" in uploaded.json()["detail"][0]["message"]


def test_poisoned_meta_is_refused_by_the_shared_import(secured):
    """What `nerloop import` and every other caller of sync.import_examples go through."""
    from active_learning.spans import Example, SpanError
    from service import sync

    project = add_project(secured)
    with Session(secured.app.state.engine) as session, pytest.raises(SpanError, match="lone surrogate"):
        sync.import_examples(session, session.merge(project), [Example("alice met bob", [], {"x": "\ud800"})])


def test_a_label_studio_task_with_unstorable_text_is_not_adopted(secured):
    """The pull from Label Studio and the webhook adopt unknown tasks through sync._task_for."""
    from service import sync

    project = add_project(secured, ls_project_id=5)
    with Session(secured.app.state.engine) as session, pytest.raises(sync.SyncError, match="NUL"):
        sync._task_for(session, session.merge(project), {"id": 3, "data": {"text": "a\x00b"}})


# ---- 9: readers fail with the file and line -------------------------------------------------------


def test_deeply_nested_jsonl_names_its_line(secured):
    nested = '{"text": "a b", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    with pytest.raises(CorpusError, match=r"deep.jsonl:2: JSON nested too deeply"):
        read_jsonl(io.StringIO('{"text": "fine"}\n' + nested), name="deep.jsonl")
    project = add_project(secured)
    uploaded = secured.post(f"{API}/projects/{project.id}/tasks/upload", files={"file": ("deep.jsonl", nested.encode())}, headers=AUTH)
    assert uploaded.status_code == 422 and "deep.jsonl:1" in uploaded.json()["detail"][0]["message"]


def test_a_csv_quote_never_closed_is_refused_with_its_line(secured):
    project = add_project(secured)
    data = b'text,source\nalice met bob,a\n"bob went home,b\ncarol stayed,c\n'
    uploaded = secured.post(f"{API}/projects/{project.id}/tasks/upload", files={"file": ("t.csv", data)}, headers=AUTH)
    assert uploaded.status_code == 422 and fields(uploaded) == ["file"]
    message = uploaded.json()["detail"][0]["message"]
    assert "t.csv:3" in message and "never closed" in message, message
    with Session(secured.app.state.engine) as session:
        assert session.exec(select(Task)).all() == []


# ---- 8: parallel identical imports ----------------------------------------------------------------


def _parallel_imports(client, project_id: int, n: int = 10) -> list:
    body = {"tasks": [{"text": f"sentence {i} about alice"} for i in range(50)]}
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait()
        return client.post(f"{API}/projects/{project_id}/tasks", json=body, headers=AUTH)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_parallel_identical_imports_all_succeed(secured, monkeypatch):
    # Widen the race as PostgreSQL under load does: the ten first attempts all read "nothing known yet".
    from service import sync

    read_known = sync._existing_hashes
    everyone_read = threading.Barrier(10)
    first_reads = iter(range(10))

    def slow_read(*args):
        known = read_known(*args)
        if next(first_reads, None) is not None:  # retries go straight on
            everyone_read.wait(timeout=10)
        return known

    monkeypatch.setattr(sync, "_existing_hashes", slow_read)
    project = add_project(secured)
    answers = _parallel_imports(secured, project.id)
    assert [a.status_code for a in answers] == [201] * 10, [a.text for a in answers if a.status_code != 201]
    reports = [a.json() for a in answers]
    assert sum(r["created"] for r in reports) == 50 and all(r["created"] + r["duplicates"] == 50 for r in reports)
    with Session(secured.app.state.engine) as session:
        assert len(session.exec(select(Task)).all()) == 50


def test_a_write_that_outwaits_the_sqlite_lock_answers_503_and_stores_nothing(secured, monkeypatch):
    import sqlite3

    from service import db

    project = add_project(secured)
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 200)
    secured.app.state.engine.dispose()  # new connections take the short wait
    holder = sqlite3.connect(secured.app.state.engine.url.database)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the one file's write lock
    try:
        locked = secured.post(f"{API}/projects/{project.id}/tasks", json={"tasks": [{"text": "alice met bob"}]}, headers=AUTH)
    finally:
        holder.rollback()
        holder.close()
    assert locked.status_code == 503 and locked.headers["Retry-After"] == "5", locked.text
    assert "retry" in locked.json()["detail"][0]["message"]
    with Session(secured.app.state.engine) as session:
        assert session.exec(select(Task)).all() == []
    retried = secured.post(f"{API}/projects/{project.id}/tasks", json={"tasks": [{"text": "alice met bob"}]}, headers=AUTH)
    assert retried.status_code == 201 and retried.json()["created"] == 1


@pytest.mark.integration
def test_parallel_identical_imports_all_succeed_on_postgres(postgres_database, tmp_path):
    with make_client(tmp_path, api_token=TOKEN, database_url=postgres_database) as client:
        project = add_project(client)
        answers = _parallel_imports(client, project.id)
        assert [a.status_code for a in answers] == [201] * 10, [a.text for a in answers if a.status_code != 201]
        assert sum(a.json()["created"] for a in answers) == 50


# ---- 10: webhooks, access log, metrics labels -----------------------------------------------------

CREATED_AT = "2026-01-01T00:00:00Z"
TASK = {"id": 1, "data": {"text": "a b"}}


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"action": "ANNOTATION_CREATED"}, "body.task"),
        ({"action": "ANNOTATION_CREATED", "task": {"id": 1, "data": {"text": "a b"}}}, "body.annotation"),
        (
            {"action": "ANNOTATION_UPDATED", "task": TASK, "annotation": {"id": 2, "updated_at": "yesterday"}},
            "body.annotation.updated_at",
        ),
        (
            {"action": "ANNOTATION_CREATED", "task": {"id": 1, "data": {}}, "annotation": {"id": 2, "updated_at": CREATED_AT}},
            "body.task.data.text",
        ),
        ({"action": "ANNOTATION_CREATED", "task": {"id": "one"}, "annotation": {"id": 2, "updated_at": CREATED_AT}}, "body.task.id"),
        (
            {"action": "ANNOTATION_CREATED", "task": {"id": 1, "data": {"text": "a b"}},
             "annotation": {"id": 2, "updated_at": CREATED_AT, "result": "none"}},
            "body.annotation.result",
        ),
        ({"action": "ANNOTATION_CREATED", "task": TASK, "annotation": {"id": 2}}, "body.annotation.updated_at"),
        ({"action": "ANNOTATIONS_DELETED"}, "body.annotations"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [{"pk": 1}]}, "body.annotations[0].id"),
    ],
)
def test_malformed_webhooks_are_refused_naming_the_field(secured, event, field):
    add_project(secured, ls_project_id=5)
    answer = secured.post(f"{API}/webhooks/label-studio", json={**event, "project": {"id": 5}}, headers={"X-Nerloop-Secret": SECRET})
    assert answer.status_code == 422 and fields(answer) == [field], answer.text


def test_well_formed_webhooks_are_still_accepted(secured):
    add_project(secured, ls_project_id=5)
    event = {
        "action": "ANNOTATION_CREATED", "project": {"id": 5}, "task": {"id": 1, "data": {"text": "alice met bob"}},
        "annotation": {"id": 2, "updated_at": CREATED_AT, "result": []},
    }
    answer = secured.post(f"{API}/webhooks/label-studio", json=event, headers={"X-Nerloop-Secret": SECRET})
    assert answer.status_code == 202, answer.text
    with Session(secured.app.state.engine) as session:
        assert [t.text for t in session.exec(select(Task))] == ["alice met bob"]


def test_credentials_in_the_query_string_never_reach_the_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logs.install(handler, "text")
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    try:
        # as uvicorn writes its access lines: the path with its query string is an argument
        access.warning('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/api/v1/projects?token=abc123&limit=2", "1.1", 200)
        access.warning("GET /metrics?api_key=k3y&x=1")
    finally:
        access.removeHandler(handler)
    written = stream.getvalue()
    assert "abc123" not in written and "k3y" not in written
    assert "token=***&limit=2" in written and "api_key=***&x=1" in written


def test_the_method_label_is_bounded(secured):
    for i in range(30):
        secured.request(f"M{i}", f"{API}/health")
    exposition = secured.get("/metrics", headers=AUTH).text
    methods = {line.split('method="')[1].split('"')[0] for line in exposition.splitlines() if 'method="' in line}
    assert methods <= {"GET", "POST", "other"} and "other" in methods


# ---- schemathesis against a real `nerloop serve` with data in it ----------------------------------

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
EXAMPLES = 12  # per operation and phase: ~1,700 requests in under a minute (the test: ~2 min with training the tiny model)


def _seed(base: str) -> None:
    """A project with pool tasks, a labelled one and a job: id 1 exists for the fuzzer's paths."""
    with httpx.Client(base_url=base, headers=AUTH, timeout=60) as http:
        project = http.post(f"{API}/projects", json={"name": "fuzzed", "labels": ["PER", "LOC"], "create_in_label_studio": False})
        assert project.status_code == 201, project.text
        tasks = [{"text": f"alice met bob in paris, {i}", "meta": {"n": i}} for i in range(20)]
        assert http.post(f"{API}/projects/1/tasks", json={"tasks": tasks}).status_code == 201
        assert http.post(f"{API}/projects/1/tasks/1/annotations", json={"spans": [[0, 5, "PER"]]}).status_code == 201
        assert http.post(f"{API}/projects/1/train").status_code == 202


@pytest.mark.integration
def test_schemathesis_finds_no_server_error_and_no_disagreement_with_the_schema(tmp_path, trained_model):
    from service.db import get_engine
    from service.models import ModelVersion

    settings = make_settings(tmp_path)
    env = {
        **os.environ, "NERLOOP_HOME": str(settings.home), "NERLOOP_DATABASE_URL": settings.database_url,
        "NERLOOP_API_TOKEN": TOKEN, "NERLOOP_WEBHOOK_SECRET": SECRET,
    }
    report = tmp_path / "schemathesis.ndjson"
    with nerloop_serve(env, tmp_path / "serve.log") as base:
        _seed(base)
        with Session(get_engine(settings.database_url)) as session:
            session.add(ModelVersion(project_id=1, name="v1", path=str(trained_model), status=ModelStatus.active))
            session.commit()
        command = [
            str(Path(sys.executable).parent / "st"), "run", f"{base}/openapi.json", "--checks", CHECKS,
            "--max-examples", str(EXAMPLES), "--seed", "14", "--phases", "examples,coverage,fuzzing",
            "-H", f"Authorization: Bearer {TOKEN}", "-H", f"X-Nerloop-Secret: {SECRET}",
            "--request-timeout", "60", "--continue-on-failure", "--no-color",
            "--report", "ndjson", "--report-ndjson-path", str(report),
        ]
        run = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
        log = (tmp_path / "serve.log").read_text()
    (tmp_path / "schemathesis.txt").write_text(run.stdout + run.stderr)
    print(run.stdout[run.stdout.find("SUMMARY"):])  # operations, phases, test cases
    failures = run.stdout[run.stdout.find("FAILURES"):run.stdout.find("WARNINGS")]
    assert run.returncode == 0, (failures or run.stdout)[:20000] + run.stderr[-3000:]
    assert "internal error" not in log and "Traceback" not in log, log[-6000:]
