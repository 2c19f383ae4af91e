"""`POST /v1/messages`: the Anthropic Messages API, answered from the cache when it can.

An application switches by changing only the SDK's `base_url`. Bodies and errors are the
Messages API's own, so the SDK parses hits and raises its usual exception classes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import anthropic
import anyio
import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
)
from litestar.params import HeaderParameter
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from cache import (
    NAMESPACE_PATTERN,
    Forbidden,
    InvalidInput,
    SemanticCache,
    SemcacheError,
    Unauthorized,
    Usage,
)
from cache.answering import Answerer, estimate_tokens, system_text
from cache.ledger import LedgerRow
from cache.normalize import validate_namespace
from cache.upstream import UpstreamError, UpstreamNotConfigured

from .access import HEADER as KEY_HEADER
from .access import Access
from .observe import note
from .problems import documented
from .schemas import ENDPOINT_PATTERN, AnthropicError, Message, MessagesRequest, json_request_body
from .settings import Settings
from .upstream import AnthropicModelClient, split_params, usage_of

log = logging.getLogger(__name__)

# Not part of the cache scope: how the answer is delivered, and who asked.
_UNSCOPED = frozenset({"messages", "stream", "metadata"})
_PASSED_HEADERS = (
    "retry-after",
    "request-id",
    "x-should-retry",
    "anthropic-ratelimit-requests-remaining",
)
ENDPOINT_RE = re.compile(ENDPOINT_PATTERN)
_STREAM_CHUNK = 48  # characters per text_delta when replaying a stored answer


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def anthropic_error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(error_body(kind, message), status_code=status, headers=headers)


def _text_of(content: Any) -> str | None:
    """The text of a message's content, or None if it holds anything but text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "text":
                return None
            parts.append(str(block.get("text", "")))
        return "".join(parts)
    return None


def match_key(messages: Any, max_chars: int) -> tuple[str, str | None] | None:
    """(last user message, previous user turn) if the conversation can be matched, else None.

    The previous user turn is the context: "Can you expand on that?" after two different
    first questions must never share an entry.
    """
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    question = _text_of(last.get("content"))
    if question is None or not question.strip() or len(question) > max_chars:
        return None  # not matchable: forwarded, never cached
    context = None
    for message in reversed(messages[:-1]):
        if isinstance(message, dict) and message.get("role") == "user":
            context = _text_of(message.get("content"))
            if context is None:
                return None  # tool results and images are not matched
            break
    return question, context


def hit_message(entry_id: str, model: str, answer: str) -> dict[str, Any]:
    return {
        "id": f"msg_semcache_{entry_id}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": answer}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _sse(event: str, data: dict[str, Any]) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=event, data=msgspec.json.encode(data).decode())


async def replay_stream(message: dict[str, Any]) -> AsyncIterator[ServerSentEventMessage]:
    """The event sequence of a streamed Message, built from a stored answer."""
    text = message["content"][0]["text"]
    start = {**message, "content": [], "stop_reason": None}
    yield _sse("message_start", {"type": "message_start", "message": start})
    yield _sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    for offset in range(0, len(text), _STREAM_CHUNK):
        delta = {"type": "text_delta", "text": text[offset : offset + _STREAM_CHUNK]}
        yield _sse(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 0},
        },
    )
    yield _sse("message_stop", {"type": "message_stop"})


class ProxyCall(msgspec.Struct, kw_only=True):
    """Everything about one proxied request that the miss path needs."""

    body: dict[str, Any]
    namespace: str
    endpoint: str
    api_key: str | None
    scope: str
    key: tuple[str, str | None] | None
    store: bool
    beta: str | None = None
    """The caller's anthropic-beta header: beta features are switched on by header."""
    note: Callable[..., None] | None = None
    """Adds fields to the request's log line (server/observe.py)."""


def _caller_key(api_key: str, authorization: str) -> str | None:
    if api_key:
        return api_key
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in a decoded JSON value (a scalar is 0)."""
    depth = 0
    level: list[Any] = [value]
    while True:
        children: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
        if not children and not any(isinstance(i, dict | list) for i in level):
            return depth
        depth += 1
        level = children


def _api_errors(descriptions: dict[int, str]) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(
            data_container=AnthropicError, description=description, generate_examples=False
        )
        for status, description in descriptions.items()
    }


MESSAGES_RESPONSES: dict[int, ResponseSpec] = {
    200: ResponseSpec(
        data_container=Message,
        description="The answer: from the cache (x-semcache-status: hit) or from the API. "
        "With `stream: true`, the Messages API's server-sent events instead.",
        generate_examples=False,
    ),
    **_api_errors(
        {
            400: "Not a JSON object with a string `model`, a list `messages` and an integer "
            "`max_tokens`; nested too deeply; too many messages; a bad x-semcache-namespace "
            "or x-semcache-endpoint; or refused by the API",
            401: "No or an unknown x-semcache-key (when client keys are configured), no API "
            "key at all, or a key the API refuses",
            402: "A billing error of the API",
            403: "The x-semcache-key does not cover the namespace, or the API refused",
            404: "Not found by the API (e.g. an unknown model)",
            429: "Rate limited by the API (its retry-after is passed on)",
            500: "An internal error of the API",
            502: "The API could not be reached",
            503: "semcache is still starting",
            504: "The API timed out",
            529: "The API is overloaded",
        }
    ),
    # The body limit is the app's (problem+json); MessagesOperation adds the API's own 413.
    **documented(413),
}
SSE_MEDIA_TYPE = "text/event-stream"


@dataclass
class MessagesOperation(Operation):
    """What Litestar cannot see of `messages`: the body it reads itself, the event stream it
    answers with `stream: true`, and the API's own 413 beside the body limit's."""

    def __post_init__(self) -> None:
        self.request_body = json_request_body(
            MessagesRequest,
            required=True,
            description="The Messages API request, as the SDK sends it.",
            example={
                "model": "claude-haiku-4-5",
                "max_tokens": 256,
                "messages": [{"role": "user", "content": "How do I reset my password?"}],
            },
        )
        responses = self.responses or {}
        answer, invalid, too_large = responses["200"], responses["400"], responses["413"]
        assert isinstance(answer, OpenAPIResponse) and answer.content is not None
        assert isinstance(invalid, OpenAPIResponse) and invalid.content is not None
        assert isinstance(too_large, OpenAPIResponse) and too_large.content is not None
        # Open API 3.1 has an event stream's `schema` describe each event (3.2's itemSchema).
        answer.content[SSE_MEDIA_TYPE] = OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                description="One server-sent event, as the API sends them: message_start, "
                "content_block_start, content_block_delta..., content_block_stop, "
                "message_delta, message_stop; `error` if the API's stream fails midway. A "
                "hit is replayed as the same sequence.",
                required=["event", "data"],
                properties={
                    "event": Schema(
                        type=OpenAPIType.STRING,
                        examples=["message_start", "content_block_delta", "message_stop"],
                    ),
                    "data": Schema(
                        type=OpenAPIType.STRING,
                        content_media_type="application/json",
                        content_schema=Schema(
                            type=OpenAPIType.OBJECT,
                            required=["type"],
                            properties={"type": Schema(type=OpenAPIType.STRING)},
                        ),
                    ),
                },
            )
        )
        answer.headers = {
            "x-semcache-status": OpenAPIHeader(
                schema=Schema(type=OpenAPIType.STRING, enum=["hit", "miss", "bypass"]),
                description="bypass: not looked up (cache-control: no-cache; or the last "
                "turn is not a user's text, or is too long, or the previous user turn, its "
                "context, is not text).",
                required=True,
            ),
            "x-semcache-similarity": OpenAPIHeader(
                schema=Schema(type=OpenAPIType.STRING),
                description="On a hit: the cosine similarity of the question to the entry.",
            ),
            "x-semcache-entry-id": OpenAPIHeader(
                schema=Schema(type=OpenAPIType.STRING),
                description="On a hit: the entry served (see GET /v1/entries/{entry_id}).",
            ),
        }
        too_large.content.update(invalid.content)
        too_large.description = (
            "Over the server's max_body_bytes (problem+json), or too large for the API"
        )


@post(
    "/v1/messages",
    tags=["proxy"],
    status_code=200,
    summary="Messages",
    description="The Anthropic Messages API (JSON and server-sent events) with the semantic "
    "cache in front: point the SDK's base_url here. Bodies and errors are the API's own.",
    responses=MESSAGES_RESPONSES,
    operation_class=MessagesOperation,
)
async def messages(
    request: Request[Any, Any, State],
    state: State,
    namespace_header: Annotated[
        str,
        HeaderParameter(
            name="x-semcache-namespace",
            description="The namespace to look up and store in.",
            schema_extra={"pattern": NAMESPACE_PATTERN},
        ),
    ] = "default",
    endpoint: Annotated[
        str,
        HeaderParameter(
            name="x-semcache-endpoint",
            description="A tag for the ledger: which feature of your app asked.",
            schema_extra={"pattern": ENDPOINT_PATTERN},
        ),
    ] = "proxy",
    cache_control: Annotated[
        str,
        HeaderParameter(
            name="cache-control",
            description="`no-cache`: skip the lookup; `no-store`: do not store the answer.",
            schema_extra={"examples": ["no-cache", "no-store", "no-cache, no-store"]},
        ),
    ] = "",
    client_key: Annotated[
        str,
        HeaderParameter(
            name=KEY_HEADER,
            description="The client key, when the server has client keys configured.",
        ),
    ] = "",
    api_key: Annotated[
        str,
        HeaderParameter(
            name="x-api-key",
            description="Your Anthropic API key, used upstream instead of the server's "
            "(`Authorization: Bearer <key>` works too).",
        ),
    ] = "",
    beta: Annotated[
        str,
        HeaderParameter(
            name="anthropic-beta",
            description="Passed upstream: beta features are switched on by this header.",
        ),
    ] = "",
) -> Response[Any]:
    """The Anthropic Messages API (JSON and SSE), with the semantic cache in front."""
    cache: SemanticCache | None = state.get("cache")
    proxy: Proxy | None = state.get("proxy")
    if cache is None or proxy is None:
        return anthropic_error(503, "overloaded_error", "semcache is still starting")
    settings: Settings = state.settings
    try:
        body = msgspec.json.decode(await request.body())
    except msgspec.DecodeError as exc:
        return anthropic_error(400, "invalid_request_error", f"body is not valid JSON: {exc}")
    except RecursionError:
        body = None  # nested past the recursion limit: refused by the depth check below
    if body is None or json_depth(body) > settings.max_json_depth:
        return anthropic_error(
            400,
            "invalid_request_error",
            f"the body is nested deeper than {settings.max_json_depth} levels",
        )
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return anthropic_error(
            400, "invalid_request_error", "body must be a JSON object with a model"
        )
    # The SDK raises before sending when these are missing: answer as the API would.
    max_tokens = body.get("max_tokens")
    if not isinstance(body.get("messages"), list) or not (
        isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
    ):
        return anthropic_error(
            400,
            "invalid_request_error",
            "messages (a list) and max_tokens (an integer) are required",
        )
    if len(body["messages"]) > settings.max_messages:
        return anthropic_error(
            400,
            "invalid_request_error",
            f"at most {settings.max_messages} messages are accepted, got {len(body['messages'])}",
        )
    try:
        namespace = validate_namespace(namespace_header)
    except InvalidInput as exc:
        return anthropic_error(400, "invalid_request_error", exc.detail)
    try:
        Access(state.client_keys, client_key).check(namespace)
    except Unauthorized as exc:
        return anthropic_error(401, "authentication_error", exc.detail)
    except Forbidden as exc:
        return anthropic_error(403, "permission_error", exc.detail)
    directives = {d.strip().lower() for d in cache_control.split(",")}
    if not ENDPOINT_RE.fullmatch(endpoint):
        return anthropic_error(
            400, "invalid_request_error", "x-semcache-endpoint must match " + ENDPOINT_PATTERN
        )
    call = ProxyCall(
        body=body,
        namespace=namespace,
        endpoint=endpoint,
        api_key=_caller_key(api_key, request.headers.get("authorization", "")),
        scope=SemanticCache.scope_of({k: v for k, v in body.items() if k not in _UNSCOPED}),
        key=match_key(body.get("messages"), cache.config.max_question_chars),
        store="no-store" not in directives,
        beta=beta or None,
        note=partial(note, request),
    )
    note(request, namespace=namespace)
    if call.key is not None and "no-cache" not in directives:
        question, context = call.key
        try:
            found = await anyio.to_thread.run_sync(
                lambda: cache.lookup(
                    question,
                    namespace,
                    scope=call.scope,
                    context=context,
                    endpoint=call.endpoint,
                    source="proxy",
                )
            )
        except InvalidInput:
            found = None  # e.g. a question over the length limit: not cacheable, just forward
        if found is not None:
            note(
                request,
                outcome=found.match or "miss",
                similarity=round(found.similarity or found.nearest_similarity or 0.0, 4),
                lookup_id=found.lookup_id,
                entry_id=found.entry.id if found.entry else None,
                saved_tokens=found.saved_tokens,
            )
        if found is not None and found.hit and found.entry is not None:
            message = hit_message(found.entry.id, body["model"], found.entry.answer)
            headers = {
                "x-semcache-status": "hit",
                "x-semcache-similarity": f"{found.similarity:.6f}",
                "x-semcache-entry-id": found.entry.id,
            }
            if body.get("stream"):
                return ServerSentEvent(replay_stream(message), headers=headers)
            return Response(message, headers=headers)
    status = "miss" if call.key is not None and "no-cache" not in directives else "bypass"
    note(request, outcome="model" if status == "miss" else "bypass")
    return await proxy.forward(call, status)


class Proxy:
    """Forwards misses upstream, stores complete answers, records every call in the ledger."""

    def __init__(
        self,
        cache: SemanticCache,
        client: AnthropicModelClient,
        answerer: Answerer,
        *,
        cache_truncated: bool,
    ) -> None:
        self.cache = cache
        self.client = client
        self.answerer = answerer
        self.cache_truncated = cache_truncated

    async def forward(self, call: ProxyCall, status: str) -> Response[Any]:
        headers = {"x-semcache-status": status}
        try:
            # No retries here: the caller's SDK retries on the status we pass back, and two
            # layers of retries would multiply the attempts.
            client = self.client.for_key(call.api_key).with_options(max_retries=0)
        except UpstreamNotConfigured as exc:
            return anthropic_error(401, "authentication_error", exc.detail, headers)
        body = await self.answerer.prepare_proxy_body(call.body, call.namespace, call.api_key)
        named, extra = split_params({k: v for k, v in body.items() if k != "stream"})
        if call.beta:
            named["extra_headers"] = {"anthropic-beta": call.beta}
        started = time.perf_counter()
        try:
            if call.body.get("stream"):
                stream = await client.messages.create(
                    **named, extra_body=extra or None, stream=True
                )
                return ServerSentEvent(self._relay(stream, call, started), headers=headers)
            message = await client.messages.create(**named, extra_body=extra or None)
        except anthropic.APIError as exc:
            return self._failed(call, exc, headers, started)
        text = "".join(block.text for block in message.content if block.type == "text")
        has_tools = any(block.type != "text" for block in message.content)
        await self._settle(
            call,
            message.model,
            usage_of(message.usage),
            message.stop_reason,
            text,
            has_tools,
            started,
        )
        return Response(message.to_dict(mode="json"), headers=headers)

    async def _relay(
        self, stream: Any, call: ProxyCall, started: float
    ) -> AsyncIterator[ServerSentEventMessage]:
        """Pass events through as they come; store only after message_stop."""
        model = str(call.body.get("model"))
        usage = Usage()
        stop_reason: str | None = None
        parts: list[str] = []
        has_tools = False
        complete = False
        try:
            async for event in stream:
                data = event.to_dict(mode="json")
                if event.type == "message_start":
                    model = event.message.model
                    usage = usage_of(event.message.usage)
                elif event.type == "content_block_start" and event.content_block.type != "text":
                    has_tools = True
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    parts.append(event.delta.text)
                elif event.type == "message_delta":
                    stop_reason = event.delta.stop_reason
                    final = usage_of(event.usage) if event.usage is not None else usage
                    usage = msgspec.structs.replace(
                        usage,
                        output_tokens=final.output_tokens,
                        input_tokens=final.input_tokens or usage.input_tokens,
                        cache_creation_input_tokens=final.cache_creation_input_tokens
                        or usage.cache_creation_input_tokens,
                        cache_read_input_tokens=final.cache_read_input_tokens
                        or usage.cache_read_input_tokens,
                    )
                elif event.type == "message_stop":
                    complete = True
                yield _sse(event.type, data)
        except Exception as exc:  # the SDK raises transport errors unwrapped mid-stream
            log.warning("upstream stream failed; nothing stored: %s", exc)
            yield _sse("error", error_body("api_error", "upstream stream failed before its end"))
        finally:
            if complete:
                await self._settle(
                    call, model, usage, stop_reason, "".join(parts), has_tools, started
                )
            else:
                # Tokens already streamed are billed even though nothing is stored.
                cost = self.cache.prices.cost(model, usage)
                self._record(call, model, usage, cost, "incomplete stream", started)

    def _failed(
        self, call: ProxyCall, exc: anthropic.APIError, headers: dict[str, str], started: float
    ) -> Response[Any]:
        """Record the failed call, and answer as the API did so the SDK raises its usual class."""
        model = str(call.body.get("model"))
        if isinstance(exc, anthropic.APIStatusError):
            self._record(call, model, Usage(), None, f"error {exc.status_code}", started)
            return self._passthrough_error(exc, headers)
        self._record(call, model, Usage(), None, "error connection", started)
        return anthropic_error(502, "api_error", f"upstream unreachable: {exc.message}", headers)

    def _passthrough_error(
        self, exc: anthropic.APIStatusError, headers: dict[str, str]
    ) -> Response[Any]:
        passed = {k: v for k in _PASSED_HEADERS if (v := exc.response.headers.get(k))}
        body = exc.body if isinstance(exc.body, dict) else error_body("api_error", exc.message)
        return Response(body, status_code=exc.status_code, headers={**headers, **passed})

    def _record(
        self,
        call: ProxyCall,
        model: str,
        usage: Usage,
        cost: float | None,
        stop_reason: str | None,
        started: float,
    ) -> None:
        system = system_text(call.body.get("system"))
        max_tokens = call.body.get("max_tokens")
        if call.note is not None:
            call.note(
                model=model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_input_tokens=usage.cache_read_input_tokens,
                spent_usd=cost,
                stop_reason=stop_reason,
            )
        self.cache.ledger.record(
            LedgerRow(
                kind="call",
                source="proxy",
                namespace=call.namespace,
                endpoint=call.endpoint,
                tier=self.answerer.tier_for_model(model),
                model=model,
                usage=usage,
                cost_usd=cost,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                stop_reason=stop_reason,
                reason="proxy",
                max_tokens=max_tokens if isinstance(max_tokens, int) else None,
                system_tokens=estimate_tokens(system),
            )
        )

    async def _settle(
        self,
        call: ProxyCall,
        model: str,
        usage: Usage,
        stop_reason: str | None,
        text: str,
        has_tools: bool,
        started: float,
    ) -> None:
        """Account for a complete upstream answer and cache it if it may be."""
        cost = self.cache.prices.cost(model, usage)
        self._record(call, model, usage, cost, stop_reason, started)
        cacheable = (
            call.store
            and call.key is not None
            and bool(text.strip())
            and not has_tools
            and (stop_reason != "max_tokens" or self.cache_truncated)
        )
        if not cacheable or call.key is None:
            return
        question, context = call.key
        try:
            await anyio.to_thread.run_sync(
                lambda: self.cache.put(
                    question,
                    text,
                    namespace=call.namespace,
                    model=model,
                    usage=usage,
                    scope=call.scope,
                    context=context,
                )
            )
        except InvalidInput as exc:
            log.info("proxied answer not cached: %s", exc.detail)
        except (SemcacheError, OSError):
            log.exception("proxied answer not cached (namespace %s)", call.namespace)


__all__ = ["Proxy", "UpstreamError", "messages"]
