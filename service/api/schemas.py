"""Request and response bodies of our REST API (/api/v1) and of the Label Studio ML backend (/ml).

Validation that needs the project (labels known, spans inside the text, no overlaps) happens in
``operations``, through ``active_learning.spans.validate``; these models check shapes and bounds.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from active_learning.strategies import STRATEGIES

from ..models import ModelStatus

MAX_ID = 2**63 - 1  # the database's integer range; larger ids could never exist
MAX_TEXT = 100_000  # characters per text
MAX_TASKS = 10_000  # per import request
MAX_TEXTS = 256  # per prediction request


def _storable(value: str) -> str:
    """Reject what no database can store: NUL characters and lone UTF-16 surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


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


# ---- projects -----------------------------------------------------------------------------------


class ProjectCreate(Strict):
    name: Name
    labels: Labels
    create_in_label_studio: bool = Field(True, description="Also create the Label Studio project (when a Label Studio API key is configured)")


class ProjectAttach(Strict):
    ls_project_id: Id = Field(description="Id of an existing Label Studio project; its labels and tag names are read from it")
    name: Name | None = Field(None, description="Default: the Label Studio project's title")


class ProjectRead(BaseModel):
    id: int
    name: str
    labels: list[str]
    ls_project_id: int | None
    from_name: str
    to_name: str
    text_key: str
    strategy: str
    retrain_every: int
    augment: bool
    augment_ratio: float
    created_at: datetime


class ProjectUpdate(Strict):
    """Fields to change; those left out keep their values."""

    strategy: Literal[tuple(STRATEGIES)] | None = Field(None, description="Query strategy: the order Label Studio serves the pool in")
    retrain_every: int | None = Field(None, ge=1, le=1_000_000, description="Retrain after this many newly labelled tasks")
    augment: bool | None = Field(None, description="Train on augmented examples too")
    augment_ratio: float | None = Field(None, ge=0, le=20, description="At most this many augmented examples per labelled one")


class AugmentRequest(Strict):
    method: str = Field(description="backtranslate, mention_replacement, token_replacement, synonym or shuffle")
    n: int = Field(1, ge=1, le=50, strict=True, description="New examples per labelled training task, at most")
    seed: int = Field(0, ge=0, le=2**31 - 1, strict=True)
    params: dict[str, Any] = Field(default_factory=dict, description="The method's parameters (see augment's augmenters)")


# ---- tasks ----------------------------------------------------------------------------------------


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
    spans: list[SpanIn] = Field(default_factory=list, max_length=10_000, description="Pre-labelled entities, if any")
    meta: dict[str, Any] = Field(default_factory=dict, description="Kept with the task (ids, source)")


class TasksImport(Strict):
    tasks: list[TaskIn] = Field(min_length=1, max_length=MAX_TASKS)


class AnnotationIn(Strict):
    spans: list[SpanIn] = Field(default_factory=list, max_length=10_000, description="The entities; empty: the text has none")
    annotator: Annotated[str, StringConstraints(max_length=200), AfterValidator(_storable)] = ""


class ImportReport(BaseModel):
    created: int
    duplicates: int


# ---- annotations ----------------------------------------------------------------------------------


class ExportFormat(str, Enum):
    jsonl = "jsonl"
    conll = "conll"


class AnnotationRead(BaseModel):
    id: int
    task_id: int
    text: str
    spans: list[list[Any]]
    annotator: str
    accepted: bool
    cancelled: bool
    ground_truth: bool
    ls_annotation_id: int | None
    updated_at: datetime


# ---- models and prediction ------------------------------------------------------------------------


class ModelVersionRead(BaseModel):
    id: int
    name: str
    status: ModelStatus
    dev_f1: float | None
    train_size: int
    metrics: dict[str, Any]
    path: str
    created_at: datetime


class PredictRequest(Strict):
    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS)


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


# ---- report ---------------------------------------------------------------------------------------


class TaskCounts(BaseModel):
    total: int
    pool: int
    labelled: int
    dev: int = Field(description="Labelled tasks held out as the dev set")


class ReportModel(BaseModel):
    name: str
    status: ModelStatus
    dev_f1: float | None
    train_size: int
    created_at: datetime


class ProjectReport(BaseModel):
    project: ProjectRead
    tasks: TaskCounts
    labels: dict[str, int] = Field(description="Entities per type in accepted annotations")
    active_model: str | None
    model_versions: list[ReportModel]


class Health(BaseModel):
    status: str
    database: str


# ---- webhooks -------------------------------------------------------------------------------------


class WebhookProject(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Id


class LabelStudioEvent(BaseModel):
    """A Label Studio webhook: ``action`` plus the objects it concerns (annotation, task, project)."""

    model_config = ConfigDict(extra="allow")
    action: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    project: WebhookProject | None = None


class WebhookAccepted(BaseModel):
    status: str
    action: str


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
    tasks: list[dict[str, Any]] = Field(max_length=MAX_TASKS)
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
