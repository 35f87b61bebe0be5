"""Model versions: which one is active, and the one way to change it.

Exactly one version per project is active. Manual promotion and rollback (``service.operations.model_versions``)
and a training that wins its comparison (``workers.retrain``) all switch through ``activate``.
"""

from __future__ import annotations

from sqlmodel import Session, select

from .job_queue import lock_project
from .models import ModelStatus, ModelVersion


def _active(project_id: int) -> tuple:
    return ModelVersion.project_id == project_id, ModelVersion.status == ModelStatus.active


def active_version(session: Session, project_id: int) -> ModelVersion | None:
    return session.exec(select(ModelVersion).where(*_active(project_id))).first()


def active_version_path(session: Session, project_id: int) -> tuple[int, str, str] | None:
    """(id, name, path) of the active version: what serving needs, without loading its metrics."""
    row = session.exec(select(ModelVersion.id, ModelVersion.name, ModelVersion.path).where(*_active(project_id))).first()
    return None if row is None else tuple(row)


def activate(session: Session, version: ModelVersion) -> ModelVersion | None:
    """Make ``version`` its project's active version in the session's transaction (the caller commits);
    the version active before is retired and returned.

    The project's row is locked first (a row lock on PostgreSQL, the write lock on SQLite), so two
    switches at once cannot both see the same active version and leave two active.
    """
    lock_project(session, version.project_id)
    current = active_version(session, version.project_id)
    if current is not None and current.id != version.id:
        current.status = ModelStatus.retired
        session.add(current)
        session.flush()  # never two active rows, even within this transaction
    version.status = ModelStatus.active
    session.add(version)
    session.flush()
    return current if current is not None and current.id != version.id else None
