"""Projects: create (optionally in Label Studio too), attach an existing Label Studio project, read, report."""

from fastapi import APIRouter

from ...operations import projects, reports
from ...schemas import ProjectAttach, ProjectCreate, ProjectRead, ProjectReport, ProjectUpdate
from ..deps import LabelStudioDep, ProjectDep, SessionDep, SettingsDep
from ..errors import ERROR_RESPONSES

router = APIRouter(prefix="/projects", tags=["projects"], responses=ERROR_RESPONSES)
ATTACH_CONFLICT = {409: {"description": "Already attached, or no Label Studio configured"}}


@router.post("", response_model=ProjectRead, status_code=201, responses={502: {"description": "Label Studio refused"}})
def create_project(body: ProjectCreate, session: SessionDep, client: LabelStudioDep, settings: SettingsDep):
    """Create a project with its entity labels; with a Label Studio API key configured, the Label
    Studio project is created too (unless ``create_in_label_studio`` is false), with a view of the
    most uncertain tasks first and this service's /ml connected as its model."""
    return projects.create(session, body, client, settings)


@router.post("/attach", response_model=ProjectRead, status_code=201, responses=ATTACH_CONFLICT)
def attach_project(body: ProjectAttach, session: SessionDep, client: LabelStudioDep, settings: SettingsDep):
    """Create a project for an existing Label Studio project, reading labels and tag names from its
    config; the Label Studio project gets the view and the model connection as on creation."""
    return projects.attach(session, body, client, settings)


@router.get("", response_model=list[ProjectRead])
def list_projects(session: SessionDep):
    return projects.list_all(session)


@router.get("/{project_id}", response_model=ProjectRead)
def get_project(project: ProjectDep):
    return project


@router.patch("/{project_id}", response_model=ProjectRead)
def update_project(project: ProjectDep, body: ProjectUpdate, session: SessionDep):
    """Change the query strategy, the retraining interval, or whether (and how much) training uses augmented examples."""
    return projects.update(session, project, body)


@router.get("/{project_id}/report", response_model=ProjectReport)
def project_report(project: ProjectDep, session: SessionDep):
    """Entities per label in accepted annotations, task counts (pool, labelled, dev) and model versions with F1."""
    return reports.report(session, project)
