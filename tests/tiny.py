"""Tiny models and a learnable toy corpus, built here so tests need no downloaded weights."""

from __future__ import annotations

import random
from pathlib import Path

from active_learning.spans import Example, Span

PEOPLE = ["alice", "bob", "carol", "dmitri", "erin", "farah", "goran", "hana"]
PLACES = ["paris", "oslo", "lima", "cairo", "quito", "seoul", "perth", "accra"]
FILLER = ["yesterday", "today", "we", "saw", "met", "visited", "then", "went", "to", "in", "and", "the",
          "a", "very", "long", "trip", "with", "from", "back", "home", ".", ","]
LABELS = ["LOC", "PER"]


def toy_corpus(n: int, seed: int = 0) -> list[Example]:
    """Sentences where names are PER and cities are LOC: learnable from word identity alone."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        words, spans, cursor = [], [], 0
        for _ in range(rng.randint(4, 12)):
            roll = rng.random()
            word, label = (rng.choice(PEOPLE), "PER") if roll < 0.2 else (rng.choice(PLACES), "LOC") if roll < 0.35 else (rng.choice(FILLER), None)
            if label:
                spans.append(Span(cursor, cursor + len(word), label))
            words.append(word)
            cursor += len(word) + 1
        examples.append(Example(" ".join(words), spans))
    return examples


def build_tiny_encoder(directory: Path, extra_vocab: list[str] = ()) -> Path:
    """A randomly initialised 2-layer BERT with a word-level vocabulary, saved like a hub model."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    words = dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PEOPLE, *PLACES, *FILLER, *extra_vocab])
    vocab = {word: i for i, word in enumerate(words)}
    BertTokenizerFast(vocab=vocab, do_lower_case=True).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory)
    return directory
