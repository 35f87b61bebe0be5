"""Fixtures of the real servers integration tests use, and the ``integration`` marker they bring.

``label_studio`` runs scripts/labelstudio.sh on a free port with a data dir of its own;
``postgres_database`` is a database of this session's own on the local PostgreSQL server;
``redis_url`` is the local Redis. Where one is missing, ``support.require`` skips the tests that
need it, except under CI (``CI=true``), where they fail.

A test that requests one of them (directly or through another fixture) is marked ``integration``
here; a test that starts servers or processes itself carries the marker in its module.
"""

import json
import os
import queue
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from support import REDIS, REPO, empty_database, free_port, redis_problem, require

LABEL_STUDIO_SCRIPT = REPO / "scripts" / "labelstudio.sh"
POSTGRES_URL = os.environ.get("NERLOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
SERVER_FIXTURES = {"label_studio", "postgres_database", "redis_url"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by markers
def pytest_collection_modifyitems(items):
    for item in items:
        if SERVER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


def _script(env: dict, *args: str, timeout: float) -> dict:
    """Run labelstudio.sh; return the KEY=value lines it prints."""
    done = subprocess.run(
        [str(LABEL_STUDIO_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"labelstudio.sh {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


@dataclass
class LabelStudioServer:
    url: str
    token: str  # the legacy API token
    pat: str  # a personal access token (JWT refresh token) of the same user
    data_dir: Path
    username: str = "admin@nerloop.local"


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A fresh Label Studio (its own data dir and port) for the whole session, stopped at the end."""
    data_dir = tmp_path_factory.mktemp("label-studio")
    env = {**os.environ, "LS_DATA_DIR": str(data_dir)}
    port = str(free_port())
    try:
        _script(env, "install", timeout=1800)
        started = _script(env, "start", port, timeout=300)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
        _script_stop_quietly(env)
        require("Label Studio", str(error))
    try:
        pat = _script(env, "pat", port, timeout=60)["LABEL_STUDIO_PAT"]
        yield LabelStudioServer(started["LABEL_STUDIO_URL"], started["LABEL_STUDIO_API_KEY"], pat, data_dir)
    finally:
        _script_stop_quietly(env)


def _script_stop_quietly(env: dict) -> None:
    try:
        _script(env, "stop", timeout=60)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
        print(f"labelstudio.sh stop failed: {error}", file=sys.stderr)


@dataclass
class WebhookListener:
    """A local HTTP server that keeps every POST it receives (headers and JSON body), in order."""

    url: str
    received: "queue.Queue[tuple[dict, dict]]" = field(default_factory=queue.Queue)

    def next(self, timeout: float = 15.0) -> tuple[dict, dict]:
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no webhook reached {self.url} within {timeout}s") from None


@pytest.fixture
def webhook_listener():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    listener = WebhookListener(f"http://127.0.0.1:{server.server_address[1]}/webhook")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            listener.received.put((dict(self.headers), json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield listener
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The local Redis server's URL; tests that share it use key prefixes of their own."""
    require("Redis", redis_problem(REDIS))
    return REDIS


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The URL of a database of this session's own on the PostgreSQL server (NERLOOP_TEST_POSTGRES_URL,
    default: the local server, trust auth, database `test`), created here and dropped at the end."""
    from service.db import get_engine  # the code under test: see support.py

    server = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool, connect_args={"connect_timeout": 5})
    try:
        with server.connect():
            pass
    except OperationalError as error:
        require("PostgreSQL", f"nothing answers at {POSTGRES_URL} ({error.orig}). Start it: {START_POSTGRES}")
    name = f"nerloop_test_{os.getpid()}_{secrets.token_hex(4)}"
    with server.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with server.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def url(request, tmp_path) -> Iterator[str]:
    """An empty database: a new SQLite file, or the session's PostgreSQL database emptied after each test."""
    from service.db import get_engine

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'nerloop.db'}"
        yield url
        get_engine(url).dispose()
        return
    url = request.getfixturevalue("postgres_database")
    yield url
    empty_database(url)
