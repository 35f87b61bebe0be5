"""Job commands: queue a training or an augmentation (and follow it), list jobs."""

from __future__ import annotations

import json
import time
from enum import Enum

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from augment import AUGMENTERS
from service.schemas import AugmentRequest

from .common import console, database, fail, failing_on_domain_errors, open_project, progress_bar, validated

app = typer.Typer()

AugmentMethod = Enum("AugmentMethod", {name: name for name in AUGMENTERS}, type=str)
STATUS_COLOURS = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red"}


@app.command()
def train(
    project: int = typer.Option(..., "--project", min=1, help="nerloop project id"),
    wait: bool = typer.Option(False, "--wait", help="Follow the job until it ends; exit 1 if it fails"),
    timeout: float = typer.Option(0, min=0, help="With --wait: give up after this many seconds (0: never)"),
):
    """Queue a training of the project's model (a training already queued is reused)."""
    from service.operations import jobs

    with database() as session, failing_on_domain_errors():
        job = jobs.request_training(session, open_project(session, project).id)
        job_id, status = job.id, job.status.value
    announce_and_follow("training", project, job_id, status, wait, timeout)


@app.command()
def augment(
    project: int = typer.Option(..., "--project", min=1, help="nerloop project id"),
    method: AugmentMethod = typer.Option(..., help="Augmenter; backtranslate runs on the gpu queue, the others on cpu"),
    n: int = typer.Option(1, "--n", min=1, max=50, help="New examples per labelled training task, at most"),
    seed: int = typer.Option(0, min=0),
    param: list[str] = typer.Option([], "--param", help="A method parameter as KEY=VALUE (VALUE read as JSON when it parses), repeatable"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job with a progress bar (--no-wait: print its id and return)"),
    timeout: float = typer.Option(0, min=0, help="With --wait: give up after this many seconds (0: never)"),
):
    """Queue an augmentation of the project's labelled training tasks. Training uses the results once
    the project enables it: nerloop configure --project P --augment."""
    from service.operations import jobs

    params = {}
    for item in param:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"--param: expected KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    body = validated(AugmentRequest, method=method.value, n=n, seed=seed, params=params)
    with database() as session, failing_on_domain_errors():
        job = jobs.request_augmentation(session, open_project(session, project), body)
        job_id, status = job.id, job.status.value
    announce_and_follow(f"augmentation ({method.value})", project, job_id, status, wait, timeout)


def announce_and_follow(what: str, project_id: int, job_id: int, status: str, wait: bool, timeout: float) -> None:
    """Print the queued job's id; with ``wait``, follow it to the end (the exit status is the job's)."""
    console.print(f"{what} job [bold]{job_id}[/bold] of project {project_id}: {status}")
    if wait:
        raise typer.Exit(follow_job(job_id, timeout))


def follow_job(job_id: int, timeout: float = 0) -> int:
    """Show a job's progress until it ends; 0 when it succeeded, 1 when it failed, 3 on timeout."""
    from sqlmodel import Session

    from service.db import get_engine
    from service.errors import NotFound
    from service.models import JobStatus
    from service.operations import jobs
    from service.progress import progress_view

    engine = get_engine()
    started = time.monotonic()
    with progress_bar() as progress:
        bar = progress.add_task(f"job {job_id}", total=None)
        while True:
            with Session(engine) as session:
                try:
                    job = jobs.get(session, job_id)
                except NotFound:
                    progress.stop()
                    fail(f"job {job_id}: no such job")
                status, error, view = job.status, job.error, progress_view(job)
            if status in (JobStatus.succeeded, JobStatus.failed):
                break
            progress.update(bar, total=view.total or None, completed=view.done, description=f"job {job_id} · {escape(view.summary)}")
            if timeout and time.monotonic() - started > timeout:
                progress.stop()
                console.print(f"[yellow]job {job_id} is still {status.value} after {timeout:g}s[/yellow]")
                return 3
            time.sleep(0.5)
    if status == JobStatus.failed:
        console.print(f"[red]job {job_id} failed:[/red] {escape(error or 'no error recorded')}")
        return 1
    console.print(f"job {job_id} succeeded: {escape(view.summary)}")
    return 0


@app.command("jobs")
def list_jobs(
    project: int | None = typer.Option(None, "--project", min=1, help="Only this project's jobs"),
    limit: int = typer.Option(20, min=1, help="Newest jobs shown"),
):
    """List jobs, newest first: kind, status, progress, and the first line of any error."""
    from service.operations import jobs
    from service.progress import progress_view

    # Fits 80 columns: one space between columns, short times, and progress and error wrap within a
    # width of their own (the fixed columns with their rules once took all 80, leaving those two none).
    table = Table(title="Jobs", box=box.SIMPLE_HEAD, show_edge=False, padding=0)
    for column in ("id", "project", "kind", "status", "created", "finished"):
        table.add_column(column, no_wrap=True)
    table.add_column("progress", min_width=12, ratio=1)
    table.add_column("error", min_width=10, ratio=1)
    with database() as session:
        rows = jobs.list_recent(session, project, limit)
        for job in rows:
            table.add_row(
                str(job.id),
                str(job.project_id or ""),
                job.kind,
                f"[{STATUS_COLOURS[job.status.value]}]{job.status.value}[/]",
                f"{job.created_at:%m-%d %H:%M}",
                f"{job.finished_at:%H:%M:%S}" if job.finished_at else "",
                escape(progress_view(job).summary),
                escape((job.error or "").splitlines()[0] if job.error else ""),
            )
    console.print(table if rows else "no jobs")
