"""The Celery tasks. Each is thin: it takes ids, claims its job (``workers.jobs``), calls the code
that does the work, and records the outcome. Each may run twice (redelivery after a lost worker, a
broker's second delivery) and then does no harm: a finished job is skipped, a job that another live
attempt runs makes it wait, and stored results are upserts.

- ``nerloop.train(project_id, job_id, config=None)`` (gpu): fine-tune on the labelled set, compare with
  the active version on the same dev set, save, register, promote when not worse, then queue
  ``score_pool`` for a promoted version. ``config``: ``TrainConfig`` fields (see ``workers.config``).
- ``nerloop.score_pool(project_id, version_id, job_id)`` (gpu): a chord of ``nerloop.score_shard``
  over chunks of the pool, then ``nerloop.push_predictions`` (cpu) into Label Studio.
- ``nerloop.sync(project_id, job_id=None)`` (cpu): pull the annotations webhooks missed.
- ``nerloop.augment(project_id, job_id, method, n, seed, params)`` (the method's queue: gpu for
  back-translation, cpu for the rest): augment the labelled training tasks, store the outputs.
- ``nerloop.sweep()`` (cpu, sent by the beat every ``NERLOOP_SWEEP_SECONDS``): for every project,
  pull from Label Studio when attached, then queue a training where enough new labels arrived.
"""

from __future__ import annotations

from celery import chord
from celery.utils.log import get_task_logger

from sqlmodel import select

from service import sync as annotation_sync
from service.jobs import retrain_if_due
from service.db import session_scope
from service.label_studio import LabelStudioClient
from service.models import Project
from service.settings import get_settings

from . import jobs, scoring
from .celery_app import app, make_sqlite_folders
from .augmentation import run_augmentation
from .jobs import JobRun, Outcome
from .retrain import run_training, train_config

log = get_task_logger(__name__)
make_sqlite_folders(app)  # this module is loaded by workers only, before they connect


def _claim(task, job_id: int, **options) -> jobs.Start:
    claim = jobs.start(job_id, **options)
    if claim.outcome is Outcome.wait:
        log.info("job %s waits for the project's running job", job_id)
        raise task.retry(countdown=get_settings().job_wait_seconds)
    return claim


@app.task(name="nerloop.train", bind=True, max_retries=None)
def train(self, project_id: int, job_id: int, config: dict | None = None) -> dict:
    claim = _claim(self, job_id, exclusive=True)
    if claim.outcome is Outcome.done:
        return {"job_id": job_id, "skipped": "finished already"}
    with JobRun(job_id, claim) as run:
        return run_training(project_id, job_id, run, train_config(config))
    return {"job_id": job_id, "skipped": "taken over by another worker"}


@app.task(name="nerloop.score_pool", bind=True, max_retries=None)
def score_pool(self, project_id: int, version_id: int, job_id: int) -> dict:
    # Takeover: a redelivery after this process died before sending the chord fans out again (shards
    # store upserts, so work done twice does no harm); while the fan-out's owner lives, it waits.
    claim = _claim(self, job_id, exclusive=False)
    if claim.outcome is Outcome.done:
        return {"job_id": job_id, "skipped": "finished already"}
    try:
        jobs.note(job_id, version_id=version_id)
        if not scoring.is_active(version_id):
            jobs.complete(job_id, stage="done", skipped=f"version {version_id} is no longer active")
            return {"job_id": job_id, "skipped": "superseded"}
        ids = scoring.pool_task_ids(project_id)
        shards = scoring.shards(ids, get_settings().score_shard_size)
        jobs.note(job_id, stage="scoring", tasks=len(ids), shards=len(shards), scored=0)
        if not shards:
            jobs.complete(job_id, stage="done", pushed=0)
            return {"job_id": job_id, "tasks": 0}
        header = [score_shard.s(project_id, version_id, shard, job_id) for shard in shards]
        chord(header)(push_predictions.s(project_id, version_id, job_id))
    except Exception as error:
        jobs.fail(job_id, error)
        raise
    return {"job_id": job_id, "tasks": len(ids), "shards": len(shards)}


@app.task(name="nerloop.score_shard", ignore_result=False)  # the chord counts its members' results
def score_shard(project_id: int, version_id: int, task_ids: list[int], job_id: int) -> int:
    if not jobs.still_running(job_id):
        return 0  # the job failed in another shard: save the work
    try:
        scored = scoring.score_tasks(version_id, task_ids)
    except Exception as error:
        jobs.fail(job_id, error)
        raise
    jobs.note(job_id, add={"scored": scored})
    return scored


@app.task(name="nerloop.push_predictions")
def push_predictions(scored: list[int], project_id: int, version_id: int, job_id: int) -> dict:
    """The chord's callback: push the stored predictions to Label Studio and finish the job."""
    if not jobs.still_running(job_id):
        return {"job_id": job_id, "skipped": "not running"}
    try:
        if not scoring.is_active(version_id):
            jobs.complete(job_id, stage="done", pushed=0, skipped=f"version {version_id} is no longer active")
            return {"job_id": job_id, "pushed": 0}
        jobs.note(job_id, stage="pushing")
        pushed = scoring.push(project_id, version_id)
    except Exception as error:
        jobs.fail(job_id, error)
        raise
    jobs.complete(job_id, stage="done", scored=sum(scored), pushed=pushed)
    return {"job_id": job_id, "scored": sum(scored), "pushed": pushed}


@app.task(name="nerloop.augment", bind=True, max_retries=None)
def augment(self, project_id: int, job_id: int, method: str, n: int = 1, seed: int = 0, params: dict | None = None) -> dict:
    claim = _claim(self, job_id, exclusive=True)  # one at a time per project: each dedupes against the stored ones
    if claim.outcome is Outcome.done:
        return {"job_id": job_id, "skipped": "finished already"}
    with JobRun(job_id, claim) as run:
        return run_augmentation(project_id, run, method, n, seed, params or {})
    return {"job_id": job_id, "skipped": "taken over by another worker"}


@app.task(name="nerloop.sync", bind=True, max_retries=None)
def sync(self, project_id: int, job_id: int | None = None) -> dict:
    if job_id is None:
        return {"changed": _pull(project_id)}
    claim = _claim(self, job_id, exclusive=True)
    if claim.outcome is Outcome.done:
        return {"job_id": job_id, "skipped": "finished already"}
    with JobRun(job_id, claim) as run:
        run.update(stage="pulling")
        changed = _pull(project_id)
        with run.owned() as (session, job):
            run.finish(session, job, stage="done", changed=changed)
        return {"job_id": job_id, "changed": changed}
    return {"job_id": job_id, "skipped": "taken over by another worker"}


def _pull(project_id: int) -> int:
    settings = get_settings()
    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
    with session_scope() as session:
        project = session.get(Project, project_id)
        if project is None:
            raise LookupError(f"project {project_id} does not exist")
        return annotation_sync.pull(session, project, client)


@app.task(name="nerloop.sweep")
def sweep() -> dict:
    """The beat's round: what webhooks missed comes in, and a project with ``retrain_every`` new
    labelled tasks gets a training (coalesced with one already queued). One project's failure (say,
    Label Studio unreachable) is logged and does not stop the others."""
    settings = get_settings()
    with session_scope() as session:
        project_ids = session.exec(select(Project.id).order_by(Project.id)).all()
    trainings = []
    for project_id in project_ids:
        try:
            with session_scope() as session:
                project = session.get(Project, project_id)
                if settings.label_studio_api_key and project.ls_project_id is not None:
                    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
                    annotation_sync.pull(session, project, client)
                    session.commit()  # what came in stays, whatever the training request says
                job = retrain_if_due(session, project, settings)
                if job is not None:
                    trainings.append(job.id)
        except Exception:
            log.exception("sweep: project %s", project_id)
    return {"projects": len(project_ids), "trainings": trainings}
