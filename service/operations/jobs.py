"""Jobs: queue a training or an augmentation for the workers, find and list jobs.

The job's task is sent by name to the broker of ``settings`` (``job_queue.request``); when the broker
refuses, the job is recorded as failed and the request is ``Unavailable``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, select

from augment import AugmentError, check

from .. import job_queue
from ..errors import Invalid, NotFound, Unavailable
from ..models import Job, Project
from ..schemas import AugmentRequest
from ..settings import Settings


def request_training(session: Session, project_id: int, settings: Settings | None = None) -> Job:
    """Queue a training job; a queued one already waiting is reused, so requests during a run leave
    exactly one follow-up."""
    try:
        return job_queue.request(session, project_id, "train", settings=settings)
    except job_queue.EnqueueError as error:
        raise Unavailable.one((), str(error)) from error


def request_augmentation(session: Session, project: Project, body: AugmentRequest, settings: Settings | None = None) -> Job:
    """Queue an augmentation job of the project's labelled training tasks. The method and its
    parameters are checked before anything is queued."""
    try:
        params = check(body.method, body.n, body.params)
    except AugmentError as error:
        raise Invalid.one(error.loc, error.reason) from error
    try:
        return job_queue.request(
            session, project.id, "augment", coalesce=False, settings=settings, method=body.method, n=body.n, seed=body.seed, params=params
        )
    except job_queue.EnqueueError as error:
        raise Unavailable.one((), str(error)) from error


def get(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound.one(("job_id",), f"job {job_id} not found")
    return job


def list_recent(session: Session, project_id: int | None, limit: int, offset: int = 0) -> Sequence[Job]:
    """Jobs newest first: of one project, or of all when ``project_id`` is None."""
    statement = select(Job).order_by(Job.id.desc()).offset(offset).limit(limit)
    if project_id is not None:
        statement = statement.where(Job.project_id == project_id)
    return session.exec(statement).all()
