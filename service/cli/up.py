"""``nerloop up``: the API, the worker(s) and the beat in one command, one process tree."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape

from .common import console, fail
from .stack import Stack

app = typer.Typer()


@app.command()
def up(
    host: str = typer.Option("127.0.0.1", help="Interface the API listens on (0.0.0.0: all)"),
    port: int = typer.Option(8000, min=1, max=65535, help="The API's port"),
    queues: str = typer.Option("gpu,cpu", help="The worker's queues (see nerloop worker)"),
    concurrency: int = typer.Option(1, min=1, help="Worker processes (see nerloop worker)"),
    insecure: bool = typer.Option(False, "--insecure", help="Passed to nerloop serve: run the API without NERLOOP_API_TOKEN"),
    logs: Path | None = typer.Option(None, help="Write each process's output to DIR/api.log, worker.log, beat.log (default: here)"),
):
    """Run the API (with the /ml backend and the dashboard), a worker and the beat until Ctrl-C or
    SIGTERM, which stop all of them. Settings come from NERLOOP_* variables and from a .env file in
    the current directory, as for every command."""
    from service.settings import get_settings

    settings = get_settings()
    env = dict(os.environ)
    if "public_url" not in settings.model_fields_set:  # neither the environment nor .env names it: where the API will be
        env["NERLOOP_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    public_url = env.get("NERLOOP_PUBLIC_URL", settings.public_url).rstrip("/")
    stack = Stack(
        env, port, logs, host=host, serve_options=["--insecure"] if insecure else [], queues=queues, concurrency=concurrency
    )
    dotenv = Path(".env")
    console.print(
        f"settings: NERLOOP_* variables{' and ' + escape(str(dotenv.resolve())) if dotenv.is_file() else ' (no .env file here)'}"
        f" · data: {escape(str(settings.home))}"
    )
    try:
        with stack:
            console.print(connect_instructions(stack.url, public_url, settings.ml_basic_auth_user, bool(settings.api_token)))
            stack.run_until_stopped()
    except (RuntimeError, TimeoutError) as error:
        fail(str(error))
    console.print("stopped: API, worker and beat")


def connect_instructions(url: str, public_url: str, ml_user: str, api_token: bool) -> str:
    if ml_user:
        auth = f" · Authentication: basic auth, user {ml_user}, the password of NERLOOP_ML_BASIC_AUTH_PASSWORD"
    elif api_token:  # /ml takes the bearer token then, which Label Studio cannot send
        auth = " · first set NERLOOP_ML_BASIC_AUTH_USER and _PASSWORD (in .env) and restart: Label Studio authenticates with those"
    else:
        auth = ""
    return (
        f"API {url}/api/v1 (docs {url}/docs) · dashboard {url}/dashboard\n"
        f"Label Studio → project Settings → Model → Connect Model: Backend URL [bold]{public_url}/ml[/bold]{auth}\n"
        "(nerloop init and POST /api/v1/projects connect it themselves when they create or attach a project)\n"
        "Ctrl-C stops the API, the worker and the beat"
    )
