"""Serving predictions with a project's active model version.

The active ``ModelVersion`` row names a saved tagger directory, and a saved directory never changes.
Taggers are cached per process by that path (``load_tagger``, shared by the API and the workers'
scoring), so a request costs one small query plus inference; a new tagger is loaded only when a
different version becomes active (promotion, rollback), and the least recently used one is dropped.
Training never uses the cache: it changes its model in place.

Task confidence is the geometric mean over the text's words of the probability of each word's most
likely tag: ``exp(mean_i log max_y p(y_i))``. It lies in (0, 1]; lower means more uncertain; unlike
the plain product it does not favour long texts. A text without words scores 1.0.

The ``score`` Label Studio stores with a prediction follows the project's query strategy:
``exp(-informativeness)`` (``task_scores``), so Label Studio's uncertainty sampling (lowest score
first) serves tasks in the strategy's order. Under MNLP, the default, it is the task confidence.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session

from active_learning.strategies import MNLP, make_strategy
from active_learning.tagger import TaggedText, Tagger

from .db import get_engine
from .versions import active_version


class ModelLoadError(RuntimeError):
    """The active version's directory cannot be loaded as a tagger."""


def task_confidence(prediction: TaggedText) -> float:
    """Geometric mean of the words' most likely tag probabilities; lower is more uncertain."""
    return math.exp(-MNLP().scores([prediction])[0])


def samples_for(strategy: str) -> int:
    """MC-dropout passes ``strategy`` needs per text (0 for most)."""
    return make_strategy(strategy).mc_samples


def task_scores(strategy: str, predictions: Sequence[TaggedText], seed: int = 0) -> list[float]:
    """Label Studio's ``score`` per prediction: ``exp(-informativeness)`` under ``strategy``, in (0, 1];
    the most informative text scores lowest. ``seed`` drives the random strategy."""
    informativeness = make_strategy(strategy, seed).scores(list(predictions))
    return [math.exp(-max(0.0, float(u))) for u in informativeness]


@dataclass(frozen=True)
class ActiveModel:
    """A loaded tagger and the version it serves."""

    version_id: int
    name: str
    tagger: Tagger
    lock: threading.Lock

    def predict(self, texts: Sequence[str], mc_samples: int = 0) -> list[TaggedText]:
        with self.lock:  # one inference at a time per model: it uses every core anyway
            return self.tagger.predict(list(texts), mc_samples=mc_samples)


class TaggerCache:
    """Loaded taggers by model directory, least recently used dropped first; each with a lock, since
    one inference at a time per model is as fast as it gets (it uses every core anyway)."""

    def __init__(self, max_cached: int = 2):
        self.max_cached = max_cached
        self._taggers: OrderedDict[str, tuple[Tagger, threading.Lock]] = OrderedDict()
        self._loading = threading.Lock()

    def get(self, path: str) -> tuple[Tagger, threading.Lock]:
        with self._loading:
            if path in self._taggers:
                self._taggers.move_to_end(path)
                return self._taggers[path]
            try:
                entry = (Tagger.load(path), threading.Lock())
            except (OSError, ValueError) as error:
                raise ModelLoadError(f"cannot load the model at {path!r}: {error}") from error
            self._taggers[path] = entry
            while len(self._taggers) > self.max_cached:
                self._taggers.popitem(last=False)
            return entry


_cache = TaggerCache()


def predict_with(path: str, texts: Sequence[str], mc_samples: int = 0) -> list[TaggedText]:
    """Predictions of the saved model at ``path``, loaded through this process's cache."""
    tagger, lock = _cache.get(path)
    with lock:
        return tagger.predict(list(texts), mc_samples=mc_samples)


class Predictor:
    """A project's active model, looked up per request and loaded through a ``TaggerCache``."""

    def __init__(self, database_url: str | None = None, cache: TaggerCache | None = None):
        self.database_url = database_url
        self.cache = cache or _cache

    def active(self, project_id: int) -> ActiveModel | None:
        """The project's active model, loaded (or from the cache); None when it has none."""
        with Session(get_engine(self.database_url)) as session:
            version = active_version(session, project_id)
            if version is None:
                return None
            version_id, name, path = version.id, version.name, version.path
        tagger, lock = self.cache.get(path)
        return ActiveModel(version_id, name, tagger, lock)
