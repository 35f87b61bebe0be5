"""When more labels no longer pay: a stopping signal from stabilising predictions.

Bloodgood & Vijay-Shanker, "A Method for Stopping Active Learning Based on Stabilizing Predictions
and the Need for User-Adjustable Stopping", CoNLL 2009: keep a fixed, unlabelled stop set; after
each training, measure Cohen's kappa between the tags the new model and the previous one give the
stop set's words; stop once kappa stayed at or above a threshold for ``window`` versions in a row.
Here "the previous one" is the version active when the new one was trained (the one users were
served; a candidate that lost its comparison is not compared with). The stop set is drawn from all
the project's texts, labelled or not, so it stays fixed while the pool shrinks.
Beside it, the slope of dev F1 per 1,000 labelled tokens over the same versions says how much the
last labels bought (dev sets grow with the labelled set, so it is a guide, not a test score).

Pure arithmetic; the train job and the simulation feed it (``recipe.hash_share`` picks the stop set).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .recipe import hash_share
from .spans import spans_to_bio
from .tagger import TaggedText

KAPPA_THRESHOLD = 0.99
WINDOW = 3  # versions in a row
STOP_SET_SHARE = 0.1  # of the project's texts, hash-chosen
STOP_SET_MAX = 500  # texts: enough for a stable kappa, cheap to predict after every training


def cohen_kappa(first: Sequence, second: Sequence) -> float:
    """Cohen's kappa between two labellings of the same items: (p_o - p_e) / (1 - p_e).

    Two identical labellings with a single label agree by construction: kappa 1.0.
    """
    if len(first) != len(second):
        raise ValueError(f"{len(first)} labels against {len(second)}")
    if not first:
        raise ValueError("no items to compare")
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    counts_a, counts_b = Counter(first), Counter(second)
    expected = sum(counts_a[label] * counts_b[label] for label in counts_a) / n**2
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def in_stop_set(digest: str, share: float = STOP_SET_SHARE) -> bool:
    """Stop-set membership from hash digits independent of the dev split's."""
    return hash_share(digest, part=1) < share


def stop_set(digests: Sequence[str], share: float = STOP_SET_SHARE, limit: int = STOP_SET_MAX) -> list[int]:
    """Indices of the stop set among texts with these hashes: the hash-chosen share, at most ``limit``
    (lowest hash values first), so the same corpus always gives the same set."""
    chosen = [i for i, digest in enumerate(digests) if in_stop_set(digest, share)]
    return sorted(chosen, key=lambda i: hash_share(digests[i], part=1))[:limit]


def f1_slope_per_1k_tokens(tokens: Sequence[int], f1: Sequence[float]) -> float | None:
    """Least-squares slope of dev F1 against labelled tokens, per 1,000 tokens (None below two points)."""
    if len(tokens) < 2 or len(set(tokens)) < 2:
        return None
    return float(np.polyfit(np.asarray(tokens, dtype=float) / 1000.0, np.asarray(f1, dtype=float), 1)[0])


@dataclass
class StopSignal:
    kappa: float | None  # this version against the previous one; None for the first version
    stable_versions: int  # versions in a row, ending with this one, with kappa >= threshold
    f1_slope_per_1k_tokens: float | None
    fired: bool  # "you can stop"
    threshold: float = KAPPA_THRESHOLD
    window: int = WINDOW

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def advice(self) -> str:
        slope = f"{self.f1_slope_per_1k_tokens:+.4f}" if self.f1_slope_per_1k_tokens is not None else "n/a"
        kappa = f"{self.kappa:.4f}" if self.kappa is not None else "n/a"
        verdict = "you can stop" if self.fired else "keep going"
        return (
            f"{verdict}: kappa {kappa} vs the active version, {self.stable_versions}/{self.window} versions stable "
            f"at >= {self.threshold}, dev F1 slope {slope} per 1k tokens"
        )


def stop_signal(
    kappas: Sequence[float | None],
    tokens: Sequence[int],
    dev_f1: Sequence[float | None],
    threshold: float = KAPPA_THRESHOLD,
    window: int = WINDOW,
) -> StopSignal:
    """The signal after the last of a series of versions (oldest first): ``kappas[i]`` compares version
    i with version i - 1 (None for the first), ``tokens`` and ``dev_f1`` are each version's labelled
    tokens and dev F1. The slope is fitted over the last ``window`` + 1 versions that have a dev F1."""
    if not kappas or not len(kappas) == len(tokens) == len(dev_f1):
        raise ValueError("give one kappa, token count and dev F1 per version")
    stable = 0
    for kappa in reversed(kappas):
        if kappa is None or kappa < threshold:
            break
        stable += 1
    points = [(t, f) for t, f in zip(tokens, dev_f1) if f is not None][-(window + 1) :]
    slope = f1_slope_per_1k_tokens([t for t, _ in points], [f for _, f in points])
    return StopSignal(kappas[-1], stable, slope, stable >= window, threshold, window)


def word_tags(predictions: Sequence[TaggedText]) -> list[str]:
    """The predicted BIO tag of every word of the texts, in order: what kappa compares."""
    return [tag for p in predictions for tag in spans_to_bio(p.entity_spans, p.words)]
