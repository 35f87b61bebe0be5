"""The dashboard and /metrics against a real API server (uvicorn, with an API token) on a seeded
SQLite database. The page is rendered by headless Chromium; its DOM and a screenshot are checked.

Chromium missing: the page's tests are skipped, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from service import sync
from service.api import create_app
from service.db import init_db
from service.models import Annotation, Job, JobStatus, ModelStatus, ModelVersion, Project, Task, TaskState
from service.settings import Settings
from support import free_port, require, wait_until

TOKEN = "dashboard-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

# (text, accepted spans, is_dev): entities PER 5, LOC 3, ORG 0
LABELLED = [
    ("Alice met Bob in Paris.", [(0, 5, "PER"), (10, 13, "PER"), (17, 22, "LOC")], False),
    ("Carol flew to Rome.", [(0, 5, "PER"), (14, 18, "LOC")], False),
    ("Dan stayed home.", [(0, 3, "PER")], False),
    ("Eve lives in Oslo.", [(0, 3, "PER"), (13, 17, "LOC")], True),
]
POOL = ["Frank called.", "Grace wrote to Helsinki.", "Nobody came."]

# (kind, status, seconds from start to finish or None, progress, error)
JOBS = [
    ("train", JobStatus.succeeded, 90, {"stage": "done", "version": "v1", "promoted": True}, None),
    ("score_pool", JobStatus.succeeded, 20, {"stage": "done"}, None),
    ("train", JobStatus.succeeded, 150, {"stage": "done", "version": "v2", "promoted": True}, None),
    ("sync", JobStatus.failed, 5, {"stage": "pulling"}, "LabelStudioError: connection refused\nTraceback ..."),
    ("train", JobStatus.running, None, {"stage": "training", "epoch": 1, "step": 30, "total_steps": 120, "loss": 0.41}, None),
    ("sync", JobStatus.queued, None, {}, None),
]


# What workers/retrain.py stores as v2's stopping signal: kappa 0.95 against v1, not yet stable.
STOPPING = {"kappa": 0.95, "stable_versions": 0, "f1_slope_per_1k_tokens": 42.857, "fired": False, "threshold": 0.99, "window": 3,
            "stop_set_size": 1, "advice": "keep going: kappa 0.9500 vs the active version, 0/3 versions stable at >= 0.99, ..."}


def dev_metrics(f1: float, per_type: dict[str, float], decision: str, train_tokens: int) -> dict:
    """What workers/retrain.py stores in ModelVersion.metrics (the parts the dashboard reads)."""
    return {
        "dev_size": 1,
        "train_tokens": train_tokens,
        "dev": {
            "precision": f1,
            "recall": f1,
            "f1": f1,
            "per_type": {label: {"precision": s, "recall": s, "f1": s, "support": 2} for label, s in per_type.items()},
        },
        "decision": decision,
    }


def seed(url: str) -> int:
    engine = init_db(url)
    with Session(engine) as session:
        project = Project(name="news", labels=["PER", "LOC", "ORG"])
        other = Project(name="other", labels=["PER"])
        session.add_all([project, other])
        session.flush()
        for text, spans, is_dev in LABELLED:
            task = Task(project_id=project.id, text=text, content_hash=sync.content_hash(text), state=TaskState.labelled, is_dev=is_dev)
            session.add(task)
            session.flush()
            session.add(Annotation(task_id=task.id, spans=[list(s) for s in spans], accepted=True, annotator="a@example.com"))
            if text.startswith("Alice"):  # a second opinion that does not count
                session.add(Annotation(task_id=task.id, spans=[[0, 5, "ORG"]], annotator="b@example.com"))
        for text in POOL:
            session.add(Task(project_id=project.id, text=text, content_hash=sync.content_hash(text)))
        session.add(Task(project_id=other.id, text="Ivy.", content_hash=sync.content_hash("Ivy.")))
        session.add_all([
            ModelVersion(project_id=project.id, name="v1", path="/models/v1", status=ModelStatus.retired, dev_f1=0.5, train_size=2,
                         metrics={**dev_metrics(0.5, {"PER": 0.6, "LOC": 0.4}, "no active version", 14), "vocabulary_added": 2400},
                         created_at=T0),
            ModelVersion(project_id=project.id, name="v2", path="/models/v2", status=ModelStatus.active, dev_f1=0.8, train_size=3,
                         metrics={**dev_metrics(0.8, {"PER": 0.9, "LOC": 0.7}, "dev F1 0.8000 >= active 0.5000", 21), "stopping": STOPPING,
                                  "vocabulary_added": 11},
                         created_at=T0 + timedelta(hours=1)),
            # a quick stage kept back (workers/retrain.py): no stopping signal, no point on the curve
            ModelVersion(project_id=project.id, name="v3", path="/models/v3", status=ModelStatus.candidate, dev_f1=0.7, train_size=4,
                         metrics={**dev_metrics(0.7, {"PER": 0.8, "LOC": 0.6}, "dev F1 0.7000 < active 0.8000", 28),
                                  "retraining": "quick", "vocabulary_added": 0},
                         created_at=T0 + timedelta(hours=2)),
        ])
        for n, (kind, status, seconds, progress, error) in enumerate(JOBS):
            created = T0 + timedelta(minutes=10 * n)
            started = created + timedelta(seconds=3) if status != JobStatus.queued else None
            session.add(Job(
                project_id=project.id, kind=kind, status=status, error=error, created_at=created, started_at=started,
                finished_at=started + timedelta(seconds=seconds) if seconds is not None else None,
                progress=progress, owner_token="worker-secret", heartbeat_at=created,
            ))
        session.commit()
        return project.id


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The API on a free port, in a thread of this process, with a bearer token required."""
    home = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{home / 'nerloop.db'}"
    project_id = seed(url)
    app = create_app(Settings(_env_file=None, home=home, database_url=url, api_token=TOKEN))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 30, 0.05, "the API server to start")
    assert server.started, "the API server stopped while starting"
    yield f"http://127.0.0.1:{server.config.port}", project_id
    server.should_exit = True
    thread.join(timeout=10)


# ---- the JSON the page draws ----------------------------------------------------------------------


def test_dashboard_json_needs_the_token(api):
    base, project_id = api
    assert httpx.get(f"{base}/api/v1/projects/{project_id}/dashboard").status_code == 401
    assert httpx.get(f"{base}/api/v1/projects/999/dashboard", headers=AUTH).status_code == 404


def test_dashboard_json(api):
    base, project_id = api
    response = httpx.get(f"{base}/api/v1/projects/{project_id}/dashboard", headers=AUTH)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["stopping"]["version"] == "v2" and data["stopping"]["verdict"] == "keep going" and data["stopping"]["kappa"] == 0.95

    assert data["project"]["name"] == "news"
    assert data["tasks"] == {"total": 7, "pool": 3, "labelled": 4, "dev": 1}
    assert data["annotations"] == {"total": 5, "accepted": 4}
    assert data["labels"] == {"PER": 5, "LOC": 3, "ORG": 0}
    assert data["active_model"] == "v2"
    assert data["learning_curve"] == [
        {"version": "v1", "train_size": 2, "train_tokens": 14, "dev_f1": 0.5},
        {"version": "v2", "train_size": 3, "train_tokens": 21, "dev_f1": 0.8},
    ]

    v1, v2, v3 = data["model_versions"]
    assert (v1["retraining"], v3["retraining"]) == (None, "quick")  # v1: stored before it was recorded
    report = httpx.get(f"{base}/api/v1/projects/{project_id}/report", headers=AUTH).json()
    assert [(v["name"], v["retraining"]) for v in report["model_versions"]] == [("v1", None), ("v2", None), ("v3", "quick")]
    assert (v1["name"], v1["active"], v1["status"]) == ("v1", False, "retired")
    assert (v2["name"], v2["active"], v2["status"]) == ("v2", True, "active")
    assert v2["dev_size"] == 1 and v2["decision"].startswith("dev F1 0.8000")
    assert {label: s["f1"] for label, s in v2["per_type"].items()} == {"PER": 0.9, "LOC": 0.7}
    assert (v1["vocabulary_added"], v2["vocabulary_added"]) == (2400, 11)

    jobs = data["jobs"]
    assert [(j["kind"], j["status"]) for j in jobs] == [(kind, status.value) for kind, status, *_ in reversed(JOBS)]
    running = jobs[1]
    assert running["stage"] == "training" and running["fraction"] == 0.25 and running["duration_seconds"] is None
    assert all("owner" not in j["progress"] and "heartbeat" not in j["progress"] for j in jobs)  # workers' bookkeeping
    first = jobs[-1]
    assert first["fraction"] == 1.0 and first["duration_seconds"] == 90
    assert jobs[2]["error"].startswith("LabelStudioError")

    assert data["job_counts"]["by_status"] == {"queued": 1, "running": 1, "succeeded": 3, "failed": 1}
    assert data["job_counts"]["by_kind"]["train"] == {"queued": 0, "running": 1, "succeeded": 2, "failed": 0}
    assert data["job_counts"]["by_kind"]["sync"] == {"queued": 1, "running": 0, "succeeded": 0, "failed": 1}

    assert data["review"] == {
        "by_status": {"open": 0, "fixed": 0, "confirmed": 0}, "by_kind": {}, "by_label": {}, "confirmations": 0, "last_job_id": None
    }
    # Alice's task has two annotators who share no span: 0 agreement, a review candidate.
    agreement = data["agreement"]
    assert (agreement["tasks"], agreement["f1"]) == (1, {"exact": 0.0, "overlap": 0.0})
    assert agreement["per_label"] == {label: {"exact": 0.0, "overlap": 0.0} for label in ("LOC", "ORG", "PER")}
    assert [(p["annotators"], p["tasks"]) for p in agreement["pairs"]] == [(["a@example.com", "b@example.com"], 1)]
    assert [t["disagreement"] for t in agreement["disagreeing_tasks"]] == [1.0]


# ---- the page in headless Chromium ----------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    require("headless Chromium", None if found else "not installed (Debian: apt-get install chromium)")
    return found


def run_chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Load ``url`` in a fresh headless Chromium; its scripts get 10 s of (virtual) time to render."""
    command = [
        chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000", *args, url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


class Elements(HTMLParser):
    """Every element of a document with its attributes, parent and text (its own and its descendants')."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, html: str):
        super().__init__()
        self.all: list[dict] = []
        self._open: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "parent": self._open[-1] if self._open else None}
        self.all.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag):
        if any(e["tag"] == tag for e in self._open):
            while self._open.pop()["tag"] != tag:
                pass

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def find(self, tag: str, **attrs) -> list[dict]:
        wanted = {key.replace("_", "-"): value for key, value in attrs.items()}
        return [e for e in self.all if e["tag"] == tag and all(e["attrs"].get(k) == v for k, v in wanted.items())]

    def one(self, tag: str, **attrs) -> dict:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} {attrs}> elements"
        return found[0]

    def rows(self, table_id: str) -> list[dict]:
        """The body rows of the table with this id."""
        table = self.one("table", id=table_id)
        return [e for e in self.all if e["tag"] == "tr" and e["parent"]["tag"] == "tbody" and e["parent"]["parent"] is table]

    def cells(self, row: dict) -> list[str]:
        return [e["text"].strip() for e in self.all if e["tag"] == "td" and e["parent"] is row]


def test_page_is_served_without_data_or_token(api):
    base, _ = api
    response = httpx.get(f"{base}/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    outside = response.text.replace('"http://www.w3.org/2000/svg"', "")  # SVG's namespace name, never fetched
    assert "http://" not in outside and "https://" not in outside  # nothing loads from elsewhere


@pytest.mark.integration
def test_page_asks_for_the_token(api, tmp_path):
    base, project_id = api
    dom = Elements(run_chromium(tmp_path, f"{base}/dashboard?project={project_id}", "--dump-dom"))
    assert dom.one("main", id="content")["attrs"]["data-state"] == "error"
    assert "hidden" not in dom.one("form", id="login")["attrs"]
    assert "API token" in dom.one("div", id="message")["text"]


@pytest.mark.integration
def test_page_renders_the_project(api, tmp_path):
    base, project_id = api
    dom = Elements(run_chromium(tmp_path, f"{base}/dashboard?project={project_id}#token={TOKEN}", "--dump-dom"))
    main = dom.one("main", id="content")
    assert main["attrs"]["data-state"] == "ready", dom.one("div", id="message")["text"]
    assert "hidden" not in main["attrs"] and "hidden" in dom.one("form", id="login")["attrs"]
    assert [o["text"] for o in dom.find("option")] == ["news (#1)", "other (#2)"]

    # the learning curve: one point per model version, joined by one line, the active one filled
    points = [e for e in dom.find("circle") if "point" in e["attrs"].get("class", "").split()]
    assert [p["attrs"]["data-version"] for p in points] == ["v1", "v2"]
    assert [p["attrs"]["class"] for p in points] == ["point", "point active"]
    curve = dom.one("path", **{"class": "curve"})
    assert sum(curve["attrs"]["d"].count(c) for c in "ML") == 2

    labels = {row["attrs"]["data-label"]: dom.cells(row)[:2] for row in dom.rows("labels")}
    assert labels == {"PER": ["PER", "5"], "LOC": ["LOC", "3"], "ORG": ["ORG", "0"]}

    v3, v2, v1 = dom.rows("versions")  # newest first
    assert dom.cells(v3)[:2] == ["v3 quick", "candidate"]
    assert v2["attrs"]["data-active"] == "true" and v2["attrs"]["class"] == "active"
    assert dom.cells(v2)[:7] == ["v2 ★", "active", "3", "1", "0.800", "0.900", "0.700"]
    assert dom.cells(v2)[7] == "–"  # ORG: no dev entities, no F1
    assert v1["attrs"]["data-active"] == "false" and dom.cells(v1)[:2] == ["v1", "retired"]
    vocabulary = dom.one("p", id="vocabulary")
    assert "hidden" not in vocabulary["attrs"] and vocabulary["attrs"]["data-added"] == "2411"
    assert vocabulary["text"].startswith("2,411 characters") and "NERLOOP_BASE_MODEL" in vocabulary["text"]

    jobs = dom.rows("jobs")
    assert [(r["attrs"]["data-kind"], r["attrs"]["data-status"]) for r in jobs] == [(k, s.value) for k, s, *_ in reversed(JOBS)]
    running = dom.cells(jobs[1])
    assert "step 30/120" in running[3] and "epoch 1" in running[3]
    assert dom.cells(jobs[2])[6] == "LabelStudioError: connection refused"  # the error's first line
    assert dom.cells(jobs[-1])[5] == "1 min 30 s"

    queues = {row["attrs"]["data-kind"]: dom.cells(row) for row in dom.rows("queues")}
    assert queues == {  # columns: queued, running, succeeded, failed
        "score_pool": ["score_pool", "0", "0", "1", "0"],
        "sync": ["sync", "1", "0", "0", "1"],
        "train": ["train", "0", "1", "2", "0"],
        "all": ["all", "1", "1", "3", "1"],
    }

    review = {row["attrs"]["data-review-status"]: dom.cells(row) for row in dom.rows("review-status")
              if "data-review-status" in row["attrs"]}
    assert review == {"open": ["open", "0"], "fixed": ["fixed", "0"], "confirmed": ["confirmed", "0"]}
    stopping = dom.one("div", id="stopping")
    assert stopping["attrs"]["data-verdict"] == "keep going" and "kappa 0.9500" in stopping["text"] and "0/3" in stopping["text"]
    pair = next(row for row in dom.rows("agreement") if "data-pair" in row["attrs"])
    assert dom.cells(pair) == ["a@example.com & b@example.com", "1", "0.000", "0.000"]


@pytest.mark.integration
def test_screenshot(api, tmp_path):
    base, project_id = api
    png = tmp_path / "dashboard.png"
    run_chromium(tmp_path, f"{base}/dashboard?project={project_id}#token={TOKEN}", f"--screenshot={png}", "--window-size=1280,1600")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.size == (1280, 1600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 100, "the screenshot is (almost) blank"
    print(f"screenshot: {png}")


# ---- /metrics -------------------------------------------------------------------------------------


def scrape(base: str) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(f"{base}/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_need_the_token(api):
    base, _ = api
    assert httpx.get(f"{base}/metrics").status_code == 401


def test_metrics_from_the_database(api):
    base, project_id = api
    p = str(project_id)
    samples = scrape(base)

    assert value(samples, "nerloop_annotations", project=p, accepted="true") == 4
    assert value(samples, "nerloop_annotations", project=p, accepted="false") == 1
    assert value(samples, "nerloop_tasks", project=p, state="pool") == 3
    assert value(samples, "nerloop_tasks", project=p, state="labelled") == 4
    assert value(samples, "nerloop_tasks", project="2", state="pool") == 1

    assert value(samples, "nerloop_jobs", project=p, kind="train", status="succeeded") == 2
    assert value(samples, "nerloop_jobs", project=p, kind="train", status="running") == 1
    assert value(samples, "nerloop_jobs", project=p, kind="sync", status="failed") == 1
    assert value(samples, "nerloop_jobs", project=p, kind="sync", status="queued") == 1

    train = {"kind": "train", "status": "succeeded"}
    assert value(samples, "nerloop_job_duration_seconds_count", **train) == 2
    assert value(samples, "nerloop_job_duration_seconds_sum", **train) == 240
    buckets = ("60.0", "120.0", "300.0", "+Inf")
    assert [value(samples, "nerloop_job_duration_seconds_bucket", **train, le=le) for le in buckets] == [0, 1, 2, 2]
    assert value(samples, "nerloop_job_duration_seconds_count", kind="sync", status="failed") == 1
    assert value(samples, "nerloop_job_duration_seconds_count", kind="train", status="running") is None  # not finished

    assert value(samples, "nerloop_active_model_dev_f1", project=p, version="v2") == 0.8
    assert value(samples, "nerloop_active_model_dev_f1", project=p, version="v1") is None  # retired
    assert value(samples, "nerloop_active_model_dev_type_f1", project=p, version="v2", type="PER") == 0.9


def test_metrics_count_api_requests(api):
    base, project_id = api
    for _ in range(3):
        httpx.get(f"{base}/api/v1/projects/{project_id}/dashboard", headers=AUTH)
    httpx.get(f"{base}/api/v1/projects/{project_id}/dashboard")  # refused: no token
    samples = scrape(base)
    route = "/api/v1/projects/{project_id}/dashboard"
    assert value(samples, "nerloop_http_request_duration_seconds_count", method="GET", route=route, status="200") >= 3
    assert value(samples, "nerloop_http_request_duration_seconds_count", method="GET", route=route, status="401") >= 1
