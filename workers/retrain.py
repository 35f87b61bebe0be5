"""One training job: the recipe (``active_learning.recipe.run_recipe``: warm start from the active
version, early stopping on the dev set, compared with the active version on the same dev set), the
stopping signal against the active version, then save, register, promote when not worse.

Two stages (``NERLOOP_QUICK_RETRAINING``, on by default): a training with examples new to every
version so far is the quick stage, the warm start sized to what changed (one pass after a few
annotations), so Label Studio serves the new labels' effect within a minute; it carries no stopping
signal and asks for a follow-up training. That one finds nothing new and runs the configured recipe,
the full stage, whose version the loop settles on; its stopping signal compares it with the full
version before the quick one, so the quick stage never makes the predictions look stable.

The active model is never touched until the last transaction, which (fenced by the job's owner
token) registers the new version and, when it wins, retires the old one. A run killed at any point
before that leaves the active version, its row and its files exactly as they were.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, select

from active_learning import onnx_tagger, recipe, stopping
from active_learning.corpus import word_offsets
from active_learning.recipe import RecipeInputs, SelfTraining, start_from
from active_learning.tagger import default_base_model
from active_learning.training import EpochLog, TrainConfig
from service import job_queue
from service.augmented_examples import training_examples
from service.db import session_scope
from service.models import Annotation, ModelStatus, ModelVersion, Project, Retraining, Task, TaskState
from service.operations import projects
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
    trained_on: int  # training examples, gold and augmented, as ``training_examples`` counts them
    signal_reference: str  # the version the stopping signal compares with

    @classmethod
    def of(cls, version: ModelVersion) -> Incumbent:
        """A quick version stands in for the last full one (``metrics["last_full"]``): the next
        training is sized against what that one trained on, and its stopping signal compared with it."""
        last_full = version.metrics.get("last_full") if version.retraining == Retraining.quick else None
        if last_full:
            return cls(version.id, version.name, version.path, last_full["trained_on"], last_full["path"])
        return cls(version.id, version.name, version.path, trained_on(version), version.path)


# Annotators faster than a quick stage's scoring and push would otherwise never get a full training:
# the one after this many quick versions in a row is full, new examples or not.
MAX_QUICK_IN_A_ROW = 3


def trained_on(version: ModelVersion) -> int:
    """Training examples, gold and augmented, as ``training_examples`` counts them."""
    return version.train_size + version.metrics.get("augmented", 0)


def is_quick_stage(
    enabled: bool, config: TrainConfig, incumbent: Incumbent | None, recent: list[tuple[int, Retraining | None]], examples: int
) -> bool:
    """Whether this training is the quick stage: quick retraining is ``enabled``, it continues an active
    version, some of its ``examples`` are new to every version so far (counted as ``sized_for`` counts:
    the newest version trained on fewer), fewer than ``MAX_QUICK_IN_A_ROW`` quick versions came last, and
    the configured recipe is not a one-pass warm start already. ``recent``: (examples trained on,
    stage) of the project's newest versions, newest first."""
    quick_in_a_row = next((i for i, (_, kind) in enumerate(recent) if kind != Retraining.quick), len(recent))
    return (
        enabled and incumbent is not None and bool(recent) and recent[0][0] < examples and quick_in_a_row < MAX_QUICK_IN_A_ROW
        and config.warm_start_scaling < 1
    )


def labelled_state(session: Session, project_id: int) -> list:
    """A fingerprint of the labelled set: it changes when an accepted annotation is added, changed or removed."""
    row = session.exec(
        select(func.count(Annotation.id), func.max(Annotation.id), func.max(Annotation.updated_at))
        .join(Task, Annotation.task_id == Task.id)
        .where(Task.project_id == project_id, Annotation.accepted.is_(True))
    ).one()
    return [row[0], row[1], row[2].isoformat() if row[2] else None]


def self_training_of(project: Project) -> SelfTraining:
    return SelfTraining(project.self_training, project.self_training_threshold, project.self_training_weight)


def stop_set_texts(session: Session, project_id: int) -> list[str]:
    """The project's fixed stop set: hash-chosen among all its texts (``stopping.stop_set``)."""
    rows = session.exec(select(Task.text, Task.content_hash).where(Task.project_id == project_id).order_by(Task.id)).all()
    return [rows[i][0] for i in stopping.stop_set([digest for _, digest in rows])]


def stop_history(session: Session, project_id: int) -> tuple[list, list, list]:
    """(kappas, labelled tokens, dev F1) of the project's versions that carry a stopping signal, oldest first."""
    signals = [
        v.metrics
        for v in session.exec(select(ModelVersion).where(ModelVersion.project_id == project_id).order_by(ModelVersion.id))
        if "stopping" in v.metrics
    ]
    return (
        [m["stopping"]["kappa"] for m in signals],
        [m["labelled_tokens"] for m in signals],
        [(m.get("dev") or {}).get("f1") for m in signals],
    )


def run_training(project_id: int, run: JobRun, config: TrainConfig) -> dict:
    settings = get_settings()
    job_id = run.job_id
    directory = store.project_dir(settings.model_store, project_id)
    run.update(stage="loading")
    with session_scope() as session:
        project = projects.get(session, project_id)
        labels = list(project.labels)
        train_set, dev_set, augmented = training_examples(session, project)
        real = len(train_set) - augmented
        self_training = self_training_of(project)
        pool_texts = list(session.exec(select(Task.text).where(Task.project_id == project_id, Task.state == TaskState.pool)))
        stop_texts = stop_set_texts(session, project_id)
        kappas, version_tokens, version_dev_f1 = stop_history(session, project_id)
        active = active_version(session, project_id)
        incumbent = Incumbent.of(active) if active else None
        newest = select(ModelVersion).where(ModelVersion.project_id == project_id).order_by(ModelVersion.id.desc())
        recent = [(trained_on(v), v.retraining) for v in session.exec(newest.limit(MAX_QUICK_IN_A_ROW))]
        labelled_at_start = labelled_state(session, project_id)
        registered = session.exec(select(ModelVersion.path).where(ModelVersion.project_id == project_id)).all()
    store.remove_leftovers(directory, keep=registered)
    if not real:
        raise ValueError(f"project {project_id} has no labelled training examples yet ({len(dev_set)} in the dev set)")

    quick = is_quick_stage(settings.quick_retraining, config, incumbent, recent, len(train_set))
    stage = Retraining.quick if quick else Retraining.full
    if quick:
        config = replace(config, warm_start_scaling=1.0)
    base = start_from(incumbent.path if incumbent else None, settings.base_model or default_base_model())
    active_predict = partial(predict_with, incumbent.path) if incumbent else None
    pseudo = []
    if self_training.enabled and active_predict and pool_texts:  # re-derived from the active model at every training
        run.update(stage="pseudo-labelling", pool=len(pool_texts))
        pseudo = recipe.pseudo_labels(pool_texts, active_predict(pool_texts), self_training)
    sizes = {"train_size": real, "augmented": augmented, "pseudo_labelled": len(pseudo), "dev_size": len(dev_set)}
    run.update(stage="training", retraining=stage.value, base=base, **sizes, epoch=0, step=0)

    def on_step(step: int, total: int, loss: float) -> None:
        run.update(step=step, total_steps=total, loss=round(loss, 5))

    def on_epoch(epoch: EpochLog) -> None:
        run.update(epoch=epoch.epoch, dev_f1=epoch.dev_f1)

    inputs = RecipeInputs(base, labels, train_set, dev_set, config, pseudo, incumbent.trained_on if incumbent else None)
    outcome = recipe.run_recipe(inputs, active_predict, on_step, on_epoch)
    tagger, config, result, candidate, active_scores, promote, reason = (
        outcome.tagger, outcome.config, outcome.result, outcome.candidate, outcome.incumbent, outcome.promote, outcome.reason
    )

    labelled_tokens = sum(len(word_offsets(e.text)) for e in [*train_set[:real], *dev_set])
    signal = None
    if not quick:
        run.update(stage="stopping signal")
        kappa = None
        if incumbent and stop_texts:
            before = predict_with(incumbent.signal_reference, stop_texts)
            kappa = stopping.cohen_kappa(stopping.word_tags(before), stopping.word_tags(tagger.predict(stop_texts)))
        signal = stopping.stop_signal(
            [*kappas, kappa], [*version_tokens, labelled_tokens], [*version_dev_f1, candidate.f1 if candidate else None]
        )

    run.update(stage="saving")
    checks = []

    def export_and_check(temp: Path) -> None:  # inside the atomic save: a version's ONNX files and check come whole with it
        run.update(stage="exporting to ONNX")
        started = time.perf_counter()
        onnx_tagger.export(tagger, temp)
        exported = time.perf_counter()
        run.update(stage="checking the int8 model")
        result = onnx_tagger.check(tagger, temp, dev_set, torch_f1=candidate.f1 if candidate else None)
        seconds = {"export_seconds": round(exported - started, 3), "check_seconds": round(time.perf_counter() - exported, 3)}
        checks.append({**result.as_dict(), **seconds})

    path = store.save_atomically(tagger, directory, store.attempt_name(job_id, run.token), also=export_and_check)
    metrics = {
        "job_id": job_id,
        "base": base,
        "train_size": real,
        "augmented": augmented,
        "train_tokens": sum(len(word_offsets(e.text)) for e in train_set[:real]),  # the learning curve's x
        "labelled_tokens": labelled_tokens,  # train and dev: what annotators labelled, the stopping slope's x
        "pseudo_labelled": len(pseudo),
        "vocabulary_added": len(outcome.added_characters),  # characters new to the vocabulary (were [UNK])
        "self_training": asdict(self_training),
        "retraining": stage.value,
        **({"last_full": {"path": incumbent.signal_reference, "trained_on": incumbent.trained_on}} if quick else {}),
        **({"stopping": {**signal.as_dict(), "stop_set_size": len(stop_texts), "advice": signal.advice}} if signal else {}),
        "dev_size": len(dev_set),
        "dev": candidate.as_dict() if candidate else None,
        "compared_with": {"version": incumbent.name, "dev_f1": active_scores.f1 if active_scores else None} if incumbent else None,
        "decision": reason,
        "onnx": checks[0],  # int8 vs PyTorch dev F1, whether the int8 model serves, and what it cost
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
                "retraining": stage.value,
                "stopping": signal.advice if signal else None,  # "you can stop: kappa ..." or "keep going: ..."; None after a quick stage
            }
            run.finish(**summary)
            changed_meanwhile = labelled_state(session, project_id) != labelled_at_start
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # nothing points at it
        raise
    log.info("job %s: %s %s (%s)", job_id, "promoted" if promote else "kept as candidate", summary["version"], reason)

    with session_scope() as session:
        if promote:  # first, so annotators get the new pre-annotations before any follow-up trains
            # The review waits for the scoring's push: queued beside it, it ran before the scoring's
            # shards (queued later, by score_pool) and held the pre-annotations back by its whole run.
            # A quick version's full stage waits for its push too (queued now, it would run before the
            # shards score_pool queues on a one-process worker); its review would only be superseded.
            job_queue.request_follow_up(session, project_id, "score_pool", version_id=summary["version_id"], coalesce=False,
                                        then_review=settings.review_after_training and not quick, then_train=quick)
        if changed_meanwhile or (quick and not promote):  # annotations arrived during the run, or a kept-back quick stage
            job_queue.request_follow_up(session, project_id, "train")
    return summary

