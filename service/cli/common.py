"""What every command shares: the console, failing with a message, the database, the project an
option names, Label Studio, the progress bar, and the options that name a query strategy or a
training setting."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from sqlmodel import Session

from active_learning.errors import Loc, format_loc
from active_learning.strategies import STRATEGIES
from service.errors import DomainError, NotFound
from service.models import Project
from service.settings import Settings

if TYPE_CHECKING:
    from service.label_studio import LabelStudioClient

console = Console()
PROGRESS_COLUMNS = (
    SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn()
)

Strategy = Enum("Strategy", {name: name for name in STRATEGIES}, type=str)

# Options named like the TrainConfig fields they set (demo and simulate pass them on by name). They
# are not generated from TrainConfig: reading it imports PyTorch, which every command would then wait for.
Epochs = Annotated[int, typer.Option(min=1, help="Training epochs (more when --min-steps needs them)")]
MinSteps = Annotated[int, typer.Option(min=0, help="At least this many optimizer steps per training")]
LearningRate = Annotated[float, typer.Option(min=0)]
BatchSize = Annotated[int, typer.Option(min=1, help="Training batch size")]
WarmStartScaling = Annotated[
    float, typer.Option(min=0.0, help="Scale a warm start's epochs and steps by (share of new examples) ** this; 0: no scaling")
]

Body = TypeVar("Body", bound=BaseModel)

# Where a domain error's location names an option other than --<location>.
OPTIONS = {"project_id": "--project"}


def fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code=2)


def progress_bar() -> Progress:
    return Progress(*PROGRESS_COLUMNS, console=console)


@contextmanager
def database() -> Iterator[Session]:
    """A session on the settings' database (its schema brought up to date), committed at the end."""
    from service.db import init_db, session_scope
    from service.settings import get_settings

    url = get_settings().database_url
    init_db(url)
    with session_scope(url) as session:
        yield session


@contextmanager
def failing_on_domain_errors(**options: str | None) -> Iterator[None]:
    """Turn what an operation refuses into a message naming the option at fault, and exit code 2.
    ``options`` maps an input the operation names to this command's option, or to None where the
    message names the input itself (a file's path)."""
    try:
        yield
    except DomainError as error:
        fail(describe(error, **options))


def describe(error: DomainError, **options: str | None) -> str:
    """A domain error's messages, each after the option it is about."""
    return "; ".join(located(loc, message, {**OPTIONS, **options}) for loc, message in error.errors)


def located(loc: Loc, message: str, options: Mapping[str, str | None]) -> str:
    """("params", "p") -> "--params.p: message"; ("project_id",) -> "--project: message"."""
    if not loc:
        return message
    option = options.get(str(loc[0]), "--" + str(loc[0]).replace("_", "-"))
    return message if option is None else f"{format_loc((option, *loc[1:]))}: {message}"


def validated(body: type[Body], **values) -> Body:
    """The request body the options make, or a failure naming the option whose value it refuses."""
    try:
        return body(**values)
    except ValidationError as error:
        fail("; ".join(located(e["loc"], e["msg"].removeprefix("Value error, "), OPTIONS) for e in error.errors()))


def open_project(session: Session, project_id: int) -> Project:
    """The project ``--project`` names, or a failure saying there is none."""
    from service.operations import projects  # loads Label Studio's SDK: only for commands that need it

    try:
        return projects.get(session, project_id)
    except NotFound:
        fail(f"--project {project_id}: no such project")


def label_studio_or_fail(settings: Settings) -> LabelStudioClient:
    """A working Label Studio client (server reachable, token accepted), or a clear error."""
    from service.label_studio import LabelStudioError, client_from_settings

    try:
        client = client_from_settings(settings, retries=1)
        if client is None:
            fail("no Label Studio API key: set NERLOOP_LABEL_STUDIO_API_KEY (a legacy token or a PAT)")
        client.whoami()
    except LabelStudioError as error:
        fail(str(error))
    return client


def label_studio_if_configured(settings: Settings) -> LabelStudioClient | None:
    """The settings' Label Studio client, None without an API key; a clear error if it cannot be made."""
    from service.label_studio import LabelStudioError, client_from_settings

    try:
        return client_from_settings(settings)
    except LabelStudioError as error:
        fail(str(error))
