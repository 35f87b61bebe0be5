"""The Label Studio client against a real Label Studio 1.23.2 (tests/servers.py starts it)."""

import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from service import label_studio as ls_module
from service.label_studio import (
    LabelConfig,
    LabelStudioClient,
    LabelStudioError,
    client_from_settings,
    labelling_config,
    parse_labelling_config,
    parse_ls_datetime,
    results_from_spans,
)
from service.settings import Settings
from support import free_port

LABELS = ["PER", "ORG", "LOC"]


@pytest.fixture(scope="module")
def client(label_studio) -> LabelStudioClient:
    return LabelStudioClient(label_studio.url, label_studio.token)


@pytest.fixture(scope="module")
def browser(label_studio):
    """Label Studio's REST API as the annotator's browser uses it."""
    with httpx.Client(
        base_url=label_studio.url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=60
    ) as http:
        yield http


def annotate(browser, ls_task_id: int, spans, text: str, **fields) -> dict:
    answer = browser.post(
        f"/api/tasks/{ls_task_id}/annotations/", json={"result": results_from_spans(text, spans), **fields}
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


# --- without a server ----------------------------------------------------------------------------


def test_labelling_config_round_trips_and_escapes():
    labels = ["PER", 'A&B "quoted" <x>']
    config = labelling_config(labels, from_name="ner", to_name="doc", text_key="sentence")
    assert parse_labelling_config(config) == LabelConfig(labels, "ner", "doc", "sentence")


def test_a_config_without_labels_on_text_is_refused():
    config = '<View><Choices name="c" toName="t"><Choice value="x"/></Choices><Text name="t" value="$t"/></View>'
    with pytest.raises(LabelStudioError, match="not an NER project"):
        parse_labelling_config(config)
    with pytest.raises(LabelStudioError, match="not valid XML"):
        parse_labelling_config("<View>")


def test_results_from_spans_carry_text_and_score():
    results = results_from_spans("Ann met Bob", [(0, 3, "PER"), [8, 11, "PER", 0.25]])
    assert results[0]["value"] == {"start": 0, "end": 3, "text": "Ann", "labels": ["PER"]}
    assert results[1]["score"] == 0.25 and "score" not in results[0]


def test_unreachable_label_studio_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LabelStudioError, match=rf"cannot reach Label Studio at {url} .*ConnectError.*3 attempts"):
        LabelStudioClient(url, "any-token", retries=2, backoff=0.01).whoami()


def test_the_client_comes_from_the_settings_and_needs_an_api_key():
    assert client_from_settings(Settings(_env_file=None, label_studio_api_key="")) is None
    settings = Settings(_env_file=None, label_studio_url="http://127.0.0.1:9/", label_studio_api_key="any-token")
    client = client_from_settings(settings, retries=1)
    assert (client.url, client.retries) == ("http://127.0.0.1:9", 1)


# --- tokens --------------------------------------------------------------------------------------


def test_legacy_token_and_personal_access_token_both_work(label_studio):
    assert label_studio.pat.count(".") == 2  # a JWT
    for token in (label_studio.token, label_studio.pat):
        client = LabelStudioClient(label_studio.url, token)
        assert client.whoami()["email"] == label_studio.username
        project = client.create_project("token check", LABELS)
        assert client.read_project(project).labels == LABELS


@pytest.mark.parametrize("kind", ["legacy", "pat"])
def test_a_wrong_token_is_a_clear_error(label_studio, kind):
    token = "not-the-token" if kind == "legacy" else label_studio.pat[:-4] + "AAAA"  # a JWT with a bad signature
    with pytest.raises(LabelStudioError, match=r"refused the API key \(401") as caught:
        LabelStudioClient(label_studio.url, token).whoami()
    assert caught.value.status == 401


# --- projects, tasks, predictions ----------------------------------------------------------------


def test_read_project_finds_the_ner_part_of_a_richer_config(client):
    config = (
        '<View><Header value="Tag it"/><Choices name="topic" toName="doc"><Choice value="news"/></Choices>'
        '<Labels name="ner" toName="doc"><Label value="PER" background="red"/><Label value="GPE"/></Labels>'
        '<Text name="doc" value="$sentence" granularity="word"/></View>'
    )
    ls_id = client.sdk.projects.create(title="attach me", label_config=config).id
    assert client.read_project(ls_id) == LabelConfig(["PER", "GPE"], "ner", "doc", "sentence")
    with pytest.raises(LabelStudioError, match="answered 404 while trying to read project 999999"):
        client.read_project(999999)


def test_import_is_chunked_and_returns_ids_in_input_order(client):
    ls_id = client.create_project("ten thousand", LABELS)
    texts = [f"Sentence number {i} about Paris." for i in range(10_000)]
    started = time.monotonic()
    ids = client.import_tasks(ls_id, [{"text": text} for text in texts])
    assert len(ids) == len(set(ids)) == 10_000
    assert time.monotonic() - started < 120
    for i in (0, 999, 1000, 5555, 9999):  # across chunk boundaries
        assert client.sdk.tasks.get(ids[i]).data == {"text": texts[i]}


def test_predictions_set_the_order_annotators_are_served(client, browser):
    ls_id = client.create_project("uncertainty", LABELS)
    texts = [f"Task {i} mentions Alice." for i in range(5)]
    ids = client.import_tasks(ls_id, [{"text": text} for text in texts])
    scores = [0.9, 0.3, 0.5, 0.1, 0.7]
    before = {t["id"]: t["updated_at"] for t in browser.get("/api/tasks/", params={"project": ls_id}).json()["tasks"]}

    def predictions(version_scores):
        return [
            {"task": task, "result": results_from_spans(text, [(len(text) - 6, len(text) - 1, "PER", s)]), "score": s}
            for task, text, s in zip(ids, texts, version_scores)
        ]

    # An older version ranks the other way round: only the project's model_version counts.
    assert client.push_predictions(ls_id, predictions([1 - s for s in scores]), "v1") == 5
    assert client.push_predictions(ls_id, predictions(scores), "v2") == 5
    project = client.sdk.projects.get(ls_id)
    assert (project.model_version, project.sampling) == ("v2", "Uncertainty sampling")
    served = browser.get(f"/api/projects/{ls_id}/next")
    assert served.status_code == 200, served.text
    assert served.json()["id"] == ids[scores.index(min(scores))]
    # Imported predictions leave the tasks' updated_at alone: the pull does not re-list them.
    after = {t["id"]: t["updated_at"] for t in browser.get("/api/tasks/", params={"project": ls_id}).json()["tasks"]}
    assert after == before


def test_the_served_version_switches_after_the_lowest_scored_chunk(client, browser, monkeypatch):
    """The push imports lowest scores first and switches the project's version after the first chunk:
    a push that fails in a later chunk has already made Label Studio serve the new version's most
    uncertain task."""
    monkeypatch.setattr(ls_module, "IMPORT_CHUNK", 2)
    ls_id = client.create_project("lowest first", LABELS)
    texts = [f"Task {i} mentions Alice." for i in range(5)]
    ids = client.import_tasks(ls_id, [{"text": text} for text in texts])
    scores = [0.9, 0.3, 0.5, 0.1, 0.7]
    predictions = [{"task": task, "result": [], "score": s} for task, s in zip(ids, scores)]
    unknown_task = {"task": max(ids) + 1000, "result": [], "score": 0.95}  # in the last chunk: Label Studio refuses it
    with pytest.raises(LabelStudioError):
        client.push_predictions(ls_id, [*predictions, unknown_task], "v1")
    assert client.sdk.projects.get(ls_id).model_version == "v1"
    served = browser.get(f"/api/projects/{ls_id}/next")
    assert served.status_code == 200, served.text
    assert served.json()["id"] == ids[scores.index(min(scores))]


def test_list_annotations_since_follows_updated_at(client, browser, monkeypatch):
    monkeypatch.setattr(ls_module, "PULL_OVERLAP", timedelta(0))  # test the filter itself, to the microsecond
    ls_id = client.create_project("incremental", LABELS)
    texts = ["Ann is here.", "Bob is here.", "Cid is here."]
    a, b, _ = client.import_tasks(ls_id, [{"text": text} for text in texts])
    assert list(client.list_annotations_since(ls_id, None)) == []  # nothing annotated yet

    annotate(browser, a, [(0, 3, "PER")], texts[0])
    (first,) = client.list_annotations_since(ls_id, None)
    assert first["id"] == a and first["data"] == {"text": texts[0]}
    assert [r["value"]["labels"] for r in first["annotations"][0]["result"]] == [["PER"]]
    mark = parse_ls_datetime(first["updated_at"])

    second = annotate(browser, b, [(0, 3, "PER")], texts[1])
    assert [t["id"] for t in client.list_annotations_since(ls_id, mark)] == [a, b]  # >= mark
    (listed,) = client.list_annotations_since(ls_id, mark + timedelta(microseconds=1))
    assert listed["id"] == b

    # Deleting an annotation stamps its task too: the pull sees the task with the annotation missing.
    later = parse_ls_datetime(listed["updated_at"]) + timedelta(microseconds=1)
    assert list(client.list_annotations_since(ls_id, later)) == []
    assert browser.delete(f"/api/annotations/{second['id']}/").status_code == 204
    (deleted,) = client.list_annotations_since(ls_id, later)
    assert deleted["id"] == b and deleted["annotations"] == []


def test_register_webhook_updates_rather_than_doubles(client):
    ls_id = client.create_project("webhooks", LABELS)
    first = client.register_webhook(ls_id, "http://127.0.0.1:9/hook", "one")
    assert client.register_webhook(ls_id, "http://127.0.0.1:9/hook", "two") == first
    (webhook,) = client.sdk.webhooks.list(project=str(ls_id))
    assert webhook.headers == {"X-Nerloop-Secret": "two"} and webhook.send_payload
    assert sorted(webhook.actions) == ["ANNOTATIONS_DELETED", "ANNOTATION_CREATED", "ANNOTATION_UPDATED"]


# --- retries -------------------------------------------------------------------------------------


@pytest.fixture
def flaky_proxy(label_studio):
    """A real HTTP proxy in front of Label Studio that answers 503 to the first ``failures`` requests."""
    state = {"failures": 0, "refused": 0}

    class Handler(BaseHTTPRequestHandler):
        def _forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if state["failures"] > 0:
                state["failures"] -= 1
                state["refused"] += 1
                self.send_response(503)
                self.end_headers()
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            answer = httpx.request(
                self.command, label_studio.url + self.path, headers=headers, content=body, timeout=60
            )
            self.send_response(answer.status_code)
            for key, value in answer.headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_PATCH = do_DELETE = _forward

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_server_errors_are_retried_with_backoff(label_studio, flaky_proxy):
    url, state = flaky_proxy
    client = LabelStudioClient(url, label_studio.pat, retries=3, backoff=0.05)  # the PAT refresh goes through it too
    ls_id = client.create_project("flaky", LABELS)
    state["failures"] = 2
    ids = client.import_tasks(ls_id, [{"text": "Through a flaky proxy."}])
    assert state["refused"] == 2 and len(ids) == 1
    state["failures"] = 10
    with pytest.raises(LabelStudioError, match="answered 503 while trying to read project"):
        client.read_project(ls_id)
    assert state["refused"] == 2 + 4  # one try and three retries
