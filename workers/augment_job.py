"""One augmentation job: augment the project's labelled training tasks and store what comes out.

Sources are the accepted annotations of training tasks (never dev tasks: the dev set stays real);
outputs are also deduplicated against the whole labelled set, dev included, so no augmented text
copies a dev text. The rows are written in the job's fenced transaction: an attempt that was taken
over stores nothing.
"""

from __future__ import annotations

from augment import run as augment
from service import augmented_examples, sync
from service.db import session_scope
from service.operations import projects

from .lifecycle import JobRun


def run_augmentation(project_id: int, run: JobRun, method: str, n: int, seed: int, params: dict) -> dict:
    run.update(stage="loading", method=method)
    with session_scope() as session:
        project = projects.get(session, project_id)
        train, dev = sync.accepted_examples(session, project)
    if not train:
        raise ValueError(f"project {project_id} has no labelled training tasks to augment")
    run.update(stage="augmenting", sources=len(train), done=0)
    report = augment(
        method, train, n=n, seed=seed, params=params, labelled=[*train, *dev],
        on_progress=lambda done, total: run.update(done=done),
    )
    with run.owned() as session:
        stored = augmented_examples.store(session, project_id, report.examples)
        summary = {**report.as_dict(), "stage": "done", "stored": stored}
        run.finish(**summary)
    return summary
