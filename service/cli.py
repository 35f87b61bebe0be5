"""The ``nerloop`` command line."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="Active learning and label-preserving augmentation for NER, around Label Studio.", no_args_is_help=True)
console = Console()
PROGRESS_COLUMNS = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())


@app.callback()
def main() -> None:
    """nerloop: label less, learn more."""


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=2)


def _find_split(directory: Path, endings: tuple[str, ...]) -> Path | None:
    for ending in endings:
        found = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(ending))
        if found:
            return found[0]
    return None


def load_pool_and_test(data: Optional[Path], test: Optional[Path], pool_size: int, test_size: int, seed: int):
    """The pool and test examples for a simulation.

    ``data`` may be a file, a folder holding ``*train`` and ``*testb``/``*test`` files (CoNLL-2003,
    Weibo), or nothing (the generated demo corpus). Without a test file a fixed 20% is held out.
    Sizes above zero take a fixed random sample.
    """
    from active_learning.corpus import CorpusError, read_corpus
    from active_learning.demo_corpus import generate

    try:
        if data is None:
            examples = generate(1500, seed=seed)
        elif data.is_dir():
            train_file = _find_split(data, ("train",))
            if train_file is None:
                fail(f"--data {data}: no file ending in 'train' in this folder")
            test = test or _find_split(data, ("testb", "test"))
            examples = read_corpus(train_file)
        else:
            examples = read_corpus(data)
        held_out = read_corpus(test) if test else None
    except CorpusError as error:
        fail(str(error))
    rng = random.Random(seed)
    if held_out is None:
        shuffled = examples[:]
        rng.shuffle(shuffled)
        cut = len(shuffled) // 5
        held_out, examples = shuffled[:cut], shuffled[cut:]
    pool = rng.sample(examples, pool_size) if 0 < pool_size < len(examples) else examples
    test_set = rng.sample(held_out, test_size) if 0 < test_size < len(held_out) else held_out
    return pool, test_set


@app.command()
def demo(
    data: Optional[Path] = typer.Option(None, help="Corpus file or folder (CoNLL, JSONL, Label Studio JSON); default: a generated demo corpus"),
    pool_size: int = typer.Option(600, help="Sample this many pool sentences (0: all)"),
    test_size: int = typer.Option(300, help="Sample this many test sentences (0: all)"),
    batch: int = typer.Option(50, min=5, help="Tasks labelled before each retraining (the project's retrain_every)"),
    rounds: int = typer.Option(3, min=0, help="Retrainings after the first"),
    strategy: str = typer.Option("mnlp", help="The project's query strategy"),
    epochs: int = typer.Option(5, min=1),
    min_steps: int = typer.Option(100, min=0, help="At least this many optimizer steps per training"),
    train_config: Optional[str] = typer.Option(None, help='TrainConfig fields as JSON, e.g. \'{"learning_rate": 3e-3}\' (over --epochs/--min-steps)'),
    base_model: str = typer.Option("", help="Hugging Face model directory or id; default: all-MiniLM-L6-v2 (offline)"),
    label_studio: bool = typer.Option(False, "--label-studio", help="Label through a local Label Studio (installed and started for you)"),
    keep_running: Optional[bool] = typer.Option(None, "--keep-running/--stop", help="Leave the service up at the end (default: with --label-studio)"),
    port: int = typer.Option(0, min=0, max=65535, help="The API's port (0: a free one)"),
    out: Path = typer.Option(Path("runs/demo"), help="Output folder: curve.png, results.json, logs, the service's NERLOOP_HOME"),
):
    """The whole loop through the real service: API, worker and beat as processes; simulated
    annotators label in uncertainty order; retraining, promotion, scoring and pushes run for real."""
    import shutil
    import signal
    import socket
    import sys

    import httpx
    from rich.markup import escape

    from service import demo as loop
    from service.models import JobStatus

    pool, test_set = load_pool_and_test(data, None, pool_size, test_size, 0)
    labels = sorted({s.label for e in [*pool, *test_set] for s in e.spans})
    if not labels:
        fail("the corpus has no entity spans")
    from active_learning.strategies import STRATEGIES
    from active_learning.training import TrainConfig

    if strategy not in STRATEGIES:
        fail(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    training = {"epochs": epochs, "min_steps": min_steps}
    try:
        training.update(json.loads(train_config or "{}"))
        TrainConfig(**training)
    except (ValueError, TypeError) as error:
        fail(f"--train-config: {escape(str(error))}")
    config = loop.DemoConfig(batch=batch, rounds=rounds, strategy=strategy, train_config=training, base_model=base_model)
    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    home = (out / "home").resolve()
    shutil.rmtree(home, ignore_errors=True)  # each demo starts from an empty service
    out.mkdir(parents=True, exist_ok=True)
    ls = loop.start_label_studio(Path(__file__).resolve().parent.parent) if label_studio else None
    secret = loop.new_secret()
    stack = loop.Stack(loop.environment(home, port, config, ls, secret), port, out / "logs")
    console.print(
        f"pool [bold]{len(pool)}[/bold] · test {len(test_set)} · labels {', '.join(labels)} · strategy {strategy} · "
        f"retrain every {batch} · service on {stack.url} (logs: {out / 'logs'})"
    )
    keep = label_studio if keep_running is None else keep_running
    # A SIGTERM (timeout, kill) must stop the service's processes too: they run in sessions of their own.
    def terminated(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not interrupt the cleanup
        sys.exit(143)

    signal.signal(signal.SIGTERM, terminated)
    try:
        stack.start()
        with httpx.Client(base_url=stack.url, timeout=120) as api:
            project = loop.create_project(api, labels, config, pool, with_label_studio=ls is not None)
            if ls:
                loop.register_webhook(ls, project["ls_project_id"], stack.url, secret)
                desk = loop.LabelStudioDesk(*ls, project["ls_project_id"])
            else:
                desk = loop.NerloopDesk(api, project["id"])
            with Progress(*PROGRESS_COLUMNS, console=console) as progress:
                labelled = progress.add_task("annotators labelling", total=len(pool))
                job_bar = progress.add_task("waiting for labels", total=None)

                def report(event: str, fields: dict) -> None:
                    if event == "labelled":
                        progress.update(labelled, completed=fields["tasks"])
                    elif event == "progress":
                        total, done = progress_counts(fields["progress"])
                        progress.update(job_bar, total=total, completed=done, description=f"{fields['kind']} job {fields['id']} · {escape(job_summary(JobStatus(fields['status']), fields['progress']))}")
                    elif event == "point":
                        progress.console.print(
                            f"  {fields['version']}: {fields['labelled_tasks']} tasks / {fields['labelled_tokens']} tokens labelled → test F1 {fields['test_f1']:.3f}"
                        )

                points = loop.run_loop(stack, api, project["id"], desk, pool, test_set, config, report)
            models = loop.checked(api.get(f"/api/v1/projects/{project['id']}/models"))
    except (RuntimeError, TimeoutError, httpx.HTTPError) as error:
        stack.stop()
        fail(escape(str(error)))
    except BaseException:  # Ctrl-C or a bug: never leave the processes behind
        stack.stop()
        raise

    console.print(loop.write_results(out, points, models, pool, test_set, labels, config))
    console.print(f"learning curve: {out / 'curve.png'} · numbers: {out / 'results.json'} · service state: {home}")
    if keep:
        where = f"Label Studio: {ls[0]} (login admin@nerloop.local / nerloop-admin), project {project['ls_project_id']}: pre-annotations in uncertainty order\n" if ls else ""
        console.print(f"{where}dashboard: {stack.url}/dashboard · Ctrl-C stops the service")
        try:
            while True:
                stack.check()
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    else:
        console.print(f"dashboard: NERLOOP_HOME={home} .venv/bin/nerloop serve, then http://127.0.0.1:8000/dashboard")
    stack.stop()


@app.command()
def simulate(
    data: Optional[Path] = typer.Option(None, help="Corpus file or folder (CoNLL, JSONL, Label Studio JSON); default: a generated demo corpus"),
    test: Optional[Path] = typer.Option(None, help="Test file; default: the folder's *testb/*test file, or a 20% hold-out"),
    strategies: str = typer.Option("mnlp,random", help="Comma-separated: random, least_confidence, mnlp, entropy_mean, entropy_max, margin, bald"),
    seed_size: int = typer.Option(100, help="Cold-start labelled set, in --unit"),
    batch: int = typer.Option(100, help="Labelled per round, in --unit"),
    rounds: int = typer.Option(5, help="Query rounds after the seed set"),
    unit: str = typer.Option("sentences", help="Budget unit: sentences or tokens"),
    seeds: str = typer.Option("0", help="Comma-separated random seeds; curves are averaged over them"),
    pool_size: int = typer.Option(0, help="Sample this many pool sentences (0: all)"),
    test_size: int = typer.Option(0, help="Sample this many test sentences (0: all)"),
    base_model: Optional[str] = typer.Option(None, help="Hugging Face model directory or id; default: all-MiniLM-L6-v2 (offline)"),
    epochs: int = typer.Option(10, help="Training epochs per round"),
    min_steps: int = typer.Option(150, help="At least this many optimizer steps per training"),
    learning_rate: float = typer.Option(1e-4),
    batch_size: int = typer.Option(16, help="Training batch size"),
    mc_samples: int = typer.Option(8, help="MC-dropout passes for BALD"),
    diversity: bool = typer.Option(False, help="Spread each batch with k-means on embeddings"),
    out: Path = typer.Option(Path("runs/simulate"), help="Output folder for curve.json and curve.png"),
):
    """Run the active-learning loop with gold labels standing in for annotators."""
    from active_learning.simulation import SimulationConfig, simulate as run_simulation, write_results
    from active_learning.training import TrainConfig

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds: expected comma-separated integers, got {seeds!r}")
    try:
        config = SimulationConfig(
            strategies=[s.strip() for s in strategies.split(",") if s.strip()],
            seed_size=seed_size,
            batch=batch,
            rounds=rounds,
            unit=unit,
            seeds=seed_list,
            base_model=base_model,
            mc_samples=mc_samples,
            diversity=diversity,
            train=TrainConfig(epochs=epochs, min_steps=min_steps, learning_rate=learning_rate, batch_size=batch_size),
        )
    except ValueError as error:
        fail(str(error))
    pool, test_set = load_pool_and_test(data, test, pool_size, test_size, seed_list[0] if seed_list else 0)
    labels = sorted({s.label for e in [*pool, *test_set] for s in e.spans})
    if not labels:
        fail("the corpus has no entity spans")
    console.print(
        f"pool [bold]{len(pool)}[/bold] sentences · test [bold]{len(test_set)}[/bold] · labels {', '.join(labels)} · "
        f"strategies {', '.join(config.strategies)}"
    )
    with Progress(*PROGRESS_COLUMNS, console=console) as progress:
        trainings = len(seed_list) * (len(config.strategies) * (config.rounds + 1) + 1)
        overall = progress.add_task("simulation", total=trainings)
        steps = progress.add_task("training", total=1)

        def on_stage(message: str) -> None:
            progress.reset(steps, total=1)
            progress.update(overall, description=message)

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(steps, total=total, completed=step, description=f"training · loss {loss:.3f}")

        def on_result(result) -> None:  # one per training
            progress.advance(overall)
            progress.console.print(
                f"  {result.strategy:>16} seed {result.seed} round {result.round}: {result.sentences} sentences, "
                f"{100 * result.tokens_fraction:.1f}% of pool tokens → F1 {result.f1:.3f}"
            )

        document = run_simulation(pool, test_set, labels, config, on_stage=on_stage, on_step=on_step, on_result=on_result)
    curve, png = write_results(document, out)
    print_summary(document)
    console.print(f"\ncurve: [bold]{curve}[/bold]\nplot:  [bold]{png}[/bold]")


def print_summary(document: dict) -> None:
    table = Table(title="Learning curve: entity F1 on test (share of pool tokens labelled) by round")
    strategies = list(dict.fromkeys(r["strategy"] for r in document["rounds"]))
    table.add_column("round")
    for name in strategies:
        table.add_column(name)
    by_round: dict[int, dict[str, list]] = {}
    for r in document["rounds"]:
        by_round.setdefault(r["round"], {}).setdefault(r["strategy"], []).append(r)
    for number, row in sorted(by_round.items()):
        cells = []
        for name in strategies:
            runs = row.get(name, [])
            if runs:  # mean over seeds
                f1 = sum(r["f1"] for r in runs) / len(runs)
                share = sum(r["tokens_fraction"] for r in runs) / len(runs)
                cells.append(f"{f1:.3f} ({100 * share:.1f}%)")
            else:
                cells.append("")
        table.add_row(str(number), *cells)
    console.print(table)
    summary = Table(title="Summary")
    for column in ("strategy", "final F1", "full-pool F1", "tokens to 99% of full F1", "AULC vs random"):
        summary.add_column(column)
    for name, s in document["summary"].items():
        reached = s["tokens_fraction_to_99pct_full_f1"]
        summary.add_row(
            name,
            f"{s['final_f1']:.3f}",
            f"{s['full_pool_f1']:.3f}" if s["full_pool_f1"] is not None else "-",
            f"{100 * reached:.1f}%" if reached is not None else f"not within {100 * s['final_tokens_fraction']:.1f}%",
            f"{s['aulc_vs_random']:.3f}" if s["aulc_vs_random"] is not None else "-",
        )
    console.print(summary)


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


def _project_or_fail(session, project_id: int):
    from service.models import Project

    project = session.get(Project, project_id)
    if project is None:
        fail(f"--project {project_id}: no such project")
    return project


def _label_studio_or_fail(settings):
    """A working Label Studio client (server reachable, token accepted), or a clear error."""
    from rich.markup import escape

    from service.label_studio import LabelStudioClient, LabelStudioError

    try:
        client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key, retries=1)
        client.whoami()
    except LabelStudioError as error:
        fail(escape(str(error)))
    return client


@app.command()
def init(
    name: Optional[str] = typer.Option(None, help="Create a project with this name (and its Label Studio project)"),
    labels: Optional[str] = typer.Option(None, help="Comma-separated entity labels for a new project, e.g. PER,ORG,LOC"),
    attach: Optional[int] = typer.Option(None, help="Attach to this existing Label Studio project id instead"),
    webhook: bool = typer.Option(True, help="Register nerloop's webhook in Label Studio (needs NERLOOP_PUBLIC_URL reachable from it)"),
):
    """Connect Label Studio (NERLOOP_LABEL_STUDIO_URL / _API_KEY) and create or attach a project."""
    from rich.markup import escape

    from service.api.errors import ApiError
    from service.api.operations import attach_project
    from service.api.schemas import ProjectAttach, ProjectCreate
    from service.db import init_db, session_scope
    from service.label_studio import LabelStudioError
    from service.settings import get_settings

    if (attach is None) == (name is None):
        fail("give either --name and --labels (new project) or --attach LABEL_STUDIO_PROJECT_ID")
    if name is not None and not labels:
        fail("--labels: a new project needs its entity labels, e.g. --labels PER,ORG,LOC")
    settings = get_settings()
    client = _label_studio_or_fail(settings)
    init_db(settings.database_url)
    # Label Studio first, our row last: a failure on the way (say, the webhook refused) leaves no
    # half-made nerloop project, and the message says how to go on.
    ls_project_id = attach
    try:
        if attach is None:
            body = ProjectCreate(name=name, labels=[label.strip() for label in labels.split(",") if label.strip()])
            ls_project_id = client.create_project(body.name, list(body.labels))
        if webhook:
            url = settings.public_url.rstrip("/") + "/api/v1/webhooks/label-studio"
            client.register_webhook(ls_project_id, url, settings.webhook_secret)
        with session_scope(settings.database_url) as session:
            project = attach_project(session, ProjectAttach(ls_project_id=ls_project_id, name=name), client)
            project_id, project_labels = project.id, project.labels
    except (ApiError, LabelStudioError, ValueError) as error:
        created = f"\nLabel Studio project {ls_project_id} was created: go on with --attach {ls_project_id}" if attach is None and ls_project_id else ""
        fail(escape(str(error)) + created)
    console.print(
        f"project [bold]{project_id}[/bold] ↔ Label Studio project {ls_project_id} · labels {', '.join(project_labels)}\n"
        f"next: nerloop import FILE --project {project_id}; in Label Studio, Settings → Model → Connect Model "
        f"with URL {settings.public_url.rstrip('/')}/ml"
    )


@app.command()
def sync(project: int = typer.Option(..., "--project", min=1, help="nerloop project id")):
    """Pull the annotations Label Studio has that nerloop has not seen (what a webhook missed)."""
    from service import sync as annotation_sync
    from service.jobs import retrain_if_due
    from service.db import init_db, session_scope
    from service.settings import get_settings

    settings = get_settings()
    client = _label_studio_or_fail(settings)
    init_db(settings.database_url)
    with session_scope(settings.database_url) as session:
        target = _project_or_fail(session, project)
        if target.ls_project_id is None:
            fail(f"--project {project}: not connected to a Label Studio project (see nerloop init)")
        changed = annotation_sync.pull(session, target, client)
        session.commit()
        training = retrain_if_due(session, target)
    console.print(f"project {project}: {changed} annotation changes pulled from Label Studio")
    if training is not None:
        console.print(f"{target.retrain_every} or more new labelled tasks: training job {training.id} queued")


@app.command("import")
def import_tasks(
    file: Path = typer.Argument(..., help="JSONL, CSV (a 'text' column) or CoNLL file"),
    project: int = typer.Option(..., "--project", min=1, help="nerloop project id"),
    format: Optional[str] = typer.Option(None, help="jsonl, csv or conll; default: from the file name's ending"),
):
    """Import tasks into a project; texts already there are counted as duplicates, not added."""
    from rich.markup import escape

    from active_learning.corpus import CorpusError
    from service.api.deps import get_label_studio
    from service.api.errors import ApiError
    from service.api.files import TaskFormat, read_task_file
    from service.api.operations import import_examples
    from service.db import init_db, session_scope
    from service.settings import get_settings

    try:
        kind = TaskFormat(format) if format else None
    except ValueError:
        fail(f"--format: expected one of {', '.join(f.value for f in TaskFormat)}, got {format!r}")
    settings = get_settings()
    init_db(settings.database_url)
    with session_scope(settings.database_url) as session:
        target = _project_or_fail(session, project)
        try:
            examples = read_task_file(file, target.labels, kind)
            result = import_examples(session, target, examples, get_label_studio(settings), settings.dev_share)
        except CorpusError as error:
            fail(escape(str(error)))
        except ApiError as error:
            fail(escape(str(error)))
    console.print(f"imported [bold]{result.created}[/bold] tasks into project {project}; {result.duplicates} duplicates skipped")


@app.command()
def export(
    project: int = typer.Option(..., "--project", min=1, help="nerloop project id"),
    format: str = typer.Option("jsonl", help="jsonl or conll"),
    out: Path = typer.Option(..., "--out", help="File to write"),
):
    """Write a project's accepted annotations as JSONL (character spans) or CoNLL (IOB2)."""
    from rich.markup import escape

    from service.api.operations import export_annotations
    from service.api.schemas import ExportFormat
    from service.db import init_db, session_scope
    from service.settings import get_settings

    if format not in {f.value for f in ExportFormat}:
        fail(f"--format: expected jsonl or conll, got {format!r}")
    settings = get_settings()
    init_db(settings.database_url)
    with session_scope(settings.database_url) as session:
        content = export_annotations(session, _project_or_fail(session, project), format)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(content, encoding="utf-8")
    except OSError as error:
        fail(escape(f"--out {out}: {error.strerror or error}"))
    lines = content.count("\n")
    console.print(f"wrote {escape(str(out))} ({lines} lines, {format})")


# ---- workers and jobs -----------------------------------------------------------------------------

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


@app.command()
def train(
    project: int = typer.Option(..., "--project", min=1, help="nerloop project id"),
    wait: bool = typer.Option(False, "--wait", help="Follow the job until it ends; exit 1 if it fails"),
    timeout: float = typer.Option(0, min=0, help="With --wait: give up after this many seconds (0: never)"),
):
    """Queue a training of the project's model (a training already queued is reused)."""
    from rich.markup import escape

    from service.api.errors import ApiError
    from service.api.operations import request_training

    def queue(session, target, settings):
        try:
            return request_training(session, target.id, settings)
        except ApiError as error:
            fail(escape(str(error)))

    _queue_and_follow(project, "training", queue, wait, timeout)


def _queue_and_follow(project_id: int, what: str, queue, wait: bool, timeout: float) -> None:
    """Queue a job with ``queue(session, project, settings)`` (which fails with a message on bad
    input), print its id, and with ``wait`` follow it to the end (the exit status is the job's)."""
    from service.db import init_db, session_scope
    from service.settings import get_settings

    settings = get_settings()
    init_db(settings.database_url)
    with session_scope(settings.database_url) as session:
        job = queue(session, _project_or_fail(session, project_id), settings)
        job_id, status = job.id, job.status.value
    console.print(f"{what} job [bold]{job_id}[/bold] of project {project_id}: {status}")
    if wait:
        raise typer.Exit(follow_job(job_id, timeout))


@app.command()
def augment(
    project: int = typer.Option(..., "--project", min=1, help="nerloop project id"),
    method: str = typer.Option(..., help="backtranslate (gpu queue), mention_replacement, token_replacement, synonym, shuffle"),
    n: int = typer.Option(1, "--n", min=1, max=50, help="New examples per labelled training task, at most"),
    seed: int = typer.Option(0, min=0),
    param: list[str] = typer.Option([], "--param", help="A method parameter as KEY=VALUE (VALUE read as JSON when it parses), repeatable"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job with a progress bar (--no-wait: print its id and return)"),
    timeout: float = typer.Option(0, min=0, help="With --wait: give up after this many seconds (0: never)"),
):
    """Queue an augmentation of the project's labelled training tasks. Training uses the results once
    the project enables it: nerloop configure --project P --augment."""
    from rich.markup import escape

    from augment import AugmentError
    from service.augmentation import request_augmentation
    from service.jobs import EnqueueError

    params = {}
    for item in param:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"--param: expected KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw

    def queue(session, target, settings):
        try:
            return request_augmentation(session, target, method, n, seed, params, settings)
        except AugmentError as error:
            fail("--" + escape(str(error)))
        except EnqueueError as error:
            fail(escape(str(error)))

    _queue_and_follow(project, f"augmentation ({method})", queue, wait, timeout)


@app.command()
def configure(
    project: int = typer.Option(..., "--project", min=1, help="nerloop project id"),
    strategy: Optional[str] = typer.Option(None, help="Query strategy: random, least_confidence, mnlp, entropy_mean, entropy_max, margin, bald"),
    retrain_every: Optional[int] = typer.Option(None, min=1, help="Retrain after this many newly labelled tasks"),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Train on augmented examples too"),
    augment_ratio: Optional[float] = typer.Option(None, min=0, max=20, help="At most this many augmented examples per labelled one"),
):
    """Change a project's settings; prints them all."""
    from pydantic import ValidationError
    from rich.markup import escape

    from service.api.operations import update_project
    from service.api.schemas import ProjectRead, ProjectUpdate
    from service.db import init_db, session_scope
    from service.settings import get_settings

    try:
        body = ProjectUpdate(strategy=strategy, retrain_every=retrain_every, augment=augment, augment_ratio=augment_ratio)
    except ValidationError as error:
        first = error.errors()[0]
        fail(f"--{str(first['loc'][0]).replace('_', '-')}: {escape(first['msg'])}")
    settings = get_settings()
    init_db(settings.database_url)
    with session_scope(settings.database_url) as session:
        shown = ProjectRead.model_validate(update_project(session, _project_or_fail(session, project), body), from_attributes=True)
    for key in ("strategy", "retrain_every", "augment", "augment_ratio"):
        console.print(f"{key}: {getattr(shown, key)}")


def follow_job(job_id: int, timeout: float = 0) -> int:
    """Show a job's progress until it ends; 0 when it succeeded, 1 when it failed, 3 on timeout."""
    from rich.markup import escape
    from sqlmodel import Session

    from service.db import get_engine
    from service.models import Job, JobStatus

    engine = get_engine()
    started = time.monotonic()
    with Progress(*PROGRESS_COLUMNS, console=console) as progress:
        bar = progress.add_task(f"job {job_id}", total=None)
        while True:
            with Session(engine) as session:
                job = session.get(Job, job_id)
                if job is None:
                    progress.stop()
                    fail(f"job {job_id}: no such job")
                status, state, error = job.status, dict(job.progress), job.error
            if status in (JobStatus.succeeded, JobStatus.failed):
                break
            total, done = progress_counts(state)
            progress.update(bar, total=total or None, completed=done, description=f"job {job_id} · {escape(job_summary(status, state))}")
            if timeout and time.monotonic() - started > timeout:
                progress.stop()
                console.print(f"[yellow]job {job_id} is still {status.value} after {timeout:g}s[/yellow]")
                return 3
            time.sleep(0.5)
    if status == JobStatus.failed:
        console.print(f"[red]job {job_id} failed:[/red] {escape(error or 'no error recorded')}")
        return 1
    console.print(f"job {job_id} succeeded: {escape(job_summary(status, state))}")
    return 0


def progress_counts(progress: dict) -> tuple[int | None, int]:
    """(total, done) of a job's progress bar: training steps, scored tasks or augmented sources."""
    total = progress.get("total_steps") or progress.get("tasks") or progress.get("sources")
    done = progress.get("step") or progress.get("scored") or progress.get("done") or 0
    return total, done


def job_summary(status, progress: dict) -> str:
    """One line about a job's progress, from the fields its task writes."""
    from service.models import JobStatus

    if status == JobStatus.queued:
        waiting = progress.get("waiting_for")
        return f"queued behind job {waiting}" if waiting else "queued (is a worker running? nerloop worker)"
    if "version" in progress:
        f1 = progress.get("dev_f1")
        score = f", dev F1 {f1:.3f}" if f1 is not None else ""
        return f"{progress['version']} {'promoted' if progress.get('promoted') else 'kept as candidate'}{score}: {progress.get('decision', '')}"
    parts = [progress.get("stage", status.value)]
    if "epoch" in progress:
        parts.append(f"epoch {progress['epoch']}")
    if progress.get("total_steps"):
        parts.append(f"step {progress.get('step', 0)}/{progress['total_steps']}")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if progress.get("dev_f1") is not None:
        parts.append(f"dev F1 {progress['dev_f1']:.3f}")
    if "tasks" in progress:
        parts.append(f"scored {progress.get('scored', 0)}/{progress['tasks']}")
    if "pushed" in progress:
        parts.append(f"pushed {progress['pushed']}")
    if "sources" in progress:
        parts.append(f"augmented {progress.get('done', 0)}/{progress['sources']} sources")
    if "kept" in progress:
        parts.append(f"kept {progress['kept']}, dropped {progress['dropped']}, duplicates {progress['duplicates']}")
    if "changed" in progress:
        parts.append(f"{progress['changed']} annotations changed")
    return " · ".join(str(p) for p in parts)


@app.command()
def jobs(
    project: Optional[int] = typer.Option(None, "--project", min=1, help="Only this project's jobs"),
    limit: int = typer.Option(20, min=1, help="Newest jobs shown"),
):
    """List jobs, newest first: kind, status, progress, and the first line of any error."""
    from rich.markup import escape
    from sqlmodel import select

    from service.db import init_db, session_scope
    from service.models import Job
    from service.settings import get_settings

    settings = get_settings()
    init_db(settings.database_url)
    with session_scope(settings.database_url) as session:
        statement = select(Job).order_by(Job.id.desc()).limit(limit)
        if project is not None:
            statement = statement.where(Job.project_id == project)
        rows = session.exec(statement).all()
        table = Table(title="Jobs")
        for column in ("id", "project", "kind", "status", "progress", "created", "finished", "error"):
            table.add_column(column, no_wrap=column not in ("progress", "error"))
        colours = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red"}
        for job in rows:
            table.add_row(
                str(job.id),
                str(job.project_id or ""),
                job.kind,
                f"[{colours[job.status.value]}]{job.status.value}[/]",
                escape(job_summary(job.status, job.progress)),
                f"{job.created_at:%Y-%m-%d %H:%M:%S}",
                f"{job.finished_at:%H:%M:%S}" if job.finished_at else "",
                escape((job.error or "").splitlines()[0] if job.error else ""),
            )
    console.print(table if rows else "no jobs")


if __name__ == "__main__":
    app()
