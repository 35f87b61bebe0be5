"""What the dashboard shows for one project: the learning curve, labels per type, model versions with
per-type F1, recent jobs and job counts. The page (static/dashboard.html) only draws this."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlmodel import Session, select

from ..models import Annotation, Job, JobStatus, ModelStatus, ModelVersion, Project, Task
from . import operations
from .schemas import ProjectRead, TaskCounts

RECENT_JOBS = 20
# Job progress keys that are bookkeeping for the workers, not news for a person.
INTERNAL_PROGRESS = {"owner", "heartbeat"}


class TypeScores(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class VersionSummary(BaseModel):
    id: int
    name: str
    status: ModelStatus
    active: bool
    train_size: int = Field(description="Labelled training tasks (dev set excluded) the version was trained on")
    train_tokens: int | None = Field(description="Their words; None for versions trained before it was recorded")
    dev_size: int | None = Field(description="Labelled dev tasks it was scored on")
    dev_f1: float | None
    per_type: dict[str, TypeScores] = Field(description="Dev precision, recall, F1 and support per entity type")
    decision: str | None = Field(description="Why the training promoted it or not")
    created_at: datetime


class CurvePoint(BaseModel):
    version: str
    train_size: int
    train_tokens: int | None
    dev_f1: float


class JobSummary(BaseModel):
    id: int
    kind: str
    status: JobStatus
    stage: str | None
    fraction: float | None = Field(description="Share done, 0..1, when the job reports steps")
    progress: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None


class JobCounts(BaseModel):
    by_status: dict[JobStatus, int]
    by_kind: dict[str, dict[JobStatus, int]]


class AnnotationCounts(BaseModel):
    total: int = Field(description="Annotations stored for the project's tasks, cancelled ones included")
    accepted: int = Field(description="The one annotation per labelled task that counts")


class Dashboard(BaseModel):
    project: ProjectRead
    tasks: TaskCounts
    annotations: AnnotationCounts
    labels: dict[str, int] = Field(description="Entities per type in accepted annotations")
    active_model: str | None
    learning_curve: list[CurvePoint] = Field(description="Dev F1 against training-set size, oldest version first")
    model_versions: list[VersionSummary]
    jobs: list[JobSummary] = Field(description=f"The {RECENT_JOBS} newest jobs")
    job_counts: JobCounts


def dashboard(session: Session, project: Project) -> Dashboard:
    report = operations.report(session, project)
    versions = [version_summary(v) for v in operations.list_model_versions(session, project)]
    newest_jobs = session.exec(select(Job).where(Job.project_id == project.id).order_by(Job.id.desc()).limit(RECENT_JOBS)).all()
    return Dashboard(
        project=report.project,
        tasks=report.tasks,
        annotations=annotation_counts(session, project.id),
        labels=report.labels,
        active_model=report.active_model,
        learning_curve=[
            CurvePoint(version=v.name, train_size=v.train_size, train_tokens=v.train_tokens, dev_f1=v.dev_f1)
            for v in versions
            if v.dev_f1 is not None
        ],
        model_versions=versions,
        jobs=[job_summary(job) for job in newest_jobs],
        job_counts=job_counts(session, project.id),
    )


def version_summary(version: ModelVersion) -> VersionSummary:
    dev = version.metrics.get("dev") or {}  # None when the version had no dev set to be scored on
    return VersionSummary(
        id=version.id,
        name=version.name,
        status=version.status,
        active=version.status == ModelStatus.active,
        train_size=version.train_size,
        train_tokens=version.metrics.get("train_tokens"),
        dev_size=version.metrics.get("dev_size"),
        dev_f1=version.dev_f1,
        per_type=dev.get("per_type") or {},
        decision=version.metrics.get("decision"),
        created_at=version.created_at,
    )


def job_summary(job: Job) -> JobSummary:
    progress = {key: value for key, value in job.progress.items() if key not in INTERNAL_PROGRESS}
    step, total = progress.get("step"), progress.get("total_steps")
    if job.status == JobStatus.succeeded:
        fraction = 1.0
    elif isinstance(step, int) and isinstance(total, int) and total > 0:
        fraction = min(step / total, 1.0)
    else:
        fraction = None
    return JobSummary(
        id=job.id,
        kind=job.kind,
        status=job.status,
        stage=progress.get("stage"),
        fraction=fraction,
        progress=progress,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        duration_seconds=job_duration(job),
    )


def job_duration(job: Job) -> float | None:
    """Seconds from start to finish, for finished jobs."""
    if job.started_at is None or job.finished_at is None:
        return None
    return (job.finished_at - job.started_at).total_seconds()


def job_counts(session: Session, project_id: int) -> JobCounts:
    rows = session.exec(
        select(Job.kind, Job.status, func.count()).where(Job.project_id == project_id).group_by(Job.kind, Job.status)
    ).all()
    by_status = Counter({status: 0 for status in JobStatus})
    by_kind: dict[str, dict[JobStatus, int]] = {}
    for kind, status, n in rows:
        by_status[status] += n
        by_kind.setdefault(kind, {s: 0 for s in JobStatus})[status] = n
    return JobCounts(by_status=dict(by_status), by_kind=dict(sorted(by_kind.items())))


def annotation_counts(session: Session, project_id: int) -> AnnotationCounts:
    total, accepted = session.exec(
        select(func.count(Annotation.id), func.count(Annotation.id).filter(Annotation.accepted.is_(True)))
        .join(Task, Annotation.task_id == Task.id)
        .where(Task.project_id == project_id)
    ).one()
    return AnnotationCounts(total=total, accepted=accepted)
