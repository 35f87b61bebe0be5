"""Augmented examples in the service: storing what an augmentation job made (``workers.augment_job``;
jobs are requested in ``operations.jobs``), and the training set that mixes them in.

An augmented example is derived from one labelled training task's accepted annotation. It counts
for training only while that annotation is unchanged since the example was made (an edit of the
source annotation makes its augmentations stale: their labels could be the old ones), never from a
dev task (the dev set compares model versions and must stay real), and only when the project
enables augmentation, at most ``augment_ratio`` augmented examples per real one.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, select

from active_learning.recipe import mix_augmented
from active_learning.spans import Example

from . import sync
from .models import Annotation, AugmentedExample, Project, Task


def store(session: Session, project_id: int, examples: Sequence[Example]) -> int:
    """Add augmented examples (``meta`` as ``augment.run`` writes it); texts the project already has
    as augmented examples are skipped. Returns how many were added; the caller commits."""
    have = set(session.exec(select(AugmentedExample.text).where(AugmentedExample.project_id == project_id)))
    added = 0
    for example in examples:
        if example.text in have:
            continue
        have.add(example.text)
        meta = example.meta
        session.add(
            AugmentedExample(
                project_id=project_id,
                source_task_id=meta["source"],
                method=meta["method"],
                params=meta["params"],
                seed=meta["seed"],
                text=example.text,
                spans=[list(span) for span in example.spans],
            )
        )
        added += 1
    return added


def current_augmented(session: Session, project: Project) -> list[Example]:
    """The project's augmented examples whose source is a labelled training task whose accepted
    annotation has not changed since the example was made."""
    rows = session.exec(
        select(AugmentedExample)
        .join(Task, AugmentedExample.source_task_id == Task.id)
        .join(Annotation, Annotation.task_id == Task.id)
        .where(
            AugmentedExample.project_id == project.id,
            Task.is_dev.is_(False),
            Annotation.accepted.is_(True),
            Annotation.updated_at <= AugmentedExample.created_at,
        )
        .order_by(AugmentedExample.id)
    ).all()
    return [Example(r.text, r.spans, {"augmented_id": r.id, "source": r.source_task_id, "method": r.method}) for r in rows]


def training_examples(session: Session, project: Project) -> tuple[list[Example], list[Example], int]:
    """(train, dev, augmented): the labelled set split as ``sync.accepted_examples`` does, with the
    project's augmented examples added to ``train`` when it enables them, capped at ``augment_ratio``
    per real training example (``recipe.mix_augmented``: the simulation's "+augment" arms mix by it too)."""
    train, dev = sync.accepted_examples(session, project)
    if not project.augment or not train:
        return train, dev, 0
    mixed = mix_augmented(train, current_augmented(session, project), project.augment_ratio, seed=project.id)
    return mixed, dev, len(mixed) - len(train)
