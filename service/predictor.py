"""Serving predictions with a project's active model version.

The active ``ModelVersion`` row names a saved tagger directory, and a saved directory never changes.
Taggers are cached per process by that path (``load_tagger``, shared by the API and the workers'
scoring), so a request costs one small query plus inference; a new tagger is loaded only when a
different version becomes active (promotion, rollback), and the least recently used one is dropped.
Training never uses the cache: it changes its model in place.

The forward pass runs in ONNX Runtime (the version's int8 model) when ``NERLOOP_INFERENCE`` and the
version's recorded check allow it (``active_learning.onnx_tagger.use_onnx``), in PyTorch otherwise;
MC-dropout passes (BALD) always run in PyTorch, the deterministic pass of those requests too, so both
come from one model.

Task confidence is the geometric mean over the text's words of the probability of each word's most
likely tag: ``exp(mean_i log max_y p(y_i))``. It lies in (0, 1]; lower means more uncertain; unlike
the plain product it does not favour long texts. A text without words scores 1.0.

The ``score`` Label Studio stores with a prediction follows the project's query strategy:
``exp(-informativeness)`` (``task_scores``), so Label Studio's uncertainty sampling (lowest score
first) serves tasks in the strategy's order. Under MNLP, the default, it is the task confidence.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sqlmodel import Session

from active_learning.onnx_tagger import INT8_FILE, OnnxLogits, use_onnx
from active_learning.strategies import MNLP, make_strategy
from active_learning.tagger import TaggedText, Tagger

from .db import get_engine
from .errors import Unavailable
from .settings import get_settings
from .versions import active_version_path

# A request's texts are predicted in batches of about this many characters, taking the model's lock
# per batch, so a small request waits for one batch of a large one, not for all of it.
BATCH_CHARACTERS = 10_000
MODEL_WAIT_SECONDS = 30.0  # longer than that behind other requests: 503, and the client retries


log = logging.getLogger(__name__)


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
    onnx: OnnxLogits | None = None  # the int8 model's session, when this version serves with it

    def predict(self, texts: Sequence[str], mc_samples: int = 0) -> list[TaggedText]:
        """Predictions for ``texts``, one inference at a time per model (it uses every core anyway);
        ``Unavailable`` when the model stays busy with others' batches for ``MODEL_WAIT_SECONDS``."""
        out: list[TaggedText] = []
        for batch in character_batches(texts, BATCH_CHARACTERS):
            if not self.lock.acquire(timeout=MODEL_WAIT_SECONDS):
                raise Unavailable.one((), f"the model is busy with other predictions for over {MODEL_WAIT_SECONDS:.0f} s; retry shortly")
            try:
                out.extend(self.tagger.predict(batch, mc_samples=mc_samples, logits=forward_pass(self.onnx, mc_samples)))
            finally:
                self.lock.release()
        return out


def character_batches(texts: Sequence[str], limit: int) -> list[list[str]]:
    """``texts`` in order, cut into batches of at most ``limit`` characters (a longer text alone)."""
    batches: list[list[str]] = []
    size = limit  # start a new batch with the first text
    for text in texts:
        if size + len(text) > limit:
            batches.append([])
            size = 0
        batches[-1].append(text)
        size += len(text)
    return batches


def forward_pass(onnx: OnnxLogits | None, mc_samples: int) -> OnnxLogits | None:
    """The ``logits`` to give ``Tagger.predict``: the ONNX session, except under MC dropout (PyTorch)."""
    return onnx if onnx is not None and not mc_samples else None


class LoadedModel(NamedTuple):
    tagger: Tagger
    lock: threading.Lock
    onnx: OnnxLogits | None  # set when the version serves with its int8 model


class TaggerCache:
    """Loaded taggers by model directory, least recently used dropped first; each with a lock, since
    one inference at a time per model is as fast as it gets (it uses every core anyway), and with its
    int8 ONNX session when ``NERLOOP_INFERENCE`` (``inference``) and the version's check allow."""

    def __init__(self, max_cached: int = 2, inference: str | None = None):
        self.max_cached = max_cached
        self.inference = inference
        self._taggers: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading = threading.Lock()

    def get(self, path: str) -> LoadedModel:
        with self._loading:
            if path in self._taggers:
                self._taggers.move_to_end(path)
                return self._taggers[path]
            try:
                tagger = Tagger.load(path)
                inference = self.inference or get_settings().inference
                onnx = OnnxLogits(Path(path) / INT8_FILE) if use_onnx(inference, tagger.device, path) else None
                entry = LoadedModel(tagger, threading.Lock(), onnx)
                log.info("loaded %s: forward pass in %s", path, "ONNX Runtime (int8)" if onnx else "PyTorch")
            except (OSError, ValueError) as error:
                raise ModelLoadError(f"cannot load the model at {path!r}: {error}") from error
            self._taggers[path] = entry
            while len(self._taggers) > self.max_cached:
                self._taggers.popitem(last=False)
            return entry


_cache = TaggerCache()


def predict_with(path: str, texts: Sequence[str], mc_samples: int = 0) -> list[TaggedText]:
    """Predictions of the saved model at ``path``, loaded through this process's cache."""
    tagger, lock, onnx = _cache.get(path)
    with lock:
        return tagger.predict(list(texts), mc_samples=mc_samples, logits=forward_pass(onnx, mc_samples))


class Predictor:
    """A project's active model, looked up per request and loaded through a ``TaggerCache``."""

    def __init__(self, database_url: str | None = None, cache: TaggerCache | None = None):
        self.database_url = database_url
        self.cache = cache or _cache

    def active(self, project_id: int, session: Session | None = None) -> ActiveModel | None:
        """The project's active model, loaded (or from the cache); None when it has none. ``session``:
        the request's own, so a prediction costs one small query and no second connection."""
        if session is None:
            with Session(get_engine(self.database_url)) as own:
                return self.active(project_id, own)
        version = active_version_path(session, project_id)
        if version is None:
            return None
        version_id, name, path = version
        tagger, lock, onnx = self.cache.get(path)
        return ActiveModel(version_id, name, tagger, lock, onnx)
