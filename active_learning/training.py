"""The fine-tuning loop (``recipe.run_recipe`` decides what it trains on and from where): AdamW with
weight decay, linear warm-up then decay, gradient clipping and accumulation, early stopping on a dev
set, per-example loss weights, bf16 autocast on CUDA, seeded."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from transformers import get_linear_schedule_with_warmup, set_seed

from .metrics import evaluate
from .spans import Example
from .tagger import IGNORE_INDEX, Tagger, autocast


@dataclass
class TrainConfig:
    epochs: int = 10
    # Small labelled sets get more epochs, so that every training makes about as many updates as a
    # 5-epoch training on a 4,000-sentence pool. On CoNLL-2003 (bench/results/recipe_steps.json) a
    # fresh training on 10% of the pool's tokens went from 0.663 test F1 at 150 minimum steps to 0.760
    # at 1,000, on 30% from 0.788 to 0.822 (full pool 0.846): the small sets' plateau was undertraining.
    min_steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-4  # MiniLM-sized encoders want more than BERT-base's usual 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    gradient_accumulation: int = 1
    patience: int = 2  # epochs without a better dev F1 before stopping (counted after min_steps)
    # Keep the vocabulary embedding matrix fixed: with a few hundred labelled sentences most of its
    # rows never see a gradient, yet AdamW would still decay and move all of them every step; on a
    # CPU its update is a quarter of the step time (MiniLM: 30k x 384 of 22M parameters).
    freeze_word_embeddings: bool = True
    # A warm start continues a version that already had its updates on most of these examples. Its
    # epochs and minimum of updates are scaled by (share of examples new to it) ** this (at least one
    # epoch, ``recipe.sized_for``): 0 keeps them whole, 1 scales them linearly (a retraining after a
    # few annotations then takes one pass instead of a small set's 1,000 updates), 0.5 in between.
    warm_start_scaling: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.warm_start_scaling < 0:  # a negative power would multiply a warm start's updates
            raise ValueError(f"warm_start_scaling must be at least 0, got {self.warm_start_scaling}")


@dataclass
class EpochLog:
    epoch: int
    step: int
    loss: float
    dev_f1: float | None


@dataclass
class TrainResult:
    steps: int
    best_epoch: int
    dev_f1: float | None
    history: list[EpochLog] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def weighted_loss(model: torch.nn.Module, batch: dict, weights: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy, each window's tokens scaled by its weight, averaged over labelled tokens
    (with all weights 1 it is the model's own loss)."""
    labels = batch.pop("labels")
    logits = model(**batch).logits.float()
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    labelled = labels != IGNORE_INDEX
    return (per_token * weights[:, None] * labelled).sum() / labelled.sum().clamp(min=1)


def train(
    tagger: Tagger,
    examples: Sequence[Example],
    dev: Sequence[Example] | None = None,
    config: TrainConfig | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """Fine-tune ``tagger`` in place on ``examples``; with ``dev``, keep the best epoch's weights.

    ``on_step(step, total_steps, loss)`` and ``on_epoch(log)`` report progress.
    """
    config = config or TrainConfig()
    if not examples:
        raise ValueError("no training examples")
    set_seed(config.seed)
    # (window, labels, weight): an example's ``meta["weight"]`` (pseudo-labels: below 1) scales its loss
    windows = tagger.training_windows(examples)
    data = [(window, labels, float(examples[window.text_index].meta.get("weight", 1.0))) for window, labels in windows]
    steps_per_epoch = math.ceil(len(data) / (config.batch_size * config.gradient_accumulation))
    epochs = max(config.epochs, math.ceil(config.min_steps / steps_per_epoch))
    total_steps = epochs * steps_per_epoch

    model = tagger.model
    embeddings = model.get_input_embeddings()
    # Frozen, the base model's rows stay as they are; rows added for characters it lacked are random
    # and must learn: their matrix trains with the base rows' gradients zeroed, and without weight
    # decay, which would move every row.
    base_rows = tagger.base_vocabulary_size if config.freeze_word_embeddings else None
    masked = embeddings.weight if embeddings is not None and base_rows is not None else None
    if embeddings is not None:
        embeddings.weight.requires_grad_(not config.freeze_word_embeddings or masked is not None)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {"params": [p for n, p in trainable if not n.endswith(no_decay) and p is not masked], "weight_decay": config.weight_decay},
        {"params": [p for n, p in trainable if n.endswith(no_decay) or p is masked], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    rng = random.Random(config.seed)
    best_f1, best_epoch, best_state, stale = -1.0, 0, None, 0
    history: list[EpochLog] = []
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        rng.shuffle(data)
        running, seen = 0.0, 0
        for first in range(0, len(data), config.batch_size):
            chunk = data[first : first + config.batch_size]
            batch = tagger.collate([w for w, _, _ in chunk], [labels for _, labels, _ in chunk])
            with autocast(tagger.device):
                loss = weighted_loss(model, batch, torch.tensor([weight for _, _, weight in chunk], device=tagger.device))
            (loss / config.gradient_accumulation).backward()
            running, seen = running + loss.item(), seen + 1
            if seen % config.gradient_accumulation == 0 or first + config.batch_size >= len(data):
                if masked is not None and masked.grad is not None:
                    masked.grad[:base_rows] = 0
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if on_step:
                    on_step(step, total_steps, running / seen)
        dev_f1 = None
        if dev:
            dev_f1 = evaluate(dev, [p.entity_spans for p in tagger.predict([e.text for e in dev])]).f1
        log = EpochLog(epoch, step, running / max(seen, 1), dev_f1)
        history.append(log)
        if on_epoch:
            on_epoch(log)
        if dev_f1 is None:
            continue
        if dev_f1 > best_f1:
            best_f1, best_epoch, stale = dev_f1, epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        elif step >= config.min_steps:  # early stopping only once the head has had its minimum of updates
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(step, best_epoch or len(history), best_f1 if dev else None, history)
