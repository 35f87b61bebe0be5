"""The oracle simulation: run the active-learning loop with gold labels standing in for annotators.

Every round goes through the train job's recipe (``recipe.run_recipe``): the labelled set is split
into train and dev by the service's hash rule, the candidate warm-starts from the active version
(fresh from the base model in round 0), early-stops on dev F1 and replaces the active version only
when its dev F1 is not worse. What a round reports is the active version's test F1: what a user of
the service would be served. An arm is a strategy with options: ``<strategy>+self_training`` adds
the active version's confident pseudo-labels from the unlabelled pool to each training,
``<strategy>+diversity`` spreads each batch over k-means clusters of sentence embeddings
(``strategies.select``), ``<strategy>+augment`` mixes label-preserving augmentations of the labelled
texts into each training (``AugmentInLoop``); options combine (``mnlp+diversity+self_training``).
After every training the stopping signal (``stopping``) compares the candidate with the active
version on a fixed stop set.

Per seed, every arm starts from the same random seed set; one training on the whole pool (same
recipe, fresh start) gives the reference F1. Costs are counted in sentences or in words.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from transformers import set_seed

from augment import check as check_augmentation
from augment import run as augment

from . import recipe, stopping
from .corpus import word_offsets
from .metrics import evaluate
from .recipe import RecipeInputs, SelfTraining, content_hash, split_dev, start_from
from .spans import Example
from .strategies import BALD, make_strategy, select
from .tagger import Tagger, default_base_model
from .training import TrainConfig

TARGET_SHARE = 0.99  # "reaches full-pool quality" means 99% of the full-pool F1 (Shen et al.)


@dataclass(frozen=True)
class Arm:
    """An arm such as ``mnlp``, ``mnlp+self_training`` or ``mnlp+diversity``: a strategy and its
    options, each a field below that "+field" after the strategy switches on."""

    strategy: str
    self_training: bool = False
    diversity: bool = False
    augment: bool = False

    @classmethod
    def parse(cls, arm: str) -> Arm:
        strategy, *options = arm.split("+")
        known = [f.name for f in fields(cls) if f.name != "strategy"]
        unknown = [o for o in options if o not in known]
        if unknown:
            raise ValueError(f"arm {arm!r}: unknown option {unknown[0]!r}; options are {', '.join('+' + o for o in known)}")
        make_strategy(strategy)  # fails early on an unknown name
        return cls(strategy, **dict.fromkeys(options, True))


@dataclass(frozen=True)
class AugmentInLoop:
    """For "+augment" arms: before each round's training, the labelled training texts are augmented
    as an augmentation job does it (``augment.run`` on every training text, outputs deduplicated
    against everything labelled; kept across rounds, as the service stores them), and the training
    mixes in at most ``ratio`` of them per real example (``recipe.mix_augmented``, the service's rule;
    0.5 is a project's default ``augment_ratio``)."""

    method: str = "mention_replacement"
    n: int = 1
    ratio: float = 0.5

    def __post_init__(self) -> None:
        check_augmentation(self.method, self.n, None)  # an unknown method or a bad n, named
        if self.ratio <= 0:
            raise ValueError(f"augment ratio must be positive, got {self.ratio}")


@dataclass
class SimulationConfig:
    strategies: list[str] = field(default_factory=lambda: ["mnlp", "random"])  # arms
    seed_size: int = 100
    batch: int = 100
    rounds: int = 5
    unit: str = "sentences"  # or "tokens"
    seeds: list[int] = field(default_factory=lambda: [0])
    base_model: str | None = None
    mc_samples: int = BALD.mc_samples  # forward passes with dropout, for a strategy that uses them
    full_pool: bool = True
    dev_share: float = 0.2  # the service's default ``dev_share``
    self_training: SelfTraining = field(default_factory=lambda: SelfTraining(enabled=True))  # for "+self_training" arms
    augment: AugmentInLoop = field(default_factory=AugmentInLoop)  # for "+augment" arms
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ValueError("strategies: give at least one")
        if self.unit not in ("sentences", "tokens"):
            raise ValueError("unit must be 'sentences' or 'tokens'")
        for arm in self.strategies:
            Arm.parse(arm)  # fails early on an unknown strategy or option
        if self.seed_size <= 0 or self.batch <= 0 or self.rounds < 0:
            raise ValueError("seed_size and batch must be positive, rounds non-negative")
        if not 0.0 <= self.dev_share < 1.0:
            raise ValueError("dev_share must be in [0, 1)")


@dataclass
class RoundResult:
    strategy: str  # the arm
    seed: int
    round: int
    sentences: int
    tokens: int
    tokens_fraction: float
    f1: float  # the active version's, on test
    promoted: bool = True
    dev_size: int = 0
    dev_f1: float | None = None  # the candidate's
    steps: int = 0
    pseudo_labelled: int = 0
    augmented: int = 0  # augmented examples this round's training mixed in
    kappa: float | None = None  # candidate vs the active version on the stop set
    stop_fired: bool = False
    f1_slope_per_1k_tokens: float | None = None


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
    on_document: Callable[[dict], None] | None = None,
) -> dict:
    """Run the simulation; return the curve document (see ``write_results``).

    ``on_stage(message)`` announces each training and scoring, ``on_step`` reports training steps,
    ``on_result`` each F1 as soon as it is measured (the full pool's under strategy "full_pool"),
    ``on_document`` the document so far after each (``"complete": False`` until the last), so that a
    long run stopped half-way keeps what it measured.
    """
    on_stage = on_stage or (lambda _: None)
    reported = on_result or (lambda _: None)
    labels = list(labels)
    base_model = config.base_model or default_base_model()
    costs = np.array([token_count(e) if config.unit == "tokens" else 1 for e in pool])
    pool_tokens = int(sum(token_count(e) for e in pool))
    stop_texts = [pool[i].text for i in stopping.stop_set([content_hash(e.text) for e in pool])]
    rounds: list[RoundResult] = []
    full_pool_f1: dict[int, float] = {}

    def document(complete: bool) -> dict:
        done = {
            "config": {**asdict(config), "labels": labels},
            "complete": complete,
            "pool": {"sentences": len(pool), "tokens": pool_tokens},
            "test": {"sentences": len(test)},
            "stop_set": {"sentences": len(stop_texts)},
            "full_pool_f1": {str(k): v for k, v in full_pool_f1.items()},
            "rounds": [asdict(r) for r in rounds],
        }
        done["summary"] = summarize(done)
        return done

    def on_result(result: RoundResult) -> None:
        if result.strategy != "full_pool":
            rounds.append(result)
        reported(result)
        if on_document:
            on_document(document(complete=False))

    def test_f1(tagger: Tagger) -> float:
        return evaluate(test, [p.entity_spans for p in tagger.predict([e.text for e in test])]).f1

    def train_config(seed: int) -> TrainConfig:
        return TrainConfig(**{**asdict(config.train), "seed": seed})

    for seed in config.seeds:
        if config.full_pool:
            on_stage(f"seed {seed} · full pool: training on all {len(pool)} texts")
            set_seed(seed)
            train_set, dev = split_dev(pool, config.dev_share)
            inputs = RecipeInputs(start_from(None, base_model), labels, train_set, dev, train_config(seed))
            outcome = recipe.run_recipe(inputs, None, on_step)
            full_pool_f1[seed] = test_f1(outcome.tagger)
            on_result(RoundResult("full_pool", seed, 0, len(pool), pool_tokens, 1.0, full_pool_f1[seed], dev_size=len(dev)))
        seed_set = select(np.random.default_rng(seed).random(len(pool)), costs, config.seed_size)
        for arm in config.strategies:
            options = Arm.parse(arm)
            strategy = make_strategy(options.strategy, seed, mc_samples=config.mc_samples)
            with tempfile.TemporaryDirectory(prefix="nerloop-simulate-") as versions:
                _run_arm(
                    arm, options, strategy, seed, seed_set, pool, costs, pool_tokens, stop_texts, labels, base_model,
                    train_config(seed), config, Path(versions), test_f1, on_stage, on_step, on_result,
                )
    return document(complete=True)


def _run_arm(
    arm, options, strategy, seed, seed_set, pool, costs, pool_tokens, stop_texts, labels, base_model,
    train_config, config, versions, test_f1, on_stage, on_step, on_result,
) -> None:
    """One arm's rounds, as the service would run them, each reported to ``on_result``: one recipe call
    per round, the active version kept (and saved under ``versions`` for the next warm start) only when
    promoted."""
    labelled = list(seed_set)
    active: Tagger | None = None
    active_path: str | None = None
    active_trained_on: int | None = None  # training examples the active version saw (a warm start's base)
    active_f1 = 0.0
    pseudo: list[Example] = []
    kappas: list[float | None] = []
    version_tokens: list[int] = []
    version_dev_f1: list[float | None] = []
    augmented = _Augmented(config.augment, seed)
    for round_number in range(config.rounds + 1):
        on_stage(f"seed {seed} · {arm} · round {round_number}/{config.rounds}: training on {len(labelled)} texts")
        set_seed(seed)
        train_set, dev = split_dev([pool[i] for i in labelled], config.dev_share)
        gold_train = len(train_set)
        if options.augment:
            train_set = augmented.mixed_into(train_set, dev)
        inputs = RecipeInputs(start_from(active_path, base_model), labels, train_set, dev, train_config, pseudo, active_trained_on)
        outcome = recipe.run_recipe(inputs, active.predict if active else None, on_step)
        tokens = int(sum(token_count(pool[i]) for i in labelled))
        kappa = None
        if active is not None and stop_texts:
            kappa = stopping.cohen_kappa(
                stopping.word_tags(active.predict(stop_texts)), stopping.word_tags(outcome.tagger.predict(stop_texts))
            )
        kappas.append(kappa)
        version_tokens.append(tokens)
        version_dev_f1.append(outcome.candidate.f1 if outcome.candidate else None)
        signal = stopping.stop_signal(kappas, version_tokens, version_dev_f1)
        if outcome.promote:
            active = outcome.tagger
            active_path, active_trained_on = str(versions / f"round{round_number}"), len(train_set)
            active.save(active_path)
            active_f1 = test_f1(active)
        on_result(
            RoundResult(
                arm, seed, round_number, len(labelled), tokens, tokens / pool_tokens, active_f1,
                promoted=outcome.promote, dev_size=len(dev), dev_f1=version_dev_f1[-1], steps=outcome.result.steps,
                pseudo_labelled=len(pseudo), augmented=len(train_set) - gold_train, kappa=kappa, stop_fired=signal.fired,
                f1_slope_per_1k_tokens=signal.f1_slope_per_1k_tokens,
            )
        )
        if round_number == config.rounds:
            break
        taken = set(labelled)
        unlabelled = [i for i in range(len(pool)) if i not in taken]
        if not unlabelled:
            break
        on_stage(f"seed {seed} · {arm} · round {round_number}/{config.rounds}: scoring {len(unlabelled)} pool texts")
        predictions = active.predict([pool[i].text for i in unlabelled], mc_samples=strategy.mc_samples, embeddings=options.diversity)
        embeddings = np.stack([p.embedding for p in predictions]) if options.diversity else None
        picked = select(strategy.scores(predictions), costs[unlabelled], config.batch, embeddings, seed=seed)
        labelled += [unlabelled[i] for i in picked]
        if options.self_training:  # the active version's confident labels on what stays unlabelled, for the next round
            chosen = set(picked)
            rest = [k for k in range(len(unlabelled)) if k not in chosen]
            pseudo = recipe.pseudo_labels([pool[unlabelled[k]].text for k in rest], [predictions[k] for k in rest], config.self_training)


class _Augmented:
    """A "+augment" arm's augmented examples, grown before each training as the service grows them."""

    def __init__(self, settings: AugmentInLoop, seed: int):
        self.settings, self.seed = settings, seed
        self.examples: dict[str, Example] = {}  # by text, in the order made (the service's store)

    def mixed_into(self, train_set: list[Example], dev: list[Example]) -> list[Example]:
        made = augment(self.settings.method, train_set, n=self.settings.n, seed=self.seed, labelled=[*train_set, *dev])
        for example in made.examples:
            self.examples.setdefault(example.text, example)
        return recipe.mix_augmented(train_set, list(self.examples.values()), self.settings.ratio, self.seed)


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
    if not curves:  # a run stopped before its first round
        return {}
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
        fired = _first_stops(rounds, name)
        summary[name] = {
            "final_f1": float(y[-1]),
            "final_tokens_fraction": float(x[-1]),
            "full_pool_f1": full_f1,
            "tokens_fraction_to_99pct_full_f1": reached,
            "aulc_vs_random": own / random_area if own is not None and random_area else None,
            # where the stopping signal first fired, averaged over the seeds where it did
            "stop_fired_seeds": len(fired),
            "stop_tokens_fraction": float(np.mean([r["tokens_fraction"] for r in fired])) if fired else None,
            "stop_f1": float(np.mean([r["f1"] for r in fired])) if fired else None,
        }
    return summary


# What may differ between runs that are merged: which arms and seeds each ran, how far it got, and
# whether it trained the full pool too (one run's full-pool F1 serves all).
MERGE_FREE_CONFIG = ("strategies", "seeds", "rounds", "full_pool")


def merge_documents(documents: Sequence[dict]) -> dict:
    """One curve document from runs of the same protocol that ran different arms or seeds (two
    machines, or an arm added later): their rounds together, the summary computed afresh.

    The protocol must be the same (pool, test and stop sets, budget, recipe: every config key but
    ``MERGE_FREE_CONFIG``), a full-pool F1 measured twice for a seed must agree, and no (arm, seed)
    may come from two runs; otherwise ``ValueError`` names what differs."""
    if not documents:
        raise ValueError("give at least one curve document")
    first = documents[0]

    def protocol(document: dict) -> dict:
        config = {k: v for k, v in document["config"].items() if k not in MERGE_FREE_CONFIG}
        # Runs from before diversity became an arm option ("mnlp+diversity") carry a global switch;
        # off, it says what its absence says now.
        if config.get("diversity") is False:
            del config["diversity"]
        # Runs from before warm starts could be scaled ran them unscaled.
        config["train"] = {"warm_start_scaling": 0.0, **config.get("train", {})}
        # Runs from before "+augment" arms had none, so its settings said nothing about them.
        config.setdefault("augment", asdict(AugmentInLoop()))
        return {"config": config, **{k: document[k] for k in ("pool", "test", "stop_set")}}

    rounds, full_pool_f1, ran, ours = [], {}, set(), None
    for number, document in enumerate(documents):
        missing = [k for k in ("config", "pool", "test", "stop_set", "full_pool_f1", "rounds") if k not in document]
        if missing:
            raise ValueError(f"run {number} is not a curve document of nerloop simulate: it has no {', '.join(missing)}")
        theirs = protocol(document)
        ours = ours or theirs  # run 0's
        different = sorted(k for k in {*theirs["config"], *ours["config"]} if theirs["config"].get(k) != ours["config"].get(k))
        different += [k for k in ("pool", "test", "stop_set") if theirs[k] != ours[k]]
        if different:
            raise ValueError(f"run {number} differs from run 0 in {', '.join(different)}: not the same protocol")
        for seed, f1 in document["full_pool_f1"].items():
            if seed in full_pool_f1 and abs(full_pool_f1[seed] - f1) > 1e-6:
                raise ValueError(f"run {number}: full-pool F1 for seed {seed} is {f1}, another run measured {full_pool_f1[seed]}")
            full_pool_f1[seed] = f1
        arms = {(r["strategy"], r["seed"]) for r in document["rounds"]}
        if arms & ran:
            raise ValueError(f"run {number} repeats arm and seed {sorted(arms & ran)}")
        ran |= arms
        rounds += document["rounds"]
    merged = {
        "config": {
            **first["config"],
            "strategies": list(dict.fromkeys(s for d in documents for s in d["config"]["strategies"])),
            "seeds": sorted({s for d in documents for s in d["config"]["seeds"]}),
            "rounds": max(d["config"]["rounds"] for d in documents),
            "full_pool": any(d["config"]["full_pool"] for d in documents),
        },
        "complete": all(d.get("complete", True) for d in documents),
        **{k: first[k] for k in ("pool", "test", "stop_set")},
        "full_pool_f1": full_pool_f1,
        "rounds": rounds,
    }
    merged["summary"] = summarize(merged)
    return merged


def _first_stops(rounds: list[dict], strategy: str) -> list[dict]:
    """Per seed, the first round of ``strategy`` at which the stopping signal fired."""
    first: dict[int, dict] = {}
    for r in rounds:
        if r["strategy"] == strategy and r.get("stop_fired") and r["seed"] not in first:
            first[r["seed"]] = r
    return list(first.values())


def plot_curves(document: dict, path: str | Path) -> None:
    """F1 against labelled share of pool tokens, one line per arm (band: ± 1 std over seeds), a star
    where the arm's stopping signal first fired."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["strategy"] for r in document["rounds"]):
        x, y, s = _mean_curve(document["rounds"], name)
        (line,) = axes.plot(100 * x, y, marker="o", label=name)
        axes.fill_between(100 * x, y - s, y + s, alpha=0.15)
        stop = document.get("summary", {}).get(name, {})
        if stop.get("stop_tokens_fraction") is not None:
            axes.plot(100 * stop["stop_tokens_fraction"], stop["stop_f1"], marker="*", markersize=16, color=line.get_color(),
                      linestyle="none", label=f"{name}: stopping signal")
    full = list(document["full_pool_f1"].values())
    if full:
        axes.axhline(np.mean(full), color="black", linestyle="--", linewidth=1, label="full pool")
        axes.axhline(TARGET_SHARE * np.mean(full), color="grey", linestyle=":", linewidth=1, label="99% of full pool")
        axes.set_ylim(top=max(axes.get_ylim()[1], np.mean(full) + 0.01))  # the full pool's line stays in view
    axes.set_xlabel("labelled share of pool tokens (%)")
    axes.set_ylabel("entity F1 on test")
    axes.set_title(f"Active learning: {document['pool']['sentences']} pool sentences, seeds {document['config']['seeds']}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(document: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``curve.json`` and ``curve.png`` into ``out_dir``; return their paths. Each is written
    beside and renamed into place, so a reader (or a run interrupted while writing) never sees half a file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curve, png = out_dir / "curve.json", out_dir / "curve.png"
    (out_dir / ".curve.json.partial").write_text(json.dumps(document, indent=2))
    plot_curves(document, out_dir / ".curve.partial.png")
    (out_dir / ".curve.json.partial").replace(curve)
    (out_dir / ".curve.partial.png").replace(png)
    return curve, png
