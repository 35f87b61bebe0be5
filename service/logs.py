"""Logs that say which project and job they are about.

``bound(project_id=..., job_id=...)`` attaches fields to every record logged inside it (a context
variable, so concurrent requests and tasks keep theirs apart). The API binds the project of the
request's path, workers the project and job of the task they run (``workers.celery_app``).

``NERLOOP_LOG_FORMAT=json`` writes one JSON object per line (time, level, logger, message, the bound
fields, the exception), for a log shipper; ``text``, the default, appends the fields to the line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType

# An immutable default: bind() always sets a new dict, so nothing can mutate the shared one.
_fields: ContextVar[Mapping] = ContextVar("nerloop_log_fields", default=MappingProxyType({}))


@contextmanager
def bound(**fields) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def bind(**fields) -> object:
    """Bind fields until ``unbind(token)``: for callers that cannot wrap a block (signal handlers)."""
    return _fields.set({**_fields.get(), **{k: v for k, v in fields.items() if v is not None}})


def unbind(token) -> None:
    _fields.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (``record.context``, and ``record.context_text``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = dict(_fields.get())
        record.context_text = "".join(f" {key}={value}" for key, value in record.context.items())
        return True


# A query parameter that carries a credential (?token=…, &api_key=…, ?secret=…): uvicorn's access
# log writes each request's full path, and a client may well put its token there.
_SECRET_PARAMETER = re.compile(r"([?&][^=&\s]*(?:token|secret|password|passwd|api_?key|auth)[^=&\s]*=)[^&\s#]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the values of credential-like query parameters replaced by ``***``."""
    return _SECRET_PARAMETER.sub(r"\1***", text)


class RedactSecrets(logging.Filter):
    """Redacts credential-like query parameters in a record's message and arguments (access logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "context", {}),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context_text)s"


def formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        return JsonFormatter()
    if kind == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"NERLOOP_LOG_FORMAT: expected text or json, got {kind!r}")


def install(handler: logging.Handler, kind: str) -> None:
    """Give ``handler`` the format ``kind`` and the bound fields."""
    handler.setFormatter(formatter(kind))
    for kind_of_filter in (ContextFilter, RedactSecrets):
        if not any(isinstance(f, kind_of_filter) for f in handler.filters):
            handler.addFilter(kind_of_filter())


def configure(kind: str, level: str = "INFO") -> None:
    """The root logger writes to stderr in format ``kind`` (processes nerloop starts itself: the API)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        install(handler, kind)
    root.setLevel(level)
