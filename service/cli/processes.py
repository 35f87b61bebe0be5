"""The long-running processes of a deployment: the API server, Celery workers, the beat."""

from __future__ import annotations

import typer

from .common import fail

app = typer.Typer()


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: all)"),
    port: int = typer.Option(8000, min=1, max=65535),
    log_level: str = typer.Option("info", help="uvicorn log level"),
):
    """Serve the REST API (/api/v1, docs at /docs) and the Label Studio ML backend (/ml) in one server."""
    import uvicorn

    from service import logs
    from service.api import create_app
    from service.settings import get_settings

    logs.configure(get_settings().log_format, log_level.upper())
    # log_config=None: uvicorn's loggers go through the root logger, in NERLOOP_LOG_FORMAT.
    uvicorn.run(create_app(), host=host, port=port, log_level=log_level, log_config=None)


@app.command()
def worker(
    queues: str = typer.Option("gpu,cpu", help="Comma-separated: gpu (training, pool scoring), cpu (sync, pushes to Label Studio)"),
    concurrency: int = typer.Option(1, min=1, help="Worker processes; keep 1 on the gpu queue (one model per accelerator)"),
    pool: str = typer.Option("prefork", help="prefork (a task whose process dies is delivered again) or solo (runs in this process)"),
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
    if pool not in ("prefork", "solo"):
        fail(f"--pool: expected prefork or solo, got {pool!r}")

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
