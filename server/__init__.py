"""The HTTP server. The only layer that knows Litestar."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
