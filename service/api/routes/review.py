"""Label review: queue a review job, list the suspect annotations it found."""

from typing import Annotated

from fastapi import APIRouter, Query

from ...models import SuspectStatus
from ...operations import review
from ...schemas import ErrorResponse, JobRead, ReviewPage
from ..deps import ProjectDep, SessionDep, SettingsDep
from ..errors import ERROR_RESPONSES

router = APIRouter(tags=["review"], responses=ERROR_RESPONSES)


@router.post(
    "/projects/{project_id}/review",
    response_model=JobRead,
    status_code=202,
    responses={
        409: {"model": ErrorResponse, "description": "Nothing to review yet"},
        503: {"description": "The broker refused the task (the job is recorded as failed)"},
    },
)
def request_review(project: ProjectDep, session: SessionDep, settings: SettingsDep):
    """Queue a label review: every accepted annotation is scored by models that did not train on it
    (k-fold cross-fitting from the base model); suspects are stored and shown in Label Studio. While
    one is already queued, that job is returned."""
    return review.request_review(session, project.id, settings)


@router.get("/projects/{project_id}/review", response_model=ReviewPage)
def list_suspects(
    project: ProjectDep,
    session: SessionDep,
    status: SuspectStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
):
    """The project's suspect annotations, most likely wrong (lowest score) first; ``status`` filters
    (open: waiting for a reviewer, fixed: the annotation changed since, confirmed: a reviewer kept it)."""
    return review.list_suspects(session, project.id, status=status, limit=limit, offset=offset)
