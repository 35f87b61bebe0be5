"""Model versions: list, promote one to active, roll back to the one active before."""

from fastapi import APIRouter

from ...operations import model_versions
from ...schemas import ModelVersionRead
from ..deps import ProjectDep, SessionDep, SettingsDep, VersionId
from ..errors import ERROR_RESPONSES

router = APIRouter(prefix="/projects/{project_id}/models", tags=["models"], responses=ERROR_RESPONSES)
CONFLICT = {409: {"description": "The version has no model directory, or there is nothing to roll back to"}}


@router.get("", response_model=list[ModelVersionRead])
def list_model_versions(project: ProjectDep, session: SessionDep):
    return model_versions.list_for_project(session, project)


@router.post("/{version_id}/promote", response_model=ModelVersionRead, responses=CONFLICT)
def promote(version_id: VersionId, project: ProjectDep, session: SessionDep, settings: SettingsDep):
    """Make this version the project's only active one; the previously active version is retired,
    and the pool is scored again with it."""
    return model_versions.promote(session, project, version_id, settings)


@router.post("/rollback", response_model=ModelVersionRead, responses=CONFLICT)
def rollback(project: ProjectDep, session: SessionDep, settings: SettingsDep):
    """Re-activate the version that was active before the current one (and score the pool with it)."""
    return model_versions.rollback(session, project, settings)
