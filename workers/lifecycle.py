"""A job's life on the worker's side, written once: ``JobTask``, the base class of every task that
runs a job, claims it, runs its body under a heartbeat, records a failure and ends quietly when the
job was taken over. Requests become queued jobs in ``service.job_queue``.

A job goes ``queued`` → ``running`` → ``succeeded`` or ``failed`` (with the error text). The rules:

- One running job per project and kind (``claim(exclusive=True)``). The check and the claim happen in
  one transaction that first locks the project's row (an UPDATE: a row lock on PostgreSQL, the
  database's write lock on SQLite, where a SELECT would not begin the transaction). A job that finds
  another running waits (the task retries later) and stays queued, so later requests still coalesce.
- A running job proves it is alive: its owner columns name the attempt (host, pid, a token) and its
  heartbeat is rewritten every ``job_heartbeat_seconds``. A job whose owner is gone (its pid, on the
  same host) or silent for ``job_stale_seconds`` is taken over: the broker's redelivery of the killed
  task runs it again (at most ``job_max_attempts`` times), and another job of the project marks it
  failed before it runs. A worker killed whole gives nothing back to the broker: the beat's recovery
  round (``resend_stranded``) sends such a job again, and pending ones the broker did not take.
- Writes are fenced by the token: an attempt that was taken over finds it no longer owns the job and
  stops without touching the job, the model versions or the active model. The members of a job's
  chord (pool scoring's shards and push) carry the token of the attempt that sent them, and are
  fenced by it too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from celery import Task
from sqlmodel import Session, select

from service.db import session_scope
from service.job_queue import EnqueueError, age, lock_project, mark_failed, send
from service.models import Job, JobStatus, utcnow
from service.settings import get_settings

log = logging.getLogger(__name__)

FINISHED = (JobStatus.succeeded, JobStatus.failed)


class JobLost(RuntimeError):
    """This attempt no longer owns its job: another worker took it over, or it ended."""


class RetryLater(RuntimeError):
    """Raised by the body of a chord member (``claims=False``): a service it needs is down for now
    (Label Studio, for a push). The job is not failed: the task runs again after
    ``job_wait_seconds``, for as long as its attempt owns the job (and the member's retry rewrites
    the heartbeat, so a wait shorter than ``job_stale_seconds`` is not taken for a lost worker)."""


def _locked_job(session: Session, job_id: int) -> Job | None:
    """The job, read after locking its project: what it says then cannot change until the transaction ends."""
    project_id = session.exec(select(Job.project_id).where(Job.id == job_id)).first()
    if project_id is not None:
        lock_project(session, project_id)
    return session.get(Job, job_id)


# ---- claiming ------------------------------------------------------------------------------------


class Outcome(str, Enum):
    run = "run"  # this attempt owns the job now
    wait = "wait"  # another live attempt runs (this job or the project's other one): retry later
    done = "done"  # finished, failed, gone, or given up: nothing to do


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    token: str = ""
    attempt: int = 0


def claim(job_id: int, *, exclusive: bool = True) -> Claim:
    """Claim job ``job_id`` for this process. A running job whose owner is gone is run again (the
    broker's redelivery of a killed task). ``exclusive``: wait while another job of the same kind runs
    for the project (one whose owner is gone is marked failed instead)."""
    settings = get_settings()
    with session_scope() as session:
        job = _locked_job(session, job_id)
        if job is None or job.status in FINISHED:
            return Claim(Outcome.done)
        if job.status == JobStatus.running:
            if owner_alive(job):
                return Claim(Outcome.wait)  # a second delivery of a task that still runs
            if job.attempt >= settings.job_max_attempts:
                mark_failed(job, f"the worker running this job was lost {job.attempt} times; giving up")
                return Claim(Outcome.done)
            log.warning("job %s: its worker was lost during attempt %d; running it again", job_id, job.attempt)
        if exclusive and job.project_id is not None:
            others = session.exec(
                select(Job).where(
                    Job.project_id == job.project_id, Job.kind == job.kind, Job.status == JobStatus.running, Job.id != job_id
                )
            ).all()
            for other in others:
                if owner_alive(other):
                    job.waiting_for, job.waiting_at = other.id, utcnow()
                    return Claim(Outcome.wait)
                beat = other.heartbeat_at.isoformat() if other.heartbeat_at else None
                mark_failed(other, f"its worker was lost (last heartbeat {beat})")
        token = uuid.uuid4().hex
        job.status = JobStatus.running
        job.started_at, job.finished_at, job.error = utcnow(), None, None
        job.progress = {}  # what an earlier attempt reported does not describe this one
        job.attempt += 1
        job.owner_host, job.owner_pid, job.owner_token = socket.gethostname(), os.getpid(), token
        job.heartbeat_at = utcnow()
        job.waiting_for = None
        return Claim(Outcome.run, token, job.attempt)


def resend_stranded() -> list[int]:
    """Send again the jobs that no message on the broker will run soon, and return their ids:

    - pending jobs, queued while the broker was down (``sent_at`` NULL);
    - running jobs whose owner is gone: a worker killed whole (its main process too) gives nothing
      back to the broker until the visibility timeout, hours later. The next claim takes such a job
      over as a new attempt; the old message, delivered again one day, finds it finished.

    A running job is sent again at most once per ``job_stale_seconds``, so jobs do not pile up copies
    while no worker is there to take them. Called by the beat (``nerloop.recover``)."""
    stale = get_settings().job_stale_seconds
    with session_scope() as session:
        candidates = session.exec(
            select(Job.id).where(
                ((Job.status == JobStatus.queued) & Job.sent_at.is_(None)) | (Job.status == JobStatus.running)
            ).order_by(Job.id)
        ).all()
    sent = []
    for job_id in candidates:
        with session_scope() as session:
            job = _locked_job(session, job_id)
            if job is None or job.status in FINISHED:
                continue
            if job.status == JobStatus.running:
                if owner_alive(job) or (job.sent_at and job.heartbeat_at and job.sent_at > job.heartbeat_at and age(job.sent_at) < stale):
                    continue
                log.warning("job %s: its worker stopped (last heartbeat %s); sending it again", job_id, job.heartbeat_at)
            elif job.sent_at is not None:
                continue  # sent meanwhile
            try:
                send(session, job)
            except EnqueueError:
                break  # the broker is still down: the next round tries again
            sent.append(job_id)
    return sent


def owner_alive(job: Job) -> bool:
    """Whether the attempt that owns ``job`` still runs, as far as we can tell from here."""
    if job.heartbeat_at is None or age(job.heartbeat_at) > get_settings().job_stale_seconds:
        return False
    if job.owner_host == socket.gethostname() and job.owner_pid is not None:
        return _process_alive(job.owner_pid)
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


# ---- running -------------------------------------------------------------------------------------


class JobRun:
    """Work on a job for the attempt that holds ``token``: the attempt itself, or a member of its chord.

    Progress is held in memory and written, with the heartbeat, by a background thread every
    ``job_heartbeat_seconds`` (a training step costs nothing to report): the fields this run set
    (``update``) are written over the job's progress, and the counts it added (``add``) are added to
    what is there, so that the members of a chord can count into one field.

    Use as a context manager: leaving it with an exception marks the job failed with the error text,
    leaving it with ``JobLost`` ends quietly (the new owner reports); ``finish`` marks it succeeded.
    """

    def __init__(self, job_id: int, token: str):
        self.job_id = job_id
        self.token = token
        self.lost = False
        self.finished = False
        self._fields: dict = {}
        self._counts: dict[str, int] = {}
        self._owned_job: Job | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"job-{job_id}-heartbeat", daemon=True)

    def __enter__(self) -> JobRun:
        self._thread.start()
        return self

    def __exit__(self, kind, error, trace) -> bool:
        self._stop.set()
        self._thread.join()
        if isinstance(error, JobLost):
            log.warning("job %s was taken over by another worker; this attempt stops", self.job_id)
            return True
        if isinstance(error, RetryLater):
            self.flush()
            return False  # JobTask retries the task; the job stays running
        if error is None:
            if not self.finished:
                self.flush()  # what it reported since the last heartbeat
            return False
        try:
            with self._fenced() as (_, job):
                mark_failed(job, error_text(error))
        except JobLost:
            pass
        except Exception:
            log.exception("job %s: could not record its failure", self.job_id)
        return False

    def update(self, **fields) -> None:
        """Report ``fields`` (written with the next heartbeat); raises ``JobLost`` once taken over."""
        self._check()
        with self._lock:
            self._fields.update(fields)

    def add(self, **counts: int) -> None:
        """Add ``counts`` to the job's counters of those names (written with the next heartbeat)."""
        self._check()
        with self._lock:
            for key, amount in counts.items():
                self._counts[key] = self._counts.get(key, 0) + amount

    def _check(self) -> None:
        if self.lost:
            raise JobLost(f"job {self.job_id} was taken over")

    @contextmanager
    def owned(self) -> Iterator[Session]:
        """A transaction in which this run provably works for the job's owner, committed with what it
        reported; raises ``JobLost`` if not. ``finish`` inside it succeeds with the other writes."""
        with self._fenced() as (session, job):
            self._owned_job = job
            try:
                yield session
            finally:
                self._owned_job = None

    def finish(self, **fields) -> None:
        """Mark the job succeeded, with ``fields`` added to its progress: in the ``owned()``
        transaction around the call, else in one of its own."""
        if self._owned_job is None:
            with self.owned():
                return self.finish(**fields)
        self.update(**fields)
        self._owned_job.status = JobStatus.succeeded
        self._owned_job.finished_at = utcnow()
        self.finished = True

    def owns(self) -> bool:
        """Whether the job still runs for this run's attempt (a heartbeat when it does)."""
        try:
            with self._fenced():
                return True
        except JobLost:
            return False

    def flush(self) -> None:
        """Write what was reported, with the heartbeat; a failure is logged (the next beat tries again)."""
        try:
            with self._fenced():
                pass
        except JobLost:
            pass
        except Exception:
            log.exception("job %s: could not write its progress", self.job_id)

    @contextmanager
    def _fenced(self) -> Iterator[tuple[Session, Job]]:
        """The locked job in a transaction, when this run's token owns it; what was reported is
        written at the end. Raises ``JobLost`` (and remembers it) when the token no longer owns it."""
        with session_scope() as session:
            job = _locked_job(session, self.job_id)
            if job is None or job.status != JobStatus.running or job.owner_token != self.token:
                self.lost = True
                raise JobLost(f"job {self.job_id} was taken over")
            yield session, job
            with self._lock:
                fields, counts = dict(self._fields), {key: n for key, n in self._counts.items() if n}
            progress = {**job.progress, **fields}
            for key, amount in counts.items():
                progress[key] = progress.get(key, 0) + amount
            job.progress = progress
            job.heartbeat_at = utcnow()
        with self._lock:  # committed: those counts are in the job now
            for key, amount in counts.items():
                self._counts[key] -= amount

    def _beat(self) -> None:
        while not self._stop.wait(get_settings().job_heartbeat_seconds):
            self.flush()


class JobTask(Task):
    """The base of every task that runs a job: ``@app.task(base=JobTask)`` on a body
    ``body(run: JobRun, **arguments)``, called as ``task(..., job_id=..., **arguments)``.

    The body only does the work: the class claims the job (retrying while another live attempt runs
    it or the project's other job of its kind), skips it when it is finished, runs the body with a
    heartbeat, marks the job failed with the error when the body raises, and ends quietly when the
    job was taken over. The body marks success itself (``run.finish``), so that the job succeeds in
    the same transaction as what it stores, or leaves the job running for the members of its chord.

    ``claims=False`` makes a member of a job's chord: it claims nothing, gets the token of the
    attempt that sent it (``token=``), and works only while that attempt owns the job.
    """

    claims = True
    exclusive = True  # one running job of its kind per project
    max_retries = None  # a claim waits as long as the job it waits for lives
    typing = False  # the body's first parameter is the run this class adds: the caller's arguments differ

    def __call__(self, *args, job_id: int, token: str | None = None, **kwargs):
        if self.claims:
            claimed = claim(job_id, exclusive=self.exclusive)
            if claimed.outcome is Outcome.wait:
                log.info("job %s waits for the project's running job", job_id)
                raise self.retry(countdown=get_settings().job_wait_seconds)
            if claimed.outcome is Outcome.done:
                return {"job_id": job_id, "skipped": "finished already"}
            token = claimed.token
        run = JobRun(job_id, token)
        if not self.claims and not run.owns():
            return {"job_id": job_id, "skipped": "its attempt no longer owns the job"}
        try:
            with run:
                return self.run(run, *args, **kwargs)
        except RetryLater as error:
            log.warning("job %s: %s; trying again in %ss", job_id, error, get_settings().job_wait_seconds)
            raise self.retry(countdown=get_settings().job_wait_seconds, exc=error) from error
        return {"job_id": job_id, "skipped": "taken over by another worker"}
