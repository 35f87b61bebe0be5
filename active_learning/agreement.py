"""Span-level agreement between annotators, and the tasks whose annotators disagree.

Entity F1 between two annotations of the same text, per label, with two ways to count a match:

- ``exact``: same start, end and label (the strict CoNLL rule);
- ``overlap``: same label and at least one shared character, each span matched at most once.
  The one-to-one pairing is a maximum matching (Hungarian assignment: as many pairs as possible,
  then the most shared characters), not "any overlap counts", so one long span cannot match
  three short ones and nested or overlapping spans in an annotation are counted correctly.

F1 between A and B is ``2 * matched / (|A| + |B|)``: the same whichever annotation is called the
reference, so agreement is order-insensitive. Counts (not ratios) are kept per task, so corpus
figures are micro averages that add up exactly.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from .spans import Span

Mode = Literal["exact", "overlap"]
MODES: tuple[Mode, ...] = ("exact", "overlap")


def _overlap(a: Span, b: Span) -> int:
    return max(0, min(a.end, b.end) - max(a.start, b.start))


def match_spans(a: Sequence[Span], b: Sequence[Span], same_label: bool = True) -> list[tuple[int, int]]:
    """Pair spans of ``a`` with overlapping spans of ``b``, each span used at most once.

    Returns ``(index in a, index in b)`` pairs: the largest possible number of pairs and, among
    those, the most shared characters. With ``same_label`` only spans of one label may pair (the
    agreement rule); without it any overlapping spans may (to tell a wrong type from a miss).
    """
    a, b = [Span(*s) for s in a], [Span(*s) for s in b]
    if not a or not b:
        return []
    shared = np.array([[_overlap(x, y) if (not same_label or x.label == y.label) else 0 for y in b] for x in a])
    if not shared.any():
        return []
    # Every possible pair is worth 1 plus a fraction (< 1 over all pairs) for its shared characters,
    # so the assignment first maximises the number of pairs, then the characters they share.
    weight = np.where(shared > 0, 1.0 + shared / (shared.sum() + 1.0), 0.0)
    rows, columns = linear_sum_assignment(weight, maximize=True)
    return [(int(i), int(j)) for i, j in zip(rows, columns) if shared[i, j] > 0]


@dataclass
class Counts:
    """Spans in each of two annotations and how many of them matched."""

    matched: int = 0
    first: int = 0
    second: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.matched + other.matched, self.first + other.first, self.second + other.second)

    @property
    def f1(self) -> float | None:
        """``2 * matched / (first + second)``; None when neither annotation has a span."""
        total = self.first + self.second
        return 2 * self.matched / total if total else None

    def as_dict(self) -> dict:
        return {"matched": self.matched, "first": self.first, "second": self.second, "f1": self.f1}


def compare(a: Sequence[Span], b: Sequence[Span], mode: Mode = "exact") -> dict[str, Counts]:
    """Per-label counts of two annotations of one text under ``mode`` ("exact" or "overlap")."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    a, b = [Span(*s) for s in a], [Span(*s) for s in b]
    counts: dict[str, Counts] = {}
    for label in sorted({s.label for s in (*a, *b)}):
        mine = [s for s in a if s.label == label]
        theirs = [s for s in b if s.label == label]
        if mode == "exact":
            matched = len(set(mine) & set(theirs))
        else:
            matched = len(match_spans(mine, theirs))
        counts[label] = Counts(matched, len(mine), len(theirs))
    return counts


def total(counts: Mapping[str, Counts]) -> Counts:
    return sum(counts.values(), Counts())


def _summary(counts: Mapping[str, Counts]) -> dict:
    return {"f1": total(counts).f1, "per_label": {label: c.as_dict() for label, c in sorted(counts.items())}}


def pair_key(a: Hashable, b: Hashable) -> tuple:
    """The one name of an annotator pair, whichever order it is given in."""
    return tuple(sorted((a, b), key=str))


@dataclass
class PairAgreement:
    """Agreement of two annotators, over the tasks both annotated."""

    annotators: tuple
    tasks: int = 0
    per_label: dict[str, dict[str, Counts]] = field(default_factory=lambda: {m: {} for m in MODES})

    def add(self, counts: Mapping[str, Mapping[str, Counts]]) -> None:
        self.tasks += 1
        for mode in MODES:
            for label, c in counts[mode].items():
                self.per_label[mode][label] = self.per_label[mode].get(label, Counts()) + c

    def f1(self, mode: Mode = "exact", label: str | None = None) -> float | None:
        """Micro F1 over all labels, or for one ``label``; None when neither annotator used it."""
        if label is not None:
            return self.per_label[mode].get(label, Counts()).f1
        return total(self.per_label[mode]).f1

    def as_dict(self) -> dict:
        return {
            "annotators": list(self.annotators),
            "tasks": self.tasks,
            **{mode: _summary(self.per_label[mode]) for mode in MODES},
        }


@dataclass
class TaskAgreement:
    """How far the annotators of one task agree.

    ``disagreement`` is 1 minus the mean exact-match F1 over the task's annotator pairs (two empty
    annotations agree fully): 0 when all annotations are identical, 1 when no two share a span.
    """

    task: Hashable
    annotators: list
    pairs: dict[tuple, dict[str, dict[str, Counts]]]  # pair -> mode -> label -> counts
    disagreement: float
    flagged: bool

    def as_dict(self) -> dict:
        return {
            "task": self.task,
            "annotators": self.annotators,
            "disagreement": self.disagreement,
            "flagged": self.flagged,
            "pairs": [
                {"annotators": list(pair), **{mode: _summary(counts[mode]) for mode in MODES}} for pair, counts in self.pairs.items()
            ],
        }


def task_agreement(task: Hashable, annotations: Mapping[Hashable, Sequence[Span]], threshold: float = 0.0) -> TaskAgreement:
    """Agreement on one task from ``{annotator: spans}``; flagged when ``disagreement > threshold``.

    With the default threshold any difference between two annotators makes the task a review
    candidate. A task with fewer than two annotators has nothing to disagree about.
    """
    annotators = sorted(annotations, key=str)
    pairs = {}
    for a, b in combinations(annotators, 2):
        pairs[pair_key(a, b)] = {mode: compare(annotations[a], annotations[b], mode) for mode in MODES}
    f1s = [f if (f := total(counts["exact"]).f1) is not None else 1.0 for counts in pairs.values()]
    disagreement = 1.0 - float(np.mean(f1s)) if f1s else 0.0
    return TaskAgreement(task, annotators, pairs, disagreement, disagreement > threshold)


@dataclass
class AgreementReport:
    """Agreement over a corpus: per annotator pair (and per label inside each) and per task."""

    pairs: dict[tuple, PairAgreement]
    tasks: list[TaskAgreement]

    @property
    def flagged(self) -> list[TaskAgreement]:
        """Tasks whose annotators disagree, most disagreement first: review candidates."""
        return sorted((t for t in self.tasks if t.flagged), key=lambda t: -t.disagreement)

    def f1(self, mode: Mode = "exact", label: str | None = None) -> float | None:
        """Micro F1 over all pairs and tasks (optionally for one label)."""
        counts = Counts()
        for pair in self.pairs.values():
            per_label = pair.per_label[mode]
            counts += per_label.get(label, Counts()) if label is not None else total(per_label)
        return counts.f1

    def as_dict(self) -> dict:
        labels = sorted({label for p in self.pairs.values() for label in p.per_label["overlap"]})
        return {
            "f1": {mode: self.f1(mode) for mode in MODES},
            "per_label": {label: {mode: self.f1(mode, label) for mode in MODES} for label in labels},
            "pairs": [p.as_dict() for p in self.pairs.values()],
            "tasks": len(self.tasks),
            "flagged": [t.as_dict() for t in self.flagged],
        }


def agreement(tasks: Iterable[tuple[Hashable, Mapping[Hashable, Sequence[Span]]]], threshold: float = 0.0) -> AgreementReport:
    """Agreement over ``(task id, {annotator: spans})`` items; tasks with one annotator are skipped."""
    pairs: dict[tuple, PairAgreement] = {}
    scored = []
    for task, by_annotator in tasks:
        if len(by_annotator) < 2:
            continue
        result = task_agreement(task, by_annotator, threshold)
        scored.append(result)
        for pair, counts in result.pairs.items():
            pairs.setdefault(pair, PairAgreement(pair)).add(counts)
    return AgreementReport(dict(sorted(pairs.items(), key=lambda item: str(item[0]))), scored)
