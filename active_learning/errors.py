"""Errors that name the field they are about, as pydantic does: a ``loc`` path and a ``reason``.

The service maps ``loc`` onto its request (``("body", "tasks", 3, *error.loc)``) without parsing the
message; ``str(error)`` stays readable on its own: ``spans[1]: label must be a non-empty string``.
"""

from __future__ import annotations

Loc = tuple[str | int, ...]


def format_loc(loc: Loc) -> str:
    """``("spans", 1, "end")`` → ``spans[1].end``; ``("params", "forward")`` → ``params.forward``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


class LocatedError(ValueError):
    """A bad value at ``loc`` (relative to one input: an example, a request's parameters)."""

    def __init__(self, loc: Loc, reason: str) -> None:
        self.loc = tuple(loc)
        self.reason = reason
        super().__init__(f"{format_loc(self.loc)}: {reason}")

    def __reduce__(self):  # pickle (Celery, multiprocessing) rebuilds from (loc, reason), not the message
        return type(self), (self.loc, self.reason)
