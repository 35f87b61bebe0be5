"""Jobs: queue a training or an augmentation for the workers, find and list jobs.

The job's task is sent by name to the broker of ``settings`` (``job_queue.request``); when the broker
refuses, the job is kept, pending (the beat sends it later), and the request is ``Unavailable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, select

from augment import Allowed, AugmentError, check

from .. import job_queue
from ..errors import Conflict, Invalid, NotFound, Unavailable
from ..models import Job, Project, Task, TaskState
from ..schemas import AugmentRequest
from ..settings import Settings, get_settings


def request_training(session: Session, project_id: int, settings: Settings | None = None) -> Job:
    """Queue a training job; a queued one already waiting is reused, so requests during a run leave
    exactly one follow-up. Refused (``Conflict``, with the reason) while the project has no labelled
    training task: the worker would only fail on it."""
    dev, training = labelled_split(session, project_id)
    if not training:
        in_dev = f" ({dev} labelled {'task is' if dev == 1 else 'tasks are'} in the dev set, which only evaluates)" if dev else ""
        raise Conflict.one(
            (), f"project {project_id} has no labelled training task yet{in_dev}: label some tasks first, then train"
        )
    try:
        return job_queue.request(session, project_id, "train", settings=settings)
    except job_queue.EnqueueError as error:
        raise Unavailable.one((), str(error)) from error


def labelled_split(session: Session, project_id: int) -> tuple[int, int]:
    """How many of the project's labelled tasks are in the dev set, and how many train."""
    rows = session.exec(
        select(Task.is_dev, func.count()).where(Task.project_id == project_id, Task.state == TaskState.labelled).group_by(Task.is_dev)
    ).all()
    counts = dict(rows)
    return counts.get(True, 0), counts.get(False, 0)


def request_augmentation(session: Session, project: Project, body: AugmentRequest, settings: Settings | None = None) -> Job:
    """Queue an augmentation job of the project's labelled training tasks. The method and its
    parameters are checked before anything is queued: the models and paths they name against the
    operator's allow-list (NERLOOP_TRANSLATION_MODELS, NERLOOP_AUGMENT_LOCAL_ROOT)."""
    settings = settings or get_settings()
    allowed = Allowed(frozenset(settings.translation_models), Path(settings.augment_local_root))
    try:
        params = check(body.method, body.n, body.params, allowed)
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
