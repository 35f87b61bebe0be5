"""Benchmark: active learning on the product's own training path (``nerloop simulate``, every round
through ``active_learning.recipe.run_recipe`` as the train job runs it), default base model.

Arms (default): the best strategy (MNLP), the same with self-training, and random. Token budget: a
random seed set of ``--seed-share`` of the pool's tokens, then ``--batch-share`` per round. Per arm,
mean and spread over ``--seeds``: ``tokens_fraction_to_99pct_full_f1``, ``aulc_vs_random``,
``full_pool_f1``, and where the stopping signal first fired (share of tokens, F1 there).

CoNLL-2003 (default): a fixed 4,000-sentence pool from eng.train, 1,000 sentences of eng.testb.
``--dataset weibo``: Weibo NER (../shared/data/weibo_ner, all 1,350 train messages as the pool, the
270 test messages; the 8 types PER/ORG/LOC/GPE x NAM/NOM as they are). The default encoder,
all-MiniLM-L6-v2, has an English WordPiece vocabulary that knows 244 CJK characters (57% of Weibo's
characters are [UNK] to it); every training gives the others tokens of their own
(``Tagger.add_unknown_characters``: 2,788 for the whole pool). A message is ~3x a CoNLL sentence in
sub-words and a training step took ~2x as long here (1.4 s): ``--min-steps 425`` (5 epochs of the full
pool, the rule behind the workers' 1,000 for a 4,000-sentence pool) kept a seed's run with 3 rounds
to 54 minutes here.

    .venv/bin/python bench/al_conll2003.py --seeds 0,1,2                 # the full benchmark
    .venv/bin/python bench/al_conll2003.py --dataset weibo --seeds 0 --arms mnlp,random --rounds 3 --min-steps 425
    .venv/bin/python bench/al_conll2003.py --seeds 1 --arms mnlp,random   # one seed on its own, on seed 0's pool and test
                                          # samples (--sample-seed), so it merges with the others
    .venv/bin/python bench/al_conll2003.py --reduced                     # pool 1,000, test 300, 4 rounds
    .venv/bin/python bench/al_conll2003.py --merge runs/a/curve.json runs/b/curve.json --name NAME
                                          # arms or seeds run apart (two machines, an arm added later)
    .venv/bin/python bench/al_conll2003.py --overlay "p = 0=runs/a/curve.json" "p = 1=runs/b/curve.json" --name NAME
                                          # one arm under different recipes, plotted together

Results go to bench/results/<name>.json and .png (name: al_conll2003, al_weibo, or *_reduced; ``--name``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
DATASETS = {
    "conll2003": {"data": "../shared/data/conll2003", "pool_size": 4000, "test_size": 1000},
    "weibo": {"data": "../shared/data/weibo_ner", "pool_size": 0, "test_size": 0},  # 0: all of it
}
METRICS = ("tokens_fraction_to_99pct_full_f1", "aulc_vs_random", "full_pool_f1", "final_f1", "stop_tokens_fraction", "stop_f1")


def spread(values: list) -> dict:
    """Mean and standard deviation over seeds of the values that exist (a strategy may never reach 99%)."""
    present = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(present)) if present else None,
        "std": float(np.std(present)) if present else None,
        "seeds_with_value": len(present),
        "per_seed": values,
    }


def per_seed_summaries(document: dict, seeds: list[int]) -> dict[int, dict]:
    from active_learning.simulation import summarize

    out = {}
    for seed in seeds:
        part = {
            "full_pool_f1": {k: v for k, v in document["full_pool_f1"].items() if k == str(seed)},
            "rounds": [r for r in document["rounds"] if r["seed"] == seed],
        }
        out[seed] = summarize(part)
    return out


def main() -> None:
    from active_learning.simulation import merge_documents, plot_curves
    from active_learning.training import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default="mnlp,mnlp+self_training,random")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="conll2003")
    parser.add_argument("--reduced", action="store_true", help="pool 1,000, test 300, 4 rounds of 5%%: a quick check, not the benchmark")
    parser.add_argument("--pool-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--sample-seed", type=int, default=0,
                        help="seed of the pool and test samples, whatever --seeds runs: seeds run apart share one pool and can be merged")
    parser.add_argument("--seed-share", type=float, default=None, help="seed set, share of pool tokens (default 0.02; reduced 0.05)")
    parser.add_argument("--batch-share", type=float, default=None, help="per round, share of pool tokens (default 0.04; reduced 0.05)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--min-steps", type=int, default=TrainConfig.min_steps, help="per training (the workers' default)")
    parser.add_argument("--warm-start-scaling", type=float, default=TrainConfig.warm_start_scaling,
                        help="scale each warm start's epochs and steps by (share of new examples) ** this (the workers' default)")
    parser.add_argument("--no-full-pool", action="store_true",
                        help="skip the full-pool training (another run of the same seeds measured it; --merge with that run)")
    parser.add_argument("--name", default=None, help="results file name (default: al_conll2003 or al_weibo, _reduced for --reduced)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for <name>.json and <name>.png")
    parser.add_argument("--merge", nargs="+", metavar="CURVE_JSON", default=None,
                        help="simulate nothing: summarise these runs' curve.json files as one result (arms or seeds run separately "
                             "under the same protocol, e.g. on two machines)")
    parser.add_argument("--overlay", nargs="+", metavar="LABEL=CURVE_JSON", default=None,
                        help="simulate nothing: plot one arm (--overlay-arm) of runs whose recipes differ, one line per LABEL, "
                             "into <name>.png (the full-pool line: the first run's)")
    parser.add_argument("--overlay-arm", default="mnlp")
    args = parser.parse_args()
    name = args.name or ("al_conll2003" if args.dataset == "conll2003" else "al_weibo") + ("_reduced" if args.reduced else "")
    if args.overlay:
        overlay(args.overlay, args.overlay_arm, args.out / f"{name}.png")
        return
    if args.merge:
        try:
            document, command, elapsed = merge_documents([json.loads(Path(p).read_text()) for p in args.merge]), None, None
        except (OSError, ValueError, KeyError) as error:
            sys.exit(f"--merge: {error}")
    else:
        document, command, elapsed = run_simulation(args, ROOT / "runs" / name)
    seeds = sorted({r["seed"] for r in document["rounds"]})
    by_seed = per_seed_summaries(document, seeds)
    arms = {}
    for arm in document["summary"]:
        arms[arm] = {
            "mean_curve": {k: document["summary"][arm][k] for k in METRICS},  # of the seed-averaged curve
            # per seed, then mean and spread (a partial run: the seeds that reached this arm)
            **{k: spread([by_seed[seed][arm][k] for seed in seeds if arm in by_seed[seed]]) for k in METRICS},
        }
    invocation = " ".join(["python", "bench/al_conll2003.py", *sys.argv[1:]])
    results = {
        "reduced": args.reduced,
        "note": (
            "PARTIAL RUN: stopped before every seed and arm finished; per arm, the seeds that reached it"
            if not document.get("complete", True)
            else "REDUCED RUN (smaller pool and test set, fewer rounds, or fewer than 3 seeds): not the full benchmark"
            if args.reduced or len(seeds) < 3 else "full protocol"
        ),
        "complete": document.get("complete", True),
        "dataset": args.dataset,
        "caveat": (
            "all-MiniLM-L6-v2 is an English encoder: 57% of Weibo's characters are [UNK] to its vocabulary; each training "
            "gives them tokens of their own (rows that train while the base rows stay fixed), so Weibo F1 measures the "
            "loop on an English encoder, far from a Chinese one's" if args.dataset == "weibo" else None
        ),
        "benchmark_command": ".venv/bin/" + invocation,
        "command": " ".join(command) if command else None,
        "merged_from": args.merge,
        "machine": "2-core CPU shared with other work, no GPU",
        "elapsed_s": round(elapsed, 1) if elapsed is not None else None,
        "pool": document["pool"],
        "test": document["test"],
        "stop_set": document["stop_set"],
        "budget": {"seed_tokens": document["config"]["seed_size"], "batch_tokens": document["config"]["batch"],
                   "rounds": document["config"]["rounds"]},
        "arms": arms,
        "full_pool_f1_per_seed": document["full_pool_f1"],
        "rounds": document["rounds"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
    plot_curves(document, args.out / f"{name}.png")
    print(json.dumps({arm: {k: a[k]["mean"] for k in METRICS} for arm, a in arms.items()}, indent=2))


def overlay(runs: list[str], arm: str, path: Path) -> None:
    """One arm of several runs on one plot, each line named by its label: recipes compared side by side."""
    from active_learning.simulation import plot_curves

    documents = {}
    for run in runs:
        label, _, file = run.rpartition("=")  # the last "=": a label may hold one ("p = 1")
        if not label:
            sys.exit(f"--overlay: expected LABEL=CURVE_JSON, got {run!r}")
        try:
            documents[label] = json.loads(Path(file).read_text())
        except (OSError, ValueError) as error:
            sys.exit(f"--overlay: {error}")
    rounds = [{**r, "strategy": f"{arm}, {label}"} for label, d in documents.items() for r in d["rounds"] if r["strategy"] == arm]
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_curves({**next(iter(documents.values())), "rounds": rounds, "summary": {}}, path)


def run_simulation(args: argparse.Namespace, run_dir: Path) -> tuple[dict, list[str], float]:
    """``nerloop simulate`` under the benchmark's protocol; its curve document, command and duration."""
    dataset = DATASETS[args.dataset]
    reduced = {"pool_size": 1000, "test_size": 300, "rounds": 4, "seed_share": 0.05, "batch_share": 0.05} if args.reduced else {}
    full = {"pool_size": dataset["pool_size"], "test_size": dataset["test_size"], "rounds": 7, "seed_share": 0.02, "batch_share": 0.04}
    chosen = {key: getattr(args, key) if getattr(args, key) is not None else reduced.get(key, full[key]) for key in full}
    data = (ROOT / dataset["data"]).resolve()
    if not data.is_dir():
        sys.exit(f"{args.dataset} not found at {data}")

    # The token budget is a share of this pool's tokens: the same sample nerloop simulate will draw.
    from active_learning.simulation import token_count
    from service.cli.corpus import load_pool_and_test

    pool, _ = load_pool_and_test(data, None, chosen["pool_size"], chosen["test_size"], args.sample_seed)
    pool_tokens = sum(token_count(e) for e in pool)
    seed_size = round(chosen["seed_share"] * pool_tokens)
    batch = round(chosen["batch_share"] * pool_tokens)
    command = [
        "nerloop", "simulate",
        "--data", dataset["data"],
        "--pool-size", str(chosen["pool_size"]), "--test-size", str(chosen["test_size"]),
        "--strategies", args.arms, "--seeds", args.seeds, "--sample-seed", str(args.sample_seed),
        "--unit", "tokens", "--seed-size", str(seed_size), "--batch", str(batch), "--rounds", str(chosen["rounds"]),
        "--epochs", str(args.epochs), "--min-steps", str(args.min_steps),
        "--warm-start-scaling", str(args.warm_start_scaling),
        *(["--no-full-pool"] if args.no_full_pool else []),
        "--out", str(run_dir.relative_to(ROOT)),
    ]
    started = time.time()
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}  # round results show up in a log as they come
    (run_dir / "curve.json").unlink(missing_ok=True)
    # Stopped half-way (SIGINT to the simulation: `pkill -INT -f "nerloop simulate"`), what it measured
    # is still summarised, marked partial.
    done = subprocess.run([str(ROOT / ".venv" / "bin" / command[0]), *command[1:]], cwd=ROOT, env=environment)
    if done.returncode not in (0, 130) or not (run_dir / "curve.json").exists():  # 130: interrupted
        sys.exit(f"the simulation failed (exit status {done.returncode})")
    return json.loads((run_dir / "curve.json").read_text()), command, time.time() - started


if __name__ == "__main__":
    main()
