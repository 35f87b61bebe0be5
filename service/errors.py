"""What the domain operations (``service.operations``) raise when a request cannot be carried out.

Each error holds ``(loc, message)`` pairs. ``loc`` is a path into the operation's inputs, as in
pydantic's errors: ``("tasks", 0, "spans", 1)``, ``("task_id",)``, ``("file",)``, ``("params",
"forward")``, or ``()`` when no single input is at fault. Nothing here knows HTTP: the API maps the
class to a status code and ``loc`` to a request field (``service.api.errors``), the CLI maps them to
a message naming its option and exit code 2 (``service.cli.common``).
"""

from __future__ import annotations

from collections.abc import Sequence

from active_learning.errors import Loc


class DomainError(Exception):
    def __init__(self, errors: Sequence[tuple[Loc, str]]):
        self.errors = [(tuple(loc), message) for loc, message in errors]
        super().__init__("; ".join(message for _, message in self.errors))

    @classmethod
    def one(cls, loc: Loc, message: str) -> DomainError:
        return cls([(loc, message)])


class NotFound(DomainError):
    """An id that names nothing (of this project)."""


class Conflict(DomainError):
    """The request is well-formed but the state does not allow it (already attached, nothing to roll back to)."""


class Invalid(DomainError):
    """An input the caller must fix."""


class UpstreamError(DomainError):
    """Label Studio failed or refused: not the caller's fault, and not ours either."""


class Unavailable(DomainError):
    """Not possible right now, try again later: the broker refused a job's task (the job is recorded
    as failed), or the model stayed busy with other predictions."""
