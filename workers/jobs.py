"""Job rows on the worker's side: how a worker runs a queued job exactly once at a time.

A job goes ``queued`` → ``running`` → ``succeeded`` or ``failed`` (with the error text); requests
become queued jobs in ``service.jobs``. The rules:

- One running job per project and kind (``start(exclusive=True)``). The check and the claim happen in
  one transaction that first locks the project's row (an UPDATE: a row lock on PostgreSQL, the
  database's write lock on SQLite, where a SELECT would not begin the transaction). A job that finds
  another running waits (the task retries later) and stays queued, so later requests still coalesce.
- A running job proves it is alive: its ``progress`` names its owner (host, pid, a token for this
  attempt) and a heartbeat that the owner rewrites every ``job_heartbeat_seconds``. A job whose owner
  is gone (its pid, on the same host) or silent for ``job_stale_seconds`` is taken over: the broker's
  redelivery of the killed task runs it again (at most ``job_max_attempts`` times), and another job of
  the project marks it failed before it runs.
- Writes are fenced by the token: an attempt that was taken over finds it no longer owns the job and
  stops without touching the job, the model versions or the active model.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterator

from sqlmodel import Session, select

from service.db import session_scope
from service.jobs import age, lock_project, mark_failed, parse_time
from service.models import Job, JobStatus, utcnow
from service.settings import get_settings

log = logging.getLogger(__name__)

FINISHED = (JobStatus.succeeded, JobStatus.failed)


class JobLost(RuntimeError):
    """This attempt no longer owns its job: another worker took it over."""


def _locked_job(session: Session, job_id: int) -> Job | None:
    """The job, read after locking its project: what it says then cannot change until the transaction ends."""
    project_id = session.exec(select(Job.project_id).where(Job.id == job_id)).first()
    if project_id is not None:
        lock_project(session, project_id)
    return session.get(Job, job_id)


# ---- starting ------------------------------------------------------------------------------------


class Outcome(str, Enum):
    run = "run"  # this attempt owns the job now
    wait = "wait"  # another live attempt runs (this job or the project's other one): retry later
    done = "done"  # finished, failed, gone, or given up: nothing to do


@dataclass(frozen=True)
class Start:
    outcome: Outcome
    token: str = ""
    attempt: int = 0


def start(job_id: int, *, exclusive: bool = True, takeover: bool = True) -> Start:
    """Claim job ``job_id`` for this process.

    ``exclusive``: wait while another job of the same kind runs for the project (one whose owner is
    gone is marked failed instead). ``takeover``: a running job whose owner is gone is run again
    (this is the broker's redelivery of a killed task); without it a job that left ``queued`` is done.
    """
    settings = get_settings()
    with session_scope() as session:
        job = _locked_job(session, job_id)
        if job is None or job.status in FINISHED:
            return Start(Outcome.done)
        attempt = 0
        if job.status == JobStatus.running:
            if not takeover:
                return Start(Outcome.done)
            if owner_alive(job.progress):
                return Start(Outcome.wait)  # a second delivery of a task that still runs
            attempt = int(job.progress.get("attempt", 1))
            if attempt >= settings.job_max_attempts:
                mark_failed(job, f"the worker running this job was lost {attempt} times; giving up")
                session.add(job)
                return Start(Outcome.done)
            log.warning("job %s: its worker was lost during attempt %d; running it again", job_id, attempt)
        if exclusive and job.project_id is not None:
            others = session.exec(
                select(Job).where(
                    Job.project_id == job.project_id, Job.kind == job.kind, Job.status == JobStatus.running, Job.id != job_id
                )
            ).all()
            for other in others:
                if owner_alive(other.progress):
                    job.progress = {**job.progress, "waiting_for": other.id, "waiting_at": utcnow().isoformat()}
                    session.add(job)
                    return Start(Outcome.wait)
                mark_failed(other, f"its worker was lost (last heartbeat {other.progress.get('heartbeat')})")
                session.add(other)
        token = uuid.uuid4().hex
        job.status = JobStatus.running
        job.started_at = utcnow()
        job.finished_at = None
        job.error = None
        job.progress = {"attempt": attempt + 1, "owner": _owner(token), "heartbeat": utcnow().isoformat()}
        session.add(job)
    return Start(Outcome.run, token, attempt + 1)


def _owner(token: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": token}


def owner_alive(progress: dict) -> bool:
    """Whether the attempt that ``progress`` names still runs, as far as we can tell from here."""
    beat = parse_time(progress.get("heartbeat"))
    if beat is None or age(beat) > get_settings().job_stale_seconds:
        return False
    owner = progress.get("owner") or {}
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return _process_alive(owner["pid"])
    return True


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet (Linux): dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def error_text(error: BaseException) -> str:
    """The exception on the first line, then its traceback (the end of it, when long)."""
    summary = f"{type(error).__name__}: {error}"
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return f"{summary}\n\n{trace[-4000:]}"


# ---- jobs run by several tasks (a chord) ----------------------------------------------------------


@contextmanager
def _running(job_id: int) -> Iterator[Job | None]:
    """The job, locked, when it is still running (None otherwise)."""
    with session_scope() as session:
        job = _locked_job(session, job_id)
        yield job if job is not None and job.status == JobStatus.running else None


def still_running(job_id: int) -> bool:
    with _running(job_id) as job:
        return job is not None


def note(job_id: int, add: dict | None = None, **fields) -> None:
    """Set ``fields`` in a running job's progress and add ``add``'s numbers to the counters there."""
    with _running(job_id) as job:
        if job is not None:
            progress = {**job.progress, **fields, "heartbeat": utcnow().isoformat()}
            for key, amount in (add or {}).items():
                progress[key] = progress.get(key, 0) + amount
            job.progress = progress


def complete(job_id: int, **fields) -> None:
    """Mark a running job succeeded, with ``fields`` in its progress."""
    with _running(job_id) as job:
        if job is not None:
            job.progress = {**job.progress, **fields}
            job.status = JobStatus.succeeded
            job.finished_at = utcnow()


def fail(job_id: int, error: BaseException | str) -> None:
    """Mark a running job failed with the error's text."""
    with _running(job_id) as job:
        if job is not None:
            mark_failed(job, error if isinstance(error, str) else error_text(error))


# ---- running -------------------------------------------------------------------------------------


class JobRun:
    """The attempt that owns a job: progress held in memory and written, with the heartbeat, by a
    background thread every ``job_heartbeat_seconds`` (a training step costs nothing to report).

    Use as a context manager: leaving it with an exception marks the job failed with the error text
    (unless the job was taken over); ``finish`` marks it succeeded inside an ``owned()`` transaction.
    """

    def __init__(self, job_id: int, start: Start):
        self.job_id = job_id
        self.token = start.token
        self.progress: dict = {"attempt": start.attempt, "owner": _owner(start.token)}
        self.lost = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"job-{job_id}-heartbeat", daemon=True)

    def __enter__(self) -> "JobRun":
        self._thread.start()
        return self

    def __exit__(self, kind, error, trace) -> bool:
        self._stop.set()
        self._thread.join()
        if error is None or isinstance(error, JobLost):
            if isinstance(error, JobLost):
                log.warning("job %s was taken over by another worker; this attempt stops", self.job_id)
            return isinstance(error, JobLost)  # a lost job ends quietly: the new owner reports
        try:
            with self.owned() as (session, job):
                job.progress = {**job.progress, **self.snapshot()}
                mark_failed(job, error_text(error))
                session.add(job)
        except JobLost:
            pass
        except Exception:
            log.exception("job %s: could not record its failure", self.job_id)
        return False

    def update(self, **fields) -> None:
        """Record progress (written with the next heartbeat); raises ``JobLost`` once taken over."""
        if self.lost:
            raise JobLost(f"job {self.job_id} was taken over")
        with self._lock:
            self.progress.update(fields)

    def snapshot(self) -> dict:
        with self._lock:
            return {**self.progress, "heartbeat": utcnow().isoformat()}

    @contextmanager
    def owned(self) -> Iterator[tuple[Session, Job]]:
        """A transaction in which this attempt provably still owns the job; raises ``JobLost`` if not."""
        with session_scope() as session:
            job = _locked_job(session, self.job_id)
            if job is None or job.status != JobStatus.running or (job.progress.get("owner") or {}).get("token") != self.token:
                self.lost = True
                raise JobLost(f"job {self.job_id} was taken over")
            yield session, job

    def finish(self, session: Session, job: Job, **fields) -> None:
        """Mark the job succeeded, with ``fields`` added to its progress (inside ``owned()``)."""
        self.update(**fields)
        job.progress = self.snapshot()
        job.status = JobStatus.succeeded
        job.finished_at = utcnow()
        session.add(job)

    def flush(self) -> None:
        try:
            with self.owned() as (session, job):
                job.progress = self.snapshot()
                session.add(job)
        except JobLost:
            pass
        except Exception:
            log.exception("job %s: could not write its progress", self.job_id)

    def _beat(self) -> None:
        while not self._stop.wait(get_settings().job_heartbeat_seconds):
            self.flush()
