"""Tasks: import (a JSON body, or a file: JSONL, CSV with a ``text`` column, CoNLL; deduplicated by
content), the next ones to label, and annotations made outside Label Studio."""

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile

from ...operations import annotations, tasks
from ...operations.tasks import MAX_UPLOAD_BYTES
from ...schemas import AnnotationIn, AnnotationRead, ImportReport, NextTask, TaskFormat, TasksImport
from ..deps import LabelStudioDep, ProjectDep, SessionDep, SettingsDep, TaskId, json_body, json_body_schema
from ..errors import ERROR_RESPONSES

router = APIRouter(prefix="/projects/{project_id}/tasks", tags=["tasks"], responses=ERROR_RESPONSES)


@router.post("", response_model=ImportReport, status_code=201, openapi_extra=json_body_schema(TasksImport))
def import_tasks(
    body: Annotated[TasksImport, Depends(json_body(TasksImport))],
    project: ProjectDep,
    session: SessionDep,
    client: LabelStudioDep,
    settings: SettingsDep,
):
    """Import tasks, optionally pre-labelled with spans; texts already in the project count as duplicates."""
    examples = tasks.examples_from_tasks(project, body.tasks)
    return tasks.import_examples(session, project, examples, client, settings.dev_share)


@router.post("/upload", response_model=ImportReport, status_code=201)
def upload_tasks(
    project: ProjectDep,
    session: SessionDep,
    client: LabelStudioDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="UTF-8 JSONL, CSV or CoNLL file")],
    format: Annotated[TaskFormat | None, Form(description="Default: from the file name's ending")] = None,
):
    """Import tasks from a file; its spans (JSONL, CoNLL) must use the project's labels."""
    examples = tasks.examples_from_upload(project, file.filename, file.file.read(MAX_UPLOAD_BYTES + 1), format)
    return tasks.import_examples(session, project, examples, client, settings.dev_share)


@router.get("/next", response_model=list[NextTask])
def next_tasks(project: ProjectDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 1):
    """The pool tasks to label next, most informative first (the order Label Studio serves), with the
    active version's pre-annotation: for annotation tools other than Label Studio."""
    return tasks.next_tasks(session, project, limit)


@router.post("/{task_id}/annotations", response_model=AnnotationRead, status_code=201)
def annotate(project: ProjectDep, task_id: TaskId, body: AnnotationIn, session: SessionDep, settings: SettingsDep):
    """Label a task outside Label Studio. It becomes the task's accepted annotation (unless a ground
    truth exists), and a retraining is queued once ``retrain_every`` new tasks are labelled."""
    return annotations.annotate(session, project, task_id, body, settings)
