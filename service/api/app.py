"""The FastAPI application: our REST API under /api/v1 and the Label Studio ML backend under /ml."""

from __future__ import annotations

import re
from importlib.metadata import version

from fastapi import APIRouter, Depends, FastAPI

from workers.celery_app import prepare_publisher

from .. import logs
from ..db import init_db
from ..predictor import Predictor
from ..settings import Settings, get_settings
from .deps import JSON_BODIES, require_token
from .errors import install_error_handlers
from .guards import RequestGuard
from .routes import annotations, dashboard, health, jobs, metrics, ml, models, predictions, projects, review, tasks, webhooks
from .telemetry import RequestMetrics, registry_for

PROJECT_IN_PATH = re.compile(r"/projects/(\d+)")
API_PREFIX = "/api/v1"
ML_PREFIX = "/ml"


class BindProject:
    """ASGI middleware: log records made while serving a project's path carry its id. (Plain ASGI, not
    ``@app.middleware``: Starlette's ``BaseHTTPMiddleware`` costs about a millisecond per request.)"""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        found = PROJECT_IN_PATH.search(scope["path"]) if scope["type"] == "http" else None
        with logs.bound(project_id=int(found.group(1)) if found else None):
            await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app for ``settings`` (default: from the environment); creates the database schema if missing."""
    settings = settings or get_settings()
    app = FastAPI(
        title="nerloop",
        version=version("nerloop"),
        description=(
            "Active learning for NER around Label Studio. `/api/v1` needs `Authorization: Bearer $NERLOOP_API_TOKEN` "
            "when the server has a token (health excepted; the Label Studio webhook uses `X-Nerloop-Secret`). "
            "`/ml` is the Label Studio ML-backend protocol (optional HTTP basic auth). "
            "`/metrics` (Prometheus) needs the same bearer token; the page at `/dashboard` asks for it (or takes `#token=`). "
            'Errors: `{"detail": [{"field": "body.texts[0]", "message": "..."}]}`.'
        ),
    )
    app.state.settings = settings
    app.state.engine = init_db(settings.database_url)
    app.state.predictor = Predictor(settings.database_url)
    prepare_publisher(settings)
    install_error_handlers(app)
    app.state.metrics = registry_for(app.state.engine)
    app.add_middleware(RequestGuard, settings=settings)  # inside the metrics, so its refusals are counted
    app.add_middleware(RequestMetrics, registry=app.state.metrics)

    app.add_middleware(BindProject)

    protected = APIRouter(dependencies=[Depends(require_token)])
    for module in (projects, tasks, annotations, models, predictions, jobs, dashboard, review):
        protected.include_router(module.router)
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(health.router)
    api.include_router(webhooks.router)
    api.include_router(protected)
    app.include_router(api)
    app.include_router(ml.router, prefix=ML_PREFIX)
    app.include_router(dashboard.page)
    app.include_router(metrics.router)
    app.openapi = with_json_bodies(app)
    return app


def with_json_bodies(app: FastAPI):
    """``app.openapi`` that also lists the models of bodies read with ``deps.json_body`` (FastAPI only
    lists the models its routes declare) under components, where their routes' schemas point."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in JSON_BODIES:
                definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(definition.pop("$defs", {}))
                components[model.__name__] = definition
        return app.openapi_schema

    return openapi
