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
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Iterator

_fields: ContextVar[dict] = ContextVar("nerloop_log_fields", default={})


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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
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
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())


def configure(kind: str, level: str = "INFO") -> None:
    """The root logger writes to stderr in format ``kind`` (processes nerloop starts itself: the API)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        install(handler, kind)
    root.setLevel(level)
