"""Job rows on the requesting side: how the API, the CLI, the beat and the workers' follow-ups turn a
request into a queued job and a task on the broker, sent by name (the task code lives in
``workers.tasks``).

Requests coalesce: asking for a training (or a sync) while one of the project's is still queued
returns that job instead of queueing another, so a burst of requests during a run leaves exactly one
follow-up. How a worker then claims and runs a job is ``workers.lifecycle``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import func, update
from sqlmodel import Session, select

from workers.celery_app import enqueue, job_task

from .models import Job, JobStatus, ModelVersion, Project, Retraining, Task, TaskState, utcnow
from .settings import Settings, get_settings

log = logging.getLogger(__name__)


class EnqueueError(RuntimeError):
    """The broker did not take the task: the job stays queued, pending (``sent_at`` NULL), and is sent
    when the broker answers again (the beat's sweep, or the next request of its kind)."""


def lock_project(session: Session, project_id: int) -> None:
    """Serialise job bookkeeping of one project until the session's transaction ends."""
    session.exec(
        update(Project).where(Project.id == project_id).values(name=Project.name),
        execution_options={"synchronize_session": False},
    )


def request(
    session: Session, project_id: int, kind: str, *, settings: Settings | None = None, coalesce: bool = True, **task_kwargs
) -> Job:
    """A queued job of ``kind`` for the project, its task sent as ``nerloop.<kind>(project_id=...,
    job_id=..., **task_kwargs)``; with ``coalesce``, a job of that kind already queued is returned
    instead (and sent again when it is pending, or looks lost).

    Commits. Raises ``EnqueueError`` when the broker does not take the task: the job is stored anyway,
    pending, so a broker outage leaves one pending job per project and kind, not one per request.
    """
    job_task(kind)  # an unknown kind fails before anything is stored
    lock_project(session, project_id)
    if coalesce:
        waiting = session.exec(
            select(Job).where(Job.project_id == project_id, Job.kind == kind, Job.status == JobStatus.queued).order_by(Job.id)
        ).first()
        if waiting is not None:
            session.commit()
            if waiting.sent_at is None:
                send(session, waiting, settings)
            elif _looks_lost(waiting):
                # No worker has looked at it for a while: its message may be gone (a Redis restarted
                # without persistence). Sending it again is safe: a second delivery only waits.
                log.warning("job %s has waited since %s unseen by any worker; sending it again", waiting.id, waiting.created_at)
                try:
                    send(session, waiting, settings)
                except EnqueueError:
                    pass  # the first message may still be there; send() logged why
            return waiting
    job = Job(project_id=project_id, kind=kind, celery_id=str(uuid.uuid4()), arguments=task_kwargs)
    session.add(job)
    session.commit()
    session.refresh(job)
    send(session, job, settings)
    return job


def request_follow_up(session: Session, project_id: int, kind: str, *, coalesce: bool = True, **task_kwargs) -> None:
    """``request`` for a job a finished one asks for (the scoring after a training, the review after
    the scoring): the finished job succeeded whatever the broker says, so a refusal is only logged;
    the follow-up stays pending and the sweep sends it."""
    try:
        request(session, project_id, kind, coalesce=coalesce, **task_kwargs)
    except EnqueueError as error:
        log.error("project %s: %s", project_id, error)


def send(session: Session, job: Job, settings: Settings | None = None) -> None:
    """Send ``job``'s task to the broker and record when (``sent_at``); when the broker does not take
    it, record why in ``error`` and raise ``EnqueueError``: the job stays queued, pending. Commits."""
    name = job_task(job.kind)
    arguments = {"project_id": job.project_id, **job.arguments}
    try:
        enqueue(name, settings=settings, task_id=job.celery_id, job_id=job.id, **arguments)
    except Exception as error:  # any broker or connection error
        url = (settings or get_settings()).broker_url
        job.error = (
            f"not sent: the broker ({_without_password(url)}) did not take {name} ({type(error).__name__}: {error}); "
            "the job is kept and sent when the broker answers again (the beat's recovery round, or the next request)"
        )
        session.add(job)
        session.commit()
        log.error("job %s: %s", job.id, job.error)
        raise EnqueueError(job.error) from error
    job.sent_at, job.error = utcnow(), None
    session.add(job)
    session.commit()


def _without_password(url: str) -> str:
    """``url`` with any password replaced: secrets never reach logs or job rows."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def in_flight(session: Session, project_id: int, kinds: tuple[str, ...]) -> bool:
    """Whether a job of one of these kinds is queued or running for the project."""
    statuses = (JobStatus.queued, JobStatus.running)
    waiting = select(Job.id).where(Job.project_id == project_id, Job.kind.in_(kinds), Job.status.in_(statuses))
    return session.exec(waiting).first() is not None


def request_full_stage(session: Session, project_id: int, version_id: int) -> None:
    """After a quick version's push (``workers.retrain``): the training that runs the configured recipe,
    unless it is moot: a newer version brings its own (a quick one asks after its push; a full one
    trained on at least as much), and so does a training queued or under way."""
    newest = session.exec(select(ModelVersion.id).where(ModelVersion.project_id == project_id).order_by(ModelVersion.id.desc())).first()
    if newest == version_id and not in_flight(session, project_id, ("train",)):
        request_follow_up(session, project_id, "train")


def retrain_if_due(session: Session, project: Project, settings: Settings | None = None) -> Job | None:
    """Queue a training once ``project.retrain_every`` tasks were labelled since the newest model
    version was trained (coalesced: while one is queued, no second is added), or when the newest is a
    quick version whose full stage is nowhere: its push failed (Label Studio refused it), so nothing
    of the project's queued or running will ask for it."""
    labelled = session.exec(
        select(func.count()).select_from(Task).where(Task.project_id == project.id, Task.state == TaskState.labelled, Task.is_dev == False)  # noqa: E712
    ).one()
    newest = session.exec(select(ModelVersion).where(ModelVersion.project_id == project.id).order_by(ModelVersion.id.desc())).first()
    if labelled - (newest.train_size if newest else 0) >= project.retrain_every or _full_stage_lost(session, project.id, newest):
        return request(session, project.id, "train", settings=settings)
    return None


def _full_stage_lost(session: Session, project_id: int, newest: ModelVersion | None) -> bool:
    """The newest version is a quick one and nothing queued or running will ask for its full stage."""
    if newest is None or newest.retraining != Retraining.quick or in_flight(session, project_id, ("train", "score_pool")):
        return False
    trainings = select(Job.status).where(Job.project_id == project_id, Job.kind == "train").order_by(Job.id.desc())
    return session.exec(trainings).first() != JobStatus.failed  # a failed full stage is not retried by itself, like any training


def after_annotations_changed(session: Session, project: Project, settings: Settings | None = None) -> Job | None:
    """What follows a change of the project's annotations, wherever it came from (the API, a webhook,
    a pull): commit it, then queue a training when one is due (``retrain_if_due``). A broker that
    refuses is logged, never raised: the annotations stand, and the job stays pending for the sweep."""
    session.commit()
    try:
        return retrain_if_due(session, project, settings)
    except EnqueueError:  # the job is stored, pending; send() logged why
        return None


def _looks_lost(job: Job) -> bool:
    """Queued, and neither sent nor seen by a worker for ``job_stale_seconds``."""
    moments = [m for m in (job.created_at, job.sent_at, job.waiting_at) if m is not None]
    return age(max(moments)) > get_settings().job_stale_seconds


def mark_failed(job: Job, error: str) -> None:
    job.status = JobStatus.failed
    job.error = error
    job.finished_at = utcnow()


def age(moment: datetime) -> float:
    return (utcnow() - moment).total_seconds()
