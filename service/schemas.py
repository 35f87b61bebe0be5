"""Every request and response body of our REST API (/api/v1) and of the Label Studio ML backend (/ml),
in one place. Response models that show a table's columns are built on its base class in ``models``.

HTTP-free, like the operations that take and return these models (``service.operations``) and the CLI
that validates its options with them; the routes in ``service.api`` name them as their bodies.
Validation that needs the project (labels known, spans inside the text, no overlaps) happens in the
operations, through ``active_learning.spans.validate``; these models check shapes and bounds.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from active_learning.spans import SpanError, storable_string, validate_meta
from active_learning.strategies import STRATEGIES
from augment import AUGMENTERS

from .models import (
    AnnotationBase,
    JobBase,
    JobStatus,
    ModelStatus,
    ModelVersionBase,
    ModelVersionSummary,
    ProjectBase,
    Retraining,
    SuspectStatus,
)

# How the report and the dashboard describe ``ModelVersion.retraining``.
RETRAINING_FIELD = (
    "quick: the one-pass stage served while the full training follows (NERLOOP_QUICK_RETRAINING); "
    "None for versions trained before it was recorded"
)
MAX_ID = 2**63 - 1  # the database's integer range; larger ids could never exist
MAX_TEXT = 100_000  # characters per text
# What one request may ask for: each is validated and stored (or predicted) within a few seconds.
MAX_TASKS = 1_000  # per import request
MAX_SPANS = 1_000  # per task or annotation
MAX_TEXTS = 64  # per prediction request
MAX_PREDICT_CHARACTERS = 100_000  # all texts of one prediction request together
MAX_ML_TASKS = 100  # per /ml/predict request; Label Studio asks for one task, or a page of them


def _storable(value: str) -> str:
    """Reject what no database can store: NUL characters and lone UTF-16 surrogates."""
    problem = storable_string(value)
    if problem:
        raise ValueError(problem)
    return value


def _storable_meta(value: dict) -> dict:
    try:
        return validate_meta(value)
    except SpanError as error:
        raise ValueError(str(error)) from None


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


Id = Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True), AfterValidator(_storable)]
# A label becomes a BIO tag (B-PER) in CoNLL files, where whitespace separates columns.
Label = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^\S+$"), AfterValidator(_storable)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_storable), AfterValidator(_not_blank)]
Offset = Annotated[int, Field(ge=0, le=MAX_TEXT, strict=True)]


def _unique(labels: list[str]) -> list[str]:
    seen = set()
    for i, label in enumerate(labels):
        if label in seen:
            raise ValueError(f"label {label!r} appears twice (at [{i}])")
        seen.add(label)
    return labels


Labels = Annotated[list[Label], Field(min_length=1, max_length=100), AfterValidator(_unique)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- errors ---------------------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str | None
    message: str


class ErrorResponse(BaseModel):
    """The one error shape: ``field`` is a path from the request part (``body.texts[0]``,
    ``path.project_id``, ``query.format``, ``file``, ``header.Authorization``), null when no single
    field is at fault."""

    detail: list[FieldError]


# ---- projects -----------------------------------------------------------------------------------


class ProjectCreate(Strict):
    name: Name
    labels: Labels
    create_in_label_studio: bool = Field(
        True, description="Also create the Label Studio project (when a Label Studio API key is configured)"
    )


class ProjectAttach(Strict):
    ls_project_id: Id = Field(description="Id of an existing Label Studio project; its labels and tag names are read from it")
    name: Name | None = Field(None, description="Default: the Label Studio project's title")


class ProjectRead(ProjectBase):
    id: int


class ProjectUpdate(Strict):
    """Fields to change; those left out keep their values."""

    strategy: Literal[tuple(STRATEGIES)] | None = Field(None, description="Query strategy: the order Label Studio serves the pool in")
    retrain_every: int | None = Field(None, ge=1, le=1_000_000, description="Retrain after this many newly labelled tasks")
    augment: bool | None = Field(None, description="Train on augmented examples too")
    augment_ratio: float | None = Field(None, ge=0, le=20, description="At most this many augmented examples per labelled one")
    self_training: bool | None = Field(None, description="Train on the active model's confident pseudo-labels of pool texts too")
    self_training_threshold: float | None = Field(None, gt=0, le=1, description="Task confidence a pool text needs for its pseudo-label")
    self_training_weight: float | None = Field(None, gt=0, le=1, description="Loss weight of a pseudo-labelled text")


class AugmentRequest(Strict):
    method: str = Field(description=f"One of {', '.join(AUGMENTERS)}")
    n: int = Field(1, ge=1, le=50, strict=True, description="New examples per labelled training task, at most")
    seed: int = Field(0, ge=0, le=2**31 - 1, strict=True)
    params: dict[str, Any] = Field(default_factory=dict, description="The method's parameters (see augment's augmenters)")


class JobRead(JobBase):
    id: int


# ---- file formats --------------------------------------------------------------------------------


class TaskFormat(str, Enum):
    """A task file's format (an upload's, or an import's)."""

    jsonl = "jsonl"
    csv = "csv"
    conll = "conll"


class ExportFormat(str, Enum):
    """The format of exported annotations: character spans (JSONL) or IOB2 columns (CoNLL)."""

    jsonl = "jsonl"
    conll = "conll"


# ---- tasks ---------------------------------------------------------------------------------------


class SpanIn(Strict):
    """A character span, ``end`` exclusive; also accepted as ``[start, end, label]``."""

    start: Offset
    end: Offset
    label: Label

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            if len(value) != 3:
                raise ValueError("expected [start, end, label] or {start, end, label}")
            return dict(zip(("start", "end", "label"), value))
        return value


class TaskIn(Strict):
    text: Text
    spans: list[SpanIn] = Field(default_factory=list, max_length=MAX_SPANS, description="Pre-labelled entities, if any")
    meta: Annotated[dict[str, Any], AfterValidator(_storable_meta)] = Field(
        default_factory=dict, description="Kept with the task (ids, source): a JSON object, at most 20 levels deep and 100,000 characters"
    )


class TasksImport(Strict):
    tasks: list[TaskIn] = Field(min_length=1, max_length=MAX_TASKS)


class AnnotationIn(Strict):
    spans: list[SpanIn] = Field(default_factory=list, max_length=MAX_SPANS, description="The entities; empty: the text has none")
    annotator: Annotated[str, StringConstraints(max_length=200), AfterValidator(_storable)] = ""


class ImportReport(BaseModel):
    created: int
    duplicates: int


# ---- annotations ----------------------------------------------------------------------------------


class AnnotationRead(AnnotationBase):
    id: int
    text: str = Field(description="The task's text")


# ---- models and prediction ------------------------------------------------------------------------


class ModelVersionRead(ModelVersionBase):
    id: int


def _within_prediction_budget(texts: list[str]) -> list[str]:
    if sum(map(len, texts)) > MAX_PREDICT_CHARACTERS:
        raise ValueError(f"more than {MAX_PREDICT_CHARACTERS} characters in all; send fewer or shorter texts per request")
    return texts


class PredictRequest(Strict):
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS), AfterValidator(_within_prediction_budget)] = Field(
        description=f"At most {MAX_PREDICT_CHARACTERS} characters in all"
    )


class EntityOut(BaseModel):
    start: int
    end: int
    label: str
    text: str
    score: float = Field(description="Probability of exactly this labelled span")


class NextTask(BaseModel):
    id: int
    text: str
    meta: dict[str, Any]
    score: float | None = Field(description="The active version's score under the project's strategy; lowest first, None when unscored")
    model_version: str | None
    predictions: list[EntityOut] = Field(description="The active version's pre-annotation")


class TextPrediction(BaseModel):
    entities: list[EntityOut]
    score: float = Field(description="Task confidence in (0, 1]; lower is more uncertain (see service.predictor)")


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[TextPrediction]


# ---- label review (``operations.review``) ----------------------------------------------------------


class SuspectRead(BaseModel):
    """A task a review job found probably mislabelled."""

    id: int
    task_id: int
    ls_task_id: int | None
    text: str
    score: float = Field(description="cleanlab's quality score of the annotation, 0..1: lower = more likely wrong")
    kinds: list[str] = Field(description="missed_entity, spurious_entity, wrong_type, wrong_boundary")
    issues: list[dict[str, Any]] = Field(
        description="Each issue: kind, reason, annotated and suggested span [start, end, label(, score)], quality"
    )
    suggested: list[list[Any]] = Field(description="The held-out model's spans [start, end, label, score]")
    status: SuspectStatus
    stale: bool = Field(description="The annotation changed since it was judged")
    job_id: int | None
    producer: str
    base_model: str
    model_version: str | None = Field(description="The active version when the review ran (its folds never start from it)")
    created_at: datetime
    resolved_at: datetime | None


class ReviewPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[SuspectRead] = Field(description="Lowest score first")


class ReviewSummary(BaseModel):
    by_status: dict[SuspectStatus, int]
    by_kind: dict[str, int] = Field(description="Issues of open suspects per kind")
    by_label: dict[str, int] = Field(description="Issues of open suspects per label (of the annotated span, else the suggested one)")
    confirmations: int = Field(description="(task, reason) pairs reviewers confirmed: not flagged again")
    last_job_id: int | None


class AgreementSummary(BaseModel):
    """Span agreement between annotators, over the tasks more than one person annotated."""

    tasks: int
    f1: dict[str, float | None] = Field(description="Micro entity F1 over all pairs, by match mode (exact, overlap)")
    per_label: dict[str, dict[str, float | None]] = Field(description="label -> mode -> F1")
    pairs: list[dict[str, Any]] = Field(description="Per annotator pair: tasks, and per mode the F1 and per-label counts")
    disagreeing_tasks: list[dict[str, Any]] = Field(description="Review candidates: task_id, annotators, disagreement (1 - mean exact F1)")


# ---- report ---------------------------------------------------------------------------------------


class TaskCounts(BaseModel):
    total: int
    pool: int
    labelled: int
    dev: int = Field(description="Labelled tasks held out as the dev set")


class ReportModel(ModelVersionSummary):
    """A model version as the project report lists it."""

    retraining: Retraining | None = Field(None, description=RETRAINING_FIELD)


class StoppingSignal(BaseModel):
    """Whether more labels still pay, after the newest trained version (``active_learning.stopping``):
    Cohen's kappa between its and the then active version's tags on a fixed stop set, stable for
    ``window`` versions in a row at ``threshold`` or more, and the dev-F1 slope per 1,000 labelled tokens."""

    version: str
    verdict: Literal["you can stop", "keep going"]
    kappa: float | None = Field(description="Against the active version when it was trained; null for a first version")
    stable_versions: int
    threshold: float
    window: int
    f1_slope_per_1k_tokens: float | None
    stop_set_size: int
    advice: str


class ProjectReport(BaseModel):
    project: ProjectRead
    tasks: TaskCounts
    labels: dict[str, int] = Field(description="Entities per type in accepted annotations")
    active_model: str | None
    model_versions: list[ReportModel]
    agreement: AgreementSummary
    stopping: StoppingSignal | None = Field(description="After the newest version; null before the first training that computed it")


class Health(BaseModel):
    status: str
    database: str


# ---- dashboard: what the page (static/dashboard.html) draws --------------------------------------

RECENT_JOBS = 20  # the dashboard's job list


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
    retraining: Retraining | None = Field(description=RETRAINING_FIELD)
    serving: str | None = Field(description="Its forward pass: ONNX Runtime int8 if its dev-set check passed, else PyTorch; and why")
    vocabulary_added: int | None = Field(
        description="Characters of its training texts that were [UNK] to its base's vocabulary and got tokens of their own; "
        "many mean the base model was not pretrained on this language"
    )
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
    review: ReviewSummary
    agreement: AgreementSummary
    stopping: StoppingSignal | None


# ---- webhooks -------------------------------------------------------------------------------------


class WebhookProject(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Id


class WebhookTask(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Id
    data: dict[str, Any] | None = Field(None, description="The task's data; its text is needed for a task nerloop does not have yet")


class WebhookAnnotation(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Id
    updated_at: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        None, description="ISO 8601, as Label Studio writes it; required by annotation events"
    )
    result: list[dict[str, Any]] | None = Field(None, max_length=MAX_SPANS, description="Label Studio regions; none: no entities")


class WebhookAnnotationId(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Id


class LabelStudioEvent(BaseModel):
    """A Label Studio webhook: ``action`` plus the objects it concerns (annotation, task, project).
    Annotation events need ``task`` and ``annotation`` (Label Studio's "send payload"); deletions
    need ``annotations``. Other actions are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    action: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    project: WebhookProject | None = None
    task: WebhookTask | None = None
    annotation: WebhookAnnotation | None = None
    annotations: list[WebhookAnnotationId] | None = Field(None, max_length=MAX_TASKS)


class WebhookAccepted(BaseModel):
    status: str
    action: str


class MLWebhookAnswer(WebhookAccepted):
    job: str | None = Field(None, description="START_TRAINING: the training job's id, which Label Studio records as its training job")


# ---- Label Studio ML backend ----------------------------------------------------------------------


def _as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# Label Studio sends "<project id>.<created-at timestamp>"; a bare id is taken too.
ProjectReference = Annotated[Annotated[str, StringConstraints(max_length=100)] | None, BeforeValidator(_as_text)]


class MLSetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    project: ProjectReference = None
    label_config: str | None = Field(None, alias="schema")


class MLSetupResponse(BaseModel):
    model_version: str


class MLPredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]] = Field(
        max_length=MAX_ML_TASKS, description=f"At most {MAX_PREDICT_CHARACTERS} characters of text in all"
    )
    project: ProjectReference = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class MLRegionValue(BaseModel):
    start: int
    end: int
    text: str
    labels: list[str]


class MLRegion(BaseModel):
    from_name: str
    to_name: str
    type: str = "labels"
    value: MLRegionValue
    score: float


class MLTaskResult(BaseModel):
    result: list[MLRegion]
    score: float | None = Field(description="Task confidence; null when no model scored the task")
    model_version: str


class MLPredictResponse(BaseModel):
    results: list[MLTaskResult]


class MLHealth(BaseModel):
    status: str
    model_class: str
