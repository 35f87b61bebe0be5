"""Benchmark: why do small labelled sets plateau? Optimizer steps, on fixed labelled sets.

On the CoNLL-2003 pool of ``bench/al_conll2003.py`` (4,000 sentences of eng.train, 1,000 of
eng.testb as test, sampled as ``nerloop simulate`` samples them), random token-budget subsets of
10% and 30% of the pool's tokens are trained fresh from the base model through the product's own
recipe (``recipe.run_recipe``: hash dev split, early stopping on dev F1), once with the workers'
step budget (``--epochs 5 --min-steps 150``, what ``al_conll2003.json`` ran) and once with each
training given as many optimizer steps as the full pool's (``--min-steps 1000``). The full-pool F1
(0.846, seed 0) and the active-learning arms' F1 at the same shares (warm-started round after
round) are in ``al_conll2003.json``; comparing against them separates the steps' share of the
plateau from the warm start's. The JSON is rewritten after every training.

    PYTHONUNBUFFERED=1 .venv/bin/python bench/recipe_steps.py [--seed 0] [--shares 0.3,0.1] [--min-steps 150,1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from transformers import set_seed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from active_learning.metrics import evaluate  # noqa: E402
from active_learning.recipe import RecipeInputs, run_recipe, split_dev, start_from  # noqa: E402
from active_learning.simulation import SimulationConfig, token_count  # noqa: E402
from active_learning.strategies import select  # noqa: E402
from active_learning.tagger import default_base_model  # noqa: E402
from active_learning.training import TrainConfig  # noqa: E402
from service.cli.corpus import labels_of, load_pool_and_test  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "conll2003"
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shares", default="0.3,0.1", help="token shares of the pool, in the order trained")
    parser.add_argument("--min-steps", default="150,1000", help="step budgets compared at each share")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--pool-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--base-model", default=None, help="default: all-MiniLM-L6-v2 (offline)")
    parser.add_argument("--out", type=Path, default=RESULTS / "recipe_steps.json")
    args = parser.parse_args()
    shares = [float(s) for s in args.shares.split(",")]
    budgets = [int(s) for s in args.min_steps.split(",")]

    pool, test = load_pool_and_test(DATA, None, args.pool_size, args.test_size, args.seed)
    labels = labels_of(pool, test)
    costs = np.array([token_count(e) for e in pool])
    base = args.base_model or default_base_model()
    document = {
        "command": "PYTHONUNBUFFERED=1 .venv/bin/python bench/recipe_steps.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "seed": args.seed,
        "pool": {"sentences": len(pool), "tokens": int(costs.sum())},
        "test": {"sentences": len(test)},
        "base_model": base,
        "complete": False,
        "trainings": [],
    }
    started = time.perf_counter()
    for share in shares:
        chosen = select(np.random.default_rng(args.seed).random(len(pool)), costs, int(share * costs.sum()))
        train_set, dev = split_dev([pool[i] for i in chosen], SimulationConfig.dev_share)
        for min_steps in budgets:
            set_seed(args.seed)
            config = TrainConfig(epochs=args.epochs, min_steps=min_steps, seed=args.seed)
            print(f"share {share:.0%}: {len(train_set)} train / {len(dev)} dev sentences, min_steps {min_steps}", flush=True)
            began = time.perf_counter()
            outcome = run_recipe(RecipeInputs(start_from(None, base), labels, train_set, dev, config), None)
            predictions = outcome.tagger.predict([e.text for e in test])
            f1 = evaluate(test, [p.entity_spans for p in predictions]).f1
            document["trainings"].append({
                "token_share": share,
                "sentences": len(chosen),
                "tokens": int(costs[chosen].sum()),
                "train_sentences": len(train_set),
                "dev_sentences": len(dev),
                "config": asdict(config),
                "steps": outcome.result.steps,
                "best_epoch": outcome.result.best_epoch,
                "dev_f1": outcome.candidate.f1 if outcome.candidate else None,
                "test_f1": f1,
                "seconds": round(time.perf_counter() - began, 1),
            })
            print(f"  -> {outcome.result.steps} steps, test F1 {f1:.4f} ({time.perf_counter() - began:.0f} s)", flush=True)
            document["elapsed_s"] = round(time.perf_counter() - started, 1)
            args.out.write_text(json.dumps(document, indent=2) + "\n")
    document["complete"] = True
    args.out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
