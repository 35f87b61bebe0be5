"""Dependencies the routes declare: settings, a database session, credentials, the predictor, the
project of the path, and the types of the ids in paths."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.requests import HTTPConnection

from ..errors import UpstreamError
from ..label_studio import WEBHOOK_SECRET_HEADER, LabelStudioClient, LabelStudioError, client_from_settings
from ..models import Project
from ..operations import projects
from ..predictor import Predictor
from ..schemas import MAX_ID
from ..settings import Settings
from .errors import Unauthorized

BodyModel = TypeVar("BodyModel", bound=BaseModel)

# The small dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
# one hand-off per dependency per request, which cost more than the checks themselves (/ml/predict).


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> AsyncIterator[Session]:
    """A session per request; operations commit their own writes, anything unfinished is rolled back.
    Creating one does not connect (the first query, in the route's thread, does)."""
    with Session(engine) as session:
        yield session


async def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor


def get_label_studio(settings: Annotated[Settings, Depends(get_settings)]) -> LabelStudioClient | None:
    """A Label Studio client when an API key is configured, else None."""
    try:
        return client_from_settings(settings)
    except LabelStudioError as error:
        raise UpstreamError.one((), f"Label Studio: {error}") from error


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
LabelStudioDep = Annotated[LabelStudioClient | None, Depends(get_label_studio)]
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="nerloop project id")]
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="task id")]
VersionId = Annotated[int, Path(ge=1, le=MAX_ID, description="model version id")]
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="job id")]


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


_bearer = HTTPBearer(auto_error=False, description="NERLOOP_API_TOKEN; not required when the server has none set")


def check_token(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    """``Authorization: Bearer <NERLOOP_API_TOKEN>`` when the server has a token configured."""
    if not settings.api_token:
        return
    if credentials is None or not _same(credentials.credentials, settings.api_token):
        raise Unauthorized("header.Authorization", "missing or wrong bearer token", "Bearer")


async def require_token(settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    check_token(settings, credentials)


_basic = HTTPBasic(auto_error=False, description="NERLOOP_ML_BASIC_AUTH_USER/_PASSWORD, as set in Label Studio's Connect Model")


async def bearer_credentials(connection: HTTPConnection) -> HTTPAuthorizationCredentials | None:
    """The bearer token as the routes' dependency reads it (for ``guards.RequestGuard``)."""
    return await _bearer(connection)


async def basic_credentials(connection: HTTPConnection) -> HTTPBasicCredentials | None:
    """Basic credentials as the /ml routes' dependency reads them; malformed ones count as none."""
    try:
        return await _basic(connection)
    except HTTPException:
        return None


def check_ml_auth(settings: Settings, bearer: HTTPAuthorizationCredentials | None, basic: HTTPBasicCredentials | None) -> None:
    """/ml takes HTTP basic auth, which Label Studio's "Connect Model" sends (when a user is
    configured), or the API's bearer token (when one is set); with neither configured it is open
    (``nerloop serve --insecure``). /ml can queue trainings: it is no less protected than the API."""
    user, token = settings.ml_basic_auth_user, settings.api_token
    if not user and not token:
        return
    if basic is not None and user and _same(basic.username, user) and _same(basic.password, settings.ml_basic_auth_password):
        return
    if bearer is not None and token and _same(bearer.credentials, token):
        return
    challenge = 'Basic realm="nerloop"' if user else "Bearer"
    reason = "missing or wrong credentials (basic auth, as in Label Studio's Connect Model, or the bearer token)"
    raise Unauthorized("header.Authorization", reason, challenge)


async def require_ml_auth(
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    basic: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
) -> None:
    check_ml_auth(settings, bearer, basic)


def check_webhook_secret(settings: Settings, secret: str | None) -> None:
    """The shared secret Label Studio sends with each webhook, when one is configured."""
    if not settings.webhook_secret:
        return
    if secret is None or not _same(secret, settings.webhook_secret):
        raise Unauthorized(f"header.{WEBHOOK_SECRET_HEADER}", "missing or wrong webhook secret")


async def require_webhook_secret(settings: SettingsDep, secret: Annotated[str | None, Header(alias=WEBHOOK_SECRET_HEADER)] = None) -> None:
    check_webhook_secret(settings, secret)


def json_body(model: type[BodyModel]) -> Callable[[Request], Awaitable[BodyModel]]:
    """A dependency: the request's JSON body as ``model``, parsed and validated in the thread pool.

    FastAPI parses and validates a declared body on the event loop. For the largest task import the
    size limit lets through (2 MiB: 1,000 tasks, 80,000 spans) that is 1.5 s of CPU on our machines,
    during which no other request, ``/health`` included, got an answer (1.8 s measured). In a thread,
    Pydantic still holds the GIL while it validates (0.9 s for that body), but the event loop gets it
    back between the steps around it: /health answered within 0.8 s. Errors are FastAPI's own (422,
    located under ``body``). The route names the model in ``openapi_extra`` (``json_body_schema``)."""

    async def read(request: Request) -> BodyModel:
        raw = await request.body()
        return await run_in_threadpool(_validated, model, raw)

    return read


def _validated(model: type[BodyModel], raw: bytes) -> BodyModel:
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]) from None


JSON_BODIES: list[type[BaseModel]] = []  # the models json_body_schema named: the app adds them to the schema's components


def json_body_schema(model: type[BaseModel]) -> dict:
    """``openapi_extra`` for a route that reads ``model`` with ``json_body``: its request body schema."""
    JSON_BODIES.append(model)
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def get_project(project_id: ProjectId, session: SessionDep) -> Project:
    return projects.get(session, project_id)


ProjectDep = Annotated[Project, Depends(get_project)]
