"""The simple augmenters for NER, and the context mechanism that wraps any text augmenter.

Mention replacement, label-wise token replacement, synonym replacement and shuffle within segments
are the four of Dai & Adel, "An Analysis of Simple Data Augmentation for Named Entity Recognition",
COLING 2020. Each decides per word (or per mention, or per segment) with probability ``p`` whether
to change it, so the label sequence survives by construction.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import wordnet
from .base import Augmenter, Candidate
from .tokens import Tokens, contexts, rewrap, tokenize, transformable, with_contexts, with_word, words_of


class WordEditor(Augmenter):
    """An augmenter that edits a text's words (``tokenize``): ``edit`` makes one output at a time."""

    def augment(self, examples, n, rng):
        return [[self.edit(tokenize(e), rng) for _ in range(n)] for e in examples]

    def edit(self, tokens: Tokens, rng: random.Random) -> Candidate:
        raise NotImplementedError


class MentionReplacement(WordEditor):
    """Replace each mention, with probability ``p``, by another mention of the same type taken from
    the labelled set (and the sources). Dai & Adel 2020, "mention replacement" (MR)."""

    name = "mention_replacement"
    defaults = {"p": 0.5}

    def __init__(self, params, pool):
        super().__init__(params, pool)
        mentions: dict[str, set[str]] = defaultdict(set)
        for example in pool:
            for span, mention in zip(example.spans, example.mentions()):
                mentions[span.label].add(mention)
        self.mentions = {label: sorted(found) for label, found in mentions.items()}

    def edit(self, tokens: Tokens, rng: random.Random) -> Candidate:
        words = []
        for run in tokens.segments():
            first, last = tokens.words[run[0]], tokens.words[run[-1]]
            if first.entity is not None and rng.random() < self.params["p"]:
                current = "".join(tokens.words[i].text + tokens.words[i].gap for i in run[:-1]) + last.text
                other = self._other(first.label, current, rng)
                if other is not None:
                    words += words_of(other, first.entity, first.label, last.gap)
                    continue
            words += [tokens.words[i] for i in run]
        return Tokens(tokens.lead, words).render()

    def _other(self, label: str, current: str, rng: random.Random) -> str | None:
        """A uniformly drawn ``label`` mention other than ``current`` (None if there is none)."""
        known = self.mentions.get(label, [])
        at = bisect_left(known, current)
        present = int(at < len(known) and known[at] == current)
        if len(known) - present < 1:
            return None
        k = rng.randrange(len(known) - present)
        return known[k + 1 if present and k >= at else k]


class TokenReplacement(WordEditor):
    """Replace each word, with probability ``p``, by a word drawn from the words that carry the same
    IOB2 tag in the labelled set, by frequency. Dai & Adel 2020, "label-wise token replacement"
    (LwTR)."""

    name = "token_replacement"
    defaults = {"p": 0.3}

    def __init__(self, params, pool):
        super().__init__(params, pool)
        self.words: dict[str, list[str]] = defaultdict(list)
        for example in pool:
            tokens = tokenize(example)
            for word, tag in zip(tokens.words, tokens.tags()):
                self.words[tag].append(word.text)

    def edit(self, tokens: Tokens, rng: random.Random) -> Candidate:
        for i, tag in enumerate(tokens.tags()):
            if rng.random() < self.params["p"] and self.words.get(tag):
                tokens = with_word(tokens, i, rng.choice(self.words[tag]))
        return tokens.render()


class Shuffle(WordEditor):
    """Cut the words into runs of one label (each mention, each stretch of O words) and shuffle the
    words within each run with probability ``p``. Dai & Adel 2020, "shuffle within segments" (SiS)."""

    name = "shuffle"
    defaults = {"p": 0.3}

    def edit(self, tokens: Tokens, rng: random.Random) -> Candidate:
        words = list(tokens.words)
        for run in tokens.segments():
            if len(run) > 1 and rng.random() < self.params["p"]:
                texts = [words[i].text for i in run]
                rng.shuffle(texts)
                for i, text in zip(run, texts):
                    words[i] = replace(words[i], text=text)
        return Tokens(tokens.lead, words).render()


# Function words WordNet knows under unrelated senses ("a" the vitamin, "in" the inch, "was" → "exist").
STOPWORDS = frozenset(
    "a an the and or but if of in on at to for from by with as into onto over under about after before "
    "is are was were be been being am do does did has have had will would shall should can could may "
    "might must not no it its he she they we you i me him her them us his their our your this that "
    "these those there here who whom which what when where why how than then so also".split()
)


class Synonym(WordEditor):
    """Replace each word outside the mentions, with probability ``p``, by one of its WordNet
    synonyms (any part of speech; multi-word synonyms are spliced in as O words).
    Dai & Adel 2020, "synonym replacement" (SR).

    WordNet is read directly through nltk's WordNet reader from Debian's ``wordnet-base`` files
    (``augment.wordnet``), not through nlpaug's ``SynonymAug``: that one also needs nltk's POS-tagger
    data, which cannot be downloaded here. Function words are never replaced.
    """

    name = "synonym"
    keeps_mentions = True
    defaults = {"p": 0.3, "wordnet_cache": ""}

    @classmethod
    def check_values(cls, params, allowed):
        if allowed is not None and params["wordnet_cache"]:
            allowed.path("wordnet_cache", params["wordnet_cache"])  # WordNet is copied there

    def __init__(self, params, pool):
        super().__init__(params, pool)
        self.wordnet = wordnet.reader(Path(params["wordnet_cache"]) if params["wordnet_cache"] else None)
        self.cache: dict[str, list[str]] = {}

    def synonyms(self, word: str) -> list[str]:
        key = word.lower()
        if key not in self.cache:
            found = set()
            if key.isalpha() and len(key) > 2 and key not in STOPWORDS:
                for synset in self.wordnet.synsets(key):
                    # capitalised lemmas are names ("lamb" → "Charles Lamb"): an O word must stay O
                    found.update(lemma.name().replace("_", " ") for lemma in synset.lemmas() if lemma.name()[:1].islower())
            self.cache[key] = sorted(s for s in found if s.lower() != key)
        return self.cache[key]

    def edit(self, tokens: Tokens, rng: random.Random) -> Candidate:
        for i, word in enumerate(tokens.words):
            if word.entity is None and rng.random() < self.params["p"]:
                choices = self.synonyms(word.text)
                if choices:
                    choice = rng.choice(choices)
                    tokens = with_word(tokens, i, choice[:1].upper() + choice[1:] if word.text[:1].isupper() else choice)
        return tokens.render()


class ContextAugmenter(Augmenter):
    """Run any text transformation on the context between mentions only and put the mentions back
    verbatim, the way Yaseen & Langer ("Data Augmentation for Low-Resource Named Entity Recognition
    Using Backtranslation", ICON 2021) back-translate. ``transform(texts, n, rng)`` returns ``n``
    rewrites per text. ``from_text_augmenter`` wraps an nlpaug augmenter (anything with
    ``augment(text)``), e.g. ``nlpaug.augmenter.char.RandomCharAug()``.
    """

    name = "context"
    keeps_mentions = True

    def __init__(self, transform: Callable[[list[str], int, random.Random], list[list[str]]], params: dict | None = None):
        super().__init__(params or {}, ())
        self.transform = transform

    @classmethod
    def from_text_augmenter(cls, augmenter) -> ContextAugmenter:
        def transform(texts, n, rng):
            random.seed(rng.randrange(2**32))  # nlpaug draws from the global random module
            return [[_first(augmenter.augment(text)) for _ in range(n)] for text in texts]

        return cls(transform)

    def augment(self, examples, n, rng):
        segments = [contexts(e) for e in examples]
        wanted = sorted({s.strip() for parts in segments for s in parts if transformable(s)})
        rewrites = dict(zip(wanted, self.transform(wanted, n, rng))) if wanted else {}
        out = []
        for example, parts in zip(examples, segments):
            candidates = []
            for k in range(n):
                new = [
                    rewrap(s, rewrites[s.strip()][k], i == 0, i == len(parts) - 1) if transformable(s) else s
                    for i, s in enumerate(parts)
                ]
                candidates.append(with_contexts(example, new))
            out.append(candidates)
        return out


def _first(output) -> str:
    """nlpaug returns a list of texts (or, in old versions, one text)."""
    return output[0] if isinstance(output, list) else output
