"""``run``: one augmentation job, from sources to checked, deduplicated, attributed examples."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from active_learning.spans import Example, Span, SpanError, validate

from .augmenters import MentionReplacement, Shuffle, Synonym, TokenReplacement
from .backtranslation import BackTranslation
from .base import Allowed, Augmenter, AugmentError
from .tokens import contexts, mention_count

# Method name → augmenter class (its docstring describes it): the CLI's and the API's choices.
AUGMENTERS: dict[str, type[Augmenter]] = {
    cls.name: cls for cls in (BackTranslation, MentionReplacement, TokenReplacement, Synonym, Shuffle)
}


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


_WORD = re.compile(r"\w+")


class KnownMentions:
    """Mention strings of the labelled set, indexed by their first word, to spot a new, unlabelled
    copy of one in rewritten context (a translator that echoes "Paris" into the context)."""

    def __init__(self, examples: Sequence[Example]):
        self.by_word: dict[str, set[str]] = {}
        for example in examples:
            for mention in example.mentions():
                words = _WORD.findall(mention)
                if words:
                    self.by_word.setdefault(words[0], set()).add(mention)

    def candidates(self, text: str) -> set[str]:
        return {m for word in set(_WORD.findall(text)) for m in self.by_word.get(word, ())}


def faithful(source: Example, text: str, spans: list[Span], keeps_mentions: bool, known: KnownMentions | None = None) -> bool:
    """Whether an output may be emitted: its spans are valid and its mentions have the source's
    types in the source's order and are trimmed. For context-only methods also: its mentions are the
    source's, verbatim, and its context holds no new copy of one of them or of a ``known`` mention
    (that would be an entity left unlabelled)."""
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
        watched = set(mentions) | (known.candidates(new_context) if known else set())
        if any(mention_count(new_context, m) > mention_count(old_context, m) for m in watched):
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
    """Augment ``sources`` with ``method`` (a key of ``AUGMENTERS``): up to ``n`` new examples each.

    ``params`` override the method's defaults; a bad one raises ``AugmentError`` naming it.
    ``labelled`` is the project's labelled set: replacement mentions and token distributions come
    from it (and the sources), and outputs equal to one of its texts are duplicates.
    """
    checked = check(method, n, params)
    sources = list(sources)
    augmenter = AUGMENTERS[method](checked, [*labelled, *sources])
    return apply(augmenter, sources, n=n, seed=seed, labelled=labelled, on_progress=on_progress)


def check(method: str, n: int, params: dict | None, allowed: Allowed | None = None) -> dict:
    """The method's parameters with defaults filled in; ``AugmentError`` names a bad field. Loads no
    model, so a service can refuse a bad request before queueing it; with ``allowed``, the models and
    paths it names must be allowed."""
    if method not in AUGMENTERS:
        raise AugmentError(("method",), f"unknown augmentation method {method!r}; known: {sorted(AUGMENTERS)}")
    _check_n(n)
    return AUGMENTERS[method].check(params, allowed)


def apply(
    augmenter: Augmenter,
    sources: Sequence[Example],
    *,
    n: int = 1,
    seed: int = 0,
    labelled: Sequence[Example] = (),
    on_progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Run a constructed ``augmenter`` (e.g. a ``ContextAugmenter`` around an nlpaug augmenter).

    Outputs that fail ``faithful`` are dropped and counted, never returned; outputs whose text equals
    their source's, another output's or a labelled example's are counted as duplicates. Each kept
    example's ``meta`` records its provenance: method, source (the source's ``task_id`` or ``id``),
    params (defaults filled in) and seed. The same inputs and seed give the same outputs.
    ``on_progress(done, total)`` counts sources.
    """
    _check_n(n)
    sources = list(sources)
    rng = random.Random(seed)
    known = KnownMentions([*labelled, *sources]) if augmenter.keeps_mentions else None
    seen = {e.text for e in labelled} | {e.text for e in sources}
    report = Report(augmenter.name, len(sources))
    for first in range(0, len(sources), augmenter.batch_size):
        batch = sources[first : first + augmenter.batch_size]
        for source, candidates in zip(batch, augmenter.augment(batch, n, rng)):
            for text, spans in candidates:
                if not faithful(source, text, spans, augmenter.keeps_mentions, known):
                    report.dropped += 1
                elif text in seen:
                    report.duplicates += 1
                else:
                    seen.add(text)
                    meta = {"method": augmenter.name, "source": source_id(source), "params": augmenter.params, "seed": seed}
                    report.examples.append(Example(text, spans, meta))
        if on_progress:
            on_progress(first + len(batch), len(sources))
    return report


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AugmentError(("n",), f"must be a positive integer, got {n!r}")
