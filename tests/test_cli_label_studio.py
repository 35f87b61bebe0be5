"""The CLI against a real Label Studio: init, import, an annotator labels, sync, export."""

import json
import os
import subprocess

import httpx

from active_learning.corpus import write_jsonl
from active_learning.spans import Example
from service.label_studio import results_from_spans
from support import NERLOOP


def run(env, *args):
    return subprocess.run([*NERLOOP, *args], env=env, capture_output=True, text=True, timeout=300)


def test_init_import_sync_export(label_studio, tmp_path):
    env = {
        **os.environ,
        "NERLOOP_HOME": str(tmp_path / "home"),
        "NERLOOP_LABEL_STUDIO_URL": label_studio.url,
        "NERLOOP_LABEL_STUDIO_API_KEY": label_studio.pat,  # a personal access token works as well
        "NERLOOP_PUBLIC_URL": "http://127.0.0.1:9",
    }
    created = run(env, "init", "--name", "cli test", "--labels", "PER,LOC")
    assert created.returncode == 0, created.stdout + created.stderr
    assert "project 1" in created.stdout

    texts = ["Anna flew to Oslo .", "Nothing happened today .", "Boris met Anna in Lima ."]
    write_jsonl([Example(t) for t in texts], tmp_path / "tasks.jsonl")
    imported = run(env, "import", str(tmp_path / "tasks.jsonl"), "--project", "1")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "imported 3 tasks" in imported.stdout

    browser = httpx.Client(base_url=label_studio.url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=60)
    projects = browser.get("/api/projects/", params={"title": "cli test"}).json()["results"]
    ls_project = max(p["id"] for p in projects if p["title"] == "cli test")
    tasks = browser.get("/api/tasks/", params={"project": ls_project}).json()["tasks"]
    first = next(t for t in tasks if t["data"]["text"] == texts[0])
    result = results_from_spans(texts[0], [(0, 4, "PER"), (13, 17, "LOC")])
    answer = browser.post(f"/api/tasks/{first['id']}/annotations/", json={"result": result})
    assert answer.status_code == 201, answer.text

    synced = run(env, "sync", "--project", "1")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "1 annotation changes" in synced.stdout

    exported = run(env, "export", "--project", "1", "--format", "jsonl", "--out", str(tmp_path / "out.jsonl"))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["text"], r["spans"]) for r in records] == [(texts[0], [[0, 4, "PER"], [13, 17, "LOC"]])]


def test_clear_errors_for_a_wrong_token_or_an_unreachable_server(label_studio, tmp_path):
    env = {**os.environ, "NERLOOP_HOME": str(tmp_path), "NERLOOP_LABEL_STUDIO_URL": label_studio.url}
    env["NERLOOP_LABEL_STUDIO_API_KEY"] = "not-a-token"
    wrong = run(env, "init", "--name", "x", "--labels", "PER")
    assert wrong.returncode == 2 and "refused the API key" in wrong.stdout
    env["NERLOOP_LABEL_STUDIO_URL"] = "http://127.0.0.1:9"
    unreachable = run(env, "init", "--name", "x", "--labels", "PER")
    assert unreachable.returncode == 2 and "cannot reach Label Studio" in unreachable.stdout
