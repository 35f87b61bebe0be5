"""What every augmenter shares: its parameters, checked, and the shape of what it returns."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from active_learning.errors import LocatedError
from active_learning.spans import Example, Span

Candidate = tuple[str, list[Span]]  # an augmented text and its spans, before any checks


class AugmentError(LocatedError):
    """An unknown method or bad parameters. ``loc`` is the field of the request: ``("method",)``,
    ``("n",)`` or ``("params", name)``; ``reason`` says what is wrong with it."""


@dataclass(frozen=True)
class Allowed:
    """What an operator lets a request name, where requests come from others (a service): models by
    id, and local files (model directories, caches) only under ``root``. The library used directly
    takes ``None``: anything goes."""

    models: Collection[str]
    root: Path

    def model(self, key: str, value: str) -> None:
        """``value`` names an allowed model, or a directory under ``root``."""
        if value in self.models:
            return
        if not Path(value).is_absolute():
            allowed = f"{sorted(self.models)} or a directory under {self.root}"
            raise AugmentError(("params", key), f"not an allowed model: {value!r}; allowed: {allowed}")
        self.path(key, value)

    def path(self, key: str, value: str) -> None:
        """``value`` is an absolute path under ``root`` (links and ``..`` resolved first)."""
        root = self.root.resolve()
        if not Path(value).is_absolute() or not Path(value).resolve().is_relative_to(root):
            raise AugmentError(("params", key), f"must be an absolute path under {root}, got {value!r}")


def bounded(params: dict, key: str, low: float, high: float) -> None:
    """``params[key]`` lies in [low, high]; raise ``AugmentError`` naming it."""
    if not low <= params[key] <= high:
        raise AugmentError(("params", key), f"must be between {low:g} and {high:g}, got {params[key]!r}")


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
    def check(cls, params: dict | None, allowed: Allowed | None = None) -> dict:
        """The defaults overridden by ``params``; raise ``AugmentError`` naming a bad field. With
        ``allowed``, models and paths the parameters name must be allowed."""
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
        if "p" in checked:
            bounded(checked, "p", 0.0, 1.0)
        cls.check_values(checked, allowed)
        return checked

    @classmethod
    def check_values(cls, params: dict, allowed: Allowed | None) -> None:
        """Range checks beyond the types, and the models and paths against ``allowed`` (when given);
        raise ``AugmentError``."""

    def augment(self, examples: Sequence[Example], n: int, rng: random.Random) -> list[list[Candidate]]:
        """Up to ``n`` candidates per example; ``run`` checks, deduplicates and labels them."""
        raise NotImplementedError
