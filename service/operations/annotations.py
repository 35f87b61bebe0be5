"""Annotations: made outside Label Studio, pulled from it, listed, exported. Whenever they change, a
retraining is queued once one is due (``job_queue.after_annotations_changed``)."""

from __future__ import annotations

import io
from dataclasses import dataclass

from sqlmodel import Session, select

from active_learning.corpus import write_conll, write_jsonl
from active_learning.spans import SpanError

from .. import job_queue, sync
from ..errors import Conflict, Invalid, NotFound, UpstreamError
from ..label_studio import LabelStudioClient, LabelStudioError
from ..models import Annotation, Job, Project, Task
from ..schemas import AnnotationIn, AnnotationRead, ExportFormat
from ..settings import Settings


@dataclass
class Pulled:
    changed: int  # annotations created, updated or deleted
    training: Job | None  # queued because enough new labels arrived


def annotate(session: Session, project: Project, task_id: int, body: AnnotationIn, settings: Settings | None = None) -> AnnotationRead:
    """Store an annotation made outside Label Studio; a retraining is queued when one is due."""
    task = session.get(Task, task_id)
    if task is None or task.project_id != project.id:
        raise NotFound.one(("task_id",), f"task {task_id} of project {project.id} not found")
    try:
        annotation = sync.record_local_annotation(session, task, [(s.start, s.end, s.label) for s in body.spans], body.annotator)
    except SpanError as error:
        session.rollback()
        raise Invalid.one(error.loc, error.reason) from error
    job_queue.after_annotations_changed(session, project, settings)
    session.refresh(annotation)
    return read(annotation, task.text)


def pull(session: Session, project: Project, client: LabelStudioClient, settings: Settings | None = None) -> Pulled:
    """Record what Label Studio has that nerloop has not seen (what a webhook missed)."""
    if project.ls_project_id is None:
        raise Conflict.one(("project_id",), f"project {project.id} is not attached to a Label Studio project (see nerloop init)")
    try:
        changed = sync.pull(session, project, client)
    except LabelStudioError as error:
        session.rollback()
        raise UpstreamError.one((), f"Label Studio: {error}") from error
    return Pulled(changed, job_queue.after_annotations_changed(session, project, settings))


def read(annotation: Annotation, text: str) -> AnnotationRead:
    return AnnotationRead(text=text, **annotation.model_dump())


def list_for_project(session: Session, project: Project, accepted_only: bool, limit: int, offset: int) -> list[AnnotationRead]:
    statement = select(Annotation, Task.text).join(Task, Annotation.task_id == Task.id).where(Task.project_id == project.id)
    if accepted_only:
        statement = statement.where(Annotation.accepted == True)  # noqa: E712 (SQL, not Python)
    rows = session.exec(statement.order_by(Annotation.id).offset(offset).limit(limit)).all()
    return [read(annotation, text) for annotation, text in rows]


def export(session: Session, project: Project, format: ExportFormat) -> str:
    """The accepted annotations (training and dev tasks) as JSONL (character spans) or CoNLL (IOB2) text."""
    train, dev = sync.accepted_examples(session, project)
    out = io.StringIO()
    (write_jsonl if format is ExportFormat.jsonl else write_conll)([*train, *dev], out)
    return out.getvalue()
