"""Benchmark: /ml/predict latency (p50, p95) for 1 task and for 32 tasks, on CPU, default model,
PyTorch vs ONNX Runtime int8 side by side.

Trains all-MiniLM-L6-v2 briefly on the generated demo corpus (so the served model is a real trained
one) and registers it as the active version of two projects in a fresh SQLite home: one saved as
before (no ONNX export: it serves with PyTorch), one with its ONNX export and int8 check
(``active_learning.onnx_tagger``: it serves with ONNX Runtime int8). Starts ``nerloop serve`` as a
subprocess and times POST /ml/predict over HTTP, as Label Studio calls it, alternating the two
projects request by request (same machine load for both). In-process ``ActiveModel.predict`` on the
same bodies splits each latency into inference (encode, forward, decode) and the rest (HTTP, JSON,
DB lookup, Label Studio result building). Writes bench/results/predict_latency.json.

    .venv/bin/python bench/predict_latency.py [--requests 100]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=60, help="fine-tuning steps before serving (latency does not depend on them)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["NERLOOP_HOME"] = home
        from active_learning.demo_corpus import LABELS, generate
        from active_learning.onnx_tagger import check, export
        from active_learning.tagger import Tagger
        from active_learning.training import TrainConfig, train
        from service.db import init_db, session_scope
        from service.models import ModelStatus, ModelVersion, Project
        from service.settings import get_settings

        url = get_settings().database_url
        init_db(url)
        corpus = generate(400, seed=3)
        tagger = Tagger.load(None, labels=LABELS)
        train(tagger, corpus[:200], None, TrainConfig(epochs=1, min_steps=args.train_steps))
        dirs = {"torch": Path(home) / "models" / "torch", "onnx": Path(home) / "models" / "onnx"}
        for directory in dirs.values():
            tagger.save(directory)
        export(tagger, dirs["onnx"])
        onnx_check = check(tagger, dirs["onnx"], corpus[300:])
        ls_ids = {"torch": 1, "onnx": 2}
        with session_scope(url) as session:
            for backend, directory in dirs.items():
                project = Project(name=f"bench-{backend}", labels=LABELS, ls_project_id=ls_ids[backend])
                session.add(project)
                session.flush()
                session.add(ModelVersion(project_id=project.id, name="v1", path=str(directory), status=ModelStatus.active))
        load_before = os.getloadavg()

        port = free_port()
        server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "nerloop"), "serve", "--port", str(port), "--insecure"], env=os.environ)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(120):
                try:
                    if httpx.get(f"{base}/ml/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            else:
                sys.exit("nerloop serve did not come up within 60 s")
            texts = [e.text for e in corpus[200:]]
            results = {}
            client = httpx.Client(timeout=120)  # one connection, kept alive, as Label Studio's
            for size in (1, 32):
                def body(i, ls_id, size=size):
                    tasks = [{"id": i * size + k, "data": {"text": texts[(i * size + k) % len(texts)]}} for k in range(size)]
                    return {"project": f"{ls_id}.1700000000", "tasks": tasks}

                timings = {backend: [] for backend in dirs}
                for i in range(5 + args.requests):  # the first 5: warm-up (loads the models, fills caches)
                    for backend, ls_id in ls_ids.items():
                        started = time.perf_counter()
                        answer = client.post(f"{base}/ml/predict", json=body(i, ls_id))
                        elapsed = time.perf_counter() - started
                        answer.raise_for_status()
                        assert len(answer.json()["results"]) == size
                        if i >= 5:
                            timings[backend].append(elapsed)
                key = f"{size}_task" + ("s" if size > 1 else "")
                results[key] = {backend: summary(values) for backend, values in timings.items()}
                results[key]["inference_in_process"] = in_process(url, ls_ids, texts, size, args.requests)
        finally:
            server.terminate()
            server.wait(timeout=30)
    document = {
        "command": ".venv/bin/python bench/predict_latency.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": "2-core CPU (AVX2, no VNNI), no GPU; server and client on the same machine; absolute numbers depend on what "
                   "else it runs (load average below), the side-by-side comparison is what counts",
        "load_average_1_5_15_min": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "model": f"all-MiniLM-L6-v2 fine-tuned {args.train_steps} steps on the demo corpus",
        "onnx_check": onnx_check.as_dict(),
        "text": "demo-corpus sentences, 8-20 words",
        "note": "torch: the version without an ONNX export (PyTorch); onnx: the same weights with their int8 export "
                "(ONNX Runtime int8). inference_in_process: ActiveModel.predict on the same texts in this process "
                "(encode + forward + decode); HTTP, JSON, the DB lookup and result building are the difference.",
        **results,
    }
    out = ROOT / "bench" / "results" / "predict_latency.json"
    out.write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))


def summary(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "mean_ms": round(float(ms.mean()), 1)}


def in_process(url: str, ls_ids: dict[str, int], texts: list[str], size: int, requests: int) -> dict:
    """p50 of ``ActiveModel.predict`` for ``size`` texts per backend, loaded as the server loads them."""
    from sqlmodel import Session, select

    from service.db import get_engine
    from service.models import Project
    from service.predictor import Predictor

    predictor = Predictor(url)
    out = {}
    for backend, ls_id in ls_ids.items():
        with Session(get_engine(url)) as session:
            project_id = session.exec(select(Project.id).where(Project.ls_project_id == ls_id)).one()
        model = predictor.active(project_id)
        assert (model.onnx is not None) == (backend == "onnx"), backend
        timings = []
        for i in range(5 + requests):
            batch = [texts[(i * size + k) % len(texts)] for k in range(size)]
            started = time.perf_counter()
            model.predict(batch)
            if i >= 5:
                timings.append(time.perf_counter() - started)
        out[backend] = summary(timings)
    return out


if __name__ == "__main__":
    main()
