"""One review job: find the accepted annotations that are probably wrong and show them to reviewers.

Every labelled task is predicted by a model that did not train on it (k-fold cross-fitting from the
project's base model, never from its active version, which trained on all of them), cleanlab scores
the annotations (``active_learning.label_quality.find_suspects``), and what reviewers confirmed
before is not flagged again for the same reason. The suspects are stored in the job's fenced
transaction, then pushed to Label Studio when the project is attached (``service.operations.review``).

A review gives way to training: when a training job (of any project) waits in the broker, the review
stops at its next step and queues itself again, behind it. Annotators wait on a training's
pre-annotations; nobody waits on a review (measured: a training queued during the review after the
previous promotion waited 187 s of a 316 s loop, bench/loop_latency.py). It gives way once: the
review queued again runs to the end, so a training message that never runs cannot starve it.
"""

from __future__ import annotations

import dataclasses
import time

from sqlmodel import select

from active_learning.label_quality import DEFAULT_FOLDS, find_suspects, fold_config
from active_learning.tagger import default_base_model
from service.db import session_scope
from service.job_queue import request_follow_up
from service.label_studio import client_from_settings
from service.models import Job, JobStatus, Project
from service.operations import projects, review
from service.settings import get_settings
from service.versions import active_version

from .lifecycle import JobRun

GIVE_WAY_CHECK_SECONDS = 1.0  # how often a review looks for a waiting training (a GPU step is milliseconds)


class GaveWay(Exception):
    def __init__(self, training_job_id: int):
        super().__init__(f"training job {training_job_id} is waiting")
        self.training_job_id = training_job_id


def waiting_training() -> int | None:
    """The id of a training job sent to the broker and not yet taken by a worker, if any."""
    with session_scope() as session:
        waiting = select(Job.id).where(Job.kind == "train", Job.status == JobStatus.queued, Job.sent_at.is_not(None))
        return session.exec(waiting.order_by(Job.id).limit(1)).first()


def run_review(project_id: int, run: JobRun, folds: int = DEFAULT_FOLDS, config: dict | None = None, give_way: bool = True) -> dict:
    settings = get_settings()
    fold_recipe = dataclasses.replace(fold_config(), **(config or {}))
    base = settings.base_model or default_base_model()
    run.update(stage="loading")
    with session_scope() as session:
        project = projects.get(session, project_id)
        labels = list(project.labels)
        judged = review.labelled_set(session, project_id)
        confirmed = review.confirmations(session, project_id)
        active = active_version(session, project_id)
        model_version = active.name if active else None
    if len(judged) < folds:  # a review queued after an early training: nothing to cross-fit yet
        reason = f"{len(judged)} labelled tasks; a {folds}-fold review needs at least {folds}"
        run.finish(stage="done", tasks=len(judged), suspects=0, skipped=reason)
        return {"job_id": run.job_id, "skipped": reason}

    run.update(stage="cross-fitting", tasks=len(judged), folds=folds, base=base, step=0, total_steps=folds)
    checked = time.monotonic()

    def on_progress(done: float, k: int) -> None:
        nonlocal checked
        run.update(step=round(done, 2))
        if give_way and time.monotonic() - checked >= GIVE_WAY_CHECK_SECONDS:
            checked = time.monotonic()
            if (training := waiting_training()) is not None:
                raise GaveWay(training)

    try:
        report = find_suspects(
            [j.example for j in judged], labels, k=folds, base_model=base, config=fold_recipe, confirmed=confirmed, on_progress=on_progress
        )
    except GaveWay as way:
        with session_scope() as session:  # behind the training in the queue; coalesced with any review already queued
            request_follow_up(session, project_id, "review", folds=folds, config=config, give_way=False)
        reason = f"gave way to training job {way.training_job_id}; queued again behind it"
        run.finish(stage="done", tasks=len(judged), suspects=0, skipped=reason)
        return {"job_id": run.job_id, "skipped": reason}
    with run.owned() as session:
        producer = f"cross-fit k={folds}"
        stored = review.store_suspects(
            session, project_id, report, judged, job_id=run.job_id, producer=producer, base_model=base, model_version=model_version
        )
        summary = {"stage": "pushing", "tasks": len(judged), "suspects": len(stored), "issues": report.as_dict()["issues_by_kind"]}
        run.update(**summary)
    client = client_from_settings()
    with session_scope() as session:
        project = session.get(Project, project_id)
        pushed = review.push_to_label_studio(session, project, client, run.job_id) if client is not None else 0
    run.finish(**{**summary, "stage": "done", "pushed": pushed})
    return {"job_id": run.job_id, **summary, "pushed": pushed}
