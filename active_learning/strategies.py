"""Query strategies: which unlabelled texts an annotator should label next.

Each strategy is one small class with one method, ``scores(predictions)``, returning one number per
text: higher means more informative (label it sooner). ``STRATEGIES`` names them; ``select`` turns
scores into a batch under a budget counted in sentences or tokens, optionally spread out by k-means
on embeddings. Word marginals come from ``Tagger.predict``; "tokens" below are the tagger's words.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .tagger import TaggedText


def _best(prediction: TaggedText) -> np.ndarray:
    """Probability of the most likely tag of each word."""
    return prediction.marginals.max(axis=1) if len(prediction.words) else np.ones(0)


def _log(p: np.ndarray) -> np.ndarray:
    """log p, with p clipped away from 0 so that a certain "no" costs a large finite amount."""
    return np.log(np.clip(p, 1e-12, None))


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * _log(p)).sum(axis=-1)


class Strategy:
    """``name``: the key ``make_strategy`` found it under in ``STRATEGIES``. ``mc_samples``: forward
    passes with dropout on that ``scores`` needs per text (``Tagger.predict(mc_samples=...)``); 0 for
    a strategy that reads the marginals only."""

    name = ""
    mc_samples = 0

    @classmethod
    def registered(cls, name: str, seed: int) -> Strategy:
        """The instance ``make_strategy(name, seed)`` returns; most strategies take no options."""
        return cls()

    def scores(self, predictions: Sequence[TaggedText]) -> np.ndarray:
        raise NotImplementedError


class RandomSampling(Strategy):
    """Uniform random order: the baseline every other strategy must beat."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    @classmethod
    def registered(cls, name, seed):
        return cls(seed)

    def scores(self, predictions):
        return self.rng.random(len(predictions))


class LeastConfidence(Strategy):
    """1 - P(most likely tag sequence), with per-word independence: 1 - prod_i max_y p(y_i).

    Culotta & McCallum, "Reducing labeling effort for structured prediction tasks", AAAI 2005.
    Favours long texts; pair it with a token budget.
    """

    def scores(self, predictions):
        return np.array([1.0 - float(np.exp(_log(_best(p)).sum())) for p in predictions])


class MNLP(Strategy):
    """Maximum normalized log-probability: -(1/n) sum_i log max_y p(y_i), i.e. least confidence
    normalised by length so long texts are not preferred just for being long.

    Shen, Yun, Lipton, Kronrod & Anandkumar, "Deep Active Learning for Named Entity Recognition",
    ICLR 2018 (arXiv 2017).
    """

    def scores(self, predictions):
        return np.array([-float(_log(_best(p)).mean()) if len(p.words) else 0.0 for p in predictions])


class TokenEntropy(Strategy):
    """Entropy of each word's tag distribution, aggregated by mean (default) or max.

    Settles & Craven, "An analysis of active learning strategies for sequence labeling tasks",
    EMNLP 2008 (token entropy).
    """

    def __init__(self, aggregate: str = "mean"):
        if aggregate not in ("mean", "max"):
            raise ValueError("aggregate must be 'mean' or 'max'")
        self.aggregate = aggregate

    @classmethod
    def registered(cls, name, seed):
        return cls(name.removeprefix("entropy_"))

    def scores(self, predictions):
        reduce = np.mean if self.aggregate == "mean" else np.max
        return np.array([float(reduce(_entropy(p.marginals))) if len(p.words) else 0.0 for p in predictions])


class Margin(Strategy):
    """1 - the smallest gap between a word's two most likely tags: the text's closest call.

    Scheffer, Decomain & Wrobel, "Active hidden Markov models for information extraction",
    IDA 2001 (margin sampling).
    """

    def scores(self, predictions):
        out = []
        for p in predictions:
            if not len(p.words):
                out.append(0.0)
                continue
            top2 = np.sort(p.marginals, axis=1)[:, -2:]
            out.append(1.0 - float((top2[:, 1] - top2[:, 0]).min()))
        return np.array(out)


class BALD(Strategy):
    """Bayesian active learning by disagreement with MC dropout: the mutual information between a
    word's tag and the model weights, H[mean_t p_t] - mean_t H[p_t], averaged over the text's words.

    Houlsby, Huszár, Ghahramani & Lengyel, "Bayesian Active Learning for Classification and
    Preference Learning", 2011; applied to NER with MC dropout by Siddhant & Lipton, "Deep Bayesian
    Active Learning for Natural Language Processing", EMNLP 2018.
    """

    mc_samples = 8

    def scores(self, predictions):
        out = []
        for p in predictions:
            if p.samples is None:
                raise ValueError("BALD needs MC-dropout samples: predict with mc_samples > 0")
            if not len(p.words):
                out.append(0.0)
                continue
            mutual_information = _entropy(p.samples.mean(axis=0)) - _entropy(p.samples).mean(axis=0)
            out.append(float(mutual_information.mean()))
        return np.array(out)


# The CLI's and the API's strategy choices come from here; each class's docstring describes it.
STRATEGIES: dict[str, type[Strategy]] = {
    "random": RandomSampling,
    "least_confidence": LeastConfidence,
    "mnlp": MNLP,
    "entropy_mean": TokenEntropy,
    "entropy_max": TokenEntropy,
    "margin": Margin,
    "bald": BALD,
}


def make_strategy(name: str, seed: int = 0, mc_samples: int | None = None) -> Strategy:
    """The strategy registered as ``name``. ``seed`` drives random sampling; ``mc_samples``, when
    given, replaces the number of dropout passes of a strategy that uses them (BALD)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[name].registered(name, seed)
    strategy.name = name
    if mc_samples is not None and strategy.mc_samples:
        strategy.mc_samples = mc_samples
    return strategy


def select(
    scores: Sequence[float],
    costs: Sequence[int],
    budget: int,
    embeddings: np.ndarray | None = None,
    diversity_factor: int = 3,
    seed: int = 0,
) -> list[int]:
    """Pick indices, most informative first, until the budget is spent.

    ``costs`` is 1 per text for a sentence budget or its token count for a token budget; a text that
    no longer fits is skipped in favour of smaller ones. With ``embeddings``, the batch that scores
    alone would pick (its size counted in texts) is clustered among ``diversity_factor`` times as many
    candidates with k-means and taken round-robin across clusters, best first in each, so that one
    batch is not many near-duplicates (CoNLL's score lines and headlines).
    """
    scores = np.asarray(scores, dtype=float)
    costs = np.asarray(costs)
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    if embeddings is not None and len(order) > 1:
        order = _diverse_order(order, costs, budget, np.asarray(embeddings), diversity_factor, seed)
    chosen, spent = [], 0
    for i in order:
        if spent + costs[i] <= budget:
            chosen.append(i)
            spent += int(costs[i])
        if spent >= budget:
            break
    return chosen


def _diverse_order(order, costs, budget, embeddings, factor, seed) -> list[int]:
    from sklearn.cluster import KMeans

    # The batch size in texts is that of the batch by scores alone: the best texts are often much
    # shorter than the pool's mean (MNLP's pull to fragments), so the pool's mean cost would
    # undercount it, and with a third of the clusters the "diverse" batch would be nearly that batch.
    spent = np.cumsum(costs[order])
    expected = max(1, min(len(order), int(np.searchsorted(spent, budget, side="right"))))
    candidates = order[: min(len(order), factor * expected)]
    clusters = min(expected, len(candidates))
    assignment = KMeans(n_clusters=clusters, n_init=3, random_state=seed).fit_predict(embeddings[candidates])
    queues: dict[int, list[int]] = {}
    for i, cluster in zip(candidates, assignment):  # candidates are already best-first
        queues.setdefault(int(cluster), []).append(i)
    interleaved = []
    while queues:
        for cluster in list(queues):
            interleaved.append(queues[cluster].pop(0))
            if not queues[cluster]:
                del queues[cluster]
    return interleaved + order[len(candidates) :]
