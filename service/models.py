"""Database tables (SQLModel). Spans are stored as JSON lists of [start, end, label] (character offsets)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum

from sqlalchemy import JSON, Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Aware UTC time: SQLModel stores datetimes as timezone-aware UTC (naive ones are refused)."""
    return datetime.now(UTC)


class TaskState(str, Enum):
    pool = "pool"  # no accepted annotation yet
    labelled = "labelled"


class ModelStatus(str, Enum):
    # A version's row is written once its training is over, so no version is ever "training". The
    # PostgreSQL enum type still has that value from migration 0001; nothing stores it, and dropping a
    # value from a native enum means rebuilding the type, which is not worth a migration.
    candidate = "candidate"  # trained and evaluated, not (yet) serving
    active = "active"  # exactly one per project
    retired = "retired"


class Retraining(str, Enum):
    """Which stage of a retraining made a version (``metrics["retraining"]``, ``workers.retrain``)."""

    quick = "quick"  # the warm start sized to what changed, served while the full stage follows
    full = "full"  # the configured recipe: the version the loop settles on


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class ProjectBase(SQLModel):
    """The columns a project's API representation shows (``schemas.ProjectRead``)."""

    name: str
    labels: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    ls_project_id: int | None = Field(default=None, unique=True, index=True)
    from_name: str = "label"  # the Labels tag's name in the Label Studio config
    to_name: str = "text"  # the Text tag's name
    text_key: str = "text"  # the task data key the Text tag reads ($text)
    strategy: str = "mnlp"
    retrain_every: int = 20  # new accepted annotations that trigger a retraining
    augment: bool = False
    augment_ratio: float = 0.5  # augmented examples per real one, at most
    # Self-training (``active_learning.recipe.SelfTraining``): off until a benchmark shows it wins.
    self_training: bool = False
    self_training_threshold: float = 0.99  # task confidence a pool text needs for its pseudo-label
    self_training_weight: float = 0.5  # loss weight of a pseudo-labelled text
    created_at: datetime = Field(default_factory=utcnow)


class Project(ProjectBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    last_pulled_at: datetime | None = None  # high-water mark of the incremental annotation pull


class Task(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("project_id", "content_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    text: str = Field(sa_column=Column(Text, nullable=False))
    meta: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    ls_task_id: int | None = Field(default=None, index=True)
    content_hash: str = Field(max_length=64)
    state: TaskState = TaskState.pool
    is_dev: bool = False  # fixed by the content hash: labelled dev tasks compare model versions
    created_at: datetime = Field(default_factory=utcnow)


class AnnotationBase(SQLModel):
    """The columns of an annotation's API representation (``schemas.AnnotationRead`` adds its text)."""

    task_id: int = Field(foreign_key="task.id", index=True)
    ls_annotation_id: int | None = Field(default=None, unique=True, index=True)
    spans: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    annotator: str = ""
    updated_at: datetime = Field(default_factory=utcnow)
    cancelled: bool = False
    ground_truth: bool = False
    accepted: bool = False  # the one annotation of its task that counts (see corpus.accepted_annotation)


class Annotation(AnnotationBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


class ModelVersionSummary(SQLModel):
    """What a project report shows of each version (``schemas.ReportModel``)."""

    name: str
    status: ModelStatus = ModelStatus.candidate
    dev_f1: float | None = None
    train_size: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class ModelVersionBase(ModelVersionSummary):
    """The columns of a version's API representation (``schemas.ModelVersionRead``)."""

    path: str = ""
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ModelVersion(ModelVersionBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)

    @property
    def retraining(self) -> Retraining | None:
        """None for versions trained before the stage was recorded."""
        stage = self.metrics.get("retraining")
        return Retraining(stage) if stage else None


class Prediction(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("task_id", "model_version_id"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id", index=True)
    model_version_id: int = Field(foreign_key="modelversion.id", index=True)
    spans: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # [start, end, label, score]
    score: float  # exp(-informativeness) under the project's strategy, in (0, 1]: the lowest is served first by Label Studio
    created_at: datetime = Field(default_factory=utcnow)


class JobBase(SQLModel):
    """The columns of a job that people see (the API's job representation)."""

    project_id: int | None = Field(default=None, foreign_key="project.id", index=True)
    kind: str  # train, score_pool, sync, augment: the task ``nerloop.<kind>`` runs it
    status: JobStatus = JobStatus.queued
    # What its task reports: stage, step/total_steps, scored/tasks, ... (``service.progress`` reads it).
    progress: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text))
    celery_id: str | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Job(JobBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    # The workers' bookkeeping (``workers.lifecycle``): which attempt owns a running job, and whether it lives.
    attempt: int = 0  # claims so far; a job whose worker is lost job_max_attempts times fails
    owner_host: str | None = None
    owner_pid: int | None = None
    owner_token: str | None = None  # this attempt's: a write that does not carry it is not the owner's
    heartbeat_at: datetime | None = None  # rewritten by the owner every job_heartbeat_seconds
    # Of a queued job (``service.job_queue``): signs that its message may have been lost.
    sent_at: datetime | None = None  # when its message was sent again
    waiting_for: int | None = None  # the project's running job it waits behind
    waiting_at: datetime | None = None  # when a worker last found it had to wait
    # Its task's arguments besides the ids (an augmentation's method and parameters, ...), so a pending
    # job, or a lost worker's, can be sent again as it was first asked for.
    arguments: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}"))


class AugmentedExample(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    source_task_id: int = Field(foreign_key="task.id", index=True)
    method: str
    params: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    seed: int = 0
    text: str = Field(sa_column=Column(Text, nullable=False))
    spans: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class SuspectStatus(str, Enum):
    open = "open"  # waiting for a reviewer
    fixed = "fixed"  # the annotation changed since (the verdict is stale)
    confirmed = "confirmed"  # a reviewer kept the annotation as it was


class Suspect(SQLModel, table=True):
    """A task a review job found probably mislabelled (``service.operations.review``)."""

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    task_id: int = Field(foreign_key="task.id", index=True)
    annotation_id: int | None = Field(default=None, foreign_key="annotation.id")  # the accepted annotation judged
    annotation_updated_at: datetime | None = None  # its updated_at then: a later save unchanged is a confirmation
    job_id: int | None = Field(default=None, foreign_key="job.id")  # the review job that produced it
    producer: str  # how: e.g. "cross-fit k=4"
    base_model: str  # what the fold models were trained from (never the active version)
    model_version: str | None = None  # the active version when it ran (after whose promotion)
    fingerprint: str = Field(max_length=64)  # ``label_quality.annotation_fingerprint`` of the annotation judged
    score: float = Field(index=True)  # cleanlab's example quality score: lower = more likely wrong
    kinds: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    issues: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # ``Assessment.as_dict()["issues"]``
    suggested: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # [start, end, label, score]
    status: SuspectStatus = SuspectStatus.open
    stale: bool = False  # the annotation is no longer the one judged
    shown: bool = False  # its prediction and task fields are in Label Studio (cleared once it is resolved)
    created_at: datetime = Field(default_factory=utcnow)
    resolved_at: datetime | None = None


class ReviewConfirmation(SQLModel, table=True):
    """A reviewer kept an annotation against one flagged reason: never flagged again for it."""

    __tablename__ = "review_confirmation"
    __table_args__ = (UniqueConstraint("task_id", "reason"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id", index=True)
    reason: str  # ``SpanIssue.reason``, e.g. "wrong_type@0:5:ORG"
    fingerprint: str = Field(max_length=64)  # the annotation confirmed
    annotator: str = ""
    created_at: datetime = Field(default_factory=utcnow)
