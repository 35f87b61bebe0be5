"""Benchmark: the active-learning loop's own latency, from the annotation that triggers a retraining to
the moment Label Studio's next task carries the new version's prediction, broken down by stage.

Set-up (not timed): a fresh nerloop home (SQLite database, the embedded SQLite broker), a Label Studio
project (started with scripts/labelstudio.sh unless ``--label-studio-url`` is given, on a database of
its own on the local PostgreSQL as deployed, or on SQLite with ``--label-studio-db sqlite``) holding the
``--pool`` unlabelled tasks, ``--labelled`` ground-truth examples in nerloop (demo corpus,
``active_learning.demo_corpus``), one real ``nerloop worker --queues gpu,cpu`` (its default pool for
the gpu queue: solo), and a first version trained, scored and pushed, so the timed round is the steady
state (a training warm-started from an active version).

Timed: one more annotation is recorded on a pool task (``sync.record_local_annotation``, what the
annotation endpoints and the webhook store) and ``job_queue.after_annotations_changed`` runs as after
any annotation (``retrain_every`` is 1, so it queues the training). Then, polling every 0.1 s: the
training job's stages (queue wait, loading, training, evaluation, export to ONNX and int8 check,
registering; a version the promotion rule keeps back is promoted by hand, ``promoted`` says which),
the score_pool job (queue wait, scoring: all pool predictions stored), and the push into Label
Studio until its ``GET /api/projects/{id}/next`` answers a task whose prediction is the new version's
(the push switches versions after its first, lowest-scored chunk; ``push_seconds_in_all`` is the
whole import). With quick retraining (``NERLOOP_QUICK_RETRAINING``, the default) the timed training is
the quick stage; the full stage that follows its push is timed after the loop's end (``full_stage``:
from the same annotation to Label Studio serving the full stage's version); a quick stage the rule
keeps back asks for its full stage at once, and the loop is timed to that one
(``kept_back_quick_stage``). ``--no-quick-retraining``:
one training per trigger, as before. Writes bench/results/loop_latency.json.

    .venv/bin/python bench/loop_latency.py [--labelled 1000] [--pool 10000] [--base-model DIR]
        [--train-config JSON] [--no-quick-retraining] [--label-studio-db postgresql|sqlite]
        [--label-studio-url URL --label-studio-api-key KEY] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINING_STAGES = {  # the training job's progress stages (workers/retrain.py) → this benchmark's parts
    "loading": "training: loading data and model",
    "pseudo-labelling": "training: pseudo-labelling",
    "training": "training: fine-tuning",
    "evaluating": "evaluation",
    "stopping signal": "evaluation",
    "saving": "export and check",
    "exporting to ONNX": "export and check",
    "checking the int8 model": "export and check",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labelled", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--base-model", default="", help="encoder directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--train-config", default="{}", help="NERLOOP_TRAIN_CONFIG for the worker (JSON)")
    parser.add_argument("--no-quick-retraining", action="store_true", help="NERLOOP_QUICK_RETRAINING=false: one training per trigger")
    parser.add_argument("--label-studio-db", choices=("postgresql", "sqlite"), default="postgresql",
                        help="the started Label Studio's database (postgresql: a fresh one on --postgres-url's server)")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server and a user who may create databases")
    parser.add_argument("--label-studio-url", default="")
    parser.add_argument("--label-studio-api-key", default="")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds each phase may take")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loop_latency.json")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def label_studio_database(postgres_url: str, name: str, stops: list) -> dict:
    """A fresh PostgreSQL database for Label Studio, dropped at the end; its POSTGRE_* settings."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    with psycopg.connect(postgres_url, autocommit=True) as server:
        server.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as server:
            server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stops.append(drop)
    info = conninfo_to_dict(postgres_url)
    return {"POSTGRE_NAME": name, "POSTGRE_HOST": info.get("host", "127.0.0.1"), "POSTGRE_PORT": str(info.get("port", 5432)),
            "POSTGRE_USER": info.get("user", "postgres"), "POSTGRE_PASSWORD": info.get("password", "")}


def start_label_studio(data_dir: Path, database: dict) -> tuple[str, str, dict]:
    env = {**os.environ, "LS_DATA_DIR": str(data_dir), **database}
    script = str(ROOT / "scripts" / "labelstudio.sh")
    subprocess.run([script, "install"], env=env, check=True, capture_output=True)
    out = subprocess.run([script, "start", str(free_port())], env=env, check=True, capture_output=True, text=True).stdout
    started = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return started["LABEL_STUDIO_URL"], started["LABEL_STUDIO_API_KEY"], env


def wait_for(what: str, probe, timeout: float, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def run(args: argparse.Namespace) -> dict:
    """``measure`` in a home of its own; whatever it started is stopped, even when interrupted."""
    home = Path(tempfile.mkdtemp(prefix="nerloop-bench-loop-"))
    stops: list = []
    try:
        return measure(args, home, stops)
    finally:
        for stop in reversed(stops):
            stop()
        shutil.rmtree(home, ignore_errors=True)


def stop_worker(worker: subprocess.Popen) -> None:
    worker.terminate()
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, 9)  # the process group this benchmark started


def measure(args: argparse.Namespace, home: Path, stops: list) -> dict:
    started_label_studio = not args.label_studio_url
    if started_label_studio:
        database = {}
        if args.label_studio_db == "postgresql":
            database = label_studio_database(args.postgres_url, f"nerloop_bench_{home.name.rsplit('-', 1)[-1]}", stops)
        args.label_studio_url, args.label_studio_api_key, ls_env = start_label_studio(home / "label-studio", database)
        script = str(ROOT / "scripts" / "labelstudio.sh")
        stops.append(lambda: subprocess.run([script, "stop"], env=ls_env, check=False, capture_output=True))
    env = {
        "NERLOOP_HOME": str(home / "home"),
        "NERLOOP_LABEL_STUDIO_URL": args.label_studio_url,
        "NERLOOP_LABEL_STUDIO_API_KEY": args.label_studio_api_key,
        "NERLOOP_TRAIN_CONFIG": args.train_config,
        "NERLOOP_QUICK_RETRAINING": str(not args.no_quick_retraining).lower(),
        "NERLOOP_JOB_HEARTBEAT_SECONDS": "0.2",  # progress (the stages polled here) is written with each heartbeat
        **({"NERLOOP_BASE_MODEL": args.base_model} if args.base_model else {}),
    }
    for key in [k for k in os.environ if k.startswith("NERLOOP_")]:
        del os.environ[key]
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import httpx
    from label_studio_sdk.core.api_error import ApiError
    from sqlmodel import func, select

    from active_learning.demo_corpus import LABELS, generate
    from active_learning.spans import Example
    from service import job_queue, sync
    from service.db import init_db, session_scope
    from service.label_studio import client_from_settings
    from service.models import Job, JobStatus, ModelStatus, ModelVersion, Prediction, Project, Task, TaskState
    from service.operations import model_versions
    from service.settings import get_settings

    get_settings.cache_clear()
    init_db()
    client = client_from_settings()
    corpus = list({e.text: e for e in generate(2 * (args.labelled + args.pool) + 10, seed=11)}.values())
    labelled, pool = corpus[: args.labelled], corpus[args.labelled : args.labelled + args.pool]
    if len(pool) < args.pool:
        raise SystemExit(f"the demo corpus gave {len(corpus)} distinct texts, fewer than asked")
    ls_project_id = client.create_project(f"loop-latency-{home.name}", LABELS)
    with session_scope() as session:
        project = Project(name="loop", labels=LABELS, ls_project_id=ls_project_id, retrain_every=1)
        session.add(project)
        session.flush()
        project_id = project.id
        sync.import_examples(session, project, labelled)
        sync.import_examples(session, project, [Example(e.text, []) for e in pool], client=client)

    def detached(session, row):
        if row is not None:
            session.expunge(row)  # readable after the session commits and closes
        return row

    def job(kind: str, after: int = 0) -> Job | None:
        with session_scope() as session:
            statement = select(Job).where(Job.project_id == project_id, Job.kind == kind, Job.id > after).order_by(Job.id)
            return detached(session, session.exec(statement).first())

    def finished(kind: str, after: int = 0) -> Job | None:
        found = job(kind, after)
        if found is not None and found.status == JobStatus.failed:
            raise RuntimeError(f"{kind} job {found.id} failed: {found.error}\n{log.read_text()[-3000:]}")
        return found if found is not None and found.status == JobStatus.succeeded else None

    def active() -> ModelVersion | None:
        with session_scope() as session:
            current = select(ModelVersion).where(ModelVersion.project_id == project_id, ModelVersion.status == ModelStatus.active)
            return detached(session, session.exec(current).first())

    next_errors: list[str] = []  # Label Studio on SQLite can answer 500 to /next, or not at all, while the push writes

    def next_task_version() -> str | None:
        """The model version of the prediction on the task Label Studio serves next (as the labelling UI asks)."""
        try:
            task = client._json("GET", f"api/projects/{ls_project_id}/next")
        except ApiError as error:
            if (error.status_code or 0) < 500:
                raise
            next_errors.append(f"{time.perf_counter() - started:.1f} s: {error.status_code}")
            return None
        except httpx.TimeoutException:  # what an annotator would see as a page that never loads
            next_errors.append(f"{time.perf_counter() - started:.1f} s: no answer within the client's timeout")
            return None
        predictions = task.get("predictions") or [] if isinstance(task, dict) else []
        return predictions[0].get("model_version") if predictions else None

    log = home / "worker.log"
    worker_env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    with log.open("w") as output:
        worker = subprocess.Popen([str(Path(sys.executable).parent / "nerloop"), "worker", "--queues", "gpu,cpu"], cwd=ROOT,
                                  env=worker_env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    stops.append(lambda: stop_worker(worker))
    wait_for("the worker", lambda: " ready." in log.read_text() or worker.poll() is not None, 180)
    if worker.poll() is not None:
        raise RuntimeError(f"the worker exited:\n{log.read_text()[-3000:]}")
    # The first version: trained, scored and pushed before anything is timed.
    with session_scope() as session:
        job_queue.request(session, project_id, "train")
    wait_for("the first training", lambda: finished("train"), args.timeout, every=0.5)
    first_scoring = wait_for("the first scoring", lambda: job("score_pool"), 60)
    wait_for("the first push", lambda: finished("score_pool"), args.timeout, every=0.5)
    first = active()
    last_train = job("train").id

    # Timed: the annotation that triggers the next training.
    with session_scope() as session:
        in_training = (Task.project_id == project_id, Task.state == TaskState.pool, Task.is_dev.is_(False))  # dev tasks do not count
        task = session.exec(select(Task).where(*in_training).order_by(Task.id)).first()
        example = next(e for e in corpus if e.text == task.text)
        sync.record_local_annotation(session, task, [list(s) for s in example.spans], annotator="bench")
    started = time.perf_counter()
    with session_scope() as session:
        queued = job_queue.after_annotations_changed(session, session.get(Project, project_id))
    if queued is None:
        raise RuntimeError("the annotation did not queue a training (retrain_every is 1)")
    marks: dict[str, float] = {}  # part → first time seen
    kept_back_quick = None
    while True:
        train_job = None
        while train_job is None or train_job.status not in (JobStatus.succeeded, JobStatus.failed):
            train_job = job("train", last_train)
            if train_job is not None and train_job.status == JobStatus.running:
                stage = TRAINING_STAGES.get(train_job.progress.get("stage"), "training: registering")
                marks.setdefault(f"{'full stage, ' if kept_back_quick else ''}{stage}", time.perf_counter())
            if time.perf_counter() - started > args.timeout:
                raise RuntimeError("the training did not finish in time")
            time.sleep(0.1)
        if train_job.status == JobStatus.failed:
            raise RuntimeError(f"the training failed: {train_job.error}")
        if train_job.progress.get("promoted") or train_job.progress.get("retraining") != "quick" or kept_back_quick:
            break
        # A quick stage the rule kept back asks for the full stage at once: the loop then ends with that one.
        kept_back_quick, last_train = train_job.progress, train_job.id
    marks["trained"] = time.perf_counter()
    promotion = "by the rule"
    if not train_job.progress.get("promoted"):
        # The rule kept it (a lower dev F1): likely at tiny sizes, possible at any. Promote it by hand,
        # as a user would, which queues the same scoring; the JSON says so.
        promotion = f"by hand ({train_job.progress.get('decision')})"
        with session_scope() as session:
            model_versions.promote(session, session.get(Project, project_id), train_job.progress["version_id"])
    wait_for("the scoring job", lambda: job("score_pool", first_scoring.id), 120)
    version = active()
    wait_for("the scoring to start", lambda: job("score_pool", first_scoring.id).status != JobStatus.queued, args.timeout)
    marks["scoring"] = time.perf_counter()

    def all_stored():
        with session_scope() as session:
            stored = select(func.count()).select_from(Prediction).where(Prediction.model_version_id == version.id)
            return session.exec(stored).one() >= len(pool)

    wait_for("the pool's predictions", all_stored, args.timeout)
    marks["pushing"] = time.perf_counter()
    # The push switches Label Studio to the new version after its first (lowest-scored) chunk: the loop
    # ends when Label Studio serves it, and the rest of the push is timed beside, off the loop's path.
    served = pushed = None
    while served is None or pushed is None:
        if served is None and next_task_version() == version.name:
            served = time.perf_counter()
        if pushed is None and finished("score_pool", first_scoring.id):
            pushed = time.perf_counter()
        if time.perf_counter() - marks["pushing"] > args.timeout:
            raise RuntimeError("the push did not finish in time, or Label Studio never served the new version")
        time.sleep(0.5)  # each /next is a query over the whole pool in Label Studio, beside the import
    ended = served

    full_stage = None
    if train_job.progress.get("retraining") == "quick":  # the full stage follows the quick version's push
        full = wait_for("the full stage", lambda: finished("train", train_job.id), args.timeout, every=0.5).progress
        full_stage = {"version": full["version"], "retraining": full["retraining"], "steps": full.get("total_steps"),
                      "promoted": full["promoted"], "decision": full["decision"],
                      "seconds_until_trained": round(time.perf_counter() - started, 3), "seconds_until_served": None}
        if full["promoted"]:
            wait_for("Label Studio to serve the full stage's version", lambda: next_task_version() == full["version"], args.timeout, 0.5)
            full_stage["seconds_until_served"] = round(time.perf_counter() - started, 3)

    timeline = sorted([("queued for training", started), *marks.items()], key=lambda kv: kv[1])
    parts: dict[str, float] = {}
    for (name, at), (_, until) in zip(timeline, [*timeline[1:], ("end", ended)]):
        label = {"trained": "queued for scoring", "scoring": "scoring (all pool predictions stored)",
                 "pushing": "push to Label Studio until it serves the new version"}.get(name, name)
        parts[label] = round(parts.get(label, 0.0) + until - at, 3)
    total = ended - started
    largest = max(parts, key=parts.get)
    return {
        "benchmark": "loop latency: the annotation that triggers a retraining → Label Studio's next task from the new version",
        "command": ".venv/bin/python bench/loop_latency.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "gpu": "none", "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
                    "note": "absolute seconds depend on what else the machine runs (load average)"},
        "labelled": args.labelled,
        "pool": len(pool),
        "train_config": json.loads(args.train_config),
        "quick_retraining": not args.no_quick_retraining,
        "label_studio_database": args.label_studio_db if started_label_studio else "unknown (given --label-studio-url)",
        "first_version": first.name if first else None,
        "new_version": version.name,
        "promoted": promotion,
        "seconds_total": round(total, 3),
        "seconds_by_part": parts,
        "largest_part": largest,
        "label_studio_next_errors": next_errors,  # seconds after the annotation: status
        "push_seconds_in_all": round(pushed - marks["pushing"], 3),  # the whole import: after the loop's end when the pool is large
        "export_and_check_seconds_in_the_worker": {k: version.metrics["onnx"][k] for k in ("export_seconds", "check_seconds")},
        "onnx_check": version.metrics["onnx"],
        "training_progress": train_job.progress,
        "kept_back_quick_stage": kept_back_quick,  # the quick stage's outcome when the rule kept it back (then timed to the full stage)
        "full_stage": full_stage,  # after a quick stage: the configured training, from the same annotation
        "scoring_progress": job("score_pool", first_scoring.id).progress,
        "target_seconds": 120,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    document = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(json.dumps({k: document[k] for k in ("seconds_total", "seconds_by_part", "largest_part")}, indent=2))
    return document


if __name__ == "__main__":
    main()
