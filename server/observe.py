"""One log line and one latency sample per request, under a request id.

An ASGI middleware outside Litestar's routing times each request from its first byte in to
its last byte out, gives it a request id (the caller's `x-request-id` when it is sane, else a
new one) that is echoed in the response, and at the end writes one structured log line and
feeds the latency histogram. Handlers add what only they know (the cache outcome, the
similarity, the tokens) with `note`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, cast

from litestar import Request
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

REQUEST_ID_HEADER = "x-request-id"
_SCOPE_KEY = "semcache.log"
# A caller's id is kept only if it cannot smuggle anything into a log line or a header.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

request_log = logging.getLogger("semcache.request")
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def note(request: Request[Any, Any, Any], **fields: Any) -> None:
    """Add fields to this request's log line (and its metrics labels: `route`, `outcome`)."""
    found = cast("dict[str, Any]", request.scope).get(_SCOPE_KEY)
    if found is not None:
        found.update(fields)


def request_id_of(request: Request[Any, Any, Any]) -> str | None:
    found = cast("dict[str, Any]", request.scope).get(_SCOPE_KEY)
    return None if found is None else cast("str | None", found.get("request_id"))


def _route_of(scope: Scope) -> str:
    """The path template of the route that answered (a bounded set of label values), never
    the raw path, whose ids would make a metric series per entry."""
    template = cast("dict[str, Any]", scope).get("path_template")
    return str(template) if template else "unmatched"


class RequestObserver:
    """The middleware. `log_requests` off keeps the metrics and the request id, not the line."""

    def __init__(self, app: ASGIApp, metrics: Metrics, *, log_requests: bool) -> None:
        self._app = app
        self._metrics = metrics
        self._log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = cast("dict[str, Any]", scope)
        if raw["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given if given and _SANE_ID.fullmatch(given) else os.urandom(16).hex()
        fields: dict[str, Any] = {"request_id": request_id}
        raw[_SCOPE_KEY] = fields
        status = 500  # if the app fails before it answers, that is what the client sees

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route_of(scope)
            outcome = str(fields.get("outcome", "none"))
            self._metrics.observe_request(route, status, outcome, seconds)
            if self._log_requests:
                # Probes and scrapes come every few seconds: their lines only at debug level.
                quiet = route in _QUIET_ROUTES and status < 400
                request_log.log(
                    logging.DEBUG if quiet else logging.INFO,
                    "%s %s %d",
                    raw["method"],
                    route,
                    status,
                    extra={
                        **fields,
                        "method": raw["method"],
                        "route": route,
                        "status": status,
                        "latency_ms": round(seconds * 1000, 3),
                    },
                )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
