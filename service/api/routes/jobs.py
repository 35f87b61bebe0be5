"""Jobs: queue a training or an augmentation, follow a job, list a project's jobs."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from .. import operations
from ..deps import ProjectDep, SessionDep, SettingsDep
from ..errors import ERROR_RESPONSES
from ..schemas import MAX_ID, AugmentRequest
from ...models import JobStatus

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="job id")]


class JobRead(BaseModel):
    id: int
    project_id: int | None
    kind: str
    status: JobStatus
    progress: dict[str, Any]
    error: str | None
    celery_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@router.post(
    "/projects/{project_id}/train",
    response_model=JobRead,
    status_code=202,
    responses={503: {"description": "The broker refused the task (the job is recorded as failed)"}},
)
def train(project: ProjectDep, session: SessionDep, settings: SettingsDep):
    """Queue a training of the project's model; while one is already queued, that job is returned."""
    return operations.request_training(session, project.id, settings)


@router.post(
    "/projects/{project_id}/augment",
    response_model=JobRead,
    status_code=202,
    responses={503: {"description": "The broker refused the task (the job is recorded as failed)"}},
)
def augment(project: ProjectDep, body: AugmentRequest, session: SessionDep, settings: SettingsDep):
    """Queue an augmentation of the project's labelled training tasks; its outputs are stored as
    augmented examples, which training uses when the project enables ``augment``."""
    return operations.request_augmentation(session, project, body, settings)


@router.get("/projects/{project_id}/jobs", response_model=list[JobRead])
def list_jobs(
    project: ProjectDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
):
    """The project's jobs, newest first."""
    return operations.list_jobs(session, project, limit, offset)


@router.get("/jobs/{job_id}", response_model=JobRead)
def get_job(job_id: JobId, session: SessionDep):
    """A job's status and progress (training: epoch, step, total_steps, loss, dev_f1; on success the
    version it registered and whether it was promoted); ``error`` holds the failure's text."""
    return operations.get_job(session, job_id)
