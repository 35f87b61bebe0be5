"""One training job: fine-tune, compare with the active version on the same dev set, save, register,
promote when not worse.

The active model is never touched until the last transaction, which (fenced by the job's owner
token) registers the new version and, when it wins, retires the old one. A run killed at any point
before that leaves the active version, its row and its files exactly as they were.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

from sqlalchemy import func
from sqlmodel import Session, select

from active_learning.corpus import word_offsets
from active_learning.metrics import Scores, evaluate
from active_learning.spans import Example
from active_learning.tagger import TaggedText, Tagger, default_base_model
from active_learning.training import EpochLog, TrainConfig, train
from service import job_queue
from service.augmented_examples import training_examples
from service.db import session_scope
from service.models import Annotation, ModelStatus, ModelVersion, Project, Task
from service.predictor import predict_with
from service.settings import get_settings
from service.versions import activate, active_version

from . import store
from .lifecycle import JobRun

log = logging.getLogger(__name__)


def train_config(overrides: dict | None = None) -> TrainConfig:
    """``TrainConfig`` defaults, then ``NERLOOP_TRAIN_CONFIG``, then the task's ``config``."""
    return TrainConfig(**{**get_settings().train_config, **(overrides or {})})


@dataclass(frozen=True)
class Incumbent:
    id: int
    name: str
    path: str


def labelled_state(session: Session, project_id: int) -> list:
    """A fingerprint of the labelled set: it changes when an accepted annotation is added, changed or removed."""
    row = session.exec(
        select(func.count(Annotation.id), func.max(Annotation.id), func.max(Annotation.updated_at))
        .join(Task, Annotation.task_id == Task.id)
        .where(Task.project_id == project_id, Annotation.accepted.is_(True))
    ).one()
    return [row[0], row[1], row[2].isoformat() if row[2] else None]


def score_on(predict: Callable[[list[str]], list[TaggedText]], dev: list[Example]) -> Scores | None:
    if not dev:
        return None
    return evaluate(dev, [p.entity_spans for p in predict([e.text for e in dev])])


def decide(candidate: Scores | None, incumbent: Scores | None, has_active: bool) -> tuple[bool, str]:
    """Promote when nothing is active, or when the candidate's dev F1 is at least the active's."""
    if not has_active:
        return True, "no active version"
    if candidate is None or incumbent is None:
        return False, "no dev set to compare on; promote it by hand if wanted"
    if candidate.f1 >= incumbent.f1:
        return True, f"dev F1 {candidate.f1:.4f} >= active {incumbent.f1:.4f}"
    return False, f"dev F1 {candidate.f1:.4f} < active {incumbent.f1:.4f}"


def run_training(project_id: int, run: JobRun, config: TrainConfig) -> dict:
    settings = get_settings()
    job_id = run.job_id
    directory = store.project_dir(settings.model_store, project_id)
    run.update(stage="loading")
    with session_scope() as session:
        project = session.get(Project, project_id)
        if project is None:
            raise LookupError(f"project {project_id} does not exist")
        labels = list(project.labels)
        train_set, dev_set, augmented = training_examples(session, project)
        real = len(train_set) - augmented
        active = active_version(session, project_id)
        incumbent = Incumbent(active.id, active.name, active.path) if active else None
        labelled_at_start = labelled_state(session, project_id)
        registered = session.exec(select(ModelVersion.path).where(ModelVersion.project_id == project_id)).all()
    store.remove_leftovers(directory, keep=registered)
    if not real:
        raise ValueError(f"project {project_id} has no labelled training examples yet ({len(dev_set)} in the dev set)")

    base = incumbent.path if incumbent else (settings.base_model or default_base_model())
    tagger = Tagger.load(base, labels=labels)
    run.update(stage="training", base=base, train_size=real, augmented=augmented, dev_size=len(dev_set), epoch=0, step=0)

    def on_step(step: int, total: int, loss: float) -> None:
        run.update(step=step, total_steps=total, loss=round(loss, 5))

    def on_epoch(epoch: EpochLog) -> None:
        run.update(epoch=epoch.epoch, dev_f1=epoch.dev_f1)

    result = train(tagger, train_set, dev_set or None, config, on_step=on_step, on_epoch=on_epoch)

    run.update(stage="evaluating")
    candidate = score_on(tagger.predict, dev_set)
    active_scores = score_on(partial(predict_with, incumbent.path), dev_set) if incumbent else None
    promote, reason = decide(candidate, active_scores, incumbent is not None)

    run.update(stage="saving")
    path = store.save_atomically(tagger, directory, store.attempt_name(job_id, run.token))
    metrics = {
        "job_id": job_id,
        "base": base,
        "train_size": real,
        "augmented": augmented,
        "train_tokens": sum(len(word_offsets(e.text)) for e in train_set[:real]),  # the learning curve's x
        "dev_size": len(dev_set),
        "dev": candidate.as_dict() if candidate else None,
        "compared_with": {"version": incumbent.name, "dev_f1": active_scores.f1 if active_scores else None} if incumbent else None,
        "decision": reason,
        "train": result.as_dict(),
        "config": asdict(config),
    }
    try:
        with run.owned() as session:
            current = active_version(session, project_id)
            if promote and (current.id if current else None) != (incumbent.id if incumbent else None):
                promote, reason = False, "the active version changed during training; compare and promote by hand"
                metrics["decision"] = reason
            count = session.exec(select(func.count(ModelVersion.id)).where(ModelVersion.project_id == project_id)).one()
            version = ModelVersion(
                project_id=project_id,
                name=f"v{count + 1}",
                path=str(path),
                status=ModelStatus.candidate,
                metrics=metrics,
                dev_f1=candidate.f1 if candidate else None,
                train_size=real,
            )
            session.add(version)
            session.flush()
            if promote:
                activate(session, version)
            summary = {
                "stage": "done",
                "version_id": version.id,
                "version": version.name,
                "promoted": promote,
                "decision": reason,
                "dev_f1": version.dev_f1,
                "active_dev_f1": active_scores.f1 if active_scores else None,
            }
            run.finish(**summary)
            changed_meanwhile = labelled_state(session, project_id) != labelled_at_start
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # nothing points at it
        raise
    log.info("job %s: %s %s (%s)", job_id, "promoted" if promote else "kept as candidate", summary["version"], reason)

    with session_scope() as session:
        if promote:  # first, so annotators get the new pre-annotations before any follow-up trains
            _request(session, project_id, "score_pool", version_id=summary["version_id"], coalesce=False)
        if changed_meanwhile:
            _request(session, project_id, "train")  # annotations arrived during the run: one follow-up
    return summary


def _request(session: Session, project_id: int, kind: str, *, coalesce: bool = True, **task_kwargs) -> None:
    """Queue a follow-up job; the training succeeded whatever the broker says, so failures are logged."""
    try:
        job_queue.request(session, project_id, kind, coalesce=coalesce, **task_kwargs)
    except job_queue.EnqueueError as error:
        log.error("project %s: %s", project_id, error)

