"""What the REST routes do. Each function takes a session and ids or validated bodies, commits its
own writes, and raises ``ApiError`` for anything the client must fix."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from active_learning.corpus import CorpusError
from active_learning.spans import Example, SpanError, validate

from augment import AugmentError

from .. import augmentation, jobs, sync
from ..label_studio import WEBHOOK_ACTIONS, LabelStudioClient, LabelStudioError
from ..models import Annotation, Job, ModelStatus, ModelVersion, Prediction, Project, Task, TaskState
from ..predictor import ModelLoadError, Predictor, task_confidence
from ..settings import Settings
from ..versions import activate, active_version
from . import files
from .errors import ApiError, bad_gateway, conflict, invalid, not_found
from .schemas import (
    AnnotationIn,
    AnnotationRead,
    AugmentRequest,
    EntityOut,
    ImportReport,
    NextTask,
    PredictResponse,
    ProjectAttach,
    ProjectCreate,
    ProjectReport,
    ProjectRead,
    ProjectUpdate,
    ReportModel,
    TaskCounts,
    TaskIn,
    TextPrediction,
)

logger = logging.getLogger(__name__)


# ---- projects -------------------------------------------------------------------------------------


def create_project(session: Session, body: ProjectCreate, client: LabelStudioClient | None) -> Project:
    """A new project; with a Label Studio client (and unless told not to), its Label Studio project too."""
    ls_project_id = None
    if client is not None and body.create_in_label_studio:
        try:
            ls_project_id = client.create_project(body.name, list(body.labels))
        except LabelStudioError as error:
            raise bad_gateway(error) from error
    project = Project(name=body.name, labels=list(body.labels), ls_project_id=ls_project_id)
    session.add(project)
    session.commit()
    session.refresh(project)
    return project


def attach_project(session: Session, body: ProjectAttach, client: LabelStudioClient | None) -> Project:
    """A project for an existing Label Studio project, with the labels and tag names of its config."""
    if client is None:
        raise conflict("Label Studio is not configured: set NERLOOP_LABEL_STUDIO_API_KEY (and _URL)")
    taken = session.exec(select(Project).where(Project.ls_project_id == body.ls_project_id)).first()
    if taken is not None:
        raise conflict(f"Label Studio project {body.ls_project_id} is already attached to project {taken.id}", "body.ls_project_id")
    try:
        labels, from_name, to_name, text_key = client.read_project(body.ls_project_id)
    except LabelStudioError as error:
        raise bad_gateway(error) from error
    name = body.name or f"Label Studio project {body.ls_project_id}"
    project = Project(
        name=name, labels=list(labels), ls_project_id=body.ls_project_id, from_name=from_name, to_name=to_name, text_key=text_key
    )
    session.add(project)
    try:
        session.commit()
    except IntegrityError:  # attached by a concurrent request since the check above
        session.rollback()
        raise conflict(f"Label Studio project {body.ls_project_id} is already attached", "body.ls_project_id") from None
    session.refresh(project)
    return project


def update_project(session: Session, project: Project, body: ProjectUpdate) -> Project:
    for name, value in body.model_dump(exclude_none=True).items():
        setattr(project, name, value)
    session.add(project)
    session.commit()
    session.refresh(project)
    return project


def list_projects(session: Session) -> Sequence[Project]:
    return session.exec(select(Project).order_by(Project.id)).all()


# ---- tasks ----------------------------------------------------------------------------------------


def examples_from_tasks(project: Project, tasks: Sequence[TaskIn]) -> list[Example]:
    """Validate spans against their text and the project's labels; every problem names its field."""
    examples, errors = [], []
    for i, task in enumerate(tasks):
        raw = [(s.start, s.end, s.label) for s in task.spans]
        try:
            spans = validate(task.text, raw, project.labels)
        except SpanError as error:
            where, _, message = str(error).partition(": ")
            errors.append((f"body.tasks[{i}].{where}", message))
            continue
        examples.append(Example(task.text, spans, dict(task.meta)))
    if errors:
        raise invalid(errors[:50])
    return examples


def examples_from_file(project: Project, filename: str | None, data: bytes, format: files.TaskFormat | None) -> list[Example]:
    try:
        return files.read_tasks(filename or "upload", data, project.labels, format)
    except CorpusError as error:
        raise invalid([("file", str(error))]) from error


def import_examples(
    session: Session, project: Project, examples: Sequence[Example], client: LabelStudioClient | None, dev_share: float
) -> ImportReport:
    """Store new tasks (deduplicated by content hash); pool tasks are pushed to Label Studio when attached."""
    try:
        result = sync.import_examples(session, project, list(examples), client=client, dev_share=dev_share)
    except LabelStudioError as error:
        session.rollback()
        raise bad_gateway(error) from error
    except SpanError as error:  # checked before already; kept so a disagreement is a 422, not a 500
        session.rollback()
        raise invalid([(None, str(error))]) from error
    session.commit()
    return ImportReport(created=len(result.created), duplicates=result.duplicates)


def next_tasks(session: Session, project: Project, limit: int) -> list[NextTask]:
    """The pool tasks to label next, in the order Label Studio's uncertainty sampling serves them: the
    lowest score of the active version first; tasks it has not scored after, in an order fixed by
    their content hash (pseudo-random, so a cold start samples the pool evenly)."""
    version = active_version(session, project.id)
    version_id = version.id if version is not None else -1
    rows = session.exec(
        select(Task, Prediction)
        .outerjoin(Prediction, (Prediction.task_id == Task.id) & (Prediction.model_version_id == version_id))
        .where(Task.project_id == project.id, Task.state == TaskState.pool)
        # The hash's second half: its first half decides dev membership, and must not decide the order.
        .order_by(Prediction.score.is_(None), Prediction.score, func.substr(Task.content_hash, 33))
        .limit(limit)
    ).all()
    out = []
    for task, prediction in rows:
        entities = [
            EntityOut(start=s, end=e, label=label, text=task.text[s:e], score=p) for s, e, label, p in (prediction.spans if prediction else [])
        ]
        out.append(
            NextTask(
                id=task.id, text=task.text, meta=task.meta, score=prediction.score if prediction else None,
                model_version=version.name if prediction else None, predictions=entities,
            )
        )
    return out


# ---- annotations ----------------------------------------------------------------------------------


def annotate(session: Session, project: Project, task_id: int, body: AnnotationIn, settings: Settings | None = None) -> AnnotationRead:
    """Store an annotation made outside Label Studio; a retraining is queued when one is due."""
    task = session.get(Task, task_id)
    if task is None or task.project_id != project.id:
        raise not_found("path.task_id", f"task {task_id} of project {project.id}")
    try:
        annotation = sync.record_local_annotation(session, task, [(s.start, s.end, s.label) for s in body.spans], body.annotator)
    except SpanError as error:
        session.rollback()
        where, _, message = str(error).partition(": ")
        raise invalid([(f"body.{where}", message)]) from error
    session.commit()
    try:
        jobs.retrain_if_due(session, project, settings)
    except jobs.EnqueueError as error:  # the annotation stands; the beat's sweep queues the training later
        logger.error("project %s: training not queued: %s", project.id, error)
    session.refresh(annotation)
    return annotation_read(annotation, task.text)


def annotation_read(annotation: Annotation, text: str) -> AnnotationRead:
    return AnnotationRead(text=text, **annotation.model_dump(exclude={"spans"}), spans=list(annotation.spans))


def list_annotations(session: Session, project: Project, accepted_only: bool, limit: int, offset: int) -> list[AnnotationRead]:
    statement = select(Annotation, Task.text).join(Task, Annotation.task_id == Task.id).where(Task.project_id == project.id)
    if accepted_only:
        statement = statement.where(Annotation.accepted == True)  # noqa: E712 (SQL, not Python)
    rows = session.exec(statement.order_by(Annotation.id).offset(offset).limit(limit)).all()
    return [annotation_read(annotation, text) for annotation, text in rows]


def export_annotations(session: Session, project: Project, format: str) -> str:
    """The accepted annotations (training and dev tasks) as JSONL or CoNLL text."""
    train, dev = sync.accepted_examples(session, project)
    return files.render_examples([*train, *dev], format)


# ---- model versions -------------------------------------------------------------------------------


def list_model_versions(session: Session, project: Project) -> Sequence[ModelVersion]:
    return session.exec(select(ModelVersion).where(ModelVersion.project_id == project.id).order_by(ModelVersion.id)).all()


def promote(session: Session, project: Project, version_id: int, settings: Settings | None = None) -> ModelVersion:
    """Make one version the active one; the version active before becomes retired. The pool is then
    scored with it, so Label Studio's pre-annotations and task order follow the active version."""
    version = session.get(ModelVersion, version_id)
    if version is None or version.project_id != project.id:
        raise not_found("path.version_id", f"model version {version_id} of project {project.id}")
    if version.status == ModelStatus.active:
        return version
    if version.status == ModelStatus.training:
        raise conflict(f"model version {version.name} is still training", "path.version_id")
    if not version.path or not Path(version.path).is_dir():
        raise conflict(f"model version {version.name} has no model directory at {version.path!r}", "path.version_id")
    activate(session, version)
    session.commit()
    session.refresh(version)
    try:
        jobs.request(session, project.id, "score_pool", version.id, settings=settings, coalesce=False)
    except jobs.EnqueueError as error:  # the promotion stands; scoring can be requested again
        logger.error("project %s: scoring after promoting %s not queued: %s", project.id, version.name, error)
    return version


def rollback(session: Session, project: Project, settings: Settings | None = None) -> ModelVersion:
    """Re-activate the version that was active before the current one.

    Versions do not record when they were active, so "before" is read from the ids: the newest
    retired version older than the active one, or else the newest retired version. Promotions in
    training order and successive rollbacks step back through the history exactly.
    """
    current = active_version(session, project.id)
    retired = session.exec(
        select(ModelVersion)
        .where(ModelVersion.project_id == project.id, ModelVersion.status == ModelStatus.retired)
        .order_by(ModelVersion.id.desc())
    ).all()
    older = [v for v in retired if current is None or v.id < current.id]
    previous = (older or retired or [None])[0]
    if previous is None:
        raise conflict(f"project {project.id} has no earlier model version to roll back to")
    return promote(session, project, previous.id, settings)


# ---- prediction -----------------------------------------------------------------------------------


def predict(predictor: Predictor, project: Project, texts: Sequence[str]) -> PredictResponse:
    try:
        model = predictor.active(project.id)
    except ModelLoadError as error:
        raise conflict(str(error)) from error
    if model is None:
        raise conflict(f"project {project.id} has no active model version; train or promote one")
    predictions = model.predict(texts)
    out = []
    for text, prediction in zip(texts, predictions):
        entities = [EntityOut(start=s.start, end=s.end, label=s.label, text=text[s.start : s.end], score=s.score) for s in prediction.spans]
        out.append(TextPrediction(entities=entities, score=task_confidence(prediction)))
    return PredictResponse(model_version=model.name, predictions=out)


# ---- training requests ----------------------------------------------------------------------------


def request_training(session: Session, project_id: int, settings: Settings | None = None) -> Job:
    """Queue a training job for the workers (task ``nerloop.train`` on ``settings``' broker); a queued
    one already waiting is reused, so requests during a run leave exactly one follow-up. 503 when the
    broker refuses (the job is then recorded as failed)."""
    try:
        return jobs.request(session, project_id, "train", settings=settings)
    except jobs.EnqueueError as error:
        raise ApiError.one(503, None, str(error)) from error


def request_augmentation(session: Session, project: Project, body: AugmentRequest, settings: Settings | None = None) -> Job:
    """Queue an augmentation job (422 naming the field for an unknown method or bad params; 503 when
    the broker refuses)."""
    try:
        return augmentation.request_augmentation(session, project, body.method, body.n, body.seed, body.params, settings)
    except AugmentError as error:
        where, _, message = str(error).partition(": ")
        raise invalid([(f"body.{where}", message)]) from error
    except jobs.EnqueueError as error:
        raise ApiError.one(503, None, str(error)) from error


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise not_found("path.job_id", f"job {job_id}")
    return job


def list_jobs(session: Session, project: Project, limit: int, offset: int) -> Sequence[Job]:
    """The project's jobs, newest first."""
    statement = select(Job).where(Job.project_id == project.id).order_by(Job.id.desc()).offset(offset).limit(limit)
    return session.exec(statement).all()


# ---- report ---------------------------------------------------------------------------------------


def report(session: Session, project: Project) -> ProjectReport:
    counts = session.exec(
        select(Task.state, Task.is_dev, func.count()).where(Task.project_id == project.id).group_by(Task.state, Task.is_dev)
    ).all()
    by_state = Counter()
    dev = 0
    for state, is_dev, n in counts:
        by_state[TaskState(state)] += n
        if is_dev and TaskState(state) == TaskState.labelled:
            dev += n
    accepted = session.exec(
        select(Annotation.spans).join(Task, Annotation.task_id == Task.id).where(Task.project_id == project.id, Annotation.accepted == True)  # noqa: E712
    ).all()
    labels = Counter({label: 0 for label in project.labels})
    labels.update(span[2] for spans in accepted for span in spans)
    versions = list_model_versions(session, project)
    active = next((v.name for v in versions if v.status == ModelStatus.active), None)
    return ProjectReport(
        project=ProjectRead.model_validate(project, from_attributes=True),
        tasks=TaskCounts(
            total=sum(by_state.values()), pool=by_state[TaskState.pool], labelled=by_state[TaskState.labelled], dev=dev
        ),
        labels=dict(labels),
        active_model=active,
        model_versions=[ReportModel.model_validate(v, from_attributes=True) for v in versions],
    )


# ---- Label Studio events --------------------------------------------------------------------------

TRAINING_EVENT = "START_TRAINING"
ANNOTATION_EVENTS = WEBHOOK_ACTIONS  # what sync.handle_webhook records


def event_project(session: Session, ls_project_id: int | None) -> Project:
    """Our project for a Label Studio event's ``project.id``."""
    if ls_project_id is None:
        raise invalid([("body.project", "Field required: the Label Studio project ({\"id\": ...}) the event is about")])
    project = session.exec(select(Project).where(Project.ls_project_id == ls_project_id)).first()
    if project is None:
        raise ApiError.one(404, "body.project.id", f"no project is attached to Label Studio project {ls_project_id}")
    return project


def process_event(engine, project_id: int, payload: dict, settings: Settings | None = None) -> None:
    """Run after the response (Label Studio waits 1 s at most): training requests become queued
    jobs, annotation events go to ``sync.handle_webhook`` and may make a retraining due. Failures
    are logged, never raised; the incremental pull (``nerloop sync``) recovers what is lost here."""
    action = payload.get("action")
    for attempt in (1, 2):
        try:
            with Session(engine) as session:
                if action == TRAINING_EVENT:
                    request_training(session, project_id, settings)
                    return
                project = session.get(Project, project_id)
                if project is None:
                    return
                sync.handle_webhook(session, project, payload)
                session.commit()
                jobs.retrain_if_due(session, project, settings)
                return
        except IntegrityError:
            # Two events for one annotation raced (created and updated a moment apart): the other
            # one has stored it by now, and recording is idempotent, so once more settles it.
            if attempt == 2:
                logger.exception("Label Studio event %s for project %s failed twice", action, project_id)
        except Exception:
            logger.exception("Label Studio event %s for project %s failed", action, project_id)
            return
