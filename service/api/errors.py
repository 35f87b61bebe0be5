"""One error shape for every failure: ``{"detail": [{"field": ..., "message": ...}]}`` (``schemas.ErrorResponse``).

``field`` names where the input went wrong, as a path from the request part: ``body.texts[0]``,
``path.project_id``, ``query.format``, ``file``, ``header.Authorization``; it is null when no single
field is at fault (an unknown route, a state conflict). Domain errors carry a location in the
operation's inputs, which the routes take from the path (ids), the upload (``file``) or the body.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from active_learning.errors import Loc, format_loc

from ..errors import Conflict, DomainError, Invalid, NotFound, Unavailable, UpstreamError
from ..schemas import ErrorResponse

logger = logging.getLogger(__name__)

STATUS_CODES = {NotFound: 404, Conflict: 409, Invalid: 422, UpstreamError: 502, Unavailable: 503}
PATH_PARAMETERS = {"project_id", "task_id", "version_id", "job_id"}


class Unauthorized(Exception):
    """Missing or wrong credentials in the header ``field`` (401, with a challenge for the client)."""

    def __init__(self, field: str, message: str, challenge: str | None = None):
        super().__init__(message)
        self.field, self.message = field, message
        self.headers = {"WWW-Authenticate": challenge} if challenge else None


def request_field(loc: Loc) -> str | None:
    """Where an operation's input came from: ("tasks", 0, "text") -> "body.tasks[0].text"."""
    if not loc:
        return None
    if loc[0] == "file":
        return format_loc(loc)
    return format_loc(("path" if loc[0] in PATH_PARAMETERS else "body", *loc))


def _body(errors: Iterable[tuple[str | None, str]]) -> dict:
    return {"detail": [{"field": field, "message": message} for field, message in errors]}


def _field_and_message(error: dict) -> tuple[str, str]:
    location = list(error.get("loc", ()))
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "json_invalid":  # the location ends in a character position, not a field
        position = location[-1] if location and isinstance(location[-1], int) else None
        reason = error.get("ctx", {}).get("error", message)
        return "body", f"not valid JSON: {reason}" + (f" (at character {position})" if position is not None else "")
    return format_loc(location), message


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(_body(_field_and_message(error) for error in exc.errors()), status_code=422)


async def _domain_error(_request: Request, exc: DomainError) -> JSONResponse:
    status_code = next(code for kind, code in STATUS_CODES.items() if isinstance(exc, kind))
    return JSONResponse(_body((request_field(loc), message) for loc, message in exc.errors), status_code=status_code)


async def _unauthorized(_request: Request, exc: Unauthorized) -> JSONResponse:
    return JSONResponse(_body([(exc.field, exc.message)]), status_code=401, headers=exc.headers)


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    # FastAPI's unreadable body, or one that grew past the limit while streaming in (guards.RequestGuard)
    field = "body" if (exc.status_code == 400 and "parsing the body" in message) or exc.status_code == 413 else None
    return JSONResponse(_body([(field, message)]), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _database_error(request: Request, exc: OperationalError) -> JSONResponse:
    """SQLite's "database is locked": another write held the one file past the busy timeout. Nothing
    was written (the transaction rolled back), so the client may simply retry."""
    if "database is locked" not in str(exc.orig):
        return await _unexpected(request, exc)
    logger.warning("%s %s: the database stayed locked by another write; answered 503", request.method, request.url.path)
    message = "the database is busy with another write; nothing was stored, retry"
    return JSONResponse(_body([(None, message)]), status_code=503, headers={"Retry-After": "5"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(_body([(None, "internal error; see the server log")]), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(Exception, _unexpected)


# Documented on every route that validates input, so the OpenAPI schema shows the real shape. 400 and
# 413 come from reading the body (unparseable; over NERLOOP_MAX_REQUEST_BYTES, see guards.RequestGuard).
ERROR_RESPONSES = {
    400: {"model": ErrorResponse, "description": "Unreadable body, or a Content-Length that is no number"},
    401: {"model": ErrorResponse, "description": "Missing or wrong credentials"},
    404: {"model": ErrorResponse, "description": "Unknown id"},
    413: {"model": ErrorResponse, "description": "Request body over the size limit (NERLOOP_MAX_REQUEST_BYTES)"},
    422: {"model": ErrorResponse, "description": "Invalid input; each entry names the field"},
}
