"""The one mapping from errors to RFC 9457 problem+json responses."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from cache import (
    Forbidden,
    InvalidInput,
    NotFound,
    SemcacheError,
    Unauthorized,
    Unavailable,
    VersionConflict,
)
from cache.upstream import UpstreamError, UpstreamNotConfigured

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

STATUS_OF: dict[type[SemcacheError], int] = {
    InvalidInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    VersionConflict: 409,
    Unavailable: 503,
}


def problem(
    request: Request[Any, Any, Any],
    status: int,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def upstream_status(exc: UpstreamError) -> int:
    """502 for a bad upstream answer, 503 when it is overloaded or absent, 504 on timeout."""
    if isinstance(exc, UpstreamNotConfigured) or exc.status in (429, 503, 529):
        return 503
    if exc.status in (408, 504):
        return 504
    return 502


def semcache_error(request: Request[Any, Any, Any], exc: SemcacheError) -> Response[Any]:
    if isinstance(exc, UpstreamError):
        headers = {"retry-after": exc.retry_after} if exc.retry_after else None
        extra = {"upstream_status": exc.status, "upstream_error_type": exc.error_type}
        return problem(
            request, upstream_status(exc), exc.title, exc.detail, headers=headers, **extra
        )
    status = next((code for kind, code in STATUS_OF.items() if isinstance(exc, kind)), 500)
    headers = {"www-authenticate": exc.challenge} if isinstance(exc, Unauthorized) else None
    return problem(request, status, exc.title, exc.detail, headers=headers)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        errors = [e for e in exc.extra if isinstance(e, dict)]
        for error in errors:
            # Litestar reports a missing body as a KeyError text: "'data'".
            if error.get("key") == "data" and error.get("message") == "'data'":
                error["message"] = "the request body is missing; send a JSON object"
        messages = [
            f"{e.get('message')}" + (f" (at {e['key']})" if e.get("key") else "") for e in errors
        ]
        detail = "; ".join(messages) or exc.detail
        return problem(request, exc.status_code, "Invalid request", detail, errors=errors)
    return problem(
        request,
        exc.status_code,
        _title(exc.status_code),
        exc.detail or _title(exc.status_code),
        headers=exc.headers,
    )


def too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    # msgspec gives up on JSON nested past Python's recursion limit: a bad request, not a 500.
    return problem(request, 400, "Invalid request", "the JSON body is nested too deeply to be read")


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "Internal server error",
        "The server failed to handle this request; it has been logged.",
    )


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    SemcacheError: semcache_error,
    HTTPException: http_error,
    RecursionError: too_deep,
    Exception: unexpected_error,
}


def documented(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problem+json answers a handler can give."""
    from .schemas import Problem

    return {
        status: ResponseSpec(
            data_container=Problem,
            description=_title(status),
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for status in statuses
    }
