"""What nerloop does, one module per resource, shared by the REST API and the CLI.

Each function takes a session and ids or validated bodies (``service.schemas``), commits its own
writes, and raises a ``service.errors.DomainError`` for anything it cannot do, naming the input at
fault. Nothing here knows HTTP or the terminal.
"""
