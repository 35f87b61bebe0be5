"""Annotations: list them, export the accepted ones as JSONL or CoNLL."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response

from ...operations import annotations
from ...schemas import AnnotationRead, ExportFormat
from ..deps import ProjectDep, SessionDep
from ..errors import ERROR_RESPONSES

router = APIRouter(prefix="/projects/{project_id}/annotations", tags=["annotations"], responses=ERROR_RESPONSES)

MEDIA_TYPES = {ExportFormat.jsonl: "application/x-ndjson", ExportFormat.conll: "text/plain"}


@router.get("", response_model=list[AnnotationRead])
def list_annotations(
    project: ProjectDep,
    session: SessionDep,
    accepted_only: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
):
    return annotations.list_for_project(session, project, accepted_only, limit, offset)


# response_class=Response: the errors stay documented as JSON; the 200 names the two file types.
@router.get("/export", response_class=Response, responses={200: {"content": {"application/x-ndjson": {}, "text/plain": {}}}})
def export_annotations(project: ProjectDep, session: SessionDep, format: ExportFormat = ExportFormat.jsonl):
    """The accepted annotation of every labelled task, as character spans (JSONL) or IOB2 columns (CoNLL)."""
    filename = f"project-{project.id}.{format.value}"
    return PlainTextResponse(
        annotations.export(session, project, format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
