"""The oracle simulation: run the active-learning loop with gold labels standing in for annotators.

Per seed, every strategy starts from the same random seed set, then for each round trains a fresh
tagger on what is labelled, scores it on the test set, asks its strategy for the next batch from the
pool and "labels" it by revealing the gold spans. One more tagger trained on the whole pool gives
the reference F1. Costs are counted in sentences or in words (annotation cost is per token).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from transformers import set_seed

from .corpus import word_offsets
from .metrics import evaluate
from .spans import Example
from .strategies import BALD, make_strategy, select
from .tagger import Tagger
from .training import TrainConfig, train

TARGET_SHARE = 0.99  # "reaches full-pool quality" means 99% of the full-pool F1 (Shen et al.)


@dataclass
class SimulationConfig:
    strategies: list[str] = field(default_factory=lambda: ["mnlp", "random"])
    seed_size: int = 100
    batch: int = 100
    rounds: int = 5
    unit: str = "sentences"  # or "tokens"
    seeds: list[int] = field(default_factory=lambda: [0])
    base_model: str | None = None
    mc_samples: int = BALD.mc_samples  # forward passes with dropout, for a strategy that uses them
    diversity: bool = False
    full_pool: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ValueError("strategies: give at least one")
        if self.unit not in ("sentences", "tokens"):
            raise ValueError("unit must be 'sentences' or 'tokens'")
        for name in self.strategies:
            make_strategy(name)  # fails early on an unknown name
        if self.seed_size <= 0 or self.batch <= 0 or self.rounds < 0:
            raise ValueError("seed_size and batch must be positive, rounds non-negative")


@dataclass
class RoundResult:
    strategy: str
    seed: int
    round: int
    sentences: int
    tokens: int
    tokens_fraction: float
    f1: float


def token_count(example: Example) -> int:
    return len(word_offsets(example.text))


Progress = Callable[[str], None]


def simulate(
    pool: Sequence[Example],
    test: Sequence[Example],
    labels: Sequence[str],
    config: SimulationConfig,
    on_stage: Progress | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_result: Callable[[RoundResult], None] | None = None,
) -> dict:
    """Run the simulation; return the curve document (see ``write_results``).

    ``on_stage(message)`` announces each training and scoring, ``on_step`` reports training steps,
    ``on_result`` each F1 as soon as it is measured (the full pool's under strategy "full_pool").
    """
    on_stage = on_stage or (lambda _: None)
    on_result = on_result or (lambda _: None)
    costs = np.array([token_count(e) if config.unit == "tokens" else 1 for e in pool])
    pool_tokens = int(sum(token_count(e) for e in pool))
    rounds: list[RoundResult] = []
    full_pool_f1: dict[int, float] = {}

    def fit_and_score(examples: Sequence[Example], seed: int) -> tuple[Tagger, float]:
        set_seed(seed)
        tagger = Tagger.load(config.base_model, labels=list(labels))
        train(tagger, examples, None, TrainConfig(**{**asdict(config.train), "seed": seed}), on_step=on_step)
        predicted = tagger.predict([e.text for e in test])
        return tagger, evaluate(test, [p.entity_spans for p in predicted]).f1

    for seed in config.seeds:
        if config.full_pool:
            on_stage(f"seed {seed} · full pool: training on all {len(pool)} texts")
            full_pool_f1[seed] = fit_and_score(list(pool), seed)[1]
            on_result(RoundResult("full_pool", seed, 0, len(pool), pool_tokens, 1.0, full_pool_f1[seed]))
        seed_set = select(np.random.default_rng(seed).random(len(pool)), costs, config.seed_size)
        for name in config.strategies:
            strategy = make_strategy(name, seed, mc_samples=config.mc_samples)
            labelled = list(seed_set)
            for round_number in range(config.rounds + 1):
                on_stage(f"seed {seed} · {name} · round {round_number}/{config.rounds}: training on {len(labelled)} texts")
                tagger, f1 = fit_and_score([pool[i] for i in labelled], seed)
                tokens = int(sum(token_count(pool[i]) for i in labelled))
                rounds.append(RoundResult(name, seed, round_number, len(labelled), tokens, tokens / pool_tokens, f1))
                on_result(rounds[-1])
                if round_number == config.rounds:
                    break
                taken = set(labelled)
                unlabelled = [i for i in range(len(pool)) if i not in taken]
                if not unlabelled:
                    break
                on_stage(f"seed {seed} · {name} · round {round_number}/{config.rounds}: scoring {len(unlabelled)} pool texts")
                predictions = tagger.predict(
                    [pool[i].text for i in unlabelled],
                    mc_samples=strategy.mc_samples,
                    embeddings=config.diversity,
                )
                embeddings = np.stack([p.embedding for p in predictions]) if config.diversity else None
                picked = select(strategy.scores(predictions), costs[unlabelled], config.batch, embeddings, seed=seed)
                labelled += [unlabelled[i] for i in picked]

    document = {
        "config": {**asdict(config), "labels": list(labels)},
        "pool": {"sentences": len(pool), "tokens": pool_tokens},
        "test": {"sentences": len(test)},
        "full_pool_f1": {str(k): v for k, v in full_pool_f1.items()},
        "rounds": [asdict(r) for r in rounds],
    }
    document["summary"] = summarize(document)
    return document


def _mean_curve(rounds: list[dict], strategy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per round: mean tokens fraction, mean F1 and F1 standard deviation across seeds."""
    by_round: dict[int, list[dict]] = {}
    for r in rounds:
        if r["strategy"] == strategy:
            by_round.setdefault(r["round"], []).append(r)
    keys = sorted(by_round)
    x = np.array([np.mean([r["tokens_fraction"] for r in by_round[k]]) for k in keys])
    y = np.array([np.mean([r["f1"] for r in by_round[k]]) for k in keys])
    s = np.array([np.std([r["f1"] for r in by_round[k]]) for k in keys])
    return x, y, s


def summarize(document: dict) -> dict:
    """Per strategy: its final F1, the pool-token fraction at which its mean curve first reaches 99%
    of the mean full-pool F1 (None if it never does), and its area under the learning curve
    (F1 over labelled-token fraction, on the range every strategy covers) relative to random's."""
    rounds = document["rounds"]
    strategies = list(dict.fromkeys(r["strategy"] for r in rounds))
    full = list(document["full_pool_f1"].values())
    full_f1 = float(np.mean(full)) if full else None
    curves = {name: _mean_curve(rounds, name) for name in strategies}
    low = max(c[0][0] for c in curves.values())
    high = min(c[0][-1] for c in curves.values())
    grid = np.linspace(low, high, 200) if high > low else None

    def area(name: str) -> float | None:
        if grid is None:
            return None
        x, y, _ = curves[name]
        return float(np.trapezoid(np.interp(grid, x, y), grid))

    random_area = area("random") if "random" in curves else None
    summary = {}
    for name, (x, y, _) in curves.items():
        reached = None
        if full_f1 is not None:
            hits = np.nonzero(y >= TARGET_SHARE * full_f1)[0]
            reached = float(x[hits[0]]) if len(hits) else None
        own = area(name)
        summary[name] = {
            "final_f1": float(y[-1]),
            "final_tokens_fraction": float(x[-1]),
            "full_pool_f1": full_f1,
            "tokens_fraction_to_99pct_full_f1": reached,
            "aulc_vs_random": own / random_area if own is not None and random_area else None,
        }
    return summary


def plot_curves(document: dict, path: str | Path) -> None:
    """F1 against labelled share of pool tokens, one line per strategy (band: ± 1 std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["strategy"] for r in document["rounds"]):
        x, y, s = _mean_curve(document["rounds"], name)
        axes.plot(100 * x, y, marker="o", label=name)
        axes.fill_between(100 * x, y - s, y + s, alpha=0.15)
    full = list(document["full_pool_f1"].values())
    if full:
        axes.axhline(np.mean(full), color="black", linestyle="--", linewidth=1, label="full pool")
        axes.axhline(TARGET_SHARE * np.mean(full), color="grey", linestyle=":", linewidth=1, label="99% of full pool")
    axes.set_xlabel("labelled share of pool tokens (%)")
    axes.set_ylabel("entity F1 on test")
    axes.set_title(f"Active learning: {document['pool']['sentences']} pool sentences, seeds {document['config']['seeds']}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(document: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``curve.json`` and ``curve.png`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curve = out_dir / "curve.json"
    curve.write_text(json.dumps(document, indent=2))
    png = out_dir / "curve.png"
    plot_curves(document, png)
    return curve, png
