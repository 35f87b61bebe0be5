"""Benchmark: pushing predictions for 10,000 tasks to a real Label Studio, in bulk vs one call per task.

Starts Label Studio with scripts/labelstudio.sh (own data dir, port 8095), creates a project, imports
10,000 generated tasks, then times (a) ``LabelStudioClient.push_predictions`` for all 10,000 and (b)
one ``predictions.create`` call per task for the first --per-task tasks (the per-task rate is
steady, so a sample gives it; the full 10,000 one by one would take many minutes). Writes
bench/results/ls_sync.json.

    .venv/bin/python bench/ls_sync.py [--tasks 10000] [--per-task 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from active_learning.demo_corpus import generate  # noqa: E402
from service.label_studio import LabelStudioClient, results_from_spans  # noqa: E402


def start_label_studio(data_dir: str, port: int) -> dict:
    env = {**os.environ, "LS_DATA_DIR": data_dir}
    script = str(ROOT / "scripts" / "labelstudio.sh")
    subprocess.run([script, "install"], env=env, check=True)
    out = subprocess.run([script, "start", str(port)], env=env, check=True, capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--per-task", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        server = start_label_studio(data_dir, 8095)
        try:
            client = LabelStudioClient(server["LABEL_STUDIO_URL"], server["LABEL_STUDIO_API_KEY"])
            examples = generate(args.tasks, seed=7)
            project = client.create_project("bench ls_sync", ["PER", "ORG", "LOC"])
            started = time.perf_counter()
            task_ids = client.import_tasks(project, [{"text": e.text} for e in examples])
            import_s = time.perf_counter() - started
            predictions = [
                {"task": task_id, "result": results_from_spans(e.text, e.spans), "score": 0.5}
                for task_id, e in zip(task_ids, examples)
            ]
            started = time.perf_counter()
            client.push_predictions(project, predictions, "bulk")
            bulk_s = time.perf_counter() - started
            sample = predictions[: args.per_task]
            started = time.perf_counter()
            for prediction in sample:
                client.sdk.predictions.create(model_version="one-by-one", **prediction)
            per_task_sample_s = time.perf_counter() - started
        finally:
            subprocess.run([str(ROOT / "scripts" / "labelstudio.sh"), "stop"], env={**os.environ, "LS_DATA_DIR": data_dir})
    per_task_s = per_task_sample_s / len(sample)
    results = {
        "command": ".venv/bin/python bench/ls_sync.py " + " ".join(sys.argv[1:]),
        "label_studio": "1.23.2, SQLite, same 2-core machine",
        "tasks": args.tasks,
        "import_tasks_s": round(import_s, 2),
        "bulk_push_s": round(bulk_s, 2),
        "bulk_predictions_per_s": round(args.tasks / bulk_s, 1),
        "one_by_one_sample": len(sample),
        "one_by_one_sample_s": round(per_task_sample_s, 2),
        "one_by_one_s_per_task": round(per_task_s, 4),
        "one_by_one_estimated_s_for_all": round(per_task_s * args.tasks, 1),
        "speedup_bulk_vs_one_by_one": round(per_task_s * args.tasks / bulk_s, 1),
    }
    out = ROOT / "bench" / "results" / "ls_sync.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
