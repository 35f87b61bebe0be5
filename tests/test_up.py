"""`nerloop up` (and the demo, which runs the same process tree): one command starts the API, a
worker and the beat with the settings of the environment and of `.env`; one SIGTERM stops all of them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from support import NERLOOP, REPO, TINY_TRAIN, free_port, wait_until

pytestmark = pytest.mark.integration  # starts the service's processes


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc (children of each thread)."""
    found, stack = set(), [pid]
    while stack:
        parent = stack.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except (FileNotFoundError, ProcessLookupError):
                continue
            stack.extend(children - found)
            found |= children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Output:
    """A process's merged output, read as it comes (so a full pipe never blocks it)."""

    def __init__(self, process: subprocess.Popen):
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.text += line


def sigterm_stops_everything(process: subprocess.Popen, output: Output, port: int, ready: str, timeout: float) -> str:
    """Wait for ``ready`` in the output, SIGTERM the process, and check that no child survives it and the port is free."""
    try:
        wait_until(lambda: ready in output.text or process.poll() is not None, timeout, message=f"{ready!r} in the output")
        assert process.poll() is None, output.text[-3000:]
        children = descendants(process.pid)
        assert len(children) >= 3, f"API, worker and beat expected below {process.pid}: {children}"
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        survivors = [pid for pid in children if alive(pid)]
        assert not survivors, f"still running after SIGTERM: {survivors}\n{output.text[-3000:]}"
        assert port_free(port)
        return output.text
    finally:
        if process.poll() is None:
            process.kill()
        for pid in descendants(process.pid):
            os.kill(pid, signal.SIGKILL)


def test_up_reads_dotenv_serves_and_stops_every_process_on_sigterm(tmp_path):
    port, token = free_port(), "test-api-token"
    (tmp_path / ".env").write_text(
        f"NERLOOP_HOME={tmp_path / 'home'}\nNERLOOP_API_TOKEN={token}\nNERLOOP_PUBLIC_URL=http://nerloop.example:{port}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [*NERLOOP, "up", "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = Output(process)
    ready = "Ctrl-C stops"

    def served_with_dotenv_settings():
        wait_until(lambda: ready in output.text or process.poll() is not None, 180, message="nerloop up to be ready")
        health = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=10)
        assert health.status_code == 200
        # The token from .env guards the API; the home from .env holds its database.
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/projects", timeout=10).status_code == 401
        authorised = httpx.get(f"http://127.0.0.1:{port}/api/v1/projects", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert authorised.status_code == 200
        assert (tmp_path / "home" / "nerloop.db").is_file()

    try:
        served_with_dotenv_settings()
    except BaseException:
        process.kill()
        raise
    text = sigterm_stops_everything(process, output, port, ready, 10)
    assert f"http://nerloop.example:{port}/ml" in text  # what to paste into Connect Model, from .env
    assert f"http://127.0.0.1:{port}/dashboard" in text and str(tmp_path / ".env") in text


@pytest.mark.slow
def test_demo_waiting_at_the_end_stops_every_process_on_sigterm(tmp_path, tiny_encoder):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    command = [
        *NERLOOP, "demo", "--pool-size", "40", "--test-size", "10", "--batch", "10", "--rounds", "0", "--keep-running",
        "--port", str(port), "--base-model", str(tiny_encoder), "--train-config", json.dumps(TINY_TRAIN), "--out", str(tmp_path / "demo"),
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = sigterm_stops_everything(process, Output(process), port, "Ctrl-C stops", 600)
    assert f"http://127.0.0.1:{port}/ml" in text, text[-2000:]  # the URL a connected model keeps
