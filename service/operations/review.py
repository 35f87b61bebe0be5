"""Label review: which accepted annotations are probably wrong, how reviewers see them in Label Studio,
and what becomes of them once a reviewer acts.

- A review job (``workers.review_job``) cross-fits over the labelled set from the project's base
  model (``active_learning.label_quality.find_suspects``) and replaces the project's open suspects
  with its own (``store_suspects``). Fixed and confirmed ones stay: they are the review's history.
- ``push_to_label_studio``: each open suspect's suggested spans become a prediction under the model
  version ``nerloop-review`` (the annotators' own pre-annotations keep the project's model version),
  and the task's data gets ``nerloop_review_score`` (lower = more likely wrong) and
  ``nerloop_review_kinds``, columns the Data Manager filters and sorts by. Tasks no longer suspect
  lose those fields. Nothing here writes an annotation.
- A reviewer acts in Label Studio, and the change comes back like any other (webhook or pull,
  ``service.sync``), which calls ``settle_suspects`` for the task: an accepted annotation with
  another fingerprint than the one judged means the reviewer *fixed* it; the same annotation saved
  again unchanged (Label Studio's Update without an edit: a newer ``updated_at``, the same spans) or
  an identical annotation made anew means the reviewer *confirmed* it, and each of its reasons is
  recorded in ``review_confirmation`` so later reviews do not flag it again for them. Label Studio's
  review accept/reject is an Enterprise feature, so a plain update is the one signal open source has.
- Agreement between annotators (``active_learning.agreement``) over the tasks several people
  annotated: per pair and per label, exact and overlap; the disagreeing tasks are review candidates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from active_learning.agreement import agreement
from active_learning.label_quality import DEFAULT_FOLDS, LabelQualityReport, annotation_fingerprint
from active_learning.spans import Example, Span

from .. import job_queue
from ..errors import Conflict, Unavailable, UpstreamError
from ..label_studio import LabelStudioClient, LabelStudioError, results_from_spans
from ..models import Annotation, Job, Project, ReviewConfirmation, Suspect, SuspectStatus, Task, utcnow
from ..schemas import AgreementSummary, ReviewPage, ReviewSummary, SuspectRead
from ..settings import Settings

REVIEW_MODEL_VERSION = "nerloop-review"  # the Label Studio model version of the suggested spans
SCORE_FIELD = "nerloop_review_score"  # task data fields the Data Manager shows, filters and sorts by
KINDS_FIELD = "nerloop_review_kinds"


@dataclass(frozen=True)
class Judged:
    """An accepted annotation as the review job read it."""

    example: Example  # meta["task_id"] names its task (``label_quality.example_key``)
    annotation_id: int
    annotation_updated_at: object


# ---- the review job's side --------------------------------------------------------------------------


def request_review(session: Session, project_id: int, settings: Settings | None = None) -> Job:
    """Queue a review job; one already queued is returned instead. Cross-fitting needs at least as
    many labelled tasks as folds."""
    count = select(func.count()).select_from(Annotation).join(Task, Annotation.task_id == Task.id)
    labelled = session.exec(count.where(*_accepted(project_id))).one()
    if labelled < DEFAULT_FOLDS:
        raise Conflict.one((), f"the project has {labelled} labelled tasks; a {DEFAULT_FOLDS}-fold review needs at least {DEFAULT_FOLDS}")
    try:
        return job_queue.request(session, project_id, "review", settings=settings)
    except job_queue.EnqueueError as error:
        raise Unavailable.one((), str(error)) from error


def labelled_set(session: Session, project_id: int) -> list[Judged]:
    """Every accepted annotation of the project, dev tasks included (their labels matter as much)."""
    query = select(Task, Annotation).join(Annotation, Annotation.task_id == Task.id).where(*_accepted(project_id)).order_by(Task.id)
    return [
        Judged(Example(task.text, annotation.spans, {"task_id": task.id}), annotation.id, annotation.updated_at)
        for task, annotation in session.exec(query)
    ]


def confirmations(session: Session, project_id: int) -> set[tuple[str, str]]:
    """``(example key, reason)`` pairs reviewers confirmed, as ``find_suspects`` takes them."""
    rows = session.exec(
        select(ReviewConfirmation.task_id, ReviewConfirmation.reason)
        .join(Task, ReviewConfirmation.task_id == Task.id)
        .where(Task.project_id == project_id)
    ).all()
    return {(str(task_id), reason) for task_id, reason in rows}


def store_suspects(
    session: Session,
    project_id: int,
    report: LabelQualityReport,
    judged: Sequence[Judged],
    *,
    job_id: int | None,
    producer: str,
    base_model: str,
    model_version: str | None,
) -> list[Suspect]:
    """Replace the project's open suspects with the report's. An annotation changed while the job ran
    is left out: its verdict is stale before anyone sees it, and the next review judges the new one.

    An open suspect the report no longer flags, but that reviewers were shown, stays until
    ``push_to_label_studio`` has taken it out of Label Studio (as resolved ones are)."""
    current = {
        annotation.task_id: annotation
        for annotation in session.exec(
            select(Annotation).join(Task, Annotation.task_id == Task.id).where(*_accepted(project_id))
        )
    }
    stored = []
    for assessment in report.suspects:
        read = judged[assessment.index]
        task_id = read.example.meta["task_id"]
        now = current.get(task_id)
        if now is None or now.id != read.annotation_id:
            continue
        if annotation_fingerprint(Example(read.example.text, now.spans)) != assessment.fingerprint:
            continue
        record = assessment.as_dict()
        stored.append(
            Suspect(
                project_id=project_id,
                task_id=task_id,
                annotation_id=read.annotation_id,
                annotation_updated_at=read.annotation_updated_at,
                job_id=job_id,
                producer=producer,
                base_model=base_model,
                model_version=model_version,
                fingerprint=assessment.fingerprint,
                score=assessment.score,
                kinds=assessment.kinds,
                issues=record["issues"],
                suggested=record["suggested"],
            )
        )
    flagged = {suspect.task_id for suspect in stored}
    for old in session.exec(select(Suspect).where(Suspect.project_id == project_id, Suspect.status == SuspectStatus.open)):
        if not old.shown or old.task_id in flagged:  # else withdrawn: the push takes it out of Label Studio, then drops it
            session.delete(old)
    session.add_all(stored)
    session.flush()
    return stored


def push_to_label_studio(session: Session, project: Project, client: LabelStudioClient, job_id: int | None) -> int:
    """Show the open suspects of review job ``job_id`` to reviewers in Label Studio, and take out what
    reviewers were shown of suspects resolved since or withdrawn (open ones of an earlier job, which
    this job no longer flags). Flushes; returns the number of suspects shown."""
    if project.ls_project_id is None:
        return 0
    rows = session.exec(
        select(Suspect, Task)
        .join(Task, Suspect.task_id == Task.id)
        .where(Suspect.project_id == project.id, col(Task.ls_task_id).is_not(None))
        .where((Suspect.status == SuspectStatus.open) | Suspect.shown.is_(True))
    ).all()
    showing = {suspect.task_id for suspect, _ in rows if suspect.status == SuspectStatus.open and suspect.job_id == job_id}
    shown = 0
    try:
        for suspect, task in rows:
            withdrawn = suspect.status == SuspectStatus.open and suspect.job_id != job_id
            if suspect.status != SuspectStatus.open or withdrawn:
                if task.id not in showing:  # a newer suspect of the task replaces what is there anyway
                    client.update_task_data(task.ls_task_id, {SCORE_FIELD: None, KINDS_FIELD: None})
                    client.replace_predictions(task.ls_task_id, REVIEW_MODEL_VERSION, None)
                if withdrawn:
                    session.delete(suspect)
                    continue
                suspect.shown = False
            else:
                prediction = {
                    "result": results_from_spans(task.text, suspect.suggested, project.from_name, project.to_name),
                    "score": suspect.score,
                }
                client.replace_predictions(task.ls_task_id, REVIEW_MODEL_VERSION, prediction)
                client.update_task_data(task.ls_task_id, {SCORE_FIELD: round(suspect.score, 6), KINDS_FIELD: ",".join(suspect.kinds)})
                suspect.shown = True
                shown += 1
            session.add(suspect)
            session.flush()
    except LabelStudioError as error:
        raise UpstreamError.one((), str(error)) from error
    return shown


# ---- what a reviewer's change means -------------------------------------------------------------------


def settle_suspects(session: Session, task: Task) -> None:
    """After a change of the task's annotations: its open suspects become fixed or confirmed (see the
    module docstring). Flushes; the caller commits."""
    suspects = session.exec(select(Suspect).where(Suspect.task_id == task.id, Suspect.status == SuspectStatus.open)).all()
    if not suspects:
        return
    accepted = session.exec(select(Annotation).where(Annotation.task_id == task.id, Annotation.accepted.is_(True))).first()
    for suspect in suspects:
        fingerprint = annotation_fingerprint(Example(task.text, accepted.spans)) if accepted else None
        if fingerprint != suspect.fingerprint:
            suspect.status, suspect.stale = SuspectStatus.fixed, True
        elif accepted.id != suspect.annotation_id or (
            suspect.annotation_updated_at is not None and accepted.updated_at > suspect.annotation_updated_at
        ):
            suspect.status = SuspectStatus.confirmed
            confirmed = {r for (r,) in session.exec(select(ReviewConfirmation.reason).where(ReviewConfirmation.task_id == task.id))}
            for reason in {issue["reason"] for issue in suspect.issues} - confirmed:
                session.add(ReviewConfirmation(task_id=task.id, reason=reason, fingerprint=fingerprint, annotator=accepted.annotator))
        else:
            continue  # the very annotation judged, unchanged: nothing happened yet
        suspect.resolved_at = utcnow()
        session.add(suspect)
    session.flush()


# ---- reading ------------------------------------------------------------------------------------------


def list_suspects(session: Session, project_id: int, *, status: SuspectStatus | None, limit: int, offset: int) -> ReviewPage:
    """Suspects, most likely wrong first (lowest score), one page of them."""
    where = [Suspect.project_id == project_id]
    if status is not None:
        where.append(Suspect.status == status)
    total = session.exec(select(func.count()).select_from(Suspect).where(*where)).one()
    page = select(Suspect, Task).join(Task, Suspect.task_id == Task.id).where(*where).order_by(Suspect.score, Suspect.id)
    rows = session.exec(page.offset(offset).limit(limit)).all()
    return ReviewPage(
        total=total,
        limit=limit,
        offset=offset,
        items=[SuspectRead(**suspect.model_dump(), text=task.text, ls_task_id=task.ls_task_id) for suspect, task in rows],
    )


def summary(session: Session, project_id: int) -> ReviewSummary:
    """Suspects by status, and the open ones by kind and by label (of the annotated or suggested span)."""
    suspects = session.exec(select(Suspect).where(Suspect.project_id == project_id)).all()
    by_status = Counter({status: 0 for status in SuspectStatus})
    by_kind: Counter = Counter()
    by_label: Counter = Counter()
    for suspect in suspects:
        by_status[suspect.status] += 1
        if suspect.status != SuspectStatus.open:
            continue
        for issue in suspect.issues:
            by_kind[issue["kind"]] += 1
            span = issue["annotated"] or issue["suggested"]
            by_label[span[2]] += 1
    latest = session.exec(
        select(Job).where(Job.project_id == project_id, Job.kind == "review").order_by(Job.id.desc())
    ).first()
    return ReviewSummary(
        by_status=dict(by_status),
        by_kind=dict(by_kind),
        by_label=dict(by_label),
        confirmations=len(confirmations(session, project_id)),
        last_job_id=latest.id if latest else None,
    )


def annotator_agreement(session: Session, project_id: int) -> AgreementSummary:
    """Span agreement over the tasks that more than one person annotated (cancelled annotations left
    out; one annotator's several annotations of a task count as their newest)."""
    rows = session.exec(
        select(Annotation)
        .join(Task, Annotation.task_id == Task.id)
        .where(Task.project_id == project_id, Annotation.cancelled.is_(False))
        .order_by(Annotation.task_id, Annotation.updated_at)
    ).all()
    by_task: dict[int, dict[str, list[Span]]] = {}
    for annotation in rows:
        by_task.setdefault(annotation.task_id, {})[annotation.annotator or "?"] = [Span(*s) for s in annotation.spans]
    report = agreement(_several(by_task))
    result = report.as_dict()
    return AgreementSummary(
        tasks=result["tasks"],
        f1=result["f1"],
        per_label=result["per_label"],
        pairs=result["pairs"],
        disagreeing_tasks=[{"task_id": t.task, "annotators": t.annotators, "disagreement": t.disagreement} for t in report.flagged],
    )


def _accepted(project_id: int) -> tuple:
    """The conditions of a join of Task and Annotation for the project's accepted annotations."""
    return Task.project_id == project_id, Annotation.accepted.is_(True)


def _several(by_task: dict[int, dict[str, list[Span]]]) -> Iterable[tuple[int, dict[str, list[Span]]]]:
    return ((task_id, annotations) for task_id, annotations in by_task.items() if len(annotations) > 1)
