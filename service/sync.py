"""Keeping the tables in step with Label Studio: importing texts, recording annotations (from webhooks
and from the incremental pull) and reading the labelled set back as examples.

Pure DB logic over a SQLModel ``Session``: functions flush, the caller commits (``db.session_scope``).
Recording is idempotent, so a webhook delivered twice, or an annotation seen by both a webhook and a
pull, changes nothing the second time.

Label Studio's webhook payloads (1.23.2, captured in tests/test_sync.py):

- ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``: ``{"action", "annotation": {...}, "task": {...},
  "project": {...}}``; the annotation has ``id``, ``result``, ``completed_by`` (the user's id),
  ``updated_at``, ``was_cancelled``, ``ground_truth``; the task has ``id`` and ``data``.
- ``ANNOTATIONS_DELETED``: ``{"action", "annotations": [{"id": ...}], "project": {...}}``, ids only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlmodel import Session, select

from active_learning.corpus import accepted_annotation, spans_from_results
from active_learning.recipe import content_hash, is_dev  # the dev split rule lives in the ML core: the simulation uses it too
from active_learning.spans import Example, SpanError, storable_string, validate, validate_meta

from .label_studio import LabelStudioClient, parse_ls_datetime
from .models import Annotation, Project, Task, TaskState, utcnow
from .operations import review
from .settings import get_settings

log = logging.getLogger(__name__)

IMPORT_ANNOTATOR = "import"  # the annotator of ground truth that came with imported examples
_IN_CHUNK = 500  # values per SQL IN (...) list


class SyncError(ValueError):
    """A payload or annotation that cannot be recorded; the message says which and why."""


@dataclass
class ImportResult:
    created: list[Task] = field(default_factory=list)
    duplicates: int = 0  # examples whose text the project (or an earlier example of the batch) already had


# --- import --------------------------------------------------------------------------------------


def import_examples(
    session: Session,
    project: Project,
    examples: Iterable[Example],
    client: LabelStudioClient | None = None,
    dev_share: float | None = None,
) -> ImportResult:
    """Add texts to the project, skipping any it already has (same text, also within the batch).

    An example with spans (or with ``meta["labelled"]`` true, as Label Studio exports mark texts
    labelled without entities) arrives labelled: its spans become a ground-truth annotation by
    ``"import"``. The others join the pool and, when the project is attached to Label Studio and a
    client is given, are created there in bulk, with their Label Studio ids stored. Labelled ones
    stay here: annotators should not be served what is already labelled.

    All spans (against the project's labels) and metas (``validate_meta``) are checked before anything is written (``SpanError``).
    """
    share = get_settings().dev_share if dev_share is None else dev_share
    fresh: dict[str, tuple[Example, list]] = {}
    duplicates = 0
    for i, example in enumerate(examples):
        digest = content_hash(example.text)
        if digest in fresh:
            duplicates += 1
            continue
        try:
            spans = validate(example.text, example.spans, project.labels)
            validate_meta(example.meta)
        except SpanError as error:
            raise SpanError(("examples", i), str(error)) from None
        fresh[digest] = (example, spans)

    known = _existing_hashes(session, project, list(fresh))
    duplicates += len(known)
    created: list[Task] = []
    labelled: list[tuple[Task, list]] = []
    for digest, (example, spans) in fresh.items():
        if digest in known:
            continue
        is_labelled = bool(spans) or example.meta.get("labelled") is True
        task = Task(
            project_id=project.id,
            text=example.text,
            meta=dict(example.meta),
            content_hash=digest,
            is_dev=is_dev(digest, share),
            state=TaskState.labelled if is_labelled else TaskState.pool,
        )
        created.append(task)
        if is_labelled:
            labelled.append((task, spans))
    session.add_all(created)
    session.flush()
    session.add_all(
        Annotation(
            task_id=task.id,
            spans=[list(s) for s in spans],
            annotator=IMPORT_ANNOTATOR,
            ground_truth=True,
            accepted=True,
        )
        for task, spans in labelled
    )

    pool = [task for task in created if task.state == TaskState.pool]
    if client is not None and project.ls_project_id is not None and pool:
        ids = client.import_tasks(project.ls_project_id, [{project.text_key: task.text} for task in pool])
        for task, ls_id in zip(pool, ids):
            task.ls_task_id = ls_id
    session.flush()
    return ImportResult(created=created, duplicates=duplicates)


def _existing_hashes(session: Session, project: Project, hashes: list[str]) -> set[str]:
    known: set[str] = set()
    for start in range(0, len(hashes), _IN_CHUNK):
        chunk = hashes[start : start + _IN_CHUNK]
        query = select(Task.content_hash).where(Task.project_id == project.id, Task.content_hash.in_(chunk))
        known.update(session.exec(query))
    return known


# --- annotations ---------------------------------------------------------------------------------


def record_annotation(session: Session, project: Project, ls_task_id: int, ls_annotation: Mapping) -> bool:
    """Create or update the annotation ``ls_annotation`` (Label Studio's JSON) of task ``ls_task_id``,
    then settle which annotation of the task counts. Returns whether anything changed: the same
    payload twice, or one older than what is stored, changes nothing.
    """
    task = session.exec(select(Task).where(Task.project_id == project.id, Task.ls_task_id == ls_task_id)).first()
    if task is None:
        raise SyncError(f"Label Studio task {ls_task_id} is not a task of project {project.name!r}")
    return _record(session, project, task, ls_annotation)


def _record(session: Session, project: Project, task: Task, ls_annotation: Mapping) -> bool:
    try:
        ls_id = int(ls_annotation["id"])
        results = [
            r for r in ls_annotation.get("result") or [] if r.get("from_name", project.from_name) == project.from_name
        ]
        spans = validate(task.text, spans_from_results(results), project.labels)
        values = dict(
            task_id=task.id,
            spans=[list(span) for span in spans],
            annotator=_annotator(ls_annotation.get("completed_by")),
            updated_at=parse_ls_datetime(ls_annotation["updated_at"]),
            cancelled=bool(ls_annotation.get("was_cancelled")),
            ground_truth=bool(ls_annotation.get("ground_truth")),
        )
    except (KeyError, TypeError, ValueError) as error:  # SpanError is a ValueError
        name = f"annotation {ls_annotation.get('id')}" if isinstance(ls_annotation, Mapping) else "annotation"
        raise SyncError(f"Label Studio {name} of task {task.ls_task_id}: {error}") from None

    annotation = session.exec(select(Annotation).where(Annotation.ls_annotation_id == ls_id)).first()
    if annotation is None:
        annotation = Annotation(ls_annotation_id=ls_id, **values)
    elif annotation.updated_at > values["updated_at"] or all(getattr(annotation, k) == v for k, v in values.items()):
        return False  # a repeat, or an older version arriving late
    else:
        for key, value in values.items():
            setattr(annotation, key, value)
    session.add(annotation)
    session.flush()
    _settle(session, task)
    return True


def record_local_annotation(session: Session, task: Task, spans: list, annotator: str = "") -> Annotation:
    """An annotation made outside Label Studio (``POST .../tasks/{id}/annotations``): it becomes the
    task's newest one and so, unless a ground truth exists, the accepted one. ``spans`` are validated."""
    project = session.get(Project, task.project_id)
    checked = validate(task.text, spans, project.labels)
    annotation = Annotation(task_id=task.id, spans=[list(s) for s in checked], annotator=annotator, updated_at=utcnow())
    session.add(annotation)
    session.flush()
    _settle(session, task)
    return annotation


def _annotator(completed_by) -> str:
    """Label Studio sends the user's id; a user object (other editions, exports) gives its email."""
    if isinstance(completed_by, Mapping):
        return str(completed_by.get("email") or completed_by.get("id") or "")
    return "" if completed_by is None else str(completed_by)


def _settle(session: Session, task: Task) -> None:
    """Mark the one annotation that counts (``corpus.accepted_annotation``) and the task's state."""
    annotations = session.exec(select(Annotation).where(Annotation.task_id == task.id)).all()
    winner = accepted_annotation(
        {"id": a.id, "was_cancelled": a.cancelled, "ground_truth": a.ground_truth, "updated_at": a.updated_at}
        for a in annotations
    )
    for annotation in annotations:
        annotation.accepted = winner is not None and annotation.id == winner["id"]
        session.add(annotation)
    task.state = TaskState.labelled if winner is not None else TaskState.pool
    session.add(task)
    session.flush()
    review.settle_suspects(session, task)  # a reviewer's fix or confirmation of a suspect arrives here


def delete_annotations(session: Session, project: Project, ls_annotation_ids: Iterable[int]) -> int:
    """Delete the project's annotations with these Label Studio ids (others are ignored); return how many."""
    ids = list({int(i) for i in ls_annotation_ids})
    doomed: list[Annotation] = []
    for start in range(0, len(ids), _IN_CHUNK):
        doomed += session.exec(
            select(Annotation)
            .join(Task, Annotation.task_id == Task.id)
            .where(Task.project_id == project.id, Annotation.ls_annotation_id.in_(ids[start : start + _IN_CHUNK]))
        ).all()
    for annotation in doomed:
        session.delete(annotation)
    session.flush()
    for task_id in {a.task_id for a in doomed}:
        _settle(session, session.get(Task, task_id))
    return len(doomed)


def _task_for(session: Session, project: Project, ls_task: Mapping) -> Task:
    """The local task of a Label Studio task: by its id, else by its text (a task created in Label
    Studio directly, or pushed twice), else a new pool task adopted from it.
    """
    ls_id = ls_task.get("id")
    task = session.exec(select(Task).where(Task.project_id == project.id, Task.ls_task_id == ls_id)).first()
    if task is not None:
        return task
    text = (ls_task.get("data") or {}).get(project.text_key)
    if not isinstance(text, str) or not text.strip():
        raise SyncError(f"Label Studio task {ls_id} has no text in data.{project.text_key}")
    problem = storable_string(text)
    if problem:
        raise SyncError(f"Label Studio task {ls_id}: data.{project.text_key} {problem}")
    digest = content_hash(text)
    task = session.exec(select(Task).where(Task.project_id == project.id, Task.content_hash == digest)).first()
    if task is None:
        task = Task(
            project_id=project.id, text=text, content_hash=digest, is_dev=is_dev(digest, get_settings().dev_share)
        )
    if task.ls_task_id is None:
        task.ls_task_id = ls_id
    session.add(task)
    session.flush()
    return task


def handle_webhook(session: Session, project: Project, payload: Mapping) -> dict:
    """Apply one Label Studio webhook payload; return what it did (``changed``, ``deleted`` or ``ignored``)."""
    action = payload.get("action")
    sender = (payload.get("project") or {}).get("id")
    if sender is not None and project.ls_project_id is not None and sender != project.ls_project_id:
        raise SyncError(
            f"a webhook of Label Studio project {sender} reached project {project.name!r} ({project.ls_project_id})"
        )
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        if not isinstance(payload.get("task"), Mapping) or not isinstance(payload.get("annotation"), Mapping):
            raise SyncError(f"{action} payload without 'task' and 'annotation' objects (is 'send payload' on?)")
        task = _task_for(session, project, payload["task"])
        changed = _record(session, project, task, payload["annotation"])
        return {"action": action, "annotation": payload["annotation"]["id"], "changed": changed}
    if action == "ANNOTATIONS_DELETED":
        try:
            ids = [item["id"] for item in payload["annotations"]]
        except (KeyError, TypeError):
            raise SyncError("ANNOTATIONS_DELETED payload without an 'annotations' list of {'id': ...}") from None
        return {"action": action, "deleted": delete_annotations(session, project, ids)}
    return {"action": action, "ignored": True}


def pull(session: Session, project: Project, client: LabelStudioClient) -> int:
    """Reconcile what webhooks missed: record the annotations of every task Label Studio changed since
    ``project.last_pulled_at``, delete the ones it no longer has, and advance that mark to the newest
    ``updated_at`` seen (Label Studio's clock). Returns the number of annotations changed.

    An annotation (or task) that cannot be recorded, e.g. with a label the project does not know, is
    logged and skipped; it is read again once it is updated in Label Studio.
    """
    if project.ls_project_id is None:
        raise SyncError(f"project {project.name!r} is not attached to a Label Studio project")
    changed = 0
    newest = project.last_pulled_at
    for ls_task in client.list_annotations_since(project.ls_project_id, project.last_pulled_at):
        task_updated = parse_ls_datetime(ls_task["updated_at"])
        newest = task_updated if newest is None else max(newest, task_updated)
        try:
            task = _task_for(session, project, ls_task)
        except SyncError as error:
            log.warning("pull of project %r skips %s", project.name, error)
            continue
        present = set()
        for ls_annotation in ls_task.get("annotations") or []:
            present.add(ls_annotation["id"])
            try:
                changed += _record(session, project, task, ls_annotation)
            except SyncError as error:
                log.warning("pull of project %r skips %s", project.name, error)
        # Gone from Label Studio: deleted. Only annotations older than this listing of the task count,
        # so one a webhook recorded after the listing was made is not mistaken for deleted.
        local = session.exec(select(Annotation).where(Annotation.task_id == task.id)).all()
        gone = [
            a.ls_annotation_id
            for a in local
            if a.ls_annotation_id is not None and a.ls_annotation_id not in present and a.updated_at <= task_updated
        ]
        changed += delete_annotations(session, project, gone)
    project.last_pulled_at = newest
    session.add(project)
    session.flush()
    return changed


def accepted_examples(session: Session, project: Project) -> tuple[list[Example], list[Example]]:
    """The labelled set as examples (the accepted annotation of each labelled task), split (train, dev)."""
    query = (
        select(Task, Annotation)
        .join(Annotation, Annotation.task_id == Task.id)
        .where(Task.project_id == project.id, Annotation.accepted.is_(True))
        .order_by(Task.id)
    )
    train: list[Example] = []
    dev: list[Example] = []
    for task, annotation in session.exec(query):
        example = Example(task.text, annotation.spans, {"task_id": task.id, "ls_task_id": task.ls_task_id})
        (dev if task.is_dev else train).append(example)
    return train, dev
