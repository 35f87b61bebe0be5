"""``make demo``: the whole loop through the real service, with simulated annotators.

The API, a Celery worker and the beat run as separate processes, exactly as deployed (embedded
defaults: SQLite and the SQLite broker under the run's own NERLOOP_HOME). Annotators who know the
gold labels take tasks in the order an annotator would get them and submit them one at a time:

- without Label Studio, through nerloop's own labelling endpoints (``GET .../tasks/next``, the
  order Label Studio's uncertainty sampling follows, and ``POST .../tasks/{id}/annotations``);
- with Label Studio (``--label-studio``), through Label Studio itself: its next-task endpoint and
  its annotation API; Label Studio's webhooks then carry every annotation to nerloop.

Everything after that is production code: retraining once ``retrain_every`` tasks are labelled,
evaluation against the active model, promotion, pool scoring, the push of predictions. The
annotators wait for each training and scoring to finish (people are slower than this CPU), and
the active model is scored on a held-out test set after each one: the learning curve, with the
stopping signal each training reports. Then (``--random-baseline``, the default) a second project in
the same service labels the same corpus in random order (strategy ``random``), and the plot and the
final table show both curves and the labelled tokens each needs for the same test F1: the saving.

The processes are ``service.cli.stack.Stack``, as for ``nerloop up``. The parts (``Stack``, the desks,
``run_loop``) also drive tests/test_end_to_end.py. Label Studio's
SDK and seqeval are imported where they are used: every ``nerloop`` command imports this module.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from active_learning.corpus import word_offsets
from active_learning.spans import Example, Span
from service.schemas import MAX_TEXTS

from .common import Epochs, MinSteps, Strategy, console, fail, progress_bar
from .corpus import CORPUS_HELP, labels_of, load_pool_and_test
from .stack import API, Stack

app = typer.Typer()

REPO = Path(__file__).resolve().parents[2]
# The demo's API listens on loopback only and nobody else's data is in it: no API token
# (`nerloop serve` refuses to start without one unless told --insecure).
INSECURE_ON_LOOPBACK = ["--insecure"]
PREDICT_CHUNK = MAX_TEXTS  # texts per /predict request: the API's limit


@dataclass
class DemoConfig:
    batch: int = 50  # non-dev tasks labelled before each training (the project's retrain_every)
    rounds: int = 3  # trainings after the first
    strategy: str = "mnlp"
    train_config: dict = field(default_factory=lambda: {"epochs": 5, "min_steps": 100})
    base_model: str = ""  # default: all-MiniLM-L6-v2
    job_timeout: float = 1800.0


# ---- the annotators --------------------------------------------------------------------------------


class NerloopDesk:
    """Annotators on nerloop's labelling endpoints."""

    def __init__(self, api: httpx.Client, project_id: int):
        self.api, self.project_id = api, project_id

    def next_task(self) -> tuple[object, str] | None:
        served = checked(self.api.get(f"{API}/projects/{self.project_id}/tasks/next"))
        return (served[0]["id"], served[0]["text"]) if served else None

    def submit(self, task_id, text: str, spans: Sequence[Span]) -> None:
        body = {"spans": [list(s) for s in spans], "annotator": "demo-annotator"}
        checked(self.api.post(f"{API}/projects/{self.project_id}/tasks/{task_id}/annotations", json=body))


class LabelStudioDesk:
    """Annotators in Label Studio: its next task (uncertainty sampling), its annotation API."""

    def __init__(self, url: str, token: str, ls_project_id: int):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=60)
        self.ls_project_id = ls_project_id

    def next_task(self) -> tuple[object, str] | None:
        response = self.http.get(f"/api/projects/{self.ls_project_id}/next")
        if response.status_code == 404:  # nothing left to label
            return None
        task = checked(response)
        return task["id"], task["data"]["text"]

    def submit(self, task_id, text: str, spans: Sequence[Span]) -> None:
        from service.label_studio import results_from_spans

        checked(self.http.post(f"/api/tasks/{task_id}/annotations/", json={"result": results_from_spans(text, spans)}))


def checked(response: httpx.Response):
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.method} {response.request.url} answered {response.status_code}: {response.text[:500]}")
    return response.json()


# ---- the loop --------------------------------------------------------------------------------------


@dataclass
class Point:
    version: str
    labelled_tasks: int
    labelled_tokens: int
    test_f1: float
    dev_f1: float | None
    stopping: str | None = None  # the stopping signal after the training ("you can stop: ..." / "keep going: ...")


def train_jobs(api: httpx.Client, project_id: int) -> list[dict]:
    return [j for j in checked(api.get(f"{API}/projects/{project_id}/jobs", params={"limit": 1000})) if j["kind"] == "train"]


def wait_job(stack: Stack, api: httpx.Client, job_id: int, timeout: float, on_progress: Callable[[dict], None]) -> dict:
    def finished():
        job = checked(api.get(f"{API}/jobs/{job_id}"))
        on_progress(job)
        return job if job["status"] in ("succeeded", "failed") else None

    job = stack.wait_until(finished, timeout, f"job {job_id}")
    if job["status"] == "failed":
        raise RuntimeError(f"job {job_id} ({job['kind']}) failed: {job['error']}")
    return job


def scoring_job(api: httpx.Client, project_id: int, version_id: int) -> dict | None:
    """The job scoring the pool with ``version_id``, once it is queued."""
    jobs = checked(api.get(f"{API}/projects/{project_id}/jobs"))
    return next((j for j in jobs if j["kind"] == "score_pool" and j["progress"].get("version_id") == version_id), None)


def f1_on(api: httpx.Client, project_id: int, test_set: Sequence[Example]) -> float:
    from active_learning.metrics import evaluate  # seqeval and scikit-learn: seconds to import, for this only

    predicted = []
    for start in range(0, len(test_set), PREDICT_CHUNK):
        texts = [e.text for e in test_set[start : start + PREDICT_CHUNK]]
        answer = checked(api.post(f"{API}/projects/{project_id}/predict", json={"texts": texts}))
        predicted += [[Span(x["start"], x["end"], x["label"]) for x in p["entities"]] for p in answer["predictions"]]
    return evaluate(test_set, predicted).f1


def run_loop(
    stack: Stack,
    api: httpx.Client,
    project_id: int,
    desk,
    pool: Sequence[Example],
    test_set: Sequence[Example],
    config: DemoConfig,
    report: Callable[[str, dict], None],
) -> list[Point]:
    """Label until each training is queued, wait for it (and the pool scoring of a promoted version),
    score the active model on the test set; ``report(event, fields)`` follows along."""
    gold = {e.text: e.spans for e in pool}
    labelled_tasks = labelled_tokens = 0
    points: list[Point] = []
    for round_ in range(config.rounds + 1):
        known = {j["id"] for j in train_jobs(api, project_id)}
        queued = None
        while queued is None:
            served = desk.next_task()
            if served is None:
                report("exhausted", {})
                return points
            task_id, text = served
            desk.submit(task_id, text, gold[text])
            labelled_tasks += 1
            labelled_tokens += len(word_offsets(text))
            report("labelled", {"tasks": labelled_tasks})
            # With Label Studio the webhook arrives a moment later: a task or two more may be labelled.
            queued = next((j for j in train_jobs(api, project_id) if j["id"] not in known), None)
        report("training", {"job": queued["id"], "round": round_})
        trained = wait_job(stack, api, queued["id"], config.job_timeout, lambda job: report("progress", job))
        if trained["progress"].get("promoted"):
            promoted = trained["progress"]["version_id"]
            scoring = stack.wait_until(partial(scoring_job, api, project_id, promoted), 120, "the pool scoring to be queued")
            wait_job(stack, api, scoring["id"], config.job_timeout, lambda job: report("progress", job))
        models = checked(api.get(f"{API}/projects/{project_id}/models"))
        active = next(m for m in models if m["status"] == "active")
        point = Point(
            active["name"], labelled_tasks, labelled_tokens, f1_on(api, project_id, test_set), active["dev_f1"],
            trained["progress"].get("stopping"),
        )
        points.append(point)
        report("point", point.__dict__)
    return points


def start_label_studio(repo: Path) -> tuple[str, str]:
    """``scripts/labelstudio.sh start``: installs Label Studio on first use; returns (url, token)."""
    done = subprocess.run([str(repo / "scripts" / "labelstudio.sh"), "start"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/labelstudio.sh start failed: {done.stderr[-2000:]}")
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return values["LABEL_STUDIO_URL"], values["LABEL_STUDIO_API_KEY"]


def environment(home: Path, port: int, config: DemoConfig, label_studio: tuple[str, str] | None, secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
    env.update(
        NERLOOP_HOME=str(home),
        NERLOOP_PUBLIC_URL=f"http://127.0.0.1:{port}",
        NERLOOP_TRAIN_CONFIG=json.dumps(config.train_config),
        NERLOOP_BASE_MODEL=config.base_model,
        NERLOOP_WEBHOOK_SECRET=secret,
        # The demo measures the learning curve: a label review's k fold trainings after each promotion
        # would queue ahead of the next training on the one gpu worker (`nerloop review` runs one on demand).
        NERLOOP_REVIEW_AFTER_TRAINING="false",
        # Its annotators wait for each training (``run_loop``), so a quick stage served first would buy
        # them nothing and put two versions on the curve per round.
        NERLOOP_QUICK_RETRAINING="false",
        PYTHONUNBUFFERED="1",
    )
    if label_studio:
        env.update(NERLOOP_LABEL_STUDIO_URL=label_studio[0], NERLOOP_LABEL_STUDIO_API_KEY=label_studio[1])
    return env


def create_project(
    api: httpx.Client, labels: Sequence[str], config: DemoConfig, pool: Sequence[Example], with_label_studio: bool,
    name: str = "demo", strategy: str | None = None,
) -> dict:
    """A project with the pool imported; ``strategy`` overrides the config's (the random baseline's)."""
    body = {"name": name, "labels": list(labels), "create_in_label_studio": with_label_studio}
    project = checked(api.post(f"{API}/projects", json=body))
    checked(api.patch(f"{API}/projects/{project['id']}", json={"strategy": strategy or config.strategy, "retrain_every": config.batch}))
    imported = checked(api.post(f"{API}/projects/{project['id']}/tasks", json={"tasks": [{"text": e.text} for e in pool]}))
    project["imported"] = imported["created"]
    return project


def register_webhook(label_studio: tuple[str, str], ls_project_id: int, public_url: str, secret: str) -> None:
    from service.label_studio import LabelStudioClient
    from service.operations.projects import WEBHOOK_PATH

    LabelStudioClient(*label_studio).register_webhook(ls_project_id, public_url + WEBHOOK_PATH, secret)


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def tokens_to_reach(points: Sequence[Point], f1: float) -> float | None:
    """Labelled tokens at which a curve first reaches ``f1`` (linear between points; None if it never does)."""
    for before, after in zip([None, *points], points):
        if after.test_f1 >= f1:
            if before is None or after.test_f1 == before.test_f1:
                return float(after.labelled_tokens)
            share = (f1 - before.test_f1) / (after.test_f1 - before.test_f1)
            return before.labelled_tokens + share * (after.labelled_tokens - before.labelled_tokens)
    return None


def saving(points: Sequence[Point], baseline: Sequence[Point], pool_tokens: int) -> dict | None:
    """The same F1 on both curves: the lower of the two final F1s, and the tokens (and pool share) each needs for it."""
    if not points or not baseline:
        return None
    target = min(points[-1].test_f1, baseline[-1].test_f1)
    ours, theirs = tokens_to_reach(points, target), tokens_to_reach(baseline, target)
    return {
        "f1": target,
        "tokens": ours, "tokens_share": ours / pool_tokens if ours is not None else None,
        "random_tokens": theirs, "random_tokens_share": theirs / pool_tokens if theirs is not None else None,
        "token_saving": 1 - ours / theirs if ours is not None and theirs else None,
    }


def first_stop(points: Sequence[Point]) -> Point | None:
    return next((p for p in points if p.stopping and p.stopping.startswith("you can stop")), None)


def plot(
    points: Sequence[Point], baseline: Sequence[Point], same_f1: dict | None, strategy: str, full_pool_tokens: int, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    axis.plot([p.labelled_tokens for p in points], [p.test_f1 for p in points], marker="o", color="tab:blue", label=f"nerloop ({strategy})")
    for p in points:
        axis.annotate(p.version, (p.labelled_tokens, p.test_f1), textcoords="offset points", xytext=(4, -12), fontsize=8)
    if baseline:
        axis.plot([p.labelled_tokens for p in baseline], [p.test_f1 for p in baseline], marker="s", color="tab:orange",
                  label="random order (same service)")
    stop = first_stop(points)
    if stop:
        axis.plot(stop.labelled_tokens, stop.test_f1, marker="*", markersize=16, color="tab:green", linestyle="none",
                  label="stopping signal")
    if same_f1 and same_f1["tokens"] is not None:
        axis.axhline(same_f1["f1"], color="grey", linestyle=":", linewidth=1)
        label = f"F1 {same_f1['f1']:.3f}: {same_f1['tokens_share']:.0%} of the pool's tokens"
        if same_f1["random_tokens"] is not None:
            label += f" vs {same_f1['random_tokens_share']:.0%} in random order"
        axis.annotate(label, (same_f1["tokens"], same_f1["f1"]), textcoords="offset points", xytext=(4, 6), fontsize=8)
    axis.set_xlabel(f"labelled tokens (pool: {full_pool_tokens:,})")
    axis.set_ylabel("test F1 (active model)")
    axis.set_title("nerloop demo: the active model after each retraining")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(out: Path, points: Sequence[Point], models: list[dict], pool: Sequence[Example], test_set: Sequence[Example],
                  labels: Sequence[str], config: DemoConfig, baseline: Sequence[Point] = ()):
    """``curve.png`` and ``results.json`` in ``out``; returns the model versions and, with a random
    ``baseline`` curve, the comparison at the same F1, as rich tables."""

    pool_tokens = sum(len(word_offsets(e.text)) for e in pool)
    same_f1 = saving(points, baseline, pool_tokens)
    plot(points, baseline, same_f1, config.strategy, pool_tokens, out / "curve.png")
    stop = first_stop(points)
    document = {
        "pool": len(pool), "test": len(test_set), "labels": list(labels), "config": config.__dict__, "pool_tokens": pool_tokens,
        "curve": [p.__dict__ for p in points], "random_curve": [p.__dict__ for p in baseline], "same_f1": same_f1,
        "stopping_signal_at": stop.__dict__ if stop else None, "model_versions": models,
    }
    (out / "results.json").write_text(json.dumps(document, indent=2, default=str))
    table = Table(title="Model versions")
    for column in ("version", "status", "trained on", "dev F1", "test F1", "labelled tokens", "more labels?"):
        table.add_column(column)
    last_point = {p.version: p for p in points}
    for m in models:
        point = last_point.get(m["name"])
        table.add_row(
            m["name"], m["status"], f"{m['train_size']} tasks", f"{m['dev_f1']:.3f}" if m["dev_f1"] is not None else "–",
            f"{point.test_f1:.3f}" if point else "–",
            f"{point.labelled_tokens} ({point.labelled_tokens / pool_tokens:.0%})" if point else "–",
            (point.stopping or "–").split(":")[0] if point else "–",
        )
    tables = [table]
    if same_f1:
        comparison = Table(title=f"The saving: labelled tokens for the same test F1 ({same_f1['f1']:.3f})")
        for column in ("order", "labelled tokens", "share of the pool"):
            comparison.add_column(column)
        for name, tokens, share in (
            (f"nerloop ({config.strategy})", same_f1["tokens"], same_f1["tokens_share"]),
            ("random (same service)", same_f1["random_tokens"], same_f1["random_tokens_share"]),
        ):
            shown = (f"{tokens:,.0f}", f"{share:.1%}") if tokens is not None else ("not reached", "–")
            comparison.add_row(name, *shown)
        if same_f1["token_saving"] is not None:
            comparison.caption = f"active learning saved {same_f1['token_saving']:.0%} of the labelling"
        tables.append(comparison)
    return tables


# ---- the command -----------------------------------------------------------------------------------


@app.command()
def demo(
    data: Path | None = typer.Option(None, help=CORPUS_HELP),
    pool_size: int = typer.Option(600, help="Sample this many pool sentences (0: all)"),
    test_size: int = typer.Option(300, help="Sample this many test sentences (0: all)"),
    batch: int = typer.Option(50, min=5, help="Tasks labelled before each retraining (the project's retrain_every)"),
    rounds: int = typer.Option(3, min=0, help="Retrainings after the first"),
    strategy: Strategy = typer.Option("mnlp", help="The project's query strategy"),
    epochs: Epochs = 5,
    min_steps: MinSteps = 100,
    train_config: str | None = typer.Option(
        None, help='TrainConfig fields as JSON, e.g. \'{"learning_rate": 3e-3}\' (over --epochs/--min-steps)'
    ),
    base_model: str = typer.Option("", help="Hugging Face model directory or id; default: all-MiniLM-L6-v2 (offline)"),
    label_studio: bool = typer.Option(False, "--label-studio", help="Label through a local Label Studio (installed and started for you)"),
    random_baseline: bool = typer.Option(
        True, "--random-baseline/--no-random-baseline", help="Then label the same corpus in random order in a second project, to compare"
    ),
    keep_running: bool | None = typer.Option(
        None, "--keep-running/--stop", help="Leave the service up at the end (default: with --label-studio)"
    ),
    port: int | None = typer.Option(
        None,
        min=0,
        max=65535,
        help="The API's port (0: a free one; default: 8000 with --keep-running, so that a connected model keeps its URL; else 0)",
    ),
    out: Path = typer.Option(Path("runs/demo"), help="Output folder: curve.png, results.json, logs, the service's NERLOOP_HOME"),
):
    """The whole loop through the real service: API, worker and beat as processes; simulated
    annotators label in uncertainty order; retraining, promotion, scoring and pushes run for real."""
    from active_learning.training import TrainConfig

    pool, test_set = load_pool_and_test(data, None, pool_size, test_size, 0)
    labels = labels_of(pool, test_set)
    training = {"epochs": epochs, "min_steps": min_steps}
    try:
        training.update(json.loads(train_config or "{}"))
        TrainConfig(**training)
    except (ValueError, TypeError) as error:
        fail(f"--train-config: {error}")
    config = DemoConfig(batch=batch, rounds=rounds, strategy=strategy.value, train_config=training, base_model=base_model)
    keep = label_studio if keep_running is None else keep_running
    if port is None:
        port = 8000 if keep else 0
    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    home = (out / "home").resolve()
    shutil.rmtree(home, ignore_errors=True)  # each demo starts from an empty service
    out.mkdir(parents=True, exist_ok=True)
    ls = start_label_studio(REPO) if label_studio else None
    secret = new_secret()
    stack = Stack(environment(home, port, config, ls, secret), port, out / "logs", serve_options=INSECURE_ON_LOOPBACK)
    console.print(
        f"pool [bold]{len(pool)}[/bold] · test {len(test_set)} · labels {', '.join(labels)} · strategy {config.strategy} · "
        f"retrain every {batch} · service on {stack.url} (logs: {out / 'logs'})"
    )
    try:
        with stack, httpx.Client(base_url=stack.url, timeout=120) as api:
            project = create_project(api, labels, config, pool, with_label_studio=ls is not None)
            if ls:
                register_webhook(ls, project["ls_project_id"], stack.url, secret)
                desk = LabelStudioDesk(*ls, project["ls_project_id"])
            else:
                desk = NerloopDesk(api, project["id"])
            points = follow_loop(stack, api, project["id"], desk, project["imported"], pool, test_set, config)
            baseline = []
            if random_baseline:  # what active learning bought: the same corpus, the same service, random order
                console.print("the same corpus in random order, through the same service: a second project with strategy random")
                other = create_project(api, labels, config, pool, with_label_studio=False, name="demo (random order)", strategy="random")
                baseline = follow_loop(stack, api, other["id"], NerloopDesk(api, other["id"]), other["imported"], pool, test_set, config)
            models = checked(api.get(f"{API}/projects/{project['id']}/models"))
            for table in write_results(out, points, models, pool, test_set, labels, config, baseline):
                console.print(table)
            console.print(f"learning curve: {out / 'curve.png'} · numbers: {out / 'results.json'} · service state: {home}")
            if keep:
                where = (
                    f"Label Studio: {ls[0]} (login admin@nerloop.local / nerloop-admin), project {project['ls_project_id']}: "
                    "its view \"nerloop: most uncertain first\" lists the tasks lowest score first; the model is connected "
                    f"at {stack.url}/ml\n" if ls else f"Label Studio's Connect Model URL: {stack.url}/ml\n"
                )
                console.print(f"{where}dashboard: {stack.url}/dashboard · Ctrl-C stops the service")
                stack.run_until_stopped()
    except (RuntimeError, TimeoutError, httpx.HTTPError) as error:
        fail(str(error))
    if not keep:
        console.print(f"dashboard: NERLOOP_HOME={home} .venv/bin/nerloop serve --insecure (loopback only), then http://127.0.0.1:8000/dashboard")


def follow_loop(stack: Stack, api: httpx.Client, project_id: int, desk, tasks: int, pool, test_set, config: DemoConfig) -> list[Point]:
    """``run_loop`` with progress bars: tasks labelled (of the ``tasks`` the import created: duplicates
    in the pool are dropped), the job running, and a line per point."""
    from service.models import Job
    from service.progress import progress_view

    with progress_bar() as progress:
        labelled = progress.add_task("annotators labelling", total=tasks)
        job_bar = progress.add_task("waiting for labels", total=None)

        def report(event: str, fields: dict) -> None:
            if event == "labelled":
                progress.update(labelled, completed=fields["tasks"])
            elif event == "progress":
                view = progress_view(Job.model_validate(fields))
                description = f"{fields['kind']} job {fields['id']} · {escape(view.summary)}"
                progress.update(job_bar, total=view.total, completed=view.done, description=description)
            elif event == "point":
                progress.console.print(
                    f"  {fields['version']}: {fields['labelled_tasks']} tasks / {fields['labelled_tokens']} tokens labelled"
                    f" → test F1 {fields['test_f1']:.3f}" + (f" · {fields['stopping']}" if fields["stopping"] else "")
                )

        return run_loop(stack, api, project_id, desk, pool, test_set, config, report)
