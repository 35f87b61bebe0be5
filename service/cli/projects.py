"""Project commands: init (connect Label Studio), configure, sync, import, export."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from service.errors import DomainError
from service.schemas import ExportFormat, ProjectAttach, ProjectCreate, ProjectUpdate, TaskFormat
from service.settings import get_settings

from .common import (
    Strategy,
    console,
    database,
    describe,
    fail,
    failing_on_domain_errors,
    label_studio_if_configured,
    label_studio_or_fail,
    open_project,
    validated,
)

app = typer.Typer()


@app.command()
def init(
    name: str | None = typer.Option(None, help="Create a project with this name (and its Label Studio project)"),
    labels: str | None = typer.Option(None, help="Comma-separated entity labels for a new project, e.g. PER,ORG,LOC"),
    attach: int | None = typer.Option(None, help="Attach to this existing Label Studio project id instead"),
    webhook: bool = typer.Option(True, help="Register nerloop's webhook in Label Studio (needs NERLOOP_PUBLIC_URL reachable from it)"),
):
    """Connect Label Studio (NERLOOP_LABEL_STUDIO_URL / _API_KEY) and create or attach a project."""
    from service.label_studio import UNCERTAIN_FIRST_VIEW
    from service.operations import projects

    if (attach is None) == (name is None):
        fail("give either --name and --labels (new project) or --attach LABEL_STUDIO_PROJECT_ID")
    if name is not None and not labels:
        fail("--labels: a new project needs its entity labels, e.g. --labels PER,ORG,LOC")
    if attach is None:
        new = validated(ProjectCreate, name=name, labels=[label.strip() for label in labels.split(",") if label.strip()])
    else:
        new = None
        validated(ProjectAttach, ls_project_id=attach)
    settings = get_settings()
    client = label_studio_or_fail(settings)
    # Label Studio first, our row last: a failure on the way (say, the webhook refused) leaves no
    # half-made nerloop project, and the message says how to go on.
    ls_project_id = attach
    try:
        if new is not None:
            ls_project_id = projects.create_in_label_studio(client, new.name, new.labels)
        if webhook:
            projects.register_webhook(client, ls_project_id, settings)
        with database() as session:
            project = projects.attached_to(session, ls_project_id)
            if project is None:
                project = projects.attach(session, ProjectAttach(ls_project_id=ls_project_id, name=new.name if new else None), client)
            else:  # attached before: set Label Studio up again (the model, say, once the API is up)
                projects.set_up_label_studio(client, ls_project_id, settings)
            project_id, project_labels = project.id, project.labels
    except DomainError as error:
        go_on = f"\nLabel Studio project {ls_project_id} was created: go on with --attach {ls_project_id}" if new and ls_project_id else ""
        fail(describe(error, ls_project_id="--attach") + go_on)
    console.print(
        f"project [bold]{project_id}[/bold] ↔ Label Studio project {ls_project_id} · labels {', '.join(project_labels)}\n"
        f"Label Studio: the view \"{UNCERTAIN_FIRST_VIEW}\" lists the tasks lowest score first; the model at "
        f"{settings.public_url.rstrip('/')}/ml is connected unless a warning above says Label Studio could not reach it "
        "(then start nerloop up and run this command again with --attach)\n"
        f"next: nerloop import FILE --project {project_id}"
    )


@app.command()
def configure(
    project: int = typer.Option(..., "--project", min=1, help="nerloop project id"),
    strategy: Strategy | None = typer.Option(None, help="Query strategy: the order Label Studio serves the pool in"),
    retrain_every: int | None = typer.Option(None, min=1, help="Retrain after this many newly labelled tasks"),
    augment: bool | None = typer.Option(None, "--augment/--no-augment", help="Train on augmented examples too"),
    augment_ratio: float | None = typer.Option(None, min=0, max=20, help="At most this many augmented examples per labelled one"),
    self_training: bool | None = typer.Option(
        None, "--self-training/--no-self-training", help="Train on the active model's confident pseudo-labels of pool texts too"
    ),
    self_training_threshold: float | None = typer.Option(None, help="Task confidence in (0, 1] a pool text needs for its pseudo-label"),
    self_training_weight: float | None = typer.Option(None, help="Loss weight in (0, 1] of a pseudo-labelled text"),
):
    """Change a project's settings; prints them all."""
    from service.operations import projects

    changes = validated(
        ProjectUpdate,
        strategy=strategy and strategy.value,
        retrain_every=retrain_every,
        augment=augment,
        augment_ratio=augment_ratio,
        self_training=self_training,
        self_training_threshold=self_training_threshold,
        self_training_weight=self_training_weight,
    )
    with database() as session:
        changed = projects.update(session, open_project(session, project), changes)
        shown = {key: getattr(changed, key) for key in ProjectUpdate.model_fields}
    for key, value in shown.items():
        console.print(f"{key}: {value}")


@app.command()
def sync(project: int = typer.Option(..., "--project", min=1, help="nerloop project id")):
    """Pull the annotations Label Studio has that nerloop has not seen (what a webhook missed)."""
    from service.operations import annotations

    client = label_studio_or_fail(get_settings())
    with database() as session, failing_on_domain_errors():
        target = open_project(session, project)
        pulled = annotations.pull(session, target, client)
        training = pulled.training.id if pulled.training else None
        retrain_every = target.retrain_every
    console.print(f"project {project}: {pulled.changed} annotation changes pulled from Label Studio")
    if training is not None:
        console.print(f"{retrain_every} or more new labelled tasks: training job {training} queued")


@app.command("import")
def import_tasks(
    file: Path = typer.Argument(..., help="JSONL, CSV (a 'text' column) or CoNLL file"),
    project: int = typer.Option(..., "--project", min=1, help="nerloop project id"),
    format: TaskFormat | None = typer.Option(None, help="Default: from the file name's ending"),
):
    """Import tasks into a project; texts already there are counted as duplicates, not added."""
    from service.operations import tasks

    settings = get_settings()
    client = label_studio_if_configured(settings)
    with database() as session, failing_on_domain_errors(file=None):  # its messages name the file
        target = open_project(session, project)
        examples = tasks.examples_from_path(target, file, format)
        result = tasks.import_examples(session, target, examples, client, settings.dev_share)
    console.print(f"imported [bold]{result.created}[/bold] tasks into project {project}; {result.duplicates} duplicates skipped")


@app.command()
def export(
    project: int = typer.Option(..., "--project", min=1, help="nerloop project id"),
    format: ExportFormat = typer.Option(ExportFormat.jsonl),
    out: Path = typer.Option(..., "--out", help="File to write"),
):
    """Write a project's accepted annotations as JSONL (character spans) or CoNLL (IOB2)."""
    from service.operations import annotations

    with database() as session:
        content = annotations.export(session, open_project(session, project), format)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(content, encoding="utf-8")
    except OSError as error:
        fail(f"--out {out}: {error.strerror or error}")
    lines = content.count("\n")
    console.print(f"wrote {escape(str(out))} ({lines} lines, {format.value})")
