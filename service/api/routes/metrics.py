"""Prometheus metrics in the text exposition format; behind the API token when one is set
(Prometheus sends it with ``authorization: {credentials_file: …}`` in the scrape config)."""

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...schemas import ErrorResponse
from ..deps import require_token

router = APIRouter(tags=["observability"], dependencies=[Depends(require_token)])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {"model": ErrorResponse, "description": "Missing or wrong bearer token"}},
)
def metrics(request: Request):
    """Annotations, tasks and jobs per project, job durations and active model F1 (read from the
    database now, so they cover the workers too) and this API process's request latencies."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
