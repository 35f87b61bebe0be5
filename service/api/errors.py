"""One error shape for every failure: ``{"detail": [{"field": ..., "message": ...}]}``.

``field`` names where the input went wrong, as a path from the request part: ``body.texts[0]``,
``path.project_id``, ``query.format``, ``file``, ``header.Authorization``; it is null when no single
field is at fault (an unknown route, a state conflict).
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class FieldError(BaseModel):
    field: str | None
    message: str


class ErrorResponse(BaseModel):
    detail: list[FieldError]


class ApiError(Exception):
    """An error the client caused (4xx) or an upstream failure (502), with the fields at fault."""

    def __init__(self, status_code: int, errors: Sequence[tuple[str | None, str]], headers: dict | None = None):
        super().__init__("; ".join(message for _, message in errors))
        self.status_code = status_code
        self.errors = list(errors)
        self.headers = headers

    @classmethod
    def one(cls, status_code: int, field: str | None, message: str, headers: dict | None = None) -> "ApiError":
        return cls(status_code, [(field, message)], headers)


def not_found(field: str, what: str) -> ApiError:
    return ApiError.one(404, field, f"{what} not found")


def conflict(message: str, field: str | None = None) -> ApiError:
    return ApiError.one(409, field, message)


def bad_gateway(error: Exception) -> ApiError:
    """Label Studio failed or refused: not the client's fault, and not ours either."""
    return ApiError.one(502, None, f"Label Studio: {error}")


def invalid(errors: Iterable[tuple[str | None, str]]) -> ApiError:
    return ApiError(422, list(errors))


def field_path(location: Sequence) -> str:
    """("body", "tasks", 0, "text") -> "body.tasks[0].text"."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _body(errors: Iterable[tuple[str | None, str]]) -> dict:
    return {"detail": [{"field": field, "message": message} for field, message in errors]}


def _field_and_message(error: dict) -> tuple[str, str]:
    location = list(error.get("loc", ()))
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "json_invalid":  # the location ends in a character position, not a field
        position = location[-1] if location and isinstance(location[-1], int) else None
        reason = error.get("ctx", {}).get("error", message)
        return "body", f"not valid JSON: {reason}" + (f" (at character {position})" if position is not None else "")
    return field_path(location), message


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(_body(_field_and_message(error) for error in exc.errors()), status_code=422)


async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(_body(exc.errors), status_code=exc.status_code, headers=exc.headers)


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    field = "body" if exc.status_code == 400 and "parsing the body" in message else None  # FastAPI's unreadable body
    return JSONResponse(_body([(field, message)]), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(_body([(None, "internal error; see the server log")]), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


# Documented on every route that validates input, so the OpenAPI schema shows the real shape.
ERROR_RESPONSES = {
    401: {"model": ErrorResponse, "description": "Missing or wrong credentials"},
    404: {"model": ErrorResponse, "description": "Unknown id"},
    422: {"model": ErrorResponse, "description": "Invalid input; each entry names the field"},
}
