"""Model versions: list, promote one to active, roll back to the one active before."""

from typing import Annotated

from fastapi import APIRouter, Path

from .. import operations
from ..deps import ProjectDep, SessionDep, SettingsDep
from ..errors import ERROR_RESPONSES
from ..schemas import MAX_ID, ModelVersionRead

router = APIRouter(prefix="/projects/{project_id}/models", tags=["models"], responses=ERROR_RESPONSES)
VersionId = Annotated[int, Path(ge=1, le=MAX_ID, description="model version id")]
CONFLICT = {409: {"description": "The version cannot serve (still training, no model directory), or nothing to roll back to"}}


@router.get("", response_model=list[ModelVersionRead])
def list_model_versions(project: ProjectDep, session: SessionDep):
    return operations.list_model_versions(session, project)


@router.post("/{version_id}/promote", response_model=ModelVersionRead, responses=CONFLICT)
def promote(version_id: VersionId, project: ProjectDep, session: SessionDep, settings: SettingsDep):
    """Make this version the project's only active one; the previously active version is retired,
    and the pool is scored again with it."""
    return operations.promote(session, project, version_id, settings)


@router.post("/rollback", response_model=ModelVersionRead, responses=CONFLICT)
def rollback(project: ProjectDep, session: SessionDep, settings: SettingsDep):
    """Re-activate the version that was active before the current one (and score the pool with it)."""
    return operations.rollback(session, project, settings)
