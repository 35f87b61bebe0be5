"""The one representation: a text and its entities as character spans.

A labelled text is ``text + [(start, end, label)]`` with ``end`` exclusive, exactly what Label Studio
stores. BIO tags exist only at two edges: column files (CoNLL) and the tagger's word labels. Both are
converted here, through the character offsets of their tokens, so there is one conversion each way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import NamedTuple

from .errors import LocatedError


class Span(NamedTuple):
    start: int
    end: int
    label: str


class SpanError(LocatedError):
    """A span or text that cannot be stored. ``loc`` is the offending field within the example:
    ``("text",)``, ``("spans", 2)`` or ``("spans",)`` (for two that overlap); ``reason`` says why."""


@dataclass
class Example:
    """A text with its entity spans, sorted by start. ``meta`` carries ids and provenance."""

    text: str
    spans: list[Span] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spans = sorted(Span(int(s), int(e), str(lab)) for s, e, lab in self.spans)

    def mentions(self) -> list[str]:
        return [self.text[s.start : s.end] for s in self.spans]


def validate(text: str, spans: Iterable[Sequence], labels: Iterable[str] | None = None) -> list[Span]:
    """Check a text and its spans; return them as sorted ``Span`` tuples or raise ``SpanError``.

    Rejected: empty text, non-integer offsets, span out of range, start >= end, overlapping spans,
    and, when ``labels`` is given, a label outside it.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpanError(("text",), "must be a non-empty string")
    known = set(labels) if labels is not None else None
    checked = []
    for i, raw in enumerate(spans):
        try:
            start, end, label = raw
        except (TypeError, ValueError):
            raise SpanError(("spans", i), f"expected [start, end, label], got {raw!r}") from None
        if not all(isinstance(x, Integral) and not isinstance(x, bool) for x in (start, end)):
            raise SpanError(("spans", i), f"start and end must be integers, got {start!r}, {end!r}")
        start, end = int(start), int(end)
        if not 0 <= start < end <= len(text):
            if start >= end:
                raise SpanError(("spans", i), f"start ({start}) must be less than end ({end})")
            raise SpanError(("spans", i), f"({start}, {end}) is out of range for a text of {len(text)} characters")
        if not isinstance(label, str) or not label:
            raise SpanError(("spans", i), "label must be a non-empty string")
        if known is not None and label not in known:
            raise SpanError(("spans", i), f"unknown label {label!r}; known labels: {sorted(known)}")
        checked.append(Span(start, end, label))
    checked.sort()
    for a, b in zip(checked, checked[1:]):
        if b.start < a.end:
            raise SpanError(("spans",), f"{tuple(a)} and {tuple(b)} overlap")
    return checked


MAX_META_DEPTH = 20  # levels of nested objects and lists; serialisers refuse a few hundred
MAX_META_CHARACTERS = 100_000  # of the meta written as JSON


def storable_string(value: str) -> str | None:
    """Why no database can store ``value`` (a NUL, a lone UTF-16 surrogate), or None when it can."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (lone surrogate)"
    return None


def validate_meta(meta: object) -> dict:
    """Check a task's ``meta`` before it is stored; return it as a dict or raise ``SpanError``.

    It must be a JSON object (string keys; strings, finite numbers, booleans, null, lists, objects)
    at most ``MAX_META_DEPTH`` levels deep and ``MAX_META_CHARACTERS`` long as JSON, with no NUL or
    lone surrogate in any key or string: what the database stores and every response can serve.
    Walked without recursion, so no nesting can exhaust the stack.
    """
    if not isinstance(meta, Mapping):
        raise SpanError(("meta",), f"must be a JSON object, got {type(meta).__name__}")
    pending: list[tuple[tuple, object, int]] = [(("meta",), meta, 1)]
    while pending:
        loc, value, depth = pending.pop()
        if isinstance(value, str):
            problem = storable_string(value)
            if problem:
                raise SpanError(loc, problem)
        elif isinstance(value, float) and not math.isfinite(value):
            raise SpanError(loc, f"{value} is not a JSON number")
        elif isinstance(value, (Mapping, list, tuple)):
            if depth > MAX_META_DEPTH:
                raise SpanError(loc, f"nested deeper than {MAX_META_DEPTH} levels")
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            for key, item in items:
                if isinstance(value, Mapping):
                    if not isinstance(key, str):
                        raise SpanError(loc, f"keys must be strings, got {key!r}")
                    problem = storable_string(key)
                    if problem:
                        raise SpanError(loc, f"key {key!r} {problem}")
                pending.append(((*loc, key), item, depth + 1))
        elif not (value is None or isinstance(value, (bool, int, float))):
            raise SpanError(loc, f"{type(value).__name__} is not a JSON value")
    if len(json.dumps(meta, ensure_ascii=False)) > MAX_META_CHARACTERS:
        raise SpanError(("meta",), f"longer than {MAX_META_CHARACTERS} characters as JSON")
    return dict(meta)


def boundaries(spans: Iterable[Span]) -> set[int]:
    """Every start and end of ``spans``: where words are cut so that no span boundary falls inside one."""
    return {offset for span in spans for offset in (span.start, span.end)}


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 (an entity starts with I-, B- only between two same-type entities) to IOB2.

    Also repairs IOB2 files with a stray I- after O or after another type: that I- starts an entity.
    """
    out = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out


def bio_chunks(tags: Sequence[str]) -> Iterator[tuple[int, int, str]]:
    """The entities of IOB2 ``tags`` as ``(first, last + 1, label)`` token indices; a stray I- (after
    O or after another type) starts one. The one place where a run of tags becomes an entity."""
    current: list | None = None  # [first, last + 1, label]
    for i, tag in enumerate(tags):
        kind, _, label = tag.partition("-")
        if kind == "I" and current is not None and current[2] == label:
            current[1] = i + 1
            continue
        if current is not None:
            yield tuple(current)
            current = None
        if kind in ("B", "I"):
            current = [i, i + 1, label]
    if current is not None:
        yield tuple(current)


def bio_to_spans(tags: Sequence[str], offsets: Sequence[tuple[int, int]]) -> list[Span]:
    """Turn IOB2 tags over tokens with character ``offsets`` into spans (a stray I- starts one)."""
    return [Span(offsets[first][0], offsets[last - 1][1], label) for first, last, label in bio_chunks(tags)]


def spans_to_bio(spans: Sequence[Span], offsets: Sequence[tuple[int, int]]) -> list[str]:
    """Tag tokens (character ``offsets``, in text order) from ``spans`` in IOB2.

    A token that only partly overlaps a span (the span boundary falls inside the token) still gets
    the span's label, so no entity is silently dropped.
    """
    tags = ["O"] * len(offsets)
    i = 0
    for span in sorted(spans):
        while i < len(offsets) and offsets[i][1] <= span.start:
            i += 1
        inside = False
        while i < len(offsets) and offsets[i][0] < span.end:
            if offsets[i][1] > offsets[i][0]:
                tags[i] = ("I-" if inside else "B-") + span.label
                inside = True
            i += 1
    return tags

