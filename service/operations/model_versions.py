"""Model versions: list them, promote one to active, roll back to the one active before."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sqlmodel import Session, select

from .. import job_queue
from ..errors import Conflict, NotFound
from ..models import ModelStatus, ModelVersion, Project
from ..settings import Settings
from ..versions import activate, active_version

logger = logging.getLogger(__name__)


def list_for_project(session: Session, project: Project) -> Sequence[ModelVersion]:
    return session.exec(select(ModelVersion).where(ModelVersion.project_id == project.id).order_by(ModelVersion.id)).all()


def promote(session: Session, project: Project, version_id: int, settings: Settings | None = None) -> ModelVersion:
    """Make one version the active one; the version active before becomes retired. The pool is then
    scored with it, so Label Studio's pre-annotations and task order follow the active version."""
    version = session.get(ModelVersion, version_id)
    if version is None or version.project_id != project.id:
        raise NotFound.one(("version_id",), f"model version {version_id} of project {project.id} not found")
    if version.status == ModelStatus.active:
        return version
    if not version.path or not Path(version.path).is_dir():
        raise Conflict.one(("version_id",), f"model version {version.name} has no model directory at {version.path!r}")
    activate(session, version)
    session.commit()
    session.refresh(version)
    try:
        job_queue.request(session, project.id, "score_pool", version_id=version.id, settings=settings, coalesce=False)
    except job_queue.EnqueueError as error:  # the promotion stands; scoring can be requested again
        logger.error("project %s: scoring after promoting %s not queued: %s", project.id, version.name, error)
    return version


def rollback(session: Session, project: Project, settings: Settings | None = None) -> ModelVersion:
    """Re-activate the version that was active before the current one.

    Versions do not record when they were active, so "before" is read from the ids: the newest
    retired version older than the active one, or else the newest retired version. Promotions in
    training order and successive rollbacks step back through the history exactly.
    """
    current = active_version(session, project.id)
    retired = session.exec(
        select(ModelVersion)
        .where(ModelVersion.project_id == project.id, ModelVersion.status == ModelStatus.retired)
        .order_by(ModelVersion.id.desc())
    ).all()
    older = [v for v in retired if current is None or v.id < current.id]
    previous = (older or retired or [None])[0]
    if previous is None:
        raise Conflict.one((), f"project {project.id} has no earlier model version to roll back to")
    return promote(session, project, previous.id, settings)
