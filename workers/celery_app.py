"""The Celery app: broker and result backend from the settings, two queues, routing by task name.

This module needs only the settings (and the augmenters' registry), so the API and the CLI import it
to enqueue tasks by NAME (``enqueue("nerloop.train", project_id=..., job_id=...)``) and never import
task code. A worker loads the tasks (``workers.tasks``) itself: ``celery -A workers.celery_app worker
-Q gpu,cpu`` or ``nerloop worker``. Tasks take their ids as keyword arguments (``project_id``,
``job_id``): that is how every log record of a task names its project and job.

Queues: ``gpu`` runs model work (training, pool scoring and its shards, augmenters that need an
accelerator); ``cpu`` runs I/O and light work (annotation sync, pushing predictions to Label Studio,
the other augmenters, Celery's own chord bookkeeping). A GPU host runs one worker per accelerator on
``gpu`` with concurrency 1, in the solo pool (``nerloop worker``'s default for the gpu queue): a CUDA
context does not survive a fork, and prefork forks replacement pool processes for as long as it runs;
``cpu`` can run anywhere, with more.

Delivery: tasks are acknowledged when they end (``acks_late``) and given back to the broker when the
process running them dies (``reject_on_worker_lost``), so a killed task runs again; tasks are written
to be run twice (see ``workers.lifecycle``). With Redis, a task unacknowledged for the transport's
``visibility_timeout`` is delivered again even when its worker is alive: it is set above the longest
training (``NERLOOP_BROKER_VISIBILITY_TIMEOUT``, 12 hours), and the job guard turns such a duplicate
into a wait. A worker killed whole (its main process too) gives nothing back: the beat's sweep
re-queues a job whose owner stopped its heartbeat (``workers.tasks.sweep``), long before that.

Publishing: a broker that is down fails a send within ``NERLOOP_ENQUEUE_TIMEOUT_SECONDS`` (one
connection attempt and one quick retry), so a request never hangs on it; ``service.job_queue`` keeps
the job pending and the sweep sends it later.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path

from celery import Celery, signals
from celery.result import AsyncResult
from kombu import Exchange, Queue

from augment import AUGMENTERS
from service import logs
from service.settings import Settings, get_settings

GPU = "gpu"
CPU = "cpu"
# Every task and its queue: the one place task names are written. A task is named after its
# function (``NerloopCelery.gen_task_name``), and a job of kind K runs the task ``nerloop.K``.
TASK_QUEUES = {
    "nerloop.train": GPU,
    "nerloop.score_pool": GPU,
    "nerloop.score_shard": GPU,
    "nerloop.review": GPU,  # label review: k fold trainings over the labelled set
    "nerloop.sync": CPU,
    "nerloop.push_predictions": CPU,
    "nerloop.prune_predictions": CPU,
    "nerloop.sweep": CPU,
    "nerloop.recover": CPU,
    "nerloop.augment": CPU,  # an augmenter that needs an accelerator sends its job to GPU (queue_for)
}


def job_task(kind: str) -> str:
    """The name of the task that runs a job of ``kind`` (``Job.kind``)."""
    name = f"nerloop.{kind}"
    if name not in TASK_QUEUES:
        raise ValueError(f"no task runs jobs of kind {kind!r}")
    return name


def queue_for(name: str, kwargs: dict) -> str:
    """The queue of task ``name`` sent with ``kwargs``: its own, except that an augmentation goes to
    ``gpu`` when its method's augmenter declares ``needs_accelerator``."""
    if name == "nerloop.augment":
        augmenter = AUGMENTERS.get(kwargs.get("method"))
        if augmenter is not None and augmenter.needs_accelerator:
            return GPU
    return TASK_QUEUES[name]


class NerloopCelery(Celery):
    def gen_task_name(self, name: str, module: str) -> str:
        """``nerloop.<function name>``, which ``TASK_QUEUES`` must route, wherever the function lives."""
        task = f"nerloop.{name}"
        if task not in TASK_QUEUES:
            raise ValueError(f"task {task} has no queue: add it to TASK_QUEUES")
        return task


def celery_config(settings: Settings) -> dict:
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "broker_transport_options": {**_redis_options(settings), **settings.broker_transport_options},
        "broker_connection_timeout": settings.enqueue_timeout_seconds,
        "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1},
        "result_backend_transport_options": dict(settings.result_backend_transport_options),
        "broker_connection_retry_on_startup": True,
        "task_queues": tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in (GPU, CPU)),
        "task_default_queue": CPU,  # anything unrouted, Celery's chord_unlock included
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,  # a worker holds one task at a time: a long training blocks no other
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # outcomes live in the Job rows; only chord members store results
        "result_expires": timedelta(days=1),
        "include": ["workers.tasks"],
        # `nerloop beat` (celery beat) sends the sweep; it needs no state beyond the DB.
        # The recovery round is cheap (it reads the running and pending jobs): often, so that a lost
        # worker's job runs again within a few heartbeats of going silent (``workers.lifecycle``).
        "beat_schedule": {
            "sweep": {"task": "nerloop.sweep", "schedule": settings.sweep_seconds},
            "recover": {"task": "nerloop.recover", "schedule": max(1.0, 4 * settings.job_heartbeat_seconds)},
        },
        "beat_schedule_filename": str(settings.home / "celerybeat-schedule"),
    }


def _redis_options(settings: Settings) -> dict:
    """The Redis transport's visibility timeout and connect timeout (other transports refuse them)."""
    if not settings.broker_url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://")):
        return {}
    return {"visibility_timeout": settings.broker_visibility_timeout, "socket_connect_timeout": settings.enqueue_timeout_seconds}


def create_app(settings: Settings | None = None, *, current: bool = True) -> Celery:
    app = NerloopCelery("nerloop", set_as_current=current)
    app.conf.update(celery_config(settings or get_settings()))
    return app


def make_sqlite_folders(app: Celery) -> None:
    """SQLite creates a missing database file but not its folder: the embedded broker and result
    backend live in NERLOOP_HOME, which may not exist yet. Called before publishing and by workers."""
    for url in (app.conf.broker_url, app.conf.result_backend):
        scheme, _, rest = (url or "").partition("://")
        if scheme.endswith("sqlite") and rest.startswith("/") and rest != "/:memory:":
            Path(rest[1:]).parent.mkdir(parents=True, exist_ok=True)


def _key(settings: Settings) -> str:
    return json.dumps(
        [settings.broker_url, settings.result_backend, settings.broker_transport_options, settings.result_backend_transport_options,
         settings.broker_visibility_timeout, settings.enqueue_timeout_seconds],
        sort_keys=True,
    )


# The app of the environment's settings: the one workers run.
app = create_app()
_apps: OrderedDict[str, Celery] = OrderedDict({_key(get_settings()): app})
_MAX_APPS = 4


def app_for(settings: Settings | None = None) -> Celery:
    """The app that publishes to ``settings``' broker (the module's app for the environment's settings)."""
    settings = settings or get_settings()
    key = _key(settings)
    if key not in _apps:
        _apps[key] = create_app(settings, current=False)
        while len(_apps) > _MAX_APPS:
            _, evicted = _apps.popitem(last=False)
            if evicted is not app:
                evicted.close()
    _apps.move_to_end(key)
    return _apps[key]


def prepare_publisher(settings: Settings | None = None) -> None:
    """Build the app that publishes to ``settings``' broker and load its transport, without
    connecting: the service calls it at start-up so that the first request which sends a job does
    not pay for it (about a hundred modules: Celery's AMQP layer, the transport, its client)."""
    target = app_for(settings)
    with target.connection_for_write() as connection:
        _ = target.amqp.producer_pool, connection.transport  # properties: built (and imported) on first use


def enqueue(name: str, *, settings: Settings | None = None, task_id: str | None = None, **kwargs) -> AsyncResult:
    """Send task ``name`` with ``kwargs`` to its queue (``queue_for``), by name only."""
    if name not in TASK_QUEUES:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASK_QUEUES)}")
    target = app_for(settings)
    make_sqlite_folders(target)
    # ignore_result: the sender never waits for a result, so it must not subscribe to the result
    # backend either (which, when Redis is down, retries for 20 s before giving up).
    return target.send_task(name, kwargs=kwargs, task_id=task_id, queue=queue_for(name, kwargs), ignore_result=True)


# ---- pool processes: their share of the cores -----------------------------------------------------


@signals.worker_init.connect
def _solo_torch_threads(sender=None, **_) -> None:
    """A solo worker (the gpu queue's) runs its tasks in the main process: no pool process to set up."""
    pool = getattr(sender, "pool_cls", None)  # still as given here: "solo", or the class
    if (pool if isinstance(pool, str) else getattr(pool, "__module__", "")).endswith("solo"):
        _torch_threads()


@signals.worker_process_init.connect
def _torch_threads(**_) -> None:
    threads = get_settings().torch_threads
    concurrency = app.conf.worker_concurrency  # set by `nerloop worker --concurrency`
    # An explicit OMP_NUM_THREADS is the host's own split (several worker processes on one machine):
    # overriding it with "all cores" made two 1-thread workers run 2 threads each on 2 cores (0.57x).
    if not threads and concurrency and not os.environ.get("OMP_NUM_THREADS"):
        threads = max(1, len(os.sched_getaffinity(0)) // concurrency)
    if threads:
        import torch

        torch.set_num_threads(threads)


# ---- logs: every record of a task carries its project and job (service.logs) ---------------------

_bindings: dict[str, object] = {}


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_format(logger, **_) -> None:
    for handler in logger.handlers:
        logs.install(handler, get_settings().log_format)


@signals.task_prerun.connect
def _bind_task(task_id, task, kwargs=None, **_) -> None:
    kwargs = kwargs or {}
    _bindings[task_id] = logs.bind(task=task.name, project_id=kwargs.get("project_id"), job_id=kwargs.get("job_id"))


@signals.task_postrun.connect
def _unbind_task(task_id, **_) -> None:
    token = _bindings.pop(task_id, None)
    if token is not None:
        logs.unbind(token)
