"""What the dashboard shows for one project: the learning curve, labels per type, model versions with
per-type F1, recent jobs and job counts, the label review's suspects and the annotators' agreement.
The page (static/dashboard.html) only draws this."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func
from sqlmodel import Session, select

from ..models import Annotation, Job, JobStatus, ModelStatus, ModelVersion, Project, Retraining, Task
from ..progress import progress_view
from ..schemas import (
    RECENT_JOBS,
    AnnotationCounts,
    CurvePoint,
    Dashboard,
    JobCounts,
    JobSummary,
    VersionSummary,
)
from . import model_versions, reports, review


def dashboard(session: Session, project: Project) -> Dashboard:
    report = reports.report(session, project)
    versions = [version_summary(v) for v in model_versions.list_for_project(session, project)]
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
            if v.dev_f1 is not None and v.retraining != Retraining.quick  # the curve is the full trainings'; a quick one is superseded
        ],
        model_versions=versions,
        jobs=[job_summary(job) for job in newest_jobs],
        job_counts=job_counts(session, project.id),
        review=review.summary(session, project.id),
        agreement=report.agreement,
        stopping=report.stopping,
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
        retraining=version.retraining,
        serving=serving_note(version.metrics.get("onnx")),
        vocabulary_added=version.metrics.get("vocabulary_added"),
        created_at=version.created_at,
    )


def serving_note(check: dict | None) -> str:
    """How a version serves on a CPU (``NERLOOP_INFERENCE=auto``), from its int8 check (``workers.retrain``)."""
    if check is None:
        return "PyTorch (saved without an ONNX export)"
    return f"{'ONNX Runtime int8' if check['passed'] else 'PyTorch'}: {check['reason']}"


def job_summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        kind=job.kind,
        status=job.status,
        stage=job.progress.get("stage"),
        fraction=progress_view(job).fraction,
        progress=job.progress,
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
