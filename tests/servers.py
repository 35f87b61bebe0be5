"""Session fixtures that start real servers for integration tests.

``label_studio`` runs scripts/labelstudio.sh on a free port with a data dir of its own. Where Label
Studio cannot be installed or started, its tests are skipped, except under CI (``CI=true``), where
they fail.
"""

import json
import os
import queue
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LABEL_STUDIO_SCRIPT = REPO / "scripts" / "labelstudio.sh"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"Label Studio is required under CI: {reason}")
    pytest.skip(f"Label Studio is not available: {reason}")


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
        _unavailable(str(error))
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


@pytest.fixture
def db_engine(tmp_path):
    """A fresh SQLite database with the schema, via ``service.db.init_db``."""
    from service.db import init_db

    return init_db(f"sqlite:///{tmp_path / 'nerloop.db'}")
