"""Label Studio's events (webhooks, and the ML backend's webhook): training requests become queued
jobs, annotation events are recorded and may make a retraining due."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from .. import job_queue, sync
from ..errors import Invalid, NotFound
from ..label_studio import WEBHOOK_ACTIONS
from ..models import Project
from ..settings import Settings
from . import jobs

logger = logging.getLogger(__name__)

TRAINING_EVENT = "START_TRAINING"


def ml_webhook_actions(settings: Settings) -> tuple[str, ...]:
    """What the ML backend's /webhook takes: training requests, and annotation events only when /ml is
    behind basic auth. Otherwise anyone reaching /ml could rewrite annotations; they arrive through
    the secret-checked /api/v1/webhooks/label-studio instead."""
    return (TRAINING_EVENT, *(WEBHOOK_ACTIONS if settings.ml_basic_auth_user else ()))


def event_project(session: Session, ls_project_id: int | None) -> Project:
    """Our project for a Label Studio event's ``project.id``."""
    if ls_project_id is None:
        raise Invalid.one(("project",), "Field required: the Label Studio project ({\"id\": ...}) the event is about")
    project = session.exec(select(Project).where(Project.ls_project_id == ls_project_id)).first()
    if project is None:
        raise NotFound.one(("project", "id"), f"no project is attached to Label Studio project {ls_project_id}")
    return project


def process_event(engine: Engine, project_id: int, payload: dict, settings: Settings | None = None) -> None:
    """Run after the response (Label Studio waits 1 s at most): training requests become queued
    jobs, annotation events go to ``sync.handle_webhook`` and may make a retraining due. Failures
    are logged, never raised; the incremental pull (``nerloop sync``) recovers what is lost here."""
    action = payload.get("action")
    for attempt in (1, 2):
        try:
            with Session(engine) as session:
                if action == TRAINING_EVENT:
                    jobs.request_training(session, project_id, settings)
                    return
                project = session.get(Project, project_id)
                if project is None:
                    return
                sync.handle_webhook(session, project, payload)
                job_queue.after_annotations_changed(session, project, settings)
                return
        except IntegrityError:
            # Two events for one annotation raced (created and updated a moment apart): the other
            # one has stored it by now, and recording is idempotent, so once more settles it.
            if attempt == 2:
                logger.exception("Label Studio event %s for project %s failed twice", action, project_id)
        except Exception:
            logger.exception("Label Studio event %s for project %s failed", action, project_id)
            return
