"""GET /dashboard: a page the server serves itself, and GET /dashboard/data, what it draws.

The page, its script and its stylesheet ship in the package (server/static); the charts are
SVG drawn by that script, so the page loads nothing from anywhere else, and its Content
Security Policy says so to the browser. The data needs the same client key as /v1/stats (one
for "*") when client keys are configured; the page reads it from its URL fragment
(`/dashboard#key=...`), which browsers never send to the server or write to its access log.

Neither route is in the OpenAPI document: they are a page for people, not part of the API.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from typing import Annotated, Any, Literal

from litestar import Request, Router, get
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.params import FromPath, Parameter
from litestar.response import Response

from cache import NotFound, SemanticCache
from cache.dashboard import Dashboard, build

from .access import access_of

_ASSETS = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {"cache-control": "no-cache", "x-content-type-options": "nosniff"}

Window = Literal["1h", "24h", "7d", "30d"]


@functools.cache
def _asset(name: str) -> bytes:
    return (files("server") / "static" / name).read_bytes()


@get("/", sync_to_thread=False)
def page() -> Response[bytes]:
    """The dashboard page."""
    return Response(
        _asset("dashboard.html"),
        media_type=_ASSETS["dashboard.html"],
        headers={**_HEADERS, "content-security-policy": _CSP, "referrer-policy": "no-referrer"},
    )


@get("/static/{name:str}", sync_to_thread=False)
def asset(name: FromPath[str]) -> Response[bytes]:
    """The page's script and stylesheet (nothing else: the name is looked up, not a path)."""
    media = _ASSETS.get(name)
    if media is None or name.endswith(".html"):
        raise NotFound(f"no dashboard asset {name!r}")
    return Response(_asset(name), media_type=media, headers=_HEADERS)


@get("/data", sync_to_thread=True, media_type=MediaType.JSON)
def data(
    cache: NamedDependency[SemanticCache],
    request: Request[Any, Any, Any],
    namespace: Annotated[
        str | None, Parameter(description="One namespace; absent: all of them.")
    ] = None,
    window: Annotated[Window, Parameter(description="How far back the charts go.")] = "24h",
) -> Response[Dashboard]:
    """The dashboard's numbers, from the ledger's rollups."""
    access_of(request).check_all()
    return Response(build(cache, namespace or None, window), headers={"cache-control": "no-store"})


dashboard = Router(path="/dashboard", route_handlers=[page, asset, data], include_in_schema=False)
