"""One review job: find the accepted annotations that are probably wrong and show them to reviewers.

Every labelled task is predicted by a model that did not train on it (k-fold cross-fitting from the
project's base model, never from its active version, which trained on all of them), cleanlab scores
the annotations (``active_learning.label_quality.find_suspects``), and what reviewers confirmed
before is not flagged again for the same reason. The suspects are stored in the job's fenced
transaction, then pushed to Label Studio when the project is attached (``service.operations.review``).
"""

from __future__ import annotations

import dataclasses

from active_learning.label_quality import DEFAULT_FOLDS, find_suspects, fold_config
from active_learning.tagger import default_base_model
from service.db import session_scope
from service.label_studio import client_from_settings
from service.models import Project
from service.operations import projects, review
from service.settings import get_settings
from service.versions import active_version

from .lifecycle import JobRun


def run_review(project_id: int, run: JobRun, folds: int = DEFAULT_FOLDS, config: dict | None = None) -> dict:
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
    report = find_suspects(
        [j.example for j in judged],
        labels,
        k=folds,
        base_model=base,
        config=fold_recipe,
        confirmed=confirmed,
        on_progress=lambda done, k: run.update(step=round(done, 2)),
    )
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
