"""The ``nerloop`` command line, one module per group of commands: projects (init, configure, sync,
import, export), jobs (train, augment, jobs), review, processes (serve, worker, beat), up (all three at once), demo and simulate.

Every command that touches a project goes through ``service.operations``, as the API does.
"""

import typer

from . import demo, jobs, processes, projects, review, simulate, up

app = typer.Typer(help="Active learning and label-preserving augmentation for NER, around Label Studio.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """nerloop: label less, learn more."""


for group in (demo, simulate, up, processes, projects, jobs, review):
    app.add_typer(group.app)
