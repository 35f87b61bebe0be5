"""Entity-level precision, recall and F1 per type: seqeval, strict IOB2 (an entity counts only if
its type and both boundaries match)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

from .corpus import word_offsets
from .spans import Example, Span, boundaries, spans_to_bio


@dataclass
class Scores:
    precision: float
    recall: float
    f1: float
    per_type: dict[str, dict[str, float]] = field(default_factory=dict)
    report: str = ""

    def as_dict(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "per_type": self.per_type}


def evaluate(gold: Sequence[Example], predicted: Sequence[Sequence[Span]]) -> Scores:
    """Score predicted spans against gold examples.

    Both sides are tagged over one segmentation of each text (its words, cut at every gold and
    predicted span boundary), so seqeval's strict mode matches exact character spans.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold examples but {len(predicted)} predictions")
    y_true, y_pred = [], []
    for example, spans in zip(gold, predicted):
        offsets = word_offsets(example.text, boundaries([*example.spans, *spans]))
        y_true.append(spans_to_bio(example.spans, offsets))
        y_pred.append(spans_to_bio(spans, offsets))
    if not any("-" in tag for tags in (*y_true, *y_pred) for tag in tags):
        return Scores(0.0, 0.0, 0.0, {}, "no entities in gold or predictions")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on types with no support; zero_division covers it
        table = classification_report(y_true, y_pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
        text = classification_report(y_true, y_pred, mode="strict", scheme=IOB2, digits=4, zero_division=0)
    micro = table.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    per_type = {
        label: {"precision": row["precision"], "recall": row["recall"], "f1": row["f1-score"], "support": int(row["support"])}
        for label, row in table.items()
        if not label.endswith(" avg")
    }
    return Scores(float(micro["precision"]), float(micro["recall"]), float(micro["f1-score"]), per_type, text)
