"""Jobs: queue a training or an augmentation, follow a job, list a project's jobs."""

from typing import Annotated

from fastapi import APIRouter, Query

from ...operations import jobs
from ...schemas import AugmentRequest, ErrorResponse, JobRead
from ..deps import JobId, ProjectDep, SessionDep, SettingsDep
from ..errors import ERROR_RESPONSES

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)
BROKER_REFUSED = {
    409: {"model": ErrorResponse, "description": "Nothing to work on yet: the project has no labelled training task"},
    503: {"description": "The broker refused the task (the job is recorded as failed)"},
}


@router.post("/projects/{project_id}/train", response_model=JobRead, status_code=202, responses=BROKER_REFUSED)
def train(project: ProjectDep, session: SessionDep, settings: SettingsDep):
    """Queue a training of the project's model; while one is already queued, that job is returned."""
    return jobs.request_training(session, project.id, settings)


@router.post("/projects/{project_id}/augment", response_model=JobRead, status_code=202, responses=BROKER_REFUSED)
def augment(project: ProjectDep, body: AugmentRequest, session: SessionDep, settings: SettingsDep):
    """Queue an augmentation of the project's labelled training tasks; its outputs are stored as
    augmented examples, which training uses when the project enables ``augment``."""
    return jobs.request_augmentation(session, project, body, settings)


@router.get("/projects/{project_id}/jobs", response_model=list[JobRead])
def list_jobs(
    project: ProjectDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
):
    """The project's jobs, newest first."""
    return jobs.list_recent(session, project.id, limit, offset)


@router.get("/jobs/{job_id}", response_model=JobRead)
def get_job(job_id: JobId, session: SessionDep):
    """A job's status and progress (training: epoch, step, total_steps, loss, dev_f1; on success the
    version it registered and whether it was promoted); ``error`` holds the failure's text."""
    return jobs.get(session, job_id)
