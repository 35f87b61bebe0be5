"""Liveness and database reachability; needs no token (load balancers, Label Studio, humans)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from ...schemas import Health
from ..deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "The database is unreachable"}})
def health(session: SessionDep):
    try:
        session.exec(text("SELECT 1"))
    except Exception as error:  # any driver error means the same thing here: not ready
        return JSONResponse(Health(status="degraded", database=f"error: {type(error).__name__}").model_dump(), status_code=503)
    return Health(status="ok", database="ok")
