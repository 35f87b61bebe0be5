"""Two views of a labelled text that the augmenters edit, both turned back into character spans.

- ``Tokens``: the text's words, each with the whitespace after it and the mention it belongs to.
  Token-level augmenters (Dai & Adel 2020) swap word texts and keep the gaps, so the spans are
  re-derived from which words belong to which mention.
- ``contexts``/``with_contexts``: the text cut at its mentions into the context segments between
  them. A text transformation (a translator, an nlpaug augmenter) rewrites only those segments and
  the mentions are put back verbatim (Yaseen & Langer 2021).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from active_learning.corpus import word_offsets
from active_learning.spans import Example, Span, bio_to_spans, boundaries


@dataclass
class Token:
    text: str
    gap: str  # what follows the word: whitespace, or nothing
    entity: int | None = None  # index of the mention the word belongs to
    label: str | None = None  # that mention's type


@dataclass
class Tokens:
    lead: str  # whitespace before the first word
    words: list[Token] = field(default_factory=list)

    def tags(self) -> list[str]:
        """IOB2 tag per word."""
        out, previous = [], None
        for word in self.words:
            out.append("O" if word.entity is None else ("I-" if word.entity == previous else "B-") + word.label)
            previous = word.entity
        return out

    def render(self) -> tuple[str, list[Span]]:
        """The text and its spans: consecutive words of one mention make one span."""
        text, offsets = self.lead, []
        for word in self.words:
            offsets.append((len(text), len(text) + len(word.text)))
            text += word.text + word.gap
        return text, bio_to_spans(self.tags(), offsets)

    def segments(self) -> list[list[int]]:
        """Indices of words grouped into runs of one label: each run is a mention or an O stretch."""
        runs: list[list[int]] = []
        for i, word in enumerate(self.words):
            if runs and self.words[runs[-1][-1]].entity == word.entity:
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs


def tokenize(example: Example) -> Tokens:
    """Words of the text (cut at every span boundary), with their gaps and mentions."""
    text, spans = example.text, example.spans
    offsets = word_offsets(text, boundaries(spans))
    if not offsets:
        return Tokens(text)
    words, k = [], 0
    for i, (start, end) in enumerate(offsets):
        while k < len(spans) and spans[k].end <= start:
            k += 1
        inside = k < len(spans) and spans[k].start <= start
        gap = text[end : offsets[i + 1][0] if i + 1 < len(offsets) else len(text)]
        words.append(Token(text[start:end], gap, k if inside else None, spans[k].label if inside else None))
    return Tokens(text[: offsets[0][0]], words)


def words_of(mention: str, entity: int, label: str, gap: str) -> list[Token]:
    """A mention's surface text as the words of one entity; the last word is followed by ``gap``."""
    offsets = word_offsets(mention)
    return [
        Token(mention[s:e], mention[e : offsets[i + 1][0]] if i + 1 < len(offsets) else gap, entity, label)
        for i, (s, e) in enumerate(offsets)
    ]


def with_word(tokens: Tokens, index: int, text: str) -> Tokens:
    words = list(tokens.words)
    words[index] = replace(words[index], text=text)
    return Tokens(tokens.lead, words)


# ---- context segments --------------------------------------------------------------------------


def contexts(example: Example) -> list[str]:
    """The text outside the mentions: ``len(spans) + 1`` segments, in order."""
    bounds = [0, *(o for s in example.spans for o in (s.start, s.end)), len(example.text)]
    return [example.text[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]


def with_contexts(example: Example, segments: list[str]) -> tuple[str, list[Span]]:
    """Put ``example``'s mentions, verbatim, between new context ``segments``."""
    text, spans = segments[0], []
    for span, segment in zip(example.spans, segments[1:]):
        start = len(text)
        text += example.text[span.start : span.end]
        spans.append(Span(start, len(text), span.label))
        text += segment
    return text, spans


_WORD_CHAR = re.compile(r"\w")


def transformable(segment: str) -> bool:
    """Only segments with a word in them are worth rewriting (not a lone comma or space)."""
    return bool(_WORD_CHAR.search(segment))


def rewrap(old: str, new_core: str, at_start: bool, at_end: bool) -> str:
    """Give a rewritten segment core the whitespace that framed the old one (so mentions stay
    separated from their context exactly as before); an emptied segment keeps one separator."""
    lead = old[: len(old) - len(old.lstrip())]
    trail = old[len(old.rstrip()) :]
    core = new_core.strip()
    if core:
        return lead + core + trail
    return "" if at_start or at_end else (lead or trail)


def mention_count(text: str, mention: str) -> int:
    """Occurrences of ``mention`` in ``text`` as whole words."""
    return len(re.findall(rf"(?<!\w){re.escape(mention)}(?!\w)", text))
