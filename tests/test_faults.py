"""Faults with real processes (issue 14): a worker killed whole mid-training, a broker that goes down
and comes back. Real Redis (a key prefix of its own, or a private redis-server on a free port), real
`celery worker` and `nerloop beat` processes, the tiny encoder. The settings that decide how fast a
lost job is noticed (heartbeat, recovery round) are shortened through NERLOOP_* variables.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from sqlmodel import Session, select

from active_learning.spans import Example
from service import sync
from service.db import init_db
from service.models import Job, JobStatus, ModelStatus, ModelVersion, Project, Task, TaskState
from service.settings import get_settings
from support import NERLOOP, REPO, TINY_TRAIN, free_port, make_client, require, wait_until
from tiny import LABELS, toy_corpus

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")]

# Long enough to be killed mid-way, short enough to run again to the end.
MEDIUM_TRAIN = {**TINY_TRAIN, "epochs": 40, "patience": 40}


def deployment_env(tmp: Path, tiny_encoder: Path, broker: str, **extra: str) -> dict[str, str]:
    return {
        "NERLOOP_HOME": str(tmp / "home"),
        "NERLOOP_DATABASE_URL": f"sqlite:///{tmp / 'nerloop.db'}",
        "NERLOOP_BASE_MODEL": str(tiny_encoder),
        "NERLOOP_BROKER_URL": broker,
        "NERLOOP_RESULT_BACKEND": broker,
        "NERLOOP_TRAIN_CONFIG": json.dumps(TINY_TRAIN),
        "NERLOOP_JOB_HEARTBEAT_SECONDS": "0.3",  # the beat's recovery round: every 4 heartbeats (1.2 s)
        "NERLOOP_JOB_STALE_SECONDS": "30",
        "NERLOOP_JOB_WAIT_SECONDS": "1",
        "NERLOOP_LOG_FORMAT": "json",
        # No review after each promotion: these faults concern training, scoring and sync, and a review
        # queued after the push would keep a worker busy past the test, slowing the next one's timings.
        "NERLOOP_REVIEW_AFTER_TRAINING": "false",
        **extra,
    }


def process_env(env: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
    return {**clean, **env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    """A prefork `celery worker` (main process + one pool child) in a process group of its own."""
    command = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "gpu,cpu", "-c", "1", "--pool", "prefork",
               "--loglevel", "info", "-n", f"fault-{uuid.uuid4().hex[:8]}@%h",
               "--without-heartbeat", "--without-gossip", "--without-mingle"]
    output = log.open("a")
    worker = subprocess.Popen(command, cwd=REPO, env=process_env(env), stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: " ready." in log.read_text() or worker.poll() is not None, 120, message="the worker to start")
    assert worker.poll() is None, log.read_text()[-3000:]
    return worker


def kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            kill_group(process)


def new_project(engine, labelled: int, retrain_every: int = 20) -> int:
    with Session(engine) as session:
        project = Project(name="toy", labels=list(LABELS), retrain_every=retrain_every)
        session.add(project)
        session.flush()
        sync.import_examples(session, project, toy_corpus(labelled, seed=1), dev_share=0.25)
        session.commit()
        return project.id


def job(engine, job_id: int) -> Job:
    with Session(engine) as session:
        return session.get(Job, job_id)


def versions(engine, project_id: int) -> list[ModelVersion]:
    with Session(engine) as session:
        return session.exec(select(ModelVersion).where(ModelVersion.project_id == project_id).order_by(ModelVersion.id)).all()


def digest(path: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(path)), p.read_bytes()) for p in path.rglob("*") if p.is_file())


@pytest.fixture
def environment(monkeypatch):
    """Point this process's (cached) settings at a deployment's ``env``."""
    def use(env: dict[str, str]) -> None:
        for key in [k for k in os.environ if k.startswith("NERLOOP_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()

    yield use
    monkeypatch.undo()
    get_settings.cache_clear()


# ---- a worker killed whole -------------------------------------------------------------------------


def test_a_worker_killed_whole_mid_training_is_rerun_by_the_beat_with_one_new_version(tmp_path, tiny_encoder, redis_url, environment):
    """SIGKILL of the worker's main process and its pool child: nothing gives the task back to Redis
    (its visibility timeout is hours). A new worker comes up; the beat's recovery round finds the job's
    owner gone and sends it again; it runs to the end as attempt 2 and registers exactly one version;
    the active model is untouched meanwhile."""
    prefix = f"nerloop-fault-{uuid.uuid4().hex[:8]}:"
    options = json.dumps({"global_keyprefix": prefix})
    env = deployment_env(
        tmp_path, tiny_encoder, redis_url, NERLOOP_BROKER_TRANSPORT_OPTIONS=options, NERLOOP_RESULT_BACKEND_TRANSPORT_OPTIONS=options
    )
    environment(env)
    engine = init_db(env["NERLOOP_DATABASE_URL"])
    from service import job_queue

    project_id = new_project(engine, labelled=60)
    worker = start_worker(env, tmp_path / "worker-1.log")
    processes = [worker]
    try:
        with Session(engine) as session:
            first = job_queue.request(session, project_id, "train").id
        wait_until(lambda: job(engine, first).status in (JobStatus.succeeded, JobStatus.failed), 180, message="the first training")
        assert job(engine, first).status == JobStatus.succeeded, job(engine, first).error
        [active] = [v for v in versions(engine, project_id) if v.status == ModelStatus.active]
        active_files = digest(Path(active.path))

        with Session(engine) as session:
            medium = job_queue.request(session, project_id, "train", config=MEDIUM_TRAIN).id
        under_way = wait_until(
            lambda: (row := job(engine, medium)).status == JobStatus.running and row.progress.get("step", 0) > 0 and row, 120,
            message="the training to be under way",
        )
        assert under_way.attempt == 1 and under_way.progress["step"] < under_way.progress["total_steps"]
        kill_group(worker)  # the main process and its pool child, at once
        time.sleep(2)
        killed = job(engine, medium)
        assert killed.status == JobStatus.running and killed.attempt == 1  # nothing noticed yet

        worker = start_worker(env, tmp_path / "worker-2.log")
        beat_log = (tmp_path / "beat.log").open("w")
        beat = subprocess.Popen([*NERLOOP, "beat"], cwd=tmp_path, env=process_env(env), stdout=beat_log, stderr=subprocess.STDOUT)
        processes += [worker, beat]
        started = time.monotonic()
        rerun = wait_until(lambda: (row := job(engine, medium)).attempt == 2 and row, 60, message="the beat to send the training again")
        assert rerun.owner_pid != under_way.owner_pid
        again_after = time.monotonic() - started
        finished = wait_until(lambda: (row := job(engine, medium)).status in (JobStatus.succeeded, JobStatus.failed) and row, 240,
                              message="the training to run again to the end")
        assert finished.status == JobStatus.succeeded and finished.attempt == 2, finished.error

        made = [v for v in versions(engine, project_id) if v.metrics.get("job_id") == medium]
        assert len(made) == 1  # exactly one new version: the killed attempt registered nothing
        assert len(versions(engine, project_id)) == 2
        assert digest(Path(active.path)) == active_files  # the active model's files were never touched
        assert len([v for v in versions(engine, project_id) if v.status == ModelStatus.active]) == 1
        leftovers = [p.name for p in Path(active.path).parent.iterdir() if p.name.startswith(".tmp-")]
        assert not leftovers
        print(f"\nthe lost training ran again {again_after:.1f} s after the new worker and the beat came up")
    finally:
        for process in reversed(processes):
            stop(process)
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


# ---- a broker that goes down -----------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test's own on a free port, without persistence: stop() is an outage."""

    def __init__(self, directory: Path):
        require("redis-server", None if shutil.which("redis-server") else "no redis-server on PATH")
        self.port, self.directory = free_port(), directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self._answers(), 20, message="redis-server to answer")

    def stop(self) -> None:
        """Kill it and wait until its port refuses connections: the outage this test means is a refused
        connection, not a listener that outlives its process for a moment (a suspect, not a proven
        cause, for the 1.7 s first send CI measured and no run here reproduced)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
            wait_until(self._refuses, 20, message="the killed redis-server's port to refuse connections")

    def _refuses(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            pass  # a timeout: the port is neither served nor refused yet
        return False

    def _answers(self) -> bool:
        try:
            return redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
        except redis.RedisError:
            return False


def test_broker_down_annotations_are_stored_fast_one_pending_job_sent_when_it_returns(tmp_path, environment):
    broker = PrivateRedis(tmp_path)
    broker.start()
    try:
        env = deployment_env(tmp_path, tmp_path, broker.url)
        environment(env)
        with make_client(tmp_path, broker_url=broker.url, result_backend=broker.url) as client:
            project = new_project(client.app.state.engine, labelled=0, retrain_every=2)
            texts = [f"alice met bob in paris on day {i} ." for i in range(8)]
            created = client.post(f"/api/v1/projects/{project}/tasks", json={"tasks": [{"text": t} for t in texts]})
            assert created.status_code == 201, created.text
            with Session(client.app.state.engine) as session:
                task_ids = [t.id for t in session.exec(select(Task).where(Task.project_id == project, Task.is_dev == False))]  # noqa: E712
            assert len(task_ids) >= 4

            broker.stop()  # the outage
            timings = []
            for task_id in task_ids:
                began = time.monotonic()
                answer = client.post(f"/api/v1/projects/{project}/tasks/{task_id}/annotations", json={"spans": [[0, 5, "PER"]]})
                timings.append(time.monotonic() - began)
                assert answer.status_code == 201, answer.text
            print(f"\nannotations during the outage: slowest {max(timings):.3f} s of {len(timings)}")
            trainings = client.get(f"/api/v1/projects/{project}/jobs").json()
            assert max(timings) < 1.0, (timings, trainings)  # the job's error says how the broker refused
            assert [(j["kind"], j["status"]) for j in trainings] == [("train", "queued")]  # one pending job, not one per annotation
            assert "not sent" in trainings[0]["error"] and "did not take nerloop.train" in trainings[0]["error"]
            assert "must be restarted" not in trainings[0]["error"]
            with Session(client.app.state.engine) as session:
                stored = session.exec(select(Task).where(Task.project_id == project, Task.state == TaskState.labelled)).all()
            assert len(stored) == len(task_ids)  # every annotation was kept

            pending = trainings[0]["id"]
            from workers.tasks import recover

            assert recover() == {"sent": []}  # still down: nothing sent, nothing lost
            assert job(client.app.state.engine, pending).sent_at is None

            broker.start()  # back, empty: the outage lost nothing because nothing was ever sent
            assert recover() == {"sent": [pending]}  # the beat's round sends it
            sent = job(client.app.state.engine, pending)
            assert sent.status == JobStatus.queued and sent.sent_at is not None and sent.error is None
            [message] = redis.Redis.from_url(broker.url).lrange("gpu", 0, -1)
            headers = json.loads(message)["headers"]
            assert (headers["task"], headers["id"]) == ("nerloop.train", sent.celery_id)
            assert recover() == {"sent": []}  # sent once
            assert len(client.get(f"/api/v1/projects/{project}/jobs").json()) == 1
    finally:
        broker.stop()


# ---- Label Studio down during a pull and during a push ---------------------------------------------


class Switch:
    """A TCP proxy to a real server that can be switched off (connections refused: the server is
    unreachable) and on again, on the same address."""

    def __init__(self, target: str):
        parts = urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    def on(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def off(self) -> None:
        """Refuse new connections and cut the open ones (shutdown wakes the thread blocked in accept)."""
        for sock in [self._listener, *self._open] if self._listener is not None else self._open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._listener, self._open = None, []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # switched off
            upstream = socket.create_connection(self.target)
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_label_studio_down_during_a_pull_and_a_push_loses_nothing(
    tmp_path, tiny_encoder, trained_model, label_studio, redis_url, environment
):
    """A real Label Studio behind a switch. Down during the beat's pull: nothing half-applied, the next
    pull brings every annotation. Down during a push of pool predictions (longer than the client's own
    retries): the push task tries again until it is back; every pool task gets its prediction once."""
    from service.label_studio import LabelStudioClient, results_from_spans
    from workers.tasks import sweep

    switch = Switch(label_studio.url)
    switch.on()
    prefix = f"nerloop-fault-{uuid.uuid4().hex[:8]}:"
    options = json.dumps({"global_keyprefix": prefix})
    env = deployment_env(
        tmp_path, tiny_encoder, redis_url, NERLOOP_BROKER_TRANSPORT_OPTIONS=options, NERLOOP_RESULT_BACKEND_TRANSPORT_OPTIONS=options,
        NERLOOP_LABEL_STUDIO_URL=switch.url, NERLOOP_LABEL_STUDIO_API_KEY=label_studio.token, NERLOOP_SCORE_SHARD_SIZE="4",
    )
    environment(env)
    engine = init_db(env["NERLOOP_DATABASE_URL"])
    direct = LabelStudioClient(label_studio.url, label_studio.token)
    browser = httpx.Client(base_url=label_studio.url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=60)
    texts = [f"alice met bob in paris on day {i} ." for i in range(10)]
    with Session(engine) as session:
        project = Project(name="outage", labels=list(LABELS), ls_project_id=direct.create_project("outage", list(LABELS)))
        session.add(project)
        session.flush()
        tasks = sync.import_examples(session, project, [Example(t) for t in texts], client=direct).created
        session.commit()
        project_id = project.id
        annotated = [(t.id, t.ls_task_id, t.text) for t in tasks[:3]]
        pool = [t.ls_task_id for t in tasks[3:]]
    for _, ls_task, text in annotated:
        answer = browser.post(f"/api/tasks/{ls_task}/annotations/", json={"result": results_from_spans(text, [(0, 5, "PER")])})
        assert answer.status_code == 201, answer.text

    def labelled() -> set[int]:
        with Session(engine) as session:
            return set(session.exec(select(Task.id).where(Task.project_id == project_id, Task.state == TaskState.labelled)).all())

    switch.off()
    sweep()  # the beat's round: the pull fails (logged), and leaves nothing half-done
    assert labelled() == set()
    with Session(engine) as session:
        assert session.get(Project, project_id).last_pulled_at is None
    switch.on()
    sweep()
    assert labelled() == {task_id for task_id, _, _ in annotated}  # eventually consistent, nothing lost

    with Session(engine) as session:
        version = ModelVersion(project_id=project_id, name="v1", path=str(trained_model), status=ModelStatus.active)
        session.add(version)
        session.commit()
        version_id = version.id
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        switch.off()  # down before the push, and for longer than the client's own 15.5 s of retries
        from service import job_queue

        with Session(engine) as session:
            score = job_queue.request(session, project_id, "score_pool", version_id=version_id, coalesce=False).id
        wait_until(lambda: "trying again" in (tmp_path / "worker.log").read_text(), 90, message="the push to fail and be retried")
        assert job(engine, score).status == JobStatus.running  # not failed: waiting for Label Studio
        switch.on()
        done = wait_until(lambda: (row := job(engine, score)).status in (JobStatus.succeeded, JobStatus.failed) and row, 120,
                          message="the push to go through once Label Studio is back")
        assert done.status == JobStatus.succeeded, done.error
        assert done.progress["pushed"] == len(pool)
        pushed = {}
        for ls_task in pool:
            predictions = browser.get("/api/predictions/", params={"task": ls_task}).json()
            pushed[ls_task] = [p["model_version"] for p in predictions]
        assert pushed == {ls_task: ["v1"] for ls_task in pool}  # every pool task once, none doubled
    finally:
        stop(worker)
        switch.off()
        browser.close()
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
