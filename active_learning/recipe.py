"""The one training recipe: how a new model version is made and whether it replaces the active one.

Both the ``train`` job (``workers.retrain``) and the oracle simulation (``active_learning.simulation``)
call ``run_recipe``, so a simulated learning curve measures what a user of the service gets:

- the dev split: a fixed, hash-chosen share of the gold-labelled texts (``is_dev``); the service
  stores the same decision per task as ``Task.is_dev`` when a text is imported;
- the start: warm from the previous (active) version when there is one, else fresh from the base
  model (``start_from``); a warm start may be sized to what is new to it (``sized_for``);
- the vocabulary: characters of the training texts that the base model's vocabulary maps to [UNK]
  get tokens of their own (``Tagger.add_unknown_characters``: Chinese on an English encoder);
- training: ``training.train`` with early stopping on dev F1, on the gold training examples plus
  any augmented ones (at most a ratio per real one, ``mix_augmented``) and pseudo-labelled ones
  (self-training, ``pseudo_labels``), never on the dev set;
- promotion: the candidate replaces the active version when its dev F1 is not worse on the same
  dev set (``decide``).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .metrics import Scores, evaluate
from .spans import Example
from .strategies import MNLP
from .tagger import TaggedText, Tagger
from .training import EpochLog, TrainConfig, TrainResult, train

PSEUDO_LABEL = "pseudo_label"  # meta key marking a pseudo-labelled example (never a dev example)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_share(digest: str, part: int = 0) -> float:
    """A uniform number in [0, 1) fixed by a text's hash; ``part`` picks independent digits (0: dev, 1: stop set)."""
    return int(digest[15 * part : 15 * (part + 1)], 16) / 16**15


def is_dev(digest: str, share: float) -> bool:
    """Whether a text belongs to the dev set: a fixed function of its hash, so it never moves."""
    return hash_share(digest) < share


def split_dev(gold: Sequence[Example], share: float) -> tuple[list[Example], list[Example]]:
    """(train, dev) of gold-labelled examples by ``is_dev``: what the service's stored ``Task.is_dev`` says."""
    train_set, dev = [], []
    for example in gold:
        (dev if is_dev(content_hash(example.text), share) else train_set).append(example)
    return train_set, dev


def mix_augmented(train: Sequence[Example], augmented: Sequence[Example], ratio: float, seed: int) -> list[Example]:
    """``train`` followed by at most ``ratio`` augmented examples per real one: a seeded sample that
    keeps ``augmented``'s order, so a retraining on the same data sees the same set."""
    cap = int(ratio * len(train))
    if len(augmented) > cap:
        kept = sorted(random.Random(seed).sample(range(len(augmented)), cap))
        augmented = [augmented[i] for i in kept]
    return [*train, *augmented]


def start_from(previous: str | None, base_model: str) -> str:
    """Warm start from the previous version's directory when there is one, else the base model."""
    return previous or base_model


@dataclass(frozen=True)
class SelfTraining:
    """Sentence-level self-training: pool texts whose task confidence (the geometric mean of the words'
    most likely tag probabilities, ``service.predictor.task_confidence``) is at least ``threshold``
    join training with the current model's spans as labels, their loss scaled by ``weight``."""

    enabled: bool = False
    threshold: float = 0.99
    weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("self-training threshold must be in (0, 1]")
        if not 0.0 < self.weight <= 1.0:
            raise ValueError("self-training weight must be in (0, 1]")


def task_confidences(predictions: Sequence[TaggedText]) -> np.ndarray:
    """exp(-MNLP): the geometric mean of the words' top tag probabilities, 1.0 for a text without words."""
    return np.exp(-MNLP().scores(predictions))


def pseudo_labels(texts: Sequence[str], predictions: Sequence[TaggedText], settings: SelfTraining) -> list[Example]:
    """The confidently predicted texts as weighted training examples (re-derived from each round's model)."""
    confident = task_confidences(predictions) >= settings.threshold
    return [
        Example(text, prediction.entity_spans, {PSEUDO_LABEL: True, "weight": settings.weight})
        for text, prediction, keep in zip(texts, predictions, confident)
        if keep
    ]


def decide(candidate: Scores | None, incumbent: Scores | None, has_active: bool) -> tuple[bool, str]:
    """Promote when nothing is active, or when the candidate's dev F1 is at least the active's."""
    if not has_active:
        return True, "promoted: no version was active yet"
    if candidate is None or incumbent is None:
        return False, "no dev set to compare on; promote it by hand if wanted"
    if candidate.f1 >= incumbent.f1:
        return True, f"dev F1 {candidate.f1:.4f} >= active {incumbent.f1:.4f}"
    return False, f"dev F1 {candidate.f1:.4f} < active {incumbent.f1:.4f}"


def score_on(predict: Callable[[list[str]], list[TaggedText]], dev: Sequence[Example]) -> Scores | None:
    if not dev:
        return None
    return evaluate(dev, [p.entity_spans for p in predict([e.text for e in dev])])


@dataclass
class RecipeInputs:
    """Everything one training depends on; the simulation and the train job fill it the same way."""

    base: str  # ``start_from``'s choice
    labels: list[str]
    train: list[Example]  # gold training examples, augmented ones after them
    dev: list[Example]  # gold only
    config: TrainConfig
    pseudo: list[Example] = field(default_factory=list)
    base_trained_on: int | None = None  # a warm start: how many of ``train`` (counted alike) its base trained on


def sized_for(inputs: RecipeInputs) -> TrainConfig:
    """The configuration a training runs with: ``inputs.config``, except that a warm start has its
    epochs and minimum of updates scaled by (share of training examples new to its base) **
    ``warm_start_scaling`` (at least one epoch; by count, so a relabelled text counts as old)."""
    config = inputs.config
    if inputs.base_trained_on is None or not config.warm_start_scaling or not inputs.train:
        return config
    new = max(0, len(inputs.train) - inputs.base_trained_on) / len(inputs.train)
    factor = new**config.warm_start_scaling
    return replace(config, epochs=max(1, math.ceil(config.epochs * factor)), min_steps=math.ceil(config.min_steps * factor))


@dataclass
class RecipeOutcome:
    tagger: Tagger
    config: TrainConfig  # ``sized_for``'s: what the training ran with
    result: TrainResult
    candidate: Scores | None  # dev scores of the new model
    incumbent: Scores | None  # dev scores of the active model, on the same dev set
    promote: bool
    reason: str
    added_characters: list[str] = field(default_factory=list)  # ``Tagger.add_unknown_characters``'s, this training


def run_recipe(
    inputs: RecipeInputs,
    active_predict: Callable[[list[str]], list[TaggedText]] | None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> RecipeOutcome:
    """Train a candidate from ``inputs.base``, score it and the active model (``active_predict``,
    None when nothing is active) on the dev set, and decide its promotion."""
    if any(e.meta.get(PSEUDO_LABEL) for e in inputs.dev):
        raise ValueError("the dev set must be gold only: a pseudo-labelled example was given as dev")
    config = sized_for(inputs)
    tagger = Tagger.load(inputs.base, labels=inputs.labels)
    examples = [*inputs.train, *inputs.pseudo]
    added = tagger.add_unknown_characters([e.text for e in examples], seed=config.seed)
    result = train(tagger, examples, inputs.dev or None, config, on_step=on_step, on_epoch=on_epoch)
    candidate = score_on(tagger.predict, inputs.dev)
    incumbent = score_on(active_predict, inputs.dev) if active_predict else None
    promote, reason = decide(candidate, incumbent, active_predict is not None)
    return RecipeOutcome(tagger, config, result, candidate, incumbent, promote, reason, added)
