"""The dashboard: a self-contained page at /dashboard and the JSON it draws, per project.

The page holds no data, so it is served without a token; everything it shows comes from
``/api/v1/projects/{id}/dashboard``, which needs the bearer token like the rest of /api/v1. The page
takes the token from the URL fragment (``/dashboard#token=…``, never sent to the server or logged)
or asks for it.
"""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from ...operations import dashboard
from ...schemas import Dashboard
from ..deps import ProjectDep, SessionDep
from ..errors import ERROR_RESPONSES

PAGE = files("service.api").joinpath("static/dashboard.html").read_text(encoding="utf-8")
# Nothing may load from elsewhere or be sent elsewhere: the inline script and styles, and fetches to
# this server only.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

page = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/projects/{project_id}", tags=["dashboard"], responses=ERROR_RESPONSES)


@page.get("/dashboard", response_class=HTMLResponse)
def dashboard_page():
    return HTMLResponse(PAGE, headers=PAGE_HEADERS)


@router.get("/dashboard", response_model=Dashboard)
def project_dashboard(project: ProjectDep, session: SessionDep):
    """Everything the dashboard page shows for one project: task and annotation counts, entities per
    type, the learning curve, model versions with per-type dev F1, recent jobs and job counts."""
    return dashboard.dashboard(session, project)
