"""Benchmark: active learning vs random sampling on CoNLL-2003 with the default base model.

Runs ``nerloop simulate`` on a fixed 4,000-sentence pool from eng.train and a fixed 1,000-sentence
sample of eng.testb (read from ../shared/data, never copied), then writes
bench/results/al_conll2003.json (per strategy: tokens_fraction_to_99pct_full_f1, aulc_vs_random,
full_pool_f1, and every round) and the learning-curve plot beside it.

    .venv/bin/python bench/al_conll2003.py [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "conll2003"
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--strategies", default="mnlp,random")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"CoNLL-2003 not found at {DATA}")
    run_dir = ROOT / "runs" / "al_conll2003"
    # Token budget: a 2% random seed set, then 4% of the pool's tokens per round, up to 30%.
    command = [
        "nerloop", "simulate",
        "--data", "../shared/data/conll2003",
        "--pool-size", "4000", "--test-size", "1000",
        "--strategies", args.strategies, "--seeds", args.seeds,
        "--unit", "tokens", "--seed-size", "1150", "--batch", "2300", "--rounds", "7",
        "--epochs", "5", "--min-steps", "150", "--mc-samples", "5",
        "--out", str(run_dir.relative_to(ROOT)),
    ]
    started = time.time()
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}  # round results show up in a log as they come
    subprocess.run([str(ROOT / ".venv" / "bin" / command[0]), *command[1:]], check=True, cwd=ROOT, env=environment)
    elapsed = time.time() - started
    document = json.loads((run_dir / "curve.json").read_text())
    keys = ("tokens_fraction_to_99pct_full_f1", "aulc_vs_random", "full_pool_f1", "final_f1", "final_tokens_fraction")
    results = {
        "command": " ".join(command),
        "benchmark_command": "make bench (.venv/bin/python bench/al_conll2003.py --seeds " + args.seeds + ")",
        "machine": "2-core CPU, no GPU",
        "elapsed_s": round(elapsed, 1),
        "pool": document["pool"],
        "test": document["test"],
        "strategies": {name: {k: s[k] for k in keys} for name, s in document["summary"].items()},
        "full_pool_f1_per_seed": document["full_pool_f1"],
        "rounds": document["rounds"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "al_conll2003.json").write_text(json.dumps(results, indent=2))
    shutil.copy(run_dir / "curve.png", RESULTS / "al_conll2003.png")
    print(json.dumps(results["strategies"], indent=2))


if __name__ == "__main__":
    main()
