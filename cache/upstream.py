"""What the cache needs from a model API, as a protocol: the server injects the real client.

Keeping the protocol here (and the SDK adapter in `server/`) lets the answering logic run
against any implementation, and keeps this package free of HTTP.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from .entry import Usage
from .errors import SemcacheError


class ModelReply(msgspec.Struct, kw_only=True):
    """The parts of a Messages API response the cache uses."""

    text: str
    model: str
    usage: Usage
    stop_reason: str | None
    has_tool_use: bool = False
    request_id: str | None = None


class UpstreamError(SemcacheError):
    """The model API failed (after the client's own retries), or is not configured."""

    title = "Upstream model error"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        retry_after: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error_type = error_type
        self.retry_after = retry_after
        self.body = body

    @property
    def escalatable(self) -> bool:
        """Overload (529), rate limit (429), timeouts and 5xx: another tier may still answer."""
        return self.status is None or self.status in (408, 429) or self.status >= 500


class UpstreamNotConfigured(UpstreamError):
    title = "No upstream API key"


class ModelClient(Protocol):
    """Calls one model once (with the client's own retry policy)."""

    @property
    def configured(self) -> bool:
        """True when the client has an API key to call with."""
        ...

    async def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: list[dict[str, Any]],
        system: str | list[dict[str, Any]] | None = None,
        api_key: str | None = None,
    ) -> ModelReply:
        """Raise UpstreamError on failure; UpstreamNotConfigured without any key."""
        ...
