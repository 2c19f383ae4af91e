"""Process-wide logging, set up once by the CLI: JSON lines for a server, text for commands."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str, *, json_lines: bool, force: bool = False) -> None:
    """Send every logger (uvicorn's included) to stderr, one record per line.

    Like `logging.basicConfig`, it leaves a root logger that already has handlers alone
    (a host program, or pytest running `main()`), unless `force`."""
    root = logging.getLogger()
    if root.handlers and not force:
        return
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "%(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",  # ISO 8601 in UTC, first in the line
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
