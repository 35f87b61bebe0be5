"""The Celery tasks. Each is thin: it takes ids (as keyword arguments), calls the code that does the
work, and stores the result; ``JobTask`` (``workers.lifecycle``) claims the job around it and records
how it ended. Each may run twice (redelivery after a lost worker, a broker's second delivery) and then
does no harm: a finished job is skipped, a job that another live attempt runs makes it wait, and
stored results are upserts.

- ``nerloop.train(project_id, job_id, config=None)`` (gpu): fine-tune on the labelled set, compare with
  the active version on the same dev set, save, register, promote when not worse, then queue
  ``score_pool`` for a promoted version (after a quick stage, ``workers.retrain``, with ``then_train``:
  the full stage follows the push). ``config``: fields of ``active_learning.training.TrainConfig``.
- ``nerloop.score_pool(project_id, version_id, job_id, then_review=False, then_train=False)`` (gpu): a
  chord of ``nerloop.score_shard`` over chunks of the pool, then ``nerloop.push_predictions`` (cpu) into
  Label Studio, which queues the review or the training its flags ask for after the push and tries again
  every ``NERLOOP_JOB_WAIT_SECONDS`` while Label Studio is unreachable (the predictions wait stored),
  then sends ``nerloop.prune_predictions(project_id, version_id)`` (cpu): the superseded versions'
  predictions leave Label Studio after the job is done, not on the annotators' wait.
- ``nerloop.review(project_id, job_id, folds=4, config=None, gave_way=0, after_promotion=False)``
  (gpu): label review, queued after each promoted training's push (``after_promotion``) and on demand:
  cross-fit from the base model, store the suspect annotations, show them to reviewers in Label
  Studio. ``config``: fields of the fold models' ``TrainConfig``. It gives way to a training or
  scoring in the queue (``workers.review_job``); ``gave_way`` counts how often.
- ``nerloop.sync(project_id, job_id)`` (cpu): pull the annotations webhooks missed, then queue a
  training when one is due.
- ``nerloop.augment(project_id, job_id, method, n, seed, params)`` (gpu for a method whose augmenter
  needs an accelerator, else cpu): augment the labelled training tasks, store the outputs.
- ``nerloop.sweep()`` (cpu, sent by the beat every ``NERLOOP_SWEEP_SECONDS``): for every project,
  pull from Label Studio when attached, then queue a training where enough new labels arrived.
- ``nerloop.recover()`` (cpu, sent by the beat every 4 heartbeats): send the jobs no message will run
  soon: pending ones (the broker was down when they were asked for) and those of a lost worker.
"""

from __future__ import annotations

from celery import chord
from celery.utils.log import get_task_logger
from sqlmodel import select

from active_learning.label_quality import DEFAULT_FOLDS
from service import sync as annotation_sync
from service.db import session_scope
from service.job_queue import after_annotations_changed, request_follow_up, request_full_stage
from service.label_studio import LabelStudioError, client_from_settings
from service.models import Project
from service.operations import projects
from service.settings import get_settings

from . import scoring
from .augment_job import run_augmentation
from .celery_app import app, enqueue, make_sqlite_folders
from .lifecycle import JobRun, JobTask, RetryLater, resend_stranded
from .retrain import run_training, train_config
from .review_job import run_review

log = get_task_logger(__name__)
make_sqlite_folders(app)  # this module is loaded by workers only, before they connect


@app.task(base=JobTask)
def train(run: JobRun, project_id: int, config: dict | None = None) -> dict:
    return run_training(project_id, run, train_config(config))


# Not exclusive: a redelivery after this process died before sending the chord fans out again (shards
# store upserts, so work done twice does no harm; the first fan-out's members no longer own the job).
@app.task(base=JobTask, exclusive=False)
def score_pool(run: JobRun, project_id: int, version_id: int, then_review: bool = False, then_train: bool = False) -> dict:
    """Score the pool in shards (a chord); its callback pushes the predictions, then, with
    ``then_review``, queues a review job, with ``then_train`` a training (the full stage after a quick
    one): after the pre-annotations, which annotators wait on."""
    run.update(version_id=version_id)
    if not scoring.is_active(version_id):
        run.finish(stage="done", skipped=f"version {version_id} is no longer active")
        _follow_ups(project_id, version_id, train=then_train)
        return {"job_id": run.job_id, "skipped": "superseded"}
    ids = scoring.pool_task_ids(project_id)
    shards = scoring.shards(ids, get_settings().score_shard_size)
    run.update(stage="scoring", tasks=len(ids), shards=len(shards))
    if not shards:
        run.finish(stage="done", scored=0, pushed=0)
        _follow_ups(project_id, version_id, review=then_review, train=then_train)
        return {"job_id": run.job_id, "tasks": 0}
    # Written before any shard reports. ``scored`` is the shards' count: a field set here would be
    # written over it.
    run.flush()
    job = {"job_id": run.job_id, "token": run.token}
    header = [score_shard.s(project_id=project_id, version_id=version_id, task_ids=shard, **job) for shard in shards]
    callback = push_predictions.s(project_id=project_id, version_id=version_id, then_review=then_review, then_train=then_train, **job)
    chord(header)(callback)
    return {"job_id": run.job_id, "tasks": len(ids), "shards": len(shards)}


@app.task(base=JobTask, claims=False, ignore_result=False)  # the chord counts its members' results
def score_shard(run: JobRun, project_id: int, version_id: int, task_ids: list[int]) -> int:
    scored = scoring.score_tasks(version_id, task_ids)
    run.add(scored=scored)
    return scored


@app.task(base=JobTask, claims=False)
def push_predictions(
    run: JobRun, scored: list[int], project_id: int, version_id: int, then_review: bool = False, then_train: bool = False
) -> dict:
    """The chord's callback (``scored``: its members' results): push the stored predictions to Label
    Studio and finish the job."""
    if not scoring.is_active(version_id):
        run.finish(stage="done", pushed=0, skipped=f"version {version_id} is no longer active")
        _follow_ups(project_id, version_id, train=then_train)
        return {"job_id": run.job_id, "pushed": 0}
    run.update(stage="pushing")
    try:
        pushed = scoring.push(project_id, version_id)
    except LabelStudioError as error:
        if error.status is not None and error.status < 500 and error.status != 429:
            raise  # refused (a wrong key, a deleted project): trying again would not help
        raise RetryLater(f"Label Studio is unavailable ({error})") from error  # the scored predictions wait in the database
    run.finish(stage="done", scored=sum(scored), pushed=pushed)
    # A quick version's push prunes nothing: its full stage's push follows at once, and Label Studio,
    # deleting 10,000 predictions for minutes, held that push back (timeouts, deadlocks on a 2-core
    # machine); the full stage's prune removes both superseded versions, off the loop's path.
    try:
        if not then_train:
            enqueue("nerloop.prune_predictions", project_id=project_id, version_id=version_id)
    except Exception as error:  # the next push's prune removes these too
        log.warning("project %s: superseded predictions not pruned now (the broker did not take it: %s)", project_id, error)
    _follow_ups(project_id, version_id, review=then_review, train=then_train)
    return {"job_id": run.job_id, "scored": sum(scored), "pushed": pushed}


@app.task
def prune_predictions(project_id: int, version_id: int) -> dict:
    """After a push, off the loop's path: the superseded versions' predictions leave Label Studio."""
    return {"removed": scoring.prune(project_id, version_id)}


def _follow_ups(project_id: int, version_id: int, review: bool = False, train: bool = False) -> None:
    """What a push asked to queue after it: a review, or a quick version's full stage (asked for even
    when the version was superseded before its push: ``request_full_stage`` knows when it is moot)."""
    if review or train:
        with session_scope() as session:
            if review:
                request_follow_up(session, project_id, "review", after_promotion=True)
            if train:
                request_full_stage(session, project_id, version_id)


@app.task(base=JobTask)  # one at a time per project: each dedupes against the stored ones
def augment(run: JobRun, project_id: int, method: str, n: int = 1, seed: int = 0, params: dict | None = None) -> dict:
    return run_augmentation(project_id, run, method, n, seed, params or {})


@app.task(base=JobTask)
def review(
    run: JobRun, project_id: int, folds: int = DEFAULT_FOLDS, config: dict | None = None, gave_way: int = 0, after_promotion: bool = False
) -> dict:
    return run_review(project_id, run, folds, config, gave_way, after_promotion)


@app.task(base=JobTask)
def sync(run: JobRun, project_id: int) -> dict:
    run.update(stage="pulling")
    client = client_from_settings()
    with session_scope() as session:
        project = projects.get(session, project_id)
        if client is None:
            raise annotation_sync.SyncError("no Label Studio API key is set (NERLOOP_LABEL_STUDIO_API_KEY)")
        changed = annotation_sync.pull(session, project, client)
        after_annotations_changed(session, project)
    run.finish(stage="done", changed=changed)
    return {"job_id": run.job_id, "changed": changed}


@app.task
def sweep() -> dict:
    """The beat's round: what webhooks missed comes in, and a project with ``retrain_every`` new
    labelled tasks gets a training (coalesced with one already queued). One project's failure (say,
    Label Studio unreachable) is logged and does not stop the others."""
    client = client_from_settings()
    with session_scope() as session:
        project_ids = session.exec(select(Project.id).order_by(Project.id)).all()
    trainings = []
    for project_id in project_ids:
        try:
            with session_scope() as session:
                project = session.get(Project, project_id)
                if client is not None and project.ls_project_id is not None:
                    annotation_sync.pull(session, project, client)
                job = after_annotations_changed(session, project)
                if job is not None:
                    trainings.append(job.id)
        except Exception:
            log.exception("sweep: project %s", project_id)
    return {"projects": len(project_ids), "trainings": trainings}


@app.task
def recover() -> dict:
    """The beat's frequent round: pending jobs are sent, and a job whose worker died is sent again."""
    return {"sent": resend_stranded()}
