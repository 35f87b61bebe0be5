"""One review job: find the accepted annotations that are probably wrong and show them to reviewers.

Every labelled task is predicted by a model that did not train on it (k-fold cross-fitting from the
project's base model, never from its active version, which trained on all of them), cleanlab scores
the annotations (``active_learning.label_quality.find_suspects``), and what reviewers confirmed
before is not flagged again for the same reason. The suspects are stored in the job's fenced
transaction, then pushed to Label Studio when the project is attached (``service.operations.review``).

A review queued after a promotion gives way to the loop: when a job annotators wait on is in the
queue or running (a training sent and not yet taken, a scoring queued, scoring or pushing, of any
project), it stops before loading a model or at its next step. Annotators wait on a promoted
training's pre-annotations; nobody waits on that review (measured: a training queued during the
review after the previous promotion waited 187 s of a 316 s loop, bench/loop_latency.py). Given way
to its own project's job, it is dropped: the review the next push queues covers the same labels and
more (a training kept as candidate queues none: its labels are reviewed after the next promotion).
Given way to another project's, it queues itself again behind it, at most ``MAX_GIVE_WAYS`` times,
so that jobs no worker takes cannot starve it. A review asked for runs as asked: it never gives way.
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

GIVE_WAY_CHECK_SECONDS = 1.0  # how often a review looks at the queue (a GPU step is milliseconds)
MAX_GIVE_WAYS = 3  # a training, then the scoring it queues, and one to spare


class GaveWay(Exception):
    def __init__(self, job_id: int, project_id: int):
        super().__init__(f"job {job_id} of project {project_id} is waiting")
        self.job_id, self.project_id = job_id, project_id


def loop_job_waiting() -> tuple[int, int] | None:
    """(job id, project id) of a job the loop waits on that a review would hold up: a training or a
    scoring sent to the broker and not yet taken, or a scoring under way (its shards, then its push,
    may wait behind the review on a worker that reads both queues)."""
    with session_scope() as session:
        sent = (Job.kind.in_(["train", "score_pool"])) & (Job.status == JobStatus.queued) & Job.sent_at.is_not(None)
        scoring = (Job.kind == "score_pool") & (Job.status == JobStatus.running)
        waiting = session.exec(select(Job.id, Job.project_id).where(sent | scoring).order_by(Job.id).limit(1)).first()
        return tuple(waiting) if waiting is not None else None


def run_review(
    project_id: int, run: JobRun, folds: int = DEFAULT_FOLDS, config: dict | None = None, gave_way: int = 0, after_promotion: bool = False
) -> dict:
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

    checked = 0.0

    def give_way_to_the_loop() -> None:
        nonlocal checked
        if after_promotion and gave_way < MAX_GIVE_WAYS and time.monotonic() - checked >= GIVE_WAY_CHECK_SECONDS:
            checked = time.monotonic()
            if (waiting := loop_job_waiting()) is not None:
                raise GaveWay(*waiting)

    def on_progress(done: float, k: int) -> None:
        run.update(step=round(done, 2))
        give_way_to_the_loop()

    try:
        give_way_to_the_loop()  # before loading a model: giving way costs a query, not a fold's first step
        run.update(stage="cross-fitting", tasks=len(judged), folds=folds, base=base, step=0, total_steps=folds)
        report = find_suspects(
            [j.example for j in judged], labels, k=folds, base_model=base, config=fold_recipe, confirmed=confirmed, on_progress=on_progress
        )
    except GaveWay as way:
        if way.project_id == project_id:
            reason = f"superseded: job {way.job_id} of this project runs first, and the review after the next push covers these labels"
        else:
            with session_scope() as session:  # behind the waiting job in the queue; coalesced with any review already queued
                request_follow_up(session, project_id, "review", folds=folds, config=config, gave_way=gave_way + 1, after_promotion=True)
            reason = f"gave way to job {way.job_id}; queued again behind it"
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
