"""The Celery workers, for real: a worker subprocess on a real Redis broker (and once on the embedded
SQLite broker), trainings of the tiny encoder, pool scoring in shards, a bulk push to a recording
Label Studio stand-in, and a worker process killed mid-training.

Redis must answer on 127.0.0.1:6379 (the ``redis_url`` fixture): under CI (``CI=true``) its absence
fails these tests, elsewhere it skips them. Each run uses a key prefix of its own, removed at the end,
so it shares Redis with nobody.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from active_learning.metrics import Scores
from active_learning.recipe import decide
from active_learning.spans import Example, validate
from active_learning.tagger import LABELS_FILE, Tagger
from active_learning.training import TrainConfig
from service import augmented_examples, job_queue, sync
from service.db import get_engine, init_db
from service.models import (
    Annotation,
    AugmentedExample,
    Job,
    JobStatus,
    ModelStatus,
    ModelVersion,
    Prediction,
    Project,
    Task,
    TaskState,
    utcnow,
)
from service.progress import progress_view
from service.settings import Settings, get_settings
from support import NERLOOP, REPO, TINY_TRAIN, add_labelled_task, add_project, make_client, wait_until
from tiny import LABELS, toy_corpus
from workers import celery_app, lifecycle, store
from workers.retrain import MAX_QUICK_IN_A_ROW, Incumbent, is_quick_stage

# kombu's SQLAlchemy transport (the embedded broker) uses a loader option SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

LONG_TRAIN = {"epochs": 100000, "min_steps": 0, "patience": 100000}


# ---- stand-ins and helpers -------------------------------------------------------------------------


@dataclass
class LabelStudioRecorder:
    """Answers the calls of a prediction push (bulk import, project update, listing and deleting the
    superseded prediction versions) and keeps them."""

    url: str
    imports: list = field(default_factory=list)  # (ls_project_id, [prediction, ...]) per request
    updates: list = field(default_factory=list)  # (ls_project_id, body)
    deletions: list = field(default_factory=list)  # (ls_project_id, model_version)

    def versions(self, project_id: int) -> dict[str, int]:
        """Prediction counts per model version, newest first, as Label Studio lists them."""
        counts: dict[str, int] = {}
        for project, predictions in reversed(self.imports):
            if project == project_id:
                for prediction in predictions:
                    version = prediction.get("model_version")
                    if (project, version) not in self.deletions:
                        counts[version] = counts.get(version, 0) + 1
        return counts


@pytest.fixture(scope="module")
def label_studio_recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    recorder = LabelStudioRecorder(f"http://127.0.0.1:{server.server_address[1]}")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(201 if self.command == "POST" else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self):
            return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")

        def do_POST(self):
            parts = self.path.strip("/").split("/")  # api/projects/<id>/import/predictions
            predictions = self._body()
            recorder.imports.append((int(parts[2]), predictions))
            self._answer({"created": len(predictions)})

        def do_PATCH(self):
            project_id = int(self.path.strip("/").split("/")[2])
            recorder.updates.append((project_id, self._body()))
            self._answer({"id": project_id})

        def do_GET(self):  # api/projects/<id>/model-versions/
            self._answer(recorder.versions(int(self.path.strip("/").split("/")[2])))

        def do_DELETE(self):  # api/projects/<id>/model-versions/ {"model_version": ...}
            project_id, version = int(self.path.strip("/").split("/")[2]), self._body()["model_version"]
            deleted = recorder.versions(project_id).get(version, 0)
            recorder.deletions.append((project_id, version))
            self._answer({"deleted_predictions": deleted})

        def log_message(self, *args):
            pass

    server.RequestHandlerClass = Handler
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield recorder
    server.shutdown()
    server.server_close()


@dataclass
class Deployment:
    """What a worker and the test share: one database, one broker, one model store."""

    home: Path
    env: dict  # NERLOOP_* for the worker and for this process
    settings: Settings

    @property
    def engine(self):
        return get_engine(self.settings.database_url)

    def session(self) -> Session:
        return Session(self.engine)


def settings_from(env: dict[str, str]) -> Settings:
    """The ``Settings`` a process started with ``env`` reads (JSON fields decoded as from the environment)."""
    fields = {}
    for key, value in env.items():
        name = key.removeprefix("NERLOOP_").lower()
        if name in Settings.model_fields:
            fields[name] = json.loads(value) if Settings.model_fields[name].annotation == dict[str, Any] else value
    return Settings(_env_file=None, **fields)


def make_deployment(tmp: Path, tiny_encoder: Path, broker: str, backend: str, recorder_url: str, **extra) -> Deployment:
    env = {
        "NERLOOP_HOME": str(tmp / "home"),
        "NERLOOP_DATABASE_URL": f"sqlite:///{tmp / 'nerloop.db'}",
        "NERLOOP_BASE_MODEL": str(tiny_encoder),
        "NERLOOP_BROKER_URL": broker,
        "NERLOOP_RESULT_BACKEND": backend,
        "NERLOOP_LABEL_STUDIO_URL": recorder_url,
        "NERLOOP_LABEL_STUDIO_API_KEY": "recorder-token",
        "NERLOOP_TRAIN_CONFIG": json.dumps(TINY_TRAIN),
        "NERLOOP_SCORE_SHARD_SIZE": "8",
        "NERLOOP_JOB_HEARTBEAT_SECONDS": "0.3",
        "NERLOOP_JOB_STALE_SECONDS": "30",
        "NERLOOP_JOB_MAX_ATTEMPTS": "2",
        "NERLOOP_JOB_WAIT_SECONDS": "1",
        "NERLOOP_LOG_FORMAT": "json",
        **extra,
    }
    settings = settings_from(env)
    init_db(settings.database_url)
    return Deployment(tmp / "home", env, settings)


def point_settings_at(patch: pytest.MonkeyPatch, deployment: Deployment) -> None:
    """Make this process's (cached) settings those of ``deployment``; ``patch`` undoes it."""
    for key in [k for k in os.environ if k.startswith("NERLOOP_")]:
        patch.delenv(key)
    for key, value in deployment.env.items():
        patch.setenv(key, value)
    get_settings.cache_clear()


@pytest.fixture
def use_env(monkeypatch):
    """Point this process's settings at a deployment for one test."""
    yield lambda deployment: point_settings_at(monkeypatch, deployment)
    monkeypatch.undo()
    get_settings.cache_clear()


class Worker:
    """``celery -A workers.celery_app worker`` in a process group of its own, logging to a file."""

    def __init__(self, deployment: Deployment, pool: str, log: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
        env.update(deployment.env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        self.log = log
        self._output = log.open("w")
        command = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "gpu,cpu", "-c", "1",
                   "--pool", pool, "--loglevel", "info", "-n", f"test-{uuid.uuid4().hex[:8]}@%h", "--without-heartbeat",
                   "--without-gossip", "--without-mingle"]
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: " ready." in log.read_text() or self.process.poll() is not None, 120, message="the worker to start")
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited {self.process.returncode}:\n{log.read_text()[-3000:]}")
        except AssertionError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # warm shutdown: the main process stops its pool itself
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group this test started, pool included
                self.process.wait(10)
        self._output.close()


def job_row(deployment: Deployment, job_id: int) -> Job:
    with deployment.session() as session:
        return session.get(Job, job_id)


def wait_job(deployment: Deployment, job_id: int, worker: Worker, timeout: float = 90) -> Job:
    def finished():
        job = job_row(deployment, job_id)
        return job if job.status in lifecycle.FINISHED else None

    try:
        return wait_until(finished, timeout, message=f"job {job_id} to finish")
    except AssertionError:
        raise AssertionError(f"job {job_id}: {job_row(deployment, job_id)}\nworker log:\n{worker.log.read_text()[-4000:]}") from None


def request(deployment: Deployment, project_id: int, kind: str = "train", **task_kwargs) -> int:
    with deployment.session() as session:
        return job_queue.request(session, project_id, kind, settings=deployment.settings, **task_kwargs).id


def new_project(deployment: Deployment, labelled: int, pool: int, ls_project_id: int | None = None) -> int:
    """A project with ``labelled`` toy examples imported as ground truth (those without entities join
    the pool) and ``pool`` unlabelled texts."""
    with deployment.session() as session:
        project = Project(name="toy", labels=list(LABELS), ls_project_id=ls_project_id)
        session.add(project)
        session.flush()
        sync.import_examples(session, project, toy_corpus(labelled, seed=1), dev_share=0.25)
        sync.import_examples(session, project, [Example(e.text, []) for e in toy_corpus(pool, seed=2)], dev_share=0.25)
        for task in session.exec(select(Task).where(Task.project_id == project.id, Task.state == TaskState.pool)):
            task.ls_task_id = 1000 + task.id  # as if pushed to Label Studio
            session.add(task)
        session.commit()
        return project.id


def versions(deployment: Deployment, project_id: int) -> list[ModelVersion]:
    with deployment.session() as session:
        return session.exec(select(ModelVersion).where(ModelVersion.project_id == project_id).order_by(ModelVersion.id)).all()


def score_job(deployment: Deployment, project_id: int, version_id: int) -> int:
    def find():
        with deployment.session() as session:
            for job in session.exec(select(Job).where(Job.project_id == project_id, Job.kind == "score_pool")):
                if job.progress.get("version_id") == version_id:
                    return job.id
        return None

    return wait_until(find, 30, message=f"a score_pool job for version {version_id}")


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


# ---- without a worker ------------------------------------------------------------------------------


def test_queues_routes_and_delivery_settings():
    app = celery_app.app
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost and app.conf.worker_prefetch_multiplier == 1
    router = app.amqp.router
    expected = {"nerloop.train": "gpu", "nerloop.score_pool": "gpu", "nerloop.score_shard": "gpu", "nerloop.sync": "cpu",
                "nerloop.push_predictions": "cpu", "nerloop.prune_predictions": "cpu", "celery.chord_unlock": "cpu"}
    for name, queue in expected.items():
        route = router.route({}, name, (), {})["queue"]
        assert (route.name, route.exchange.name, route.routing_key) == (queue, queue, queue)
    with pytest.raises(ValueError, match="unknown task"):
        celery_app.enqueue("nerloop.trian", project_id=1)


def test_promotion_rule():
    def scores(f1):
        return Scores(f1, f1, f1)

    assert decide(scores(0.1), None, has_active=False) == (True, "promoted: no version was active yet")
    assert decide(scores(0.8), scores(0.8), has_active=True)[0]  # not worse: promoted
    assert decide(scores(0.9), scores(0.8), has_active=True)[0]
    assert not decide(scores(0.7), scores(0.8), has_active=True)[0]
    assert not decide(None, None, has_active=True)[0]  # no dev set: nothing proves it better


def test_a_training_is_the_quick_stage_only_for_examples_new_to_every_version():
    full = ModelVersion(project_id=1, name="v1", path="/m/v1", train_size=40, metrics={"base": "/base", "augmented": 10})
    last_full = {"path": "/m/v1", "trained_on": 50}
    quick = ModelVersion(project_id=1, name="v2", path="/m/v2", train_size=55, metrics={"retraining": "quick", "last_full": last_full})
    on, scaled = TrainConfig(), TrainConfig(warm_start_scaling=1.0)
    incumbent = Incumbent.of(full)
    assert (incumbent.trained_on, incumbent.signal_reference) == (50, "/m/v1")  # augmented examples count
    assert is_quick_stage(True, on, incumbent, [(50, None)], 51)  # one example new to every version
    assert not is_quick_stage(True, on, incumbent, [(50, None)], 50)  # nothing new (a relabel, `nerloop train`): the full stage
    assert not is_quick_stage(True, on, None, [], 50)  # a fresh start has nothing to continue quickly
    assert not is_quick_stage(False, on, incumbent, [(50, None)], 51)  # NERLOOP_QUICK_RETRAINING=false
    assert not is_quick_stage(True, scaled, incumbent, [(50, None)], 51)  # the recipe is one pass already
    # After a quick v2 on 55 (kept back or not), the training that follows on the same 55 is the full stage;
    # it is sized against v1's 50 (a scaled warm start is not cut to nothing by the quick stage's pass)
    # and its stopping signal compares with v1.
    assert not is_quick_stage(True, on, Incumbent.of(quick), [(55, "quick"), (50, "full")], 55)
    assert (Incumbent.of(quick).trained_on, Incumbent.of(quick).signal_reference, Incumbent.of(quick).path) == (50, "/m/v1", "/m/v2")
    # Annotators faster than the quick stages: after MAX_QUICK_IN_A_ROW of them, a full one, new examples or not.
    chain = [(55 - i, "quick") for i in range(MAX_QUICK_IN_A_ROW - 1)]
    assert is_quick_stage(True, on, Incumbent.of(quick), chain, 60)
    assert not is_quick_stage(True, on, Incumbent.of(quick), [(56, "quick"), *chain], 60)

    # What the CLI, the dashboard and the demo show of one (service.progress).
    under_way = {"stage": "training", "retraining": "quick", "step": 3, "total_steps": 50}
    running = Job(kind="train", status=JobStatus.running, progress=under_way)
    assert progress_view(running).summary == "training (quick stage) · step 3/50"
    done = {"version": "v2", "promoted": True, "dev_f1": 0.9, "active_dev_f1": 0.8, "retraining": "quick", "stopping": None}
    assert progress_view(Job(kind="train", status=JobStatus.succeeded, progress=done)).summary == (
        "v2 promoted, dev F1 0.900 (the active version had 0.800) · quick stage: the full training follows"
    )


def test_a_quick_versions_full_stage_is_asked_for_once_and_found_again_when_lost(tmp_path, use_env):
    home = tmp_path / "home"
    deployment = make_deployment(tmp_path, tmp_path, f"sqla+sqlite:///{home / 'broker.db'}", f"db+sqlite:///{home / 'results.db'}",
                                 "http://127.0.0.1:9")
    use_env(deployment)
    project_id = new_project(deployment, labelled=12, pool=0)

    def add(**fields) -> int:
        with deployment.session() as session:
            row = Job(project_id=project_id, celery_id=str(uuid.uuid4()), **fields) if "kind" in fields else ModelVersion(
                project_id=project_id, status=ModelStatus.active, train_size=9, **fields)
            session.add(row)
            session.commit()
            return row.id

    def trainings() -> list[Job]:
        with deployment.session() as session:
            return session.exec(select(Job).where(Job.project_id == project_id, Job.kind == "train").order_by(Job.id)).all()

    full = add(name="v1", path="/m/v1", metrics={"retraining": "full"})
    quick = add(name="v2", path="/m/v2", metrics={"retraining": "quick", "last_full": {"path": "/m/v1", "trained_on": 8}})
    with deployment.session() as session:
        job_queue.request_full_stage(session, project_id, full)  # v1 is not the newest: v2 brings its own
        assert trainings() == []
        job_queue.request_full_stage(session, project_id, quick)
        job_queue.request_full_stage(session, project_id, quick)  # a second push (a redelivery): queued already
    [asked] = trainings()
    assert asked.status == JobStatus.queued

    def due() -> int | None:
        with deployment.session() as session:
            job = job_queue.retrain_if_due(session, session.get(Project, project_id))
            return job.id if job else None

    def finish(job_id: int, status: JobStatus) -> None:
        with deployment.session() as session:
            session.get(Job, job_id).status = status
            session.commit()

    assert due() is None  # fewer than retrain_every new labels, and the full stage is queued
    # The other story: that job stands for the quick stage itself, and its push then fails (Label
    # Studio refused it), so nothing asks for the full stage.
    finish(asked.id, JobStatus.succeeded)
    scoring = add(kind="score_pool", arguments={"version_id": quick})
    assert due() is None  # the quick version's scoring is still under way: its push will ask
    finish(scoring, JobStatus.failed)
    found = due()  # the beat's sweep (or the next annotation) finds the lost full stage
    assert found is not None and [j.id for j in trainings()] == [asked.id, found]
    finish(found, JobStatus.failed)
    assert due() is None  # a failed training is not retried by itself


def test_owner_liveness():
    now = utcnow()
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    live = Job(kind="train", owner_host=socket.gethostname(), owner_pid=os.getpid(), owner_token="t", heartbeat_at=now)
    assert lifecycle.owner_alive(live)
    assert not lifecycle.owner_alive(live.model_copy(update={"owner_pid": dead.pid}))  # its process is gone
    old = now.replace(year=now.year - 1)
    assert not lifecycle.owner_alive(live.model_copy(update={"heartbeat_at": old}))  # silent too long
    assert not lifecycle.owner_alive(Job(kind="train"))


def test_models_are_saved_whole_and_leftovers_removed(tmp_path, tiny_encoder):
    tagger = Tagger.load(str(tiny_encoder), labels=LABELS)
    directory = tmp_path / "project-1"
    saved = store.save_atomically(tagger, directory, store.attempt_name(3, "a1b2c3d4e5f6a7b8"))
    assert saved == directory / "job-3-a1b2c3d4e5f6" and (saved / LABELS_FILE).is_file()
    assert Tagger.load(str(saved)).labels == LABELS
    (directory / ".tmp-job-4-deadbeef").mkdir()  # killed while saving
    (directory / "job-5-feedface").mkdir()  # killed between the rename and the row
    assert sorted(p.name for p in store.remove_leftovers(directory, keep=[str(saved)])) == [".tmp-job-4-deadbeef", "job-5-feedface"]
    assert [p.name for p in directory.iterdir()] == [saved.name]


def test_one_training_per_project_and_a_silent_one_is_taken_over(tmp_path, use_env):
    deployment = make_deployment(tmp_path, tmp_path, "redis://127.0.0.1:9/0", "redis://127.0.0.1:9/0", "http://127.0.0.1:9")
    use_env(deployment)
    with deployment.session() as session:
        project = Project(name="toy", labels=list(LABELS))
        session.add(project)
        session.flush()
        first, second = Job(project_id=project.id, kind="train"), Job(project_id=project.id, kind="train")
        session.add_all([first, second])
        session.commit()
        first, second = first.id, second.id

    claim = lifecycle.claim(first)
    assert claim.outcome is lifecycle.Outcome.run and claim.attempt == 1
    assert lifecycle.claim(first).outcome is lifecycle.Outcome.wait  # a second delivery while it runs
    assert lifecycle.claim(second).outcome is lifecycle.Outcome.wait  # one training per project
    assert job_row(deployment, second).status == JobStatus.queued and job_row(deployment, second).waiting_for == first

    with deployment.session() as session:  # the first one's worker falls silent
        job = session.get(Job, first)
        job.heartbeat_at = datetime(2000, 1, 1, tzinfo=UTC)
        session.add(job)
        session.commit()
    taken = lifecycle.claim(second)
    assert taken.outcome is lifecycle.Outcome.run
    assert job_row(deployment, first).status == JobStatus.failed and "lost" in job_row(deployment, first).error
    with pytest.raises(lifecycle.JobLost):  # the silent attempt, if it wakes, may write nothing
        with lifecycle.JobRun(first, claim.token).owned():
            pass

    with pytest.raises(ValueError):
        with lifecycle.JobRun(second, taken.token) as run:
            run.update(stage="training", step=3)
            raise ValueError("the GPU caught fire")
    failed = job_row(deployment, second)
    assert failed.status == JobStatus.failed and failed.error.startswith("ValueError: the GPU caught fire")
    assert failed.progress["step"] == 3 and failed.finished_at is not None


def test_concurrent_claims_let_exactly_one_training_of_a_project_run(url, tmp_path, use_env):
    """On SQLite and PostgreSQL: six deliveries of six queued trainings of one project, at once."""
    nowhere = "redis://127.0.0.1:9/0"
    deployment = make_deployment(tmp_path, tmp_path, nowhere, nowhere, "http://127.0.0.1:9", NERLOOP_DATABASE_URL=url)
    use_env(deployment)
    with deployment.session() as session:
        project = Project(name="toy", labels=list(LABELS))
        session.add(project)
        session.flush()
        queued = [Job(project_id=project.id, kind="train") for _ in range(6)]
        session.add_all(queued)
        session.commit()
        ids = [job.id for job in queued]
    barrier = threading.Barrier(len(ids))
    outcomes = {}

    def deliver(job_id: int) -> None:
        barrier.wait()
        outcomes[job_id] = lifecycle.claim(job_id).outcome

    threads = [threading.Thread(target=deliver, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcome.value for outcome in outcomes.values()) == ["run"] + ["wait"] * 5
    with deployment.session() as session:
        assert len(session.exec(select(Job).where(Job.status == JobStatus.running)).all()) == 1


def test_api_queues_coalesces_and_reports_jobs_and_503s_without_a_broker(tmp_path):
    with make_client(tmp_path) as client:
        project = add_project(client)
        add_labelled_task(client, project.id)
        first = client.post(f"/api/v1/projects/{project.id}/train")
        assert first.status_code == 202 and first.json()["status"] == "queued" and first.json()["celery_id"]
        again = client.post(f"/api/v1/projects/{project.id}/train")
        assert again.json()["id"] == first.json()["id"]  # a request while one is queued reuses it
        assert client.get(f"/api/v1/jobs/{first.json()['id']}").json()["kind"] == "train"
        assert [j["id"] for j in client.get(f"/api/v1/projects/{project.id}/jobs").json()] == [first.json()["id"]]
        assert client.get("/api/v1/jobs/999").status_code == 404
        assert client.post("/api/v1/projects/999/train").status_code == 404
    # The message sits in the embedded broker of that deployment, nowhere else.
    assert (tmp_path / "home" / "broker.db").is_file()

    # A broker that is down: the request is kept as one pending job (issue 14: not one failed job per
    # request), which the 503 says in words that are true.
    with make_client(tmp_path / "down", broker_url="redis://127.0.0.1:9/0") as client:  # nothing listens on port 9
        project = add_project(client)
        add_labelled_task(client, project.id)
        refused = client.post(f"/api/v1/projects/{project.id}/train")
        message = refused.json()["detail"][0]["message"]
        assert refused.status_code == 503 and "did not take nerloop.train" in message and "sent when the broker answers again" in message
        assert client.post(f"/api/v1/projects/{project.id}/train").status_code == 503
        pending = client.get(f"/api/v1/projects/{project.id}/jobs").json()
        assert [(j["status"], j["error"].startswith("not sent")) for j in pending] == [("queued", True)]


# ---- with a worker on Redis ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_deployment(tmp_path_factory, tiny_encoder, label_studio_recorder, redis_url):
    """A deployment on Redis, with a key prefix of its own; this process publishes there too."""
    prefix = f"nerloop-test-{uuid.uuid4().hex[:8]}:"
    deployment = make_deployment(
        tmp_path_factory.mktemp("redis-deployment"), tiny_encoder, redis_url, redis_url, label_studio_recorder.url,
        NERLOOP_BROKER_TRANSPORT_OPTIONS=json.dumps({"global_keyprefix": prefix}),
        NERLOOP_RESULT_BACKEND_TRANSPORT_OPTIONS=json.dumps({"global_keyprefix": prefix}),
    )
    with pytest.MonkeyPatch.context() as patch:
        point_settings_at(patch, deployment)
        yield deployment
    get_settings.cache_clear()
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


@pytest.fixture(scope="module")
def redis_worker(redis_deployment):
    worker = Worker(redis_deployment, "prefork", redis_deployment.home.parent / "worker.log")
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def trained_project(redis_deployment, redis_worker):
    """A project trained once by the worker: (project id, the finished training job)."""
    project_id = new_project(redis_deployment, labelled=60, pool=20, ls_project_id=7)
    return project_id, wait_job(redis_deployment, request(redis_deployment, project_id), redis_worker)


def test_training_registers_promotes_scores_and_pushes(redis_deployment, redis_worker, trained_project, label_studio_recorder):
    deployment = redis_deployment
    project_id, job = trained_project
    assert job.status == JobStatus.succeeded, job.error
    assert job.progress["promoted"] and job.attempt == 1
    progress = job.progress
    assert progress["epoch"] >= 1 and 0 < progress["step"] <= progress["total_steps"] and progress["loss"] > 0

    [version] = versions(deployment, project_id)
    assert version.status == ModelStatus.active and version.name == "v1" and version.dev_f1 is not None
    assert version.metrics["dev"]["f1"] == version.dev_f1 and version.metrics["dev_size"] > 0
    reported = (progress["dev_f1"], progress["train_size"], progress["dev_size"])
    assert reported == (version.dev_f1, version.train_size, version.metrics["dev_size"])
    assert (Path(version.path) / LABELS_FILE).is_file() and Path(version.path).parent.name == f"project-{project_id}"
    assert not [p for p in Path(version.path).parent.iterdir() if p.name.startswith(".tmp-")]

    scoring = wait_job(deployment, score_job(deployment, project_id, version.id), redis_worker)
    assert scoring.status == JobStatus.succeeded, scoring.error
    with deployment.session() as session:
        pool = session.exec(select(Task).where(Task.project_id == project_id, Task.state == TaskState.pool)).all()
        stored = {p.task_id: p for p in session.exec(select(Prediction).where(Prediction.model_version_id == version.id))}
    assert len(pool) > 16 and set(stored) == {t.id for t in pool}
    shards = -(-len(pool) // 8)
    assert (scoring.progress["shards"], scoring.progress["scored"], scoring.progress["pushed"]) == (shards, len(pool), len(pool))
    assert all(0 < p.score <= 1 for p in stored.values())
    assert any(p.spans for p in stored.values())

    def review_job():
        with deployment.session() as session:
            return session.exec(select(Job).where(Job.project_id == project_id, Job.kind == "review")).first()

    # The review after a promotion waits for the pre-annotations: it is asked for once they are pushed.
    review = wait_until(review_job, 30, message="the review job after the push")
    assert review.created_at >= scoring.finished_at
    wait_job(deployment, review.id, redis_worker)  # not left running into the next test

    # One bulk import into Label Studio project 7 with every pool task's score, then the model version.
    [(ls_project, pushed)] = [call for call in label_studio_recorder.imports if call[0] == 7]
    by_ls_task = {t.ls_task_id: stored[t.id] for t in pool}
    assert sorted(p["task"] for p in pushed) == sorted(by_ls_task)
    assert all(p["score"] == by_ls_task[p["task"]].score and p["model_version"] == "v1" for p in pushed)
    assert all(r["from_name"] == "label" and r["value"]["labels"][0] in LABELS for p in pushed for r in p["result"])
    assert any(
        project == 7 and body.get("model_version") == "v1" and body.get("sampling") == "Uncertainty sampling"
        for project, body in label_studio_recorder.updates
    )


def test_worker_logs_are_json_lines_naming_the_project_and_job(redis_worker, trained_project):
    project_id, job = trained_project
    records = [json.loads(line) for line in redis_worker.log.read_text().splitlines() if line.startswith("{")]
    mine = [r for r in records if r.get("job_id") == job.id]
    assert mine and all(r["project_id"] == project_id and r["task"] == "nerloop.train" for r in mine)
    assert any("promoted v1" in r["message"] for r in mine)
    assert all(datetime.fromisoformat(r["time"]).tzinfo and r["level"] in logging.getLevelNamesMapping() and r["logger"] for r in mine)


def test_an_equal_model_is_promoted_and_a_worse_one_is_not(redis_deployment, redis_worker, trained_project):
    deployment = redis_deployment
    project_id, _ = trained_project
    # Learning rate 0: the warm-started candidate is the active model itself, so its dev F1 is equal.
    # Scaled to what is new to v1 (nothing), its 10 epochs and 500 steps become one pass.
    scaled = {"learning_rate": 0.0, "epochs": 10, "min_steps": 500, "warm_start_scaling": 0.5}
    equal = wait_job(deployment, request(deployment, project_id, config=scaled), redis_worker)
    assert equal.status == JobStatus.succeeded, equal.error
    assert equal.progress["promoted"] and equal.progress["dev_f1"] == equal.progress["active_dev_f1"]
    # A learning rate this high wrecks it: kept as a candidate, the active version stays.
    worse = wait_job(deployment, request(deployment, project_id, config={"learning_rate": 5.0, "epochs": 1, "min_steps": 30}), redis_worker)
    assert worse.status == JobStatus.succeeded, worse.error
    assert not worse.progress["promoted"] and worse.progress["dev_f1"] < worse.progress["active_dev_f1"]

    v1, v2, v3 = versions(deployment, project_id)
    assert (v1.status, v2.status, v3.status) == (ModelStatus.retired, ModelStatus.active, ModelStatus.candidate)
    assert v2.metrics["base"] == v1.path and (v2.metrics["config"]["epochs"], v2.metrics["config"]["min_steps"]) == (1, 0)
    assert len(v2.metrics["train"]["history"]) == 1
    assert v2.metrics["vocabulary_added"] == 0  # every toy word is in the tiny vocabulary
    assert v3.metrics["compared_with"] == {"version": "v2", "dev_f1": worse.progress["active_dev_f1"]}
    assert Path(v3.path).is_dir()  # kept, so it can still be promoted by hand


def test_a_killed_training_runs_again_then_fails_and_leaves_the_active_model_alone(redis_deployment, redis_worker, trained_project):
    deployment = redis_deployment
    project_id, _ = trained_project
    [active] = [v for v in versions(deployment, project_id) if v.status == ModelStatus.active]
    files_before = tree_digest(Path(active.path))
    count_before = len(versions(deployment, project_id))

    def training_with(attempt: int):
        def check():
            job = job_row(deployment, long_job)
            return job if job.status == JobStatus.running and job.attempt == attempt and job.progress.get("step", 0) > 0 else None
        return check

    long_job = request(deployment, project_id, config=LONG_TRAIN)
    first = wait_until(training_with(1), 60, message="the long training to be under way")
    os.kill(first.owner_pid, signal.SIGKILL)  # the pool process running the task

    # The broker delivers it again (acks_late + reject_on_worker_lost) and a new attempt starts over.
    second = wait_until(training_with(2), 60, message="the training to run again")
    assert second.owner_pid != first.owner_pid
    [still_active] = [v for v in versions(deployment, project_id) if v.status == ModelStatus.active]
    assert (still_active.id, still_active.path, still_active.dev_f1) == (active.id, active.path, active.dev_f1)

    # Requests during the run coalesce into one queued follow-up.
    follow_up = request(deployment, project_id)
    assert request(deployment, project_id) == follow_up != long_job
    assert job_row(deployment, follow_up).status == JobStatus.queued

    os.kill(second.owner_pid, signal.SIGKILL)
    killed = wait_job(deployment, long_job, redis_worker)
    assert killed.status == JobStatus.failed and "lost" in killed.error

    after = wait_job(deployment, follow_up, redis_worker)
    assert after.status == JobStatus.succeeded, after.error
    with deployment.session() as session:
        trainings = session.exec(select(Job).where(Job.project_id == project_id, Job.kind == "train", Job.id > long_job)).all()
    assert [j.id for j in trainings] == [follow_up]  # exactly one follow-up
    made = versions(deployment, project_id)[count_before:]
    assert [v.metrics["job_id"] for v in made] == [follow_up]  # the killed job registered nothing
    assert tree_digest(Path(active.path)) == files_before
    project_models = Path(active.path).parent
    assert not [p for p in project_models.iterdir() if p.name.startswith((f"job-{long_job}-", f".tmp-job-{long_job}-"))]


def test_cli_train_wait_fails_with_the_error_when_the_job_fails(redis_deployment, redis_worker, capsys):
    from service.cli.jobs import follow_job

    # `nerloop train` refuses a project with nothing labelled (test_first_hour.py); a job queued
    # before its labels were taken away still reaches the worker, and fails there.
    project_id = new_project(redis_deployment, labelled=0, pool=3)
    job_id = request(redis_deployment, project_id, "train")
    assert follow_job(job_id, 60) == 1
    output = " ".join(capsys.readouterr().out.split())
    assert "failed: ValueError: project" in output and "has no labelled training examples" in output


def test_a_sync_job_runs_on_the_cpu_queue_and_records_why_it_failed(redis_deployment, redis_worker):
    project_id = new_project(redis_deployment, labelled=0, pool=1)  # not attached to Label Studio
    job = wait_job(redis_deployment, request(redis_deployment, project_id, "sync"), redis_worker)
    assert job.status == JobStatus.failed and job.error.startswith("SyncError: project 'toy' is not attached")


def test_augmentation_job_stores_attributed_examples_that_training_uses_capped(redis_deployment, redis_worker):
    """nerloop augment queues a job on the method's queue and follows it; the worker stores outputs
    derived from training tasks only, with valid spans and provenance; training mixes them in once
    the project enables it, capped at augment_ratio, and drops those of a source annotation edited since."""
    from service.augmented_examples import training_examples
    from service.cli import app

    deployment = redis_deployment
    project_id = new_project(deployment, labelled=40, pool=2)
    invoke = CliRunner().invoke
    result = invoke(app, ["augment", "--project", str(project_id), "--method", "mention_replacement", "--n", "3", "--timeout", "120"])
    assert result.exit_code == 0, result.output + redis_worker.log.read_text()[-3000:]
    assert "succeeded" in result.output and "kept" in result.output

    with deployment.session() as session:
        project = session.get(Project, project_id)
        train, dev = sync.accepted_examples(session, project)
        rows = session.exec(select(AugmentedExample).where(AugmentedExample.project_id == project_id)).all()
        [job] = session.exec(select(Job).where(Job.project_id == project_id, Job.kind == "augment")).all()
    assert job.status == JobStatus.succeeded and job.progress["stored"] == len(rows) > 0
    by_task = {e.meta["task_id"]: e for e in train}
    labelled_texts = {e.text for e in train + dev}
    for row in rows:
        source = by_task[row.source_task_id]  # a training task, never a dev one
        spans = validate(row.text, row.spans, LABELS)
        assert [s.label for s in spans] == [s.label for s in source.spans]
        assert row.text not in labelled_texts and row.method == "mention_replacement" and row.seed == 0
    assert len({row.text for row in rows}) == len(rows)

    with deployment.session() as session:
        project = session.get(Project, project_id)
        assert training_examples(session, project)[2] == 0  # not enabled yet
    configured = invoke(app, ["configure", "--project", str(project_id), "--augment", "--augment-ratio", "0.25"])
    assert configured.exit_code == 0 and "augment: True" in configured.output
    with deployment.session() as session:
        project = session.get(Project, project_id)
        mixed, _, augmented = training_examples(session, project)
        assert augmented == min(len(rows), int(0.25 * len(train))) > 0 and len(mixed) == len(train) + augmented
        # An edit of a source annotation makes its augmentations stale.
        edited = rows[0].source_task_id
        annotation = session.exec(select(Annotation).where(Annotation.task_id == edited, Annotation.accepted.is_(True))).one()
        annotation.updated_at = utcnow()
        session.add(annotation)
        session.commit()
        fresh = augmented_examples.current_augmented(session, project)
        assert edited not in {e.meta["source"] for e in fresh}
        assert len(fresh) == len(rows) - sum(r.source_task_id == edited for r in rows)

    trained = wait_job(deployment, request(deployment, project_id), redis_worker, timeout=180)
    assert trained.status == JobStatus.succeeded, trained.error
    assert trained.progress["train_size"] == len(train) and 0 < trained.progress["augmented"] <= int(0.25 * len(train))

    wrong = invoke(app, ["augment", "--project", str(project_id), "--method", "shuffle", "--param", "p=2"])
    assert wrong.exit_code != 0 and "params.p" in wrong.output


# ---- with a worker on the embedded SQLite broker ---------------------------------------------------


@pytest.mark.integration
def test_embedded_sqlite_broker_cli_train_and_follow_up(tmp_path, tiny_encoder, label_studio_recorder, use_env):
    deployment = make_deployment(
        tmp_path, tiny_encoder, f"sqla+sqlite:///{tmp_path / 'home' / 'broker.db'}", f"db+sqlite:///{tmp_path / 'home' / 'results.db'}",
        label_studio_recorder.url, NERLOOP_TRAIN_CONFIG=json.dumps({**TINY_TRAIN, "epochs": 150, "patience": 150}),
    )
    use_env(deployment)
    project_id = new_project(deployment, labelled=40, pool=10)
    from service.cli import app
    from service.cli.jobs import follow_job

    runner = CliRunner()
    queued = [runner.invoke(app, ["train", "--project", str(project_id)]) for _ in range(2)]
    assert all(r.exit_code == 0 for r in queued), [r.output for r in queued]
    assert queued[0].output == queued[1].output and "queued" in queued[0].output  # the same job, twice
    with deployment.session() as session:
        [job] = session.exec(select(Job).where(Job.kind == "train")).all()

    worker = Worker(deployment, "solo", tmp_path / "worker.log")
    try:
        wait_until(lambda: job_row(deployment, job.id).progress.get("stage") == "training", 60, message="the training to start")
        with deployment.session() as session:  # annotations arrive during the run
            project = session.get(Project, project_id)
            sync.import_examples(session, project, toy_corpus(5, seed=9), dev_share=0.25)
            session.commit()
        assert follow_job(job.id, timeout=120) == 0

        def train_jobs() -> list[Job]:
            with deployment.session() as session:
                return session.exec(select(Job).where(Job.kind == "train").order_by(Job.id)).all()

        # The follow-up is queued just after the job is marked done. The annotations are new to v1, so
        # it is the quick stage, and the full stage follows its push: two trainings, then no other.
        wait_until(lambda: len(train_jobs()) > 1, 30, message="the follow-up training")
        follow_up = wait_job(deployment, train_jobs()[1].id, worker, timeout=120)
        assert follow_up.status == JobStatus.succeeded, follow_up.error
        first = job_row(deployment, job.id).progress
        assert follow_up.progress["train_size"] + follow_up.progress["dev_size"] > first["train_size"] + first["dev_size"]
        assert follow_up.progress["retraining"] == "quick" and follow_up.progress["stopping"] is None
        wait_until(lambda: len(train_jobs()) > 2, 60, message="the full stage after the quick version's push")
        full = wait_job(deployment, train_jobs()[2].id, worker, timeout=120)
        assert full.status == JobStatus.succeeded and full.progress["retraining"] == "full", full.error
        time.sleep(1)
        assert len(train_jobs()) == 3
        v1, quick, settled = versions(deployment, project_id)
        assert quick.metrics["base"] == v1.path and quick.metrics["config"]["warm_start_scaling"] == 1.0
        assert quick.metrics["config"]["epochs"] < 150 and "stopping" not in quick.metrics  # one pass over what changed, scaled
        assert quick.metrics["last_full"] == {"path": v1.path, "trained_on": v1.train_size}
        assert settled.metrics["base"] == quick.path and settled.train_size == quick.train_size
        assert (settled.metrics["config"]["epochs"], settled.metrics["config"]["warm_start_scaling"]) == (150, 0.0)
        assert settled.metrics["stopping"]["kappa"] is not None  # against v1: a quick version never counts as a step

        active = [v for v in versions(deployment, project_id) if v.status == ModelStatus.active]
        assert len(active) == 1 and active[0].dev_f1 is not None and Path(active[0].path).is_dir()
        scoring = wait_job(deployment, score_job(deployment, project_id, active[0].id), worker)
        with deployment.session() as session:
            pool = session.exec(select(Task.id).where(Task.project_id == project_id, Task.state == TaskState.pool)).all()
            scores = session.exec(select(Prediction.score).where(Prediction.model_version_id == active[0].id)).all()
        assert scoring.status == JobStatus.succeeded and scoring.progress["scored"] == len(pool) >= 10, scoring
        assert scoring.progress["pushed"] == 0  # not attached to Label Studio
        assert len(scores) == len(pool) and all(0 < s <= 1 for s in scores)

        listing = runner.invoke(app, ["jobs", "--project", str(project_id)])
        assert listing.exit_code == 0 and "succeeded" in listing.output and "score_pool" in listing.output
    finally:
        worker.stop()


@pytest.mark.integration
def test_the_beat_sweeps_and_queues_one_training_where_labels_arrived(tmp_path, tiny_encoder, label_studio_recorder, use_env):
    """`nerloop beat` sends nerloop.sweep every second; a worker runs it: the project has 20+ new
    labelled tasks, so one training is queued and runs; later sweeps queue nothing more."""
    deployment = make_deployment(
        tmp_path, tiny_encoder, f"sqla+sqlite:///{tmp_path / 'home' / 'broker.db'}", f"db+sqlite:///{tmp_path / 'home' / 'results.db'}",
        label_studio_recorder.url, NERLOOP_SWEEP_SECONDS="1",
    )
    use_env(deployment)
    project_id = new_project(deployment, labelled=40, pool=5)
    worker = Worker(deployment, "solo", tmp_path / "worker.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
    env.update(deployment.env, PYTHONPATH=str(REPO))
    with (tmp_path / "beat.log").open("w") as beat_log:
        beat = subprocess.Popen([*NERLOOP, "beat"], cwd=tmp_path, env=env, stdout=beat_log, stderr=subprocess.STDOUT)
        try:
            def trainings():
                with deployment.session() as session:
                    return session.exec(select(Job).where(Job.project_id == project_id, Job.kind == "train")).all()

            [job] = wait_until(trainings, 90, message="the beat's sweep to queue a training")
            assert wait_job(deployment, job.id, worker).status == JobStatus.succeeded
            time.sleep(4)  # a few more sweeps: the new version was trained on every labelled task
            assert [j.id for j in trainings()] == [job.id]
            assert "nerloop.sweep" in (tmp_path / "beat.log").read_text()
        finally:
            beat.terminate()
            beat.wait(20)
            worker.stop()
