"""Benchmark: /ml/predict latency (p50, p95) for 1 task and for 32 tasks, on CPU, default model.

Trains all-MiniLM-L6-v2 briefly on the generated demo corpus (so the served model is a real trained
one), registers it as the active version of a project in a fresh SQLite home, starts
``nerloop serve`` as a subprocess and times POST /ml/predict over HTTP, as Label Studio calls it.
Writes bench/results/predict_latency.json.

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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["NERLOOP_HOME"] = home
        from active_learning.demo_corpus import LABELS, generate
        from active_learning.tagger import Tagger
        from active_learning.training import TrainConfig, train
        from service.db import init_db, session_scope
        from service.models import ModelStatus, ModelVersion, Project
        from service.settings import get_settings

        url = get_settings().database_url
        init_db(url)
        corpus = generate(400, seed=3)
        tagger = Tagger.load(None, labels=LABELS)
        train(tagger, corpus[:200], None, TrainConfig(epochs=1, min_steps=60))
        model_dir = Path(home) / "models" / "v1"
        tagger.save(model_dir)
        with session_scope(url) as session:
            project = Project(name="bench", labels=LABELS, ls_project_id=1)
            session.add(project)
            session.flush()
            session.add(ModelVersion(project_id=project.id, name="v1", path=str(model_dir), status=ModelStatus.active))

        port = free_port()
        server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "nerloop"), "serve", "--port", str(port)], env=os.environ)
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
            for size in (1, 32):
                def body(i):
                    return {"project": "1.1700000000", "tasks": [{"id": i * size + k, "data": {"text": texts[(i * size + k) % len(texts)]}} for k in range(size)]}

                for i in range(5):  # warm-up: loads the model, fills caches
                    httpx.post(f"{base}/ml/predict", json=body(i), timeout=120).raise_for_status()
                timings = []
                for i in range(args.requests):
                    started = time.perf_counter()
                    answer = httpx.post(f"{base}/ml/predict", json=body(i), timeout=120)
                    timings.append(time.perf_counter() - started)
                    answer.raise_for_status()
                    assert len(answer.json()["results"]) == size
                ms = np.array(timings) * 1000
                results[f"{size}_task" + ("s" if size > 1 else "")] = {
                    "requests": args.requests,
                    "p50_ms": round(float(np.percentile(ms, 50)), 1),
                    "p95_ms": round(float(np.percentile(ms, 95)), 1),
                    "mean_ms": round(float(ms.mean()), 1),
                }
        finally:
            server.terminate()
            server.wait(timeout=30)
    document = {
        "command": ".venv/bin/python bench/predict_latency.py " + " ".join(sys.argv[1:]),
        "machine": "2-core CPU, no GPU; server and client on the same machine",
        "model": "all-MiniLM-L6-v2 fine-tuned 60 steps on the demo corpus",
        "text": "demo-corpus sentences, 8-20 words",
        **results,
    }
    out = ROOT / "bench" / "results" / "predict_latency.json"
    out.write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
