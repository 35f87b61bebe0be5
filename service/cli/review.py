"""``nerloop review``: the project's suspect annotations, most likely wrong first; ``--run`` queues a
label review job (as ``nerloop train`` queues a training) instead."""

from __future__ import annotations

from enum import Enum

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from .common import console, database, failing_on_domain_errors, open_project
from .jobs import announce_and_follow

app = typer.Typer()

ReviewStatus = Enum("ReviewStatus", {name: name for name in ("open", "fixed", "confirmed")}, type=str)
STATUS_COLOURS = {"open": "yellow", "fixed": "green", "confirmed": "cyan"}


@app.command()
def review(
    project: int = typer.Option(..., "--project", min=1, help="nerloop project id"),
    run: bool = typer.Option(False, "--run", help="Queue a review job (one already queued is reused) instead of listing"),
    wait: bool = typer.Option(False, "--wait", help="With --run: follow the job until it ends; exit 1 if it fails"),
    timeout: float = typer.Option(0, min=0, help="With --wait: give up after this many seconds (0: never)"),
    status: ReviewStatus | None = typer.Option(None, help="Only suspects of this status (default: all)"),
    limit: int = typer.Option(20, min=1, max=1000, help="Suspects shown"),
    offset: int = typer.Option(0, min=0, help="Skip this many (lowest score first)"),
):
    """List the suspect annotations a label review found, most likely wrong first, or queue a review
    (--run): models that did not train on a task score its annotation, and suspects are shown in Label
    Studio under the model version nerloop-review, with the task fields nerloop_review_score and
    nerloop_review_kinds to filter and sort by."""
    from service.models import SuspectStatus
    from service.operations import review as operations

    with database() as session, failing_on_domain_errors():
        project_id = open_project(session, project).id
        if run:
            job = operations.request_review(session, project_id)
            job_id, job_status = job.id, job.status.value
        else:
            page = operations.list_suspects(
                session, project_id, status=SuspectStatus(status.value) if status else None, limit=limit, offset=offset
            )
    if run:
        announce_and_follow("review", project, job_id, job_status, wait, timeout)
        return
    table = Table(title=f"Suspects of project {project} ({page.total})", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("task", "ls task", "score", "status", "kinds"):
        table.add_column(column, no_wrap=True)
    table.add_column("text", min_width=20, ratio=2)
    table.add_column("suggested", min_width=12, ratio=1)
    for item in page.items:
        table.add_row(
            str(item.task_id),
            str(item.ls_task_id or ""),
            f"{item.score:.3f}",
            f"[{STATUS_COLOURS[item.status.value]}]{item.status.value}[/]" + (" (stale)" if item.stale else ""),
            ", ".join(item.kinds),
            escape(item.text),
            escape(", ".join(f"{item.text[s[0]:s[1]]}/{s[2]}" for s in item.suggested)),
        )
    console.print(table if page.items else "no suspects (run one: nerloop review --project P --run)")
