"""``python -m service.cli``: what the demo starts its processes with."""

from . import app

app()
