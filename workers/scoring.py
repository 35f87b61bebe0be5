"""Scoring the pool with a model version, in shards, and pushing the result to Label Studio in bulk.

A shard predicts its tasks and stores one ``Prediction`` row per task and version (spans with their
probabilities, and the task confidence: lower is more uncertain). Storing is an upsert, so a shard run
twice writes the same rows. The push reads the rows back and imports them into Label Studio in bulk,
at the version's name, with uncertainty sampling on: the least confident task is served first. The
superseded versions' predictions there are removed afterwards, by ``prune`` (its own task, off the
loop's path: Label Studio deletes 10,000 predictions far slower than it imports them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import func
from sqlmodel import select

from service.db import session_scope
from service.label_studio import client_from_settings, results_from_spans
from service.models import ModelStatus, ModelVersion, Prediction, Project, Task, TaskState
from service.predictor import predict_with, samples_for, task_scores
from service.settings import get_settings

log = logging.getLogger(__name__)


def pool_task_ids(project_id: int) -> list[int]:
    with session_scope() as session:
        return list(
            # By length: shards (and the tagger's batches within them) hold texts of similar length,
            # so little of each batch is padding (measured: 1.25x faster scoring, bench/scoring.py).
            session.exec(
                select(Task.id)
                .where(Task.project_id == project_id, Task.state == TaskState.pool)
                .order_by(func.length(Task.text), Task.id)
            )
        )


def shards(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[start : start + size]) for start in range(0, len(ids), size)]


def is_active(version_id: int) -> bool:
    with session_scope() as session:
        version = session.get(ModelVersion, version_id)
        return version is not None and version.status == ModelStatus.active


def score_tasks(version_id: int, task_ids: Sequence[int]) -> int:
    """Predict the tasks with the version's model and store the predictions, scored under the
    project's query strategy (``service.predictor.task_scores``); returns how many."""
    with session_scope() as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise LookupError(f"model version {version_id} does not exist")
        path, strategy = version.path, session.get(Project, version.project_id).strategy
        tasks = session.exec(select(Task.id, Task.text).where(Task.id.in_(list(task_ids))).order_by(Task.id)).all()
    predictions = predict_with(path, [text for _, text in tasks], mc_samples=samples_for(strategy))
    # Seeded by the shard's first task, so that random scores differ between shards yet repeat on a rerun.
    scores = task_scores(strategy, predictions, seed=tasks[0][0] if tasks else 0)
    scored = {
        task_id: ([[s.start, s.end, s.label, round(s.score, 6)] for s in prediction.spans], score)
        for (task_id, _), prediction, score in zip(tasks, predictions, scores)
    }
    with session_scope() as session:
        existing = session.exec(
            select(Prediction).where(Prediction.model_version_id == version_id, Prediction.task_id.in_(list(scored)))
        ).all()
        for row in existing:
            row.spans, row.score = scored.pop(row.task_id)
            session.add(row)
        session.add_all(
            Prediction(task_id=task_id, model_version_id=version_id, spans=spans, score=score)
            for task_id, (spans, score) in scored.items()
        )
    return len(tasks)


def push(project_id: int, version_id: int) -> int:
    """Import the version's predictions for the pool into Label Studio and make it the project's model
    version; returns how many it created.

    Re-runnable as one step: predictions the version already has in Label Studio (an attempt that
    died after importing) are replaced, not doubled. Does nothing (returns 0) unless the project is
    attached to Label Studio and an API key is set.
    """
    client = client_from_settings()
    with session_scope() as session:
        project = session.get(Project, project_id)
        version = session.get(ModelVersion, version_id)
        if project is None or version is None or project.ls_project_id is None or client is None:
            return 0
        rows = session.exec(
            select(Prediction, Task)
            .join(Task, Prediction.task_id == Task.id)
            .where(Prediction.model_version_id == version_id, Task.state == TaskState.pool, Task.ls_task_id.is_not(None))
            .order_by(Task.id)
        ).all()
        payload = [
            {
                "task": task.ls_task_id,
                "result": results_from_spans(task.text, prediction.spans, project.from_name, project.to_name),
                "score": prediction.score,
            }
            for prediction, task in rows
        ]
        ls_project_id, name = project.ls_project_id, version.name
    if not payload:
        return 0
    if client.prediction_versions(ls_project_id).get(name):
        client.delete_prediction_version(ls_project_id, name)
    return client.push_predictions(ls_project_id, payload, model_version=name)


def prune(project_id: int, version_id: int) -> int:
    """After ``version_id``'s push: remove the predictions of the project's superseded versions from
    Label Studio; returns how many. Kept: that version's, the active version's (a newer push may have
    come first), and those of the newest ``keep_prediction_versions - 1`` other versions. Model
    versions nerloop did not make, and annotations, are never touched. Idempotent: a prune that never
    ran (its message lost) is made up by the next one.
    """
    settings = get_settings()
    client = client_from_settings(settings)
    with session_scope() as session:
        project = session.get(Project, project_id)
        version = session.get(ModelVersion, version_id)
        if project is None or version is None or project.ls_project_id is None or client is None:
            return 0
        ours = {v.name: v.status for v in session.exec(select(ModelVersion).where(ModelVersion.project_id == project_id))}
        ls_project_id, name = project.ls_project_id, version.name
    others = [v for v in client.prediction_versions(ls_project_id) if v in ours and v != name]  # newest first
    superseded = [v for v in others[settings.keep_prediction_versions - 1 :] if ours[v] != ModelStatus.active]
    removed = sum(client.delete_prediction_version(ls_project_id, v) for v in superseded)
    if superseded:
        log.info("project %s: removed %d predictions of %s from Label Studio", project_id, removed, ", ".join(superseded))
    return removed
