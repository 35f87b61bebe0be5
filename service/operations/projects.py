"""Projects: create (with their Label Studio project), attach an existing Label Studio project, change settings.

A project nerloop creates or attaches in Label Studio is set up for the loop there too: a Data Manager
view listing the most uncertain tasks first, and nerloop's ``/ml`` connected as its model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from ..errors import Conflict, NotFound, UpstreamError
from ..label_studio import LabelStudioClient, LabelStudioError
from ..models import Project
from ..schemas import ProjectAttach, ProjectCreate, ProjectUpdate
from ..settings import Settings, get_settings

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/api/v1/webhooks/label-studio"
ML_PATH = "/ml"


@dataclass(frozen=True)
class LabelStudioSetup:
    view_id: int
    ml_url: str
    ml_backend_id: int | None  # None: Label Studio could not connect it (``ml_problem`` says why)
    ml_problem: str | None = None


def get(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound.one(("project_id",), f"project {project_id} not found")
    return project


def attached_to(session: Session, ls_project_id: int) -> Project | None:
    """The project attached to Label Studio project ``ls_project_id``, if any."""
    return session.exec(select(Project).where(Project.ls_project_id == ls_project_id)).first()


def list_all(session: Session) -> Sequence[Project]:
    return session.exec(select(Project).order_by(Project.id)).all()


def create(session: Session, body: ProjectCreate, client: LabelStudioClient | None, settings: Settings | None = None) -> Project:
    """A new project; with a Label Studio client (and unless told not to), its Label Studio project
    too, set up for the loop (``set_up_label_studio``)."""
    ls_project_id = None
    if client is not None and body.create_in_label_studio:
        ls_project_id = create_in_label_studio(client, body.name, body.labels)
    project = Project(name=body.name, labels=list(body.labels), ls_project_id=ls_project_id)
    session.add(project)
    session.commit()
    session.refresh(project)
    if ls_project_id is not None:
        set_up_label_studio(client, ls_project_id, settings or get_settings())
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


def set_up_label_studio(client: LabelStudioClient, ls_project_id: int, settings: Settings) -> LabelStudioSetup:
    """The view "nerloop: most uncertain first" (score and model version shown, lowest score first)
    and nerloop's ``/ml`` (at ``settings.public_url``) connected as the project's model; both kept,
    not doubled, when they are there already. Label Studio connects a model only while it answers:
    when it cannot reach ``/ml`` the project goes on without (the result says why), and running this
    again once the API is up connects it."""
    ml_url = settings.public_url.rstrip("/") + ML_PATH
    try:
        view_id = client.ensure_uncertainty_view(ls_project_id)
    except LabelStudioError as error:
        raise UpstreamError.one((), f"Label Studio: {error}") from error
    auth = (settings.ml_basic_auth_user, settings.ml_basic_auth_password) if settings.ml_basic_auth_user else None
    if auth is None and settings.api_token:
        # /ml then takes only the bearer token, which Label Studio's model connection cannot send.
        problem = "set NERLOOP_ML_BASIC_AUTH_USER and NERLOOP_ML_BASIC_AUTH_PASSWORD: Label Studio reaches /ml with basic auth only"
        log.warning("Label Studio project %s: model at %s not connected: %s", ls_project_id, ml_url, problem)
        return LabelStudioSetup(view_id, ml_url, None, problem)
    try:
        backend_id = client.connect_ml_backend(ls_project_id, ml_url, auth)
    except LabelStudioError as error:
        log.warning("Label Studio project %s: model at %s not connected: %s", ls_project_id, ml_url, error)
        return LabelStudioSetup(view_id, ml_url, None, str(error))
    return LabelStudioSetup(view_id, ml_url, backend_id)


def attach(session: Session, body: ProjectAttach, client: LabelStudioClient | None, settings: Settings | None = None) -> Project:
    """A project for an existing Label Studio project, with the labels and tag names of its config,
    set up for the loop there (``set_up_label_studio``)."""
    if client is None:
        raise Conflict.one((), "Label Studio is not configured: set NERLOOP_LABEL_STUDIO_API_KEY (and _URL)")
    taken = attached_to(session, body.ls_project_id)
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
    set_up_label_studio(client, body.ls_project_id, settings or get_settings())
    return project


def update(session: Session, project: Project, changes: ProjectUpdate) -> Project:
    for name, value in changes.model_dump(exclude_none=True).items():
        setattr(project, name, value)
    session.add(project)
    session.commit()
    session.refresh(project)
    return project
