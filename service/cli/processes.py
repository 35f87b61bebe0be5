"""The long-running processes of a deployment: the API server, Celery workers, the beat."""

from __future__ import annotations

import ipaddress
import logging

import typer

from .common import fail

app = typer.Typer()


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: all)"),
    port: int = typer.Option(8000, min=1, max=65535),
    log_level: str = typer.Option("info", help="uvicorn log level"),
    insecure: bool = typer.Option(
        False, "--insecure",
        help="Start without NERLOOP_API_TOKEN / NERLOOP_WEBHOOK_SECRET (anyone who reaches the port may use it); loopback hosts only",
    ),
):
    """Serve the REST API (/api/v1, docs at /docs) and the Label Studio ML backend (/ml) in one server.

    Refuses to start without NERLOOP_API_TOKEN, and, once a project is attached to Label Studio,
    without NERLOOP_WEBHOOK_SECRET, unless told --insecure (on a loopback address only)."""
    import uvicorn

    from service import logs
    from service.api import create_app
    from service.settings import get_settings

    settings = get_settings()
    logs.configure(settings.log_format, log_level.upper())
    if insecure and not _loopback(host):
        fail(f"--insecure: only on a loopback address (127.0.0.1, ::1, localhost), not --host {host}")
    api = create_app(settings)
    missing = missing_secrets(settings, api.state.engine)
    if missing and not insecure:
        fail(f"refusing to serve without {' and '.join(missing)}: set it, or pass --insecure to serve on a loopback address unprotected")
    if missing:
        logging.getLogger("nerloop.serve").warning(
            "INSECURE: serving without %s: anyone who reaches http://%s:%d may read and change every project",
            " and ".join(missing), host, port,
        )
    freeze_startup_objects()
    # log_config=None: uvicorn's loggers go through the root logger, in NERLOOP_LOG_FORMAT.
    uvicorn.run(api, host=host, port=port, log_level=log_level, log_config=None)


def freeze_startup_objects() -> None:
    """Keep the garbage collector off what the server imported at startup.

    Torch, transformers and the app leave ~440,000 tracked objects, and a full collection walks
    them all while it holds the GIL: 0.38 s on our 2-core machines, during which no request,
    ``/health`` included, is answered. The largest requests allocate enough to set one off several
    times (measured: ``/health`` stalled 0.4-0.6 s beside one large request, 1.4 s in CI with three).
    Those objects live as long as the process, so the collector has nothing to find in them:
    ``gc.freeze`` moves them to a generation it never scans (0.00001 s per full collection after),
    and /health beside all three answered within 0.31 s."""
    import gc

    gc.collect()  # what is garbage already is freed, not frozen
    gc.freeze()


def missing_secrets(settings, engine) -> list[str]:
    """The secrets a server with this database needs and lacks: the API token always, the webhook
    secret once a project is attached to Label Studio (its webhooks queue trainings)."""
    from sqlmodel import Session, select

    from service.models import Project

    missing = [] if settings.api_token else ["NERLOOP_API_TOKEN"]
    if not settings.webhook_secret:
        with Session(engine) as session:
            if session.exec(select(Project.id).where(Project.ls_project_id.is_not(None))).first() is not None:
                missing.append("NERLOOP_WEBHOOK_SECRET (a project is attached to Label Studio)")
    return missing


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def worker(
    queues: str = typer.Option("gpu,cpu", help="Comma-separated: gpu (training, pool scoring), cpu (sync, pushes to Label Studio)"),
    concurrency: int = typer.Option(1, min=1, help="Worker processes; keep 1 on the gpu queue (one model per accelerator)"),
    pool: str = typer.Option(
        "auto",
        help="auto: solo when serving the gpu queue with concurrency 1 (CUDA must not be initialised in a process that forks"
        " later), prefork otherwise; prefork (a task whose process dies is delivered again) or solo (runs in this process)",
    ),
    loglevel: str = typer.Option("info", help="Celery log level"),
):
    """Run a Celery worker on the broker of the settings (NERLOOP_BROKER_URL; default: the embedded SQLite broker)."""
    from service.db import init_db
    from workers.celery_app import CPU, GPU
    from workers.celery_app import app as celery

    chosen = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in chosen if q not in (GPU, CPU)]
    if not chosen or unknown:
        fail(f"--queues: expected a comma-separated subset of {GPU},{CPU}, got {queues!r}")
    if pool not in ("auto", "prefork", "solo"):
        fail(f"--pool: expected auto, prefork or solo, got {pool!r}")
    if pool == "auto":
        pool = "solo" if GPU in chosen and concurrency == 1 else "prefork"

    init_db()
    celery.conf.worker_concurrency = concurrency  # pool processes split the cores between them (NERLOOP_TORCH_THREADS)
    celery.worker_main(["worker", "--queues", ",".join(chosen), "--concurrency", str(concurrency), "--pool", pool, "--loglevel", loglevel])


@app.command()
def beat(loglevel: str = typer.Option("info", help="Celery log level")):
    """Run the scheduler: every NERLOOP_SWEEP_SECONDS (300) it pulls what webhooks missed and queues
    trainings where enough new labels arrived. Run one per deployment, beside the workers."""
    from service.db import init_db
    from service.settings import get_settings
    from workers.celery_app import app as celery

    init_db()
    get_settings().home.mkdir(parents=True, exist_ok=True)  # its schedule file lives there, whatever the database
    celery.start(["beat", "--loglevel", loglevel])
