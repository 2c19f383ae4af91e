"""The real model client: the official `anthropic` SDK behind the cache's ModelClient protocol."""

from __future__ import annotations

import inspect
import os
from typing import Any

import anthropic
from anthropic import AsyncAnthropic
from anthropic.resources.messages import AsyncMessages

from cache import Usage
from cache.upstream import ModelReply, UpstreamError, UpstreamNotConfigured
from cache.warm import BatchItem, BatchRequest, BatchStatus

# Parameters the SDK's `messages.create` takes by name; anything else rides in `extra_body`,
# so the proxy forwards fields this SDK version does not know yet.
CREATE_PARAMS = frozenset(inspect.signature(AsyncMessages.create).parameters) - {
    "self",
    "extra_headers",
    "extra_query",
    "extra_body",
    "timeout",
}


def usage_of(usage: Any) -> Usage:
    return Usage(
        input_tokens=int(usage.input_tokens or 0),
        output_tokens=int(usage.output_tokens or 0),
        cache_creation_input_tokens=int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
        cache_read_input_tokens=int(getattr(usage, "cache_read_input_tokens", 0) or 0),
    )


def reply_of(message: Any) -> ModelReply:
    """The parts of an SDK `Message` the cache uses."""
    return ModelReply(
        text="".join(block.text for block in message.content if block.type == "text"),
        model=message.model,
        usage=usage_of(message.usage),
        stop_reason=message.stop_reason,
        has_tool_use=any(block.type == "tool_use" for block in message.content),
        request_id=getattr(message, "_request_id", None),
    )


def batch_status(batch: Any) -> BatchStatus:
    counts = batch.request_counts
    return BatchStatus(
        id=batch.id,
        processing_status=batch.processing_status,
        processing=counts.processing,
        succeeded=counts.succeeded,
        errored=counts.errored,
        canceled=counts.canceled,
        expired=counts.expired,
    )


def batch_item(line: Any) -> BatchItem:
    result = line.result
    if result.type == "succeeded":
        return BatchItem(
            custom_id=line.custom_id, outcome="succeeded", reply=reply_of(result.message)
        )
    if result.type == "errored":
        error = result.error.error
        return BatchItem(
            custom_id=line.custom_id,
            outcome="errored",
            error_type=getattr(error, "type", None),
            error_message=getattr(error, "message", None),
        )
    return BatchItem(custom_id=line.custom_id, outcome=result.type)


def split_params(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(named SDK arguments, extra_body) for a Messages API request body."""
    named = {k: v for k, v in body.items() if k in CREATE_PARAMS}
    extra = {k: v for k, v in body.items() if k not in CREATE_PARAMS}
    return named, extra


def upstream_error(exc: anthropic.APIError) -> UpstreamError:
    """Translate an SDK exception, keeping what a caller needs to retry well."""
    if isinstance(exc, anthropic.APIStatusError):
        return UpstreamError(
            f"upstream answered {exc.status_code}: {exc.api_message or exc.message}",
            status=exc.status_code,
            error_type=exc.type,
            retry_after=exc.response.headers.get("retry-after"),
            body=exc.body,
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return UpstreamError("upstream timed out", status=504, error_type="timeout_error")
    return UpstreamError(f"upstream unreachable: {exc.message}", error_type="connection_error")


class AnthropicModelClient:
    """One shared AsyncAnthropic client; per-request keys use `with_options` (no new pool)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        client: AsyncAnthropic | None = None,
    ) -> None:
        # The SDK's own variables, read here so that "no key" is known before any call.
        self._key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
        self.sdk = client or AsyncAnthropic(
            # A placeholder keeps the SDK from searching profiles on disk; it is never sent
            # because calls without any key stop at UpstreamNotConfigured.
            api_key=self._key or "semcache-no-key",
            base_url=base_url or os.environ.get("ANTHROPIC_BASE_URL") or None,
            timeout=timeout_s,
            max_retries=max_retries,
        )

    @property
    def configured(self) -> bool:
        return self._key is not None

    def for_key(self, api_key: str | None) -> AsyncAnthropic:
        """The client to call with: the caller's key if given, else the server's."""
        if api_key:
            return self.sdk.with_options(api_key=api_key)
        if self._key is None:
            raise UpstreamNotConfigured(
                "no upstream API key: the request carried none and the server has none "
                "(set ANTHROPIC_API_KEY or SEMCACHE_ANTHROPIC_API_KEY)"
            )
        return self.sdk

    async def create(
        self,
        *,
        model: str,
        max_tokens: int,
        messages: list[dict[str, Any]],
        system: str | list[dict[str, Any]] | None = None,
        api_key: str | None = None,
    ) -> ModelReply:
        client = self.for_key(api_key)
        kwargs: dict[str, Any] = {"system": system} if system else {}
        try:
            message = await client.messages.create(
                model=model,
                max_tokens=max_tokens,
                messages=messages,  # type: ignore[arg-type]  # plain dicts are the wire form
                **kwargs,
            )
        except anthropic.APIError as exc:
            raise upstream_error(exc) from exc
        return reply_of(message)

    # Message Batches: always on the server's own key, like /v1/ask.

    async def create_batch(self, requests: list[BatchRequest]) -> BatchStatus:
        client = self.for_key(None)
        wire: list[Any] = []
        for request in requests:
            params: dict[str, Any] = {
                "model": request.model,
                "max_tokens": request.max_tokens,
                "messages": request.messages,
            }
            if request.system:
                params["system"] = request.system
            wire.append({"custom_id": request.custom_id, "params": params})
        try:
            batch = await client.messages.batches.create(requests=wire)
        except anthropic.APIError as exc:
            raise upstream_error(exc) from exc
        return batch_status(batch)

    async def batch_status(self, batch_id: str) -> BatchStatus:
        try:
            batch = await self.for_key(None).messages.batches.retrieve(batch_id)
        except anthropic.APIError as exc:
            raise upstream_error(exc) from exc
        return batch_status(batch)

    async def batch_results(self, batch_id: str) -> list[BatchItem]:
        try:
            lines = await self.for_key(None).messages.batches.results(batch_id)
            return [batch_item(line) async for line in lines]
        except anthropic.APIError as exc:
            raise upstream_error(exc) from exc

    async def aclose(self) -> None:
        await self.sdk.close()
