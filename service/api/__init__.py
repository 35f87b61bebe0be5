"""The HTTP side of nerloop: ``create_app(settings)`` serves /api/v1 and the Label Studio ML backend at /ml."""

from .app import create_app

__all__ = ["create_app"]
