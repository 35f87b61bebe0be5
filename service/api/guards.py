"""What is checked before a request's body is read: credentials (/api/v1, /ml), and the body's size.

FastAPI reads and parses a body before it resolves a route's dependencies, so a dependency alone
would let an unauthenticated client make the server parse megabytes before its 401. This ASGI
middleware answers 401 from the headers alone, and refuses bodies over the limit with 413: at once
when ``Content-Length`` says so, or as soon as the bytes streamed in pass it (chunked bodies). The
routes keep their dependencies (``require_token``, ``require_webhook_secret``, ``require_ml_auth``), which the OpenAPI
schema shows; both ask the same functions (``check_*``).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from ..label_studio import WEBHOOK_SECRET_HEADER
from ..operations.tasks import MAX_UPLOAD_BYTES
from ..settings import Settings
from .deps import basic_credentials, bearer_credentials, check_ml_auth, check_token, check_webhook_secret
from .errors import Unauthorized

MULTIPART_OVERHEAD = 1024 * 1024  # an upload's form fields and part headers around the file
OPEN_PATHS = ("/api/v1/health",)
WEBHOOK_PATHS = ("/api/v1/webhooks/",)
TOKEN_PATHS = ("/api/v1/",)


def _error(status_code: int, field: str | None, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": [{"field": field, "message": message}]}, status_code=status_code, headers=headers)


class RequestGuard:
    """ASGI middleware: 401 before the body for /api/v1 (the webhook's secret for its path) and /ml, 413 for
    bodies over ``settings.max_request_bytes`` (task file uploads: ``MAX_UPLOAD_BYTES``)."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = await self.credentials_refusal(scope) or self.declared_size_refusal(headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        limit = self.limit_for(headers)
        received = 0

        async def receive_within_limit():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # raised into the body's reader; the error handlers answer it
                    raise HTTPException(413, f"request body larger than {limit} bytes")
            return message

        await self.app(scope, receive_within_limit, send)

    async def credentials_refusal(self, scope) -> JSONResponse | None:
        path, connection = scope["path"], HTTPConnection(scope)
        try:
            if path.startswith(OPEN_PATHS):
                return None
            if path.startswith(WEBHOOK_PATHS):
                check_webhook_secret(self.settings, connection.headers.get(WEBHOOK_SECRET_HEADER))
            elif path.startswith(TOKEN_PATHS):
                check_token(self.settings, await bearer_credentials(connection))
            elif path == "/ml" or path.startswith("/ml/"):
                check_ml_auth(self.settings, await bearer_credentials(connection), await basic_credentials(connection))
        except Unauthorized as error:
            return _error(401, error.field, error.message, error.headers)
        return None

    def limit_for(self, headers: Headers) -> int:
        if headers.get("content-type", "").startswith("multipart/form-data"):
            return max(self.settings.max_request_bytes, MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD)
        return self.settings.max_request_bytes

    def declared_size_refusal(self, headers: Headers) -> JSONResponse | None:
        declared = headers.get("content-length")
        if declared is None:
            return None
        if not declared.isdigit():
            return _error(400, "header.Content-Length", f"not a byte count: {declared!r}")
        limit = self.limit_for(headers)
        if int(declared) > limit:
            return _error(413, "body", f"request body of {declared} bytes is larger than the limit of {limit} bytes")
        return None

