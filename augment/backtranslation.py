"""Label-preserving back-translation with MarianMT (or any seq2seq translation model)."""

from __future__ import annotations

import functools
import random
import re

from .augmenters import ContextAugmenter
from .base import Augmenter, AugmentError, bounded

DEVICE = re.compile(r"|cpu|mps|cuda(:\d{1,2})?")


class Translator:
    """One translation direction: a tokenizer and a seq2seq model, batched ``generate``."""

    def __init__(self, name_or_path: str, device: str, field: str):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path).to(device).eval()
        except (OSError, ValueError) as error:
            raise AugmentError(("params", field), f"cannot load translation model {name_or_path!r}: {error}") from error
        self.device = device

    def __call__(self, texts: list[str], n: int, params: dict) -> list[list[str]]:
        """``n`` translations per text, by beam search (the ``n`` best beams) or by sampling."""
        import torch

        out: list[list[str]] = [[] for _ in texts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        options = {"max_length": params["max_length"], "num_return_sequences": n}  # decoder tokens
        if params["sampling"]:
            options.update(do_sample=True, top_p=params["top_p"], temperature=params["temperature"], num_beams=1)
        else:
            options.update(do_sample=False, num_beams=max(params["num_beams"], n))
        for first in range(0, len(order), params["batch_size"]):
            chunk = order[first : first + params["batch_size"]]
            batch = self.tokenizer(
                [texts[i] for i in chunk], padding=True, truncation=True, max_length=params["max_length"], return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                generated = self.model.generate(**batch, **options)
            decoded = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            for j, i in enumerate(chunk):
                out[i] = decoded[j * n : (j + 1) * n]
        return out


@functools.lru_cache(maxsize=4)
def translator(name_or_path: str, device: str, field: str) -> Translator:
    """Loaded once per process: a worker serves many jobs with the same pair."""
    return Translator(name_or_path, device, field)


class BackTranslation(Augmenter):
    """Translate the context between mentions source → pivot → source and put the mentions back
    verbatim; an output whose mentions did not survive intact is dropped by ``run``.

    Back-translation: Sennrich, Haddow & Birch, "Improving Neural Machine Translation Models with
    Monolingual Data", ACL 2016. For NER, translating only the context segments between mentions:
    Yaseen & Langer, "Data Augmentation for Low-Resource Named Entity Recognition Using
    Backtranslation", ICON 2021. ``forward``/``backward`` are Hugging Face model ids or local
    directories (MarianMT: Helsinki-NLP opus-mt pairs). All segments of a batch of sources are
    translated together; beam search by default (the ``n`` best beams back), sampling for diversity.
    """

    name = "backtranslate"
    needs_accelerator = True
    keeps_mentions = True
    batch_size = 256
    defaults = {
        "forward": "Helsinki-NLP/opus-mt-en-de",
        "backward": "Helsinki-NLP/opus-mt-de-en",
        "sampling": False,
        "num_beams": 4,
        "top_p": 0.9,
        "temperature": 1.0,
        "batch_size": 32,
        "max_length": 256,
        "device": "",  # "" picks CUDA when present
    }

    @classmethod
    def check_values(cls, params, allowed):
        # Bounds that a GPU worker gets through in reasonable time and memory: Marian models take 512
        # positions; beams and batches past these only exhaust the accelerator.
        bounded(params, "num_beams", 1, 16)
        bounded(params, "batch_size", 1, 256)
        bounded(params, "max_length", 1, 512)
        if not 0.0 < params["top_p"] <= 1.0:
            raise AugmentError(("params", "top_p"), "must be in (0, 1]")
        if not 0.0 < params["temperature"] <= 10.0:
            raise AugmentError(("params", "temperature"), "must be in (0, 10]")
        if not DEVICE.fullmatch(params["device"]):
            raise AugmentError(("params", "device"), f"expected '', 'cpu', 'cuda', 'cuda:N' or 'mps', got {params['device']!r}")
        for key in ("forward", "backward"):
            if not params[key].strip():
                raise AugmentError(("params", key), "must name a model or a directory")
            if allowed is not None:
                allowed.model(key, params[key])

    def __init__(self, params, pool):
        super().__init__(params, pool)
        from active_learning.tagger import pick_device

        device = params["device"] or str(pick_device())
        self.forward = translator(params["forward"], device, "forward")
        self.backward = translator(params["backward"], device, "backward")
        self.context = ContextAugmenter(self.round_trip)

    def round_trip(self, texts: list[str], n: int, rng: random.Random) -> list[list[str]]:
        import torch

        torch.manual_seed(rng.randrange(2**31))  # sampling draws from torch's generator
        pivot = [variants[0] for variants in self.forward(texts, 1, self.params)]
        return self.backward(pivot, n, self.params)

    def augment(self, examples, n, rng):
        return self.context.augment(examples, n, rng)
