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
    return _toy_sentences(n, seed, PEOPLE, PLACES, FILLER, separator=" ", most_words=12)


CHINESE_PEOPLE = ["张伟", "李娜", "王芳", "刘洋", "陈静", "杨磊"]
CHINESE_PLACES = ["北京", "上海", "广州", "成都", "西安", "杭州"]
CHINESE_FILLER = ["我", "今天", "和", "朋友", "去", "了", "在", "看到", "很", "开心", "。", "，"]


def toy_chinese_corpus(n: int, seed: int = 0) -> list[Example]:
    """``toy_corpus`` in Chinese, written without spaces: one word per character, none of them in the
    tiny encoder's vocabulary (so all are [UNK] to it)."""
    return _toy_sentences(n, seed, CHINESE_PEOPLE, CHINESE_PLACES, CHINESE_FILLER, separator="", most_words=10)


def _toy_sentences(n, seed, people, places, filler, separator: str, most_words: int) -> list[Example]:
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        words, spans, cursor = [], [], 0
        for _ in range(rng.randint(4, most_words)):
            roll = rng.random()
            if roll < 0.2:
                word, label = rng.choice(people), "PER"
            elif roll < 0.35:
                word, label = rng.choice(places), "LOC"
            else:
                word, label = rng.choice(filler), None
            if label:
                spans.append(Span(cursor, cursor + len(word), label))
            words.append(word)
            cursor += len(word) + len(separator)
        examples.append(Example(separator.join(words), spans))
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


def build_tiny_marian(directory: Path, texts: list[str], emit: list[str], vocab_size: int = 0) -> Path:
    """A randomly initialised 1-layer MarianMT model with its own SentencePiece tokenizer (trained on
    ``texts``), saved like an opus-mt model so ``from_pretrained`` loads it. Its output is steered by
    the decoder's ``final_logits_bias``: it writes only the words in ``emit`` (and never stops before
    ``max_new_tokens``). Filler words make a harmless translator; a mention's word makes one that
    copies entity names into the context, whose outputs must be dropped."""
    import json

    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    words = sorted({w for text in texts for w in text.split()})
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(directory / "spm"),
        vocab_size=vocab_size or len(words) + 3,
        model_type="word" if not vocab_size else "unigram",
        hard_vocab_limit=False,
        character_coverage=1.0,
        minloglevel=2,
    )
    for name in ("source.spm", "target.spm"):
        (directory / name).write_bytes((directory / "spm.model").read_bytes())
    processor = spm.SentencePieceProcessor(model_file=str(directory / "spm.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    MarianTokenizer(*(str(directory / name) for name in ("source.spm", "target.spm", "vocab.json"))).save_pretrained(directory)
    config = MarianConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128,
        pad_token_id=vocab["<pad>"], eos_token_id=0, decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=0,
    )
    torch.manual_seed(0)
    model = MarianMTModel(config)
    bias = torch.full((1, len(vocab)), -50.0)
    for word in emit:
        bias[0, vocab["▁" + word]] = 0.0
    model.final_logits_bias.copy_(bias)
    model.save_pretrained(directory)
    return directory
