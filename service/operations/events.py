"""Label Studio's events (webhooks, and the ML backend's webhook): training requests become queued
jobs, annotation events are recorded and may make a retraining due."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from active_learning.spans import storable_string

from .. import job_queue, sync
from ..errors import Invalid, NotFound
from ..label_studio import WEBHOOK_ACTIONS, parse_ls_datetime
from ..models import Project, Task
from ..schemas import MAX_TEXT, LabelStudioEvent
from ..settings import Settings
from . import jobs

logger = logging.getLogger(__name__)

TRAINING_EVENT = "START_TRAINING"
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETION_EVENT = "ANNOTATIONS_DELETED"


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


def check_event(session: Session, project: Project, event: LabelStudioEvent) -> None:
    """Refuse (``Invalid``, naming the field) an event that processing after the response could not
    apply: Label Studio retries no webhook we accepted, so a malformed one must be refused now."""
    if event.action in ANNOTATION_EVENTS:
        for field in ("task", "annotation"):
            if getattr(event, field) is None:
                raise Invalid.one((field,), f"Field required: {event.action} carries the {field} (turn on Label Studio's 'send payload')")
        if event.annotation.updated_at is None:
            raise Invalid.one(("annotation", "updated_at"), "Field required: when the annotation was last changed")
        try:
            parse_ls_datetime(event.annotation.updated_at)
        except ValueError:
            raise Invalid.one(("annotation", "updated_at"), f"not an ISO 8601 time: {event.annotation.updated_at!r}") from None
        known = session.exec(select(Task.id).where(Task.project_id == project.id, Task.ls_task_id == event.task.id)).first()
        if known is None:  # the task is adopted from the event, so its text must be one we can store
            text = (event.task.data or {}).get(project.text_key)
            problem = (
                "Field required: the text of a task nerloop does not have yet" if not isinstance(text, str) or not text.strip()
                else f"longer than {MAX_TEXT} characters" if len(text) > MAX_TEXT
                else storable_string(text)
            )
            if problem:
                raise Invalid.one(("task", "data", project.text_key), problem)
    elif event.action == DELETION_EVENT and event.annotations is None:
        raise Invalid.one(("annotations",), f'Field required: {DELETION_EVENT} carries the annotations, [{{"id": ...}}]')


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
