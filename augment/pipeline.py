"""``run``: one augmentation job, from sources to checked, deduplicated, attributed examples."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

from active_learning.spans import Example, Span, SpanError, validate

from .augmenters import MentionReplacement, Shuffle, Synonym, TokenReplacement
from .backtranslation import BackTranslation
from .base import AugmentError, Augmenter
from .tokens import contexts, mention_count

AUGMENTERS: dict[str, type[Augmenter]] = {
    cls.name: cls for cls in (BackTranslation, MentionReplacement, TokenReplacement, Synonym, Shuffle)
}
METHODS: dict[str, str] = {name: cls.queue for name, cls in AUGMENTERS.items()}  # method -> Celery queue


@dataclass
class Report:
    method: str
    sources: int = 0
    examples: list[Example] = field(default_factory=list)
    dropped: int = 0  # outputs that lost or mangled a mention, or whose spans were invalid
    duplicates: int = 0  # outputs equal to their source, to another output, or to a labelled text

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "sources": self.sources,
            "generated": len(self.examples) + self.dropped + self.duplicates,
            "kept": len(self.examples),
            "dropped": self.dropped,
            "duplicates": self.duplicates,
        }


def faithful(source: Example, text: str, spans: list[Span], keeps_mentions: bool) -> bool:
    """Whether an output may be emitted: its spans are valid, its mentions have the source's types
    in the source's order and are trimmed words; for context-only methods its mentions are the
    source's, verbatim, and its context holds no new copy of one (which would be an unlabelled
    mention)."""
    try:
        spans = validate(text, spans)
    except SpanError:
        return False
    if [s.label for s in spans] != [s.label for s in source.spans]:
        return False
    mentions = [text[s.start : s.end] for s in spans]
    if any(m != m.strip() for m in mentions):
        return False
    if keeps_mentions:
        if mentions != source.mentions():
            return False
        old_context = "\n".join(contexts(source))
        new_context = "\n".join(contexts(Example(text, spans)))
        if any(mention_count(new_context, m) > mention_count(old_context, m) for m in set(mentions)):
            return False
    return True


def source_id(example: Example):
    return example.meta.get("task_id", example.meta.get("id"))


def run(
    method: str,
    sources: Sequence[Example],
    *,
    n: int = 1,
    seed: int = 0,
    params: dict | None = None,
    labelled: Sequence[Example] = (),
    on_progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Augment ``sources`` with ``method``: up to ``n`` new examples each.

    Outputs that fail ``faithful`` are dropped and counted, never returned; outputs whose text equals
    their source's, another output's or a labelled example's are counted as duplicates. Each kept
    example's ``meta`` records its provenance: method, source (the source's ``task_id`` or ``id``),
    params (with defaults filled in) and seed. The same inputs and seed give the same outputs.
    ``on_progress(done, total)`` counts sources.
    """
    if method not in AUGMENTERS:
        raise AugmentError(f"method: unknown augmentation method {method!r}; known: {sorted(AUGMENTERS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AugmentError(f"n: must be a positive integer, got {n!r}")
    cls = AUGMENTERS[method]
    checked = cls.check(params)
    sources = list(sources)
    augmenter = cls(checked, [*labelled, *sources])
    rng = random.Random(seed)
    seen = {e.text for e in labelled} | {e.text for e in sources}
    report = Report(method, len(sources))
    for first in range(0, len(sources), cls.batch_size):
        batch = sources[first : first + cls.batch_size]
        for source, candidates in zip(batch, augmenter.augment(batch, n, rng)):
            for text, spans in candidates:
                if not faithful(source, text, spans, cls.keeps_mentions):
                    report.dropped += 1
                elif text in seen:
                    report.duplicates += 1
                else:
                    seen.add(text)
                    meta = {"method": method, "source": source_id(source), "params": checked, "seed": seed}
                    report.examples.append(Example(text, spans, meta))
        if on_progress:
            on_progress(min(first + len(batch), len(sources)), len(sources))
    return report
