"""A project's report: task counts, entities per label, model versions, agreement between annotators,
the stopping signal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy import func
from sqlmodel import Session, select

from ..models import Annotation, ModelStatus, ModelVersion, Project, Task, TaskState
from ..schemas import ProjectRead, ProjectReport, ReportModel, StoppingSignal, TaskCounts
from . import model_versions, review


def report(session: Session, project: Project) -> ProjectReport:
    counts = session.exec(
        select(Task.state, Task.is_dev, func.count()).where(Task.project_id == project.id).group_by(Task.state, Task.is_dev)
    ).all()
    by_state = Counter()
    dev = 0
    for state, is_dev, n in counts:
        by_state[TaskState(state)] += n
        if is_dev and TaskState(state) == TaskState.labelled:
            dev += n
    accepted = session.exec(
        select(Annotation.spans).join(Task, Annotation.task_id == Task.id).where(Task.project_id == project.id, Annotation.accepted == True)  # noqa: E712
    ).all()
    labels = Counter({label: 0 for label in project.labels})
    labels.update(span[2] for spans in accepted for span in spans)
    versions = model_versions.list_for_project(session, project)
    active = next((v.name for v in versions if v.status == ModelStatus.active), None)
    return ProjectReport(
        project=ProjectRead.model_validate(project, from_attributes=True),
        tasks=TaskCounts(
            total=sum(by_state.values()), pool=by_state[TaskState.pool], labelled=by_state[TaskState.labelled], dev=dev
        ),
        labels=dict(labels),
        active_model=active,
        model_versions=[ReportModel.model_validate(v, from_attributes=True) for v in versions],
        agreement=review.annotator_agreement(session, project.id),
        stopping=stopping_signal(versions),
    )


def stopping_signal(versions: Sequence[ModelVersion]) -> StoppingSignal | None:
    """The stopping signal the train job stored with the newest version that has one."""
    for version in reversed(versions):
        signal = version.metrics.get("stopping")
        if signal:
            fields = {k: signal[k] for k in StoppingSignal.model_fields if k in signal}
            return StoppingSignal(**fields, version=version.name, verdict="you can stop" if signal["fired"] else "keep going")
    return None
