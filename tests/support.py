"""Helpers the test modules share, so that none imports another: the guard for what a test needs
from outside Python (``require``), one polling helper (``wait_until``), `nerloop serve` in a process
of its own, the API helpers (settings, a client, rows) that tests of the API, the ML backend and the
workers build on, and the alignment oracle.

Fixtures live in conftest.py (models, data, databases) and servers.py (real servers). conftest.py
imports this module, so the code under test is imported inside the helpers that use it: a module
broken mid-change must not stop every other test from being collected.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis
from sqlalchemy import inspect, text
from sqlmodel import Session

from tiny import LABELS

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the corpora beside the checkout (CoNLL-2003, Weibo, People's Daily)
REDIS = "redis://127.0.0.1:6379/0"
NERLOOP = [str(Path(sys.executable).parent / "nerloop")]  # the console script of this environment
# The tiny encoder's word embeddings are random: it needs a high learning rate and its embeddings trained.
TINY_TRAIN = {"epochs": 15, "patience": 15, "min_steps": 0, "learning_rate": 3e-3, "batch_size": 16, "freeze_word_embeddings": False}

T = TypeVar("T")


def require(service: str, problem: str | None) -> None:
    """The guard for what a test needs from outside Python (a server, a browser, the shared corpora):
    when ``problem`` says why ``service`` is missing, the test fails under CI (``CI=true``), where
    everything must be there, and is skipped elsewhere, with the reason; ``None``: it is there."""
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"needs {service}, which CI must provide: {problem}")
    pytest.skip(f"needs {service}: {problem}")


def redis_problem(url: str = REDIS) -> str | None:
    """Why Redis does not answer at ``url``, or None when it does."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        return f"nothing answers at {url} ({error})"
    return None


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.2, message: str = "the condition") -> T:
    """Call ``condition`` every ``interval`` seconds until it returns something true, and return that;
    after ``timeout`` seconds fail with "timed out after ...s waiting for <message>"."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (with any status)."""
    try:
        httpx.get(url, timeout=2)
    except httpx.TransportError:
        return False
    return True


@contextmanager
def nerloop_serve(env: dict, log: Path, timeout: float = 90, insecure: bool = False, port: int | None = None) -> Iterator[str]:
    """`nerloop serve` on ``port`` (default: a free one) on loopback with ``env``, logging to ``log``;
    yields its base URL once it answers, and stops it at the end. ``insecure``: without the secrets it
    otherwise refuses to start without (``--insecure``)."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as output:
        command = [*NERLOOP, "serve", "--host", "127.0.0.1", "--port", str(port), *(["--insecure"] if insecure else [])]
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: server.poll() is not None or answers(f"{base}/api/v1/health"), timeout, 0.3, "nerloop serve to answer")
            if server.poll() is not None:
                pytest.fail(f"nerloop serve exited {server.returncode}:\n{log.read_text()[-3000:]}")
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def empty_database(url: str) -> None:
    """Drop every table and type of a PostgreSQL database, for the next test."""
    from service.db import get_engine

    engine = get_engine(url)
    engine.dispose()  # no pooled connection may keep a plan that refers to the types dropped below
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


# ---- the API on a SQLite file: settings, a client, rows --------------------------------------------


def make_settings(tmp_path: Path, **overrides):
    from service.settings import Settings

    defaults = {"home": tmp_path / "home", "database_url": f"sqlite:///{tmp_path / 'nerloop.db'}"}
    return Settings(_env_file=None, **{**defaults, **overrides})


def make_client(tmp_path: Path, **overrides):
    """A TestClient of the app with a home and (unless ``database_url`` is given) a SQLite database
    of its own under ``tmp_path``."""
    from fastapi.testclient import TestClient

    from service.api import create_app

    return TestClient(create_app(make_settings(tmp_path, **overrides)))


def add_project(client, **columns):
    from service.models import Project

    with Session(client.app.state.engine) as session:
        project = Project(**{"name": "toy", "labels": list(LABELS), **columns})
        session.add(project)
        session.commit()
        session.refresh(project)
        return project


def add_labelled_task(client, project_id: int, text: str = "Alice flew to Paris", is_dev: bool = False) -> int:
    """A labelled task (its annotation left out): what a training request needs to be taken."""
    import hashlib

    from service.models import Task, TaskState

    with Session(client.app.state.engine) as session:
        digest = hashlib.sha256(text.encode()).hexdigest()
        task = Task(project_id=project_id, text=text, content_hash=digest, state=TaskState.labelled, is_dev=is_dev)
        session.add(task)
        session.commit()
        return task.id


def add_version(client, project_id: int, name: str, path: Path | str, status=None, dev_f1=None) -> int:
    """A model version (a candidate unless ``status`` says otherwise) of ``project_id``."""
    from service.models import ModelStatus, ModelVersion

    with Session(client.app.state.engine) as session:
        version = ModelVersion(
            project_id=project_id, name=name, path=str(path), status=status or ModelStatus.candidate, dev_f1=dev_f1, train_size=120
        )
        session.add(version)
        session.commit()
        return version.id


def snapshot(client) -> dict:
    """Every row of every table, to prove a request changed nothing."""
    engine = client.app.state.engine
    with engine.connect() as connection:
        return {
            table: connection.execute(text(f'SELECT * FROM "{table}" ORDER BY 1')).fetchall()
            for table in inspect(engine).get_table_names()
        }


# ---- alignment --------------------------------------------------------------------------------------


def misaligned(spans, offsets) -> list:
    """Spans whose start or end does not fall on a token boundary of ``offsets``: the gold spans a
    word-level tagger cannot represent exactly (it labels the whole word)."""
    starts = {s for s, e in offsets if e > s}
    ends = {e for s, e in offsets if e > s}
    return [sp for sp in spans if sp.start not in starts or sp.end not in ends]
