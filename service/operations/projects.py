"""Projects: create (with their Label Studio project), attach an existing Label Studio project, change settings."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from ..errors import Conflict, NotFound, UpstreamError
from ..label_studio import LabelStudioClient, LabelStudioError
from ..models import Project
from ..schemas import ProjectAttach, ProjectCreate, ProjectUpdate
from ..settings import Settings

WEBHOOK_PATH = "/api/v1/webhooks/label-studio"


def get(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound.one(("project_id",), f"project {project_id} not found")
    return project


def list_all(session: Session) -> Sequence[Project]:
    return session.exec(select(Project).order_by(Project.id)).all()


def create(session: Session, body: ProjectCreate, client: LabelStudioClient | None) -> Project:
    """A new project; with a Label Studio client (and unless told not to), its Label Studio project too."""
    ls_project_id = None
    if client is not None and body.create_in_label_studio:
        ls_project_id = create_in_label_studio(client, body.name, body.labels)
    project = Project(name=body.name, labels=list(body.labels), ls_project_id=ls_project_id)
    session.add(project)
    session.commit()
    session.refresh(project)
    return project


def create_in_label_studio(client: LabelStudioClient, name: str, labels: Sequence[str]) -> int:
    """A Label Studio project for NER with ``labels``; its id."""
    try:
        return client.create_project(name, list(labels))
    except LabelStudioError as error:
        raise UpstreamError.one((), f"Label Studio: {error}") from error


def register_webhook(client: LabelStudioClient, ls_project_id: int, settings: Settings) -> None:
    """Have Label Studio send the project's annotation events to this service (``settings.public_url``)."""
    try:
        client.register_webhook(ls_project_id, settings.public_url.rstrip("/") + WEBHOOK_PATH, settings.webhook_secret)
    except LabelStudioError as error:
        raise UpstreamError.one((), f"Label Studio: {error}") from error


def attach(session: Session, body: ProjectAttach, client: LabelStudioClient | None) -> Project:
    """A project for an existing Label Studio project, with the labels and tag names of its config."""
    if client is None:
        raise Conflict.one((), "Label Studio is not configured: set NERLOOP_LABEL_STUDIO_API_KEY (and _URL)")
    taken = session.exec(select(Project).where(Project.ls_project_id == body.ls_project_id)).first()
    if taken is not None:
        raise Conflict.one(("ls_project_id",), f"Label Studio project {body.ls_project_id} is already attached to project {taken.id}")
    try:
        labels, from_name, to_name, text_key = client.read_project(body.ls_project_id)
    except LabelStudioError as error:
        raise UpstreamError.one((), f"Label Studio: {error}") from error
    name = body.name or f"Label Studio project {body.ls_project_id}"
    project = Project(
        name=name, labels=list(labels), ls_project_id=body.ls_project_id, from_name=from_name, to_name=to_name, text_key=text_key
    )
    session.add(project)
    try:
        session.commit()
    except IntegrityError:  # attached by a concurrent request since the check above
        session.rollback()
        raise Conflict.one(("ls_project_id",), f"Label Studio project {body.ls_project_id} is already attached") from None
    session.refresh(project)
    return project


def update(session: Session, project: Project, changes: ProjectUpdate) -> Project:
    for name, value in changes.model_dump(exclude_none=True).items():
        setattr(project, name, value)
    session.add(project)
    session.commit()
    session.refresh(project)
    return project
