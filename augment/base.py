"""What every augmenter shares: its parameters, checked, and the shape of what it returns."""

from __future__ import annotations

import random
from collections.abc import Sequence

from active_learning.errors import LocatedError
from active_learning.spans import Example, Span

Candidate = tuple[str, list[Span]]  # an augmented text and its spans, before any checks


class AugmentError(LocatedError):
    """An unknown method or bad parameters. ``loc`` is the field of the request: ``("method",)``,
    ``("n",)`` or ``("params", name)``; ``reason`` says what is wrong with it."""


class Augmenter:
    """One augmentation method.

    ``defaults`` lists every parameter it takes (their types are the defaults' types).
    ``keeps_mentions``: the method rewrites only the context between mentions, so every output must
    carry the source's mentions verbatim, in order, and no new copy of one in its context.
    ``needs_accelerator``: the method runs a neural model, so its jobs belong on a GPU worker.
    """

    name = ""
    needs_accelerator = False
    keeps_mentions = False
    batch_size = 64  # sources per call to ``augment``: progress is reported between calls
    defaults: dict = {}

    def __init__(self, params: dict, pool: Sequence[Example]):
        """``params`` are checked and complete; ``pool`` (the labelled set and the sources) is
        where replacement mentions and label-wise token distributions come from."""
        self.params = params

    @classmethod
    def check(cls, params: dict | None) -> dict:
        """The defaults overridden by ``params``; raise ``AugmentError`` naming a bad field."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            raise AugmentError(("params", unknown[0]), f"unknown parameter for {cls.name}; known: {sorted(cls.defaults)}")
        checked = dict(cls.defaults)
        for key, value in params.items():
            expected = type(cls.defaults[key])
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise AugmentError(("params", key), f"expected {expected.__name__}, got {value!r}")
            checked[key] = value
        if "p" in checked and not 0.0 <= checked["p"] <= 1.0:
            raise AugmentError(("params", "p"), "must be between 0 and 1")
        cls.check_values(checked)
        return checked

    @classmethod
    def check_values(cls, params: dict) -> None:
        """Range checks beyond the types; raise ``AugmentError``."""

    def augment(self, examples: Sequence[Example], n: int, rng: random.Random) -> list[list[Candidate]]:
        """Up to ``n`` candidates per example; ``run`` checks, deduplicates and labels them."""
        raise NotImplementedError
