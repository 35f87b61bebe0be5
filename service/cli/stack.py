"""The service as one process tree: ``nerloop serve``, ``nerloop worker`` and ``nerloop beat`` as
children of one process, which stops all of them however it is itself stopped. ``nerloop up`` and
``nerloop demo`` run it.

The children are the same commands a deployment runs one by one, so they take the same settings
(environment variables and the ``.env`` file of the working directory) and the same rules (``serve``
refuses what it refuses on its own).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path

import httpx

API = "/api/v1"
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Even a SIGKILL of the parent, which no handler sees, must not leave a child running on its port."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Stack:
    """The API on ``host:port``, a worker and the beat as child processes sharing one environment;
    their output goes to ``logs/<name>.log``, or to this process's own output when ``logs`` is None.

    As a context manager it starts them and stops them on the way out, whatever ends the block: an
    error, Ctrl-C, or a SIGTERM (turned into ``SystemExit``). Each child runs in a session of its own,
    so that a terminal's Ctrl-C reaches this process only and the children are stopped in order.
    """

    def __init__(
        self,
        env: dict[str, str],
        port: int,
        logs: Path | None,
        *,
        host: str = "127.0.0.1",
        serve_options: Sequence[str] = (),
        queues: str = "gpu,cpu",
        concurrency: int = 1,
    ):
        self.env, self.port, self.logs, self.host = env, port, logs, host
        self.serve_options, self.queues, self.concurrency = list(serve_options), queues, concurrency
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        self.processes: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Stack:
        def terminated(*_):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not interrupt the cleanup
            sys.exit(143)

        self._sigterm = signal.signal(signal.SIGTERM, terminated)
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_) -> None:
        self.stop()
        signal.signal(signal.SIGTERM, self._sigterm)

    def start(self) -> None:
        if self.logs is not None:
            self.logs.mkdir(parents=True, exist_ok=True)
        nerloop = [sys.executable, "-m", "service.cli"]
        self._spawn("api", [*nerloop, "serve", "--host", self.host, "--port", str(self.port), *self.serve_options])
        self.wait_until(self.healthy, 120, "the API to answer")
        self._spawn("worker", [*nerloop, "worker", "--queues", self.queues, "--concurrency", str(self.concurrency)])
        self._spawn("beat", [*nerloop, "beat"])

    def _spawn(self, name: str, command: list[str]) -> None:
        output = None if self.logs is None else (self.logs / f"{name}.log").open("w")
        self.processes[name] = subprocess.Popen(
            command, env=self.env, stdout=output, stderr=subprocess.STDOUT if output else None, start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}{API}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def check(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = self.logs / f"{name}.log" if self.logs else None
                tail = f"; the end of its log:\n{log.read_text()[-2000:]}" if log else " (its output is above)"
                raise RuntimeError(f"nerloop {name} exited with {process.returncode}{tail}")

    def wait_until(self, condition: Callable[[], object], timeout: float, what: str, every: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            value = condition()
            if value:
                return value
            time.sleep(every)
        raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")

    def run_until_stopped(self) -> None:
        """Wait until Ctrl-C or SIGTERM (``SystemExit`` from the handler, which the block's exit then
        handles) or until a child dies; leaving the ``with`` block stops the rest."""
        with suppress(KeyboardInterrupt):
            while True:
                self.check()
                time.sleep(1)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to each process group after ``grace`` seconds: a worker in the middle
        of a training would otherwise finish it first (its task is acknowledged late, so nothing is lost)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        for process in self.processes.values():
            # The worker's pool processes share its group: none may outlive it on the broker.
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
