"""The one error hierarchy of semcache. The server maps each class to an HTTP status once.

SemcacheError
 ├── InvalidInput          the request is wrong; nothing was changed
 ├── NotFound              no such (servable) entry
 ├── VersionConflict       a catalog version may only move forward
 ├── Unauthorized          missing or wrong credentials
 ├── Forbidden             credentials that do not cover this namespace
 └── Unavailable           the cache cannot serve this now (not ready, embedder or store down)
"""

from __future__ import annotations


class SemcacheError(Exception):
    """Base of every error semcache raises on purpose."""

    title = "Cache error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(SemcacheError):
    title = "Invalid request"


class NotFound(SemcacheError):
    title = "Not found"


class VersionConflict(SemcacheError):
    title = "Version conflict"


class Unauthorized(SemcacheError):
    title = "Unauthorized"

    def __init__(self, detail: str, challenge: str = 'Bearer realm="semcache-admin"') -> None:
        super().__init__(detail)
        self.challenge = challenge
        """The WWW-Authenticate value: which credentials the request lacked."""


class Forbidden(SemcacheError):
    title = "Forbidden"


class Unavailable(SemcacheError):
    title = "Service unavailable"
