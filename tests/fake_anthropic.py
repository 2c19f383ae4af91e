"""A fake Anthropic Messages API server for tests: real HTTP, real wire format, fake model.

Start it on a free 127.0.0.1 port and point the real `anthropic` SDK at it::

    with FakeAnthropic() as fake:
        fake.script(Scripted(status=529, retry_after=0.001), Scripted(text="hi"))
        client = anthropic.Anthropic(base_url=fake.url, api_key="test-key", max_retries=2)
        assert client.messages.create(...).content[0].text == "hi"
        assert fake.calls() == 2

Only the model is simulated. Everything on the wire (status codes, JSON shapes, headers,
SSE event sequence) follows the real API as the installed SDK understands it.

Token counting rule (deterministic, exposed as `count_tokens`): one token per
whitespace-separated word, i.e. ``len(text.split())``. It is additive over the request's
text parts, so a test computes expectations as
``count_tokens(system) + sum(count_tokens(message text))``. Only text counts: string
contents, ``text`` blocks and the text inside ``tool_result`` blocks; images, tool
definitions and ``tool_use`` inputs count nothing.

Prompt caching: only the list-of-blocks `system` form can be cached. The cached prefix is
the system blocks up to and including the last block carrying ``cache_control``. The first
successful request with a given (model, prefix) reports the prefix's tokens as
``cache_creation_input_tokens``; later ones as ``cache_read_input_tokens``; either way
``input_tokens`` excludes them. There is no minimum length and no TTL (see
`clear_prompt_cache`).

Auth: this SDK version sends ``api_key`` as ``Authorization: Bearer <key>`` (not
``x-api-key``); the fake accepts either. SDK facts worth knowing when using the fake:

* Retries (408/409/429/5xx incl. 529, default max_retries=2): the SDK waits for
  ``retry-after-ms``/``retry-after`` only when the value is > 0; ``retry-after: 0`` falls
  back to exponential backoff (0.5 s, 1 s, ... x0.75-1 jitter). Script ``retry_after=0.001``
  or ``retry_after_ms=1`` for fast retries.
* A dropped stream (``stream_cut_after``) raises ``httpx2.RemoteProtocolError`` out of the
  iteration: not an ``anthropic.APIError``, and never retried.
* An SSE ``error`` event (``stream_error_after``) raises the generic
  ``anthropic.APIStatusError`` with ``status_code == 200`` (the HTTP status), whatever the
  error type; ``.type`` carries e.g. "overloaded_error".
* The SDK drops ``ping`` events; they are only visible on the raw wire.

Message Batches (``POST /v1/messages/batches``, ``GET /v1/messages/batches/{id}`` and its
``/results`` as JSONL): a batch answers ``in_progress`` to its first `batch_polls` retrievals
(constructor argument or attribute, default 1) and ``ended`` from then on. Its requests are
processed when it ends, in order, each popping a scripted reaction as a /v1/messages request
would (a `delay_s` is ignored): a non-200 status becomes an ``errored`` result with that error
type, ``batch_outcome`` makes a ``canceled`` or ``expired`` one, and params the Messages API
would refuse make an ``invalid_request_error`` one. As on the real API, ``request_counts``
stay all ``processing`` until the batch ends, ``results_url`` is absolute and set only then,
and usage reports ``service_tier: "batch"``. Batch requests never count in `calls()`; see
`batches`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import socket
import string
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import pytest
import uvicorn

__all__ = [
    "DEFAULT_ERROR_TYPES",
    "TOOL_NAME",
    "FakeAnthropic",
    "Recorded",
    "Scripted",
    "count_tokens",
    "default_answer",
    "fake_anthropic",
    "fake_anthropic_fixture",
]

TOOL_NAME = "lookup"
"""Name of the tool in a scripted ``tool_use`` answer (its ``input`` is ``{}``)."""

DEFAULT_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_THREAD_PREFIX = "fake-anthropic-"
_BATCHES = "/v1/messages/batches"
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_BATCH_TTL_S = 24 * 3600.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def count_tokens(text: str) -> int:
    """The fake's tokenizer: the number of whitespace-separated words (0 for "")."""
    return len(text.split())


def default_answer(last_user_text: str) -> str:
    """The answer text used when a reaction does not script one."""
    return f"Answer to: {last_user_text}"


@dataclass(frozen=True)
class Scripted:
    """One scripted upstream reaction to a /v1/messages request."""

    text: str | None = None
    """Answer text; None -> ``default_answer(last user text)``."""
    status: int = 200
    """Non-200 -> an error response (JSON error body) with this status."""
    error_type: str | None = None
    """error.type in the error body; default from the status (`DEFAULT_ERROR_TYPES`)."""
    retry_after: float | None = None
    """Sets the ``retry-after`` header (seconds) on errors. NB: the SDK ignores values <= 0
    and then backs off 0.5 s, 1 s, ...; use e.g. 0.001 for instant retries."""
    stop_reason: str = "end_turn"
    """Use "max_tokens" to truncate the answer to the request's max_tokens words."""
    tool_use: bool = False
    """Answer with a tool_use block (after a text block if `text` is given)."""
    delay_s: float = 0.0
    """Sleep (asynchronously) before answering."""
    stream_cut_after: int | None = None
    """Streams only: drop the connection after N text deltas (no message_stop)."""
    retry_after_ms: float | None = None
    """Sets the ``retry-after-ms`` header on errors; the SDK prefers it over retry-after."""
    stream_error_after: int | None = None
    """Streams only: after N text deltas send an SSE ``error`` event (type `error_type`,
    default overloaded_error) and end the stream cleanly, like a mid-stream overload."""
    batch_outcome: str | None = None
    """Batches only: "canceled" or "expired" ends this request unprocessed, with that result."""


@dataclass(frozen=True)
class Recorded:
    """One HTTP request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Lower-case header names."""
    json: Any
    """The decoded JSON body (None when absent or not valid JSON)."""
    body: bytes = b""

    @property
    def model(self) -> str | None:
        model = self.json.get("model") if isinstance(self.json, dict) else None
        return model if isinstance(model, str) else None


@dataclass(frozen=True)
class _Answer:
    blocks: list[dict[str, Any]]
    stop_reason: str
    usage: dict[str, Any]


@dataclass
class _Batch:
    """One Message Batch: its requests, and once it has ended, one result line per request."""

    id: str
    requests: list[dict[str, Any]]
    created_at: float
    polls_left: int
    ended_at: float | None = None
    results: list[dict[str, Any]] | None = None


class _StreamCut(Exception):
    """Raised inside the ASGI app to make uvicorn drop the connection mid-body."""


class _QuietFilter(logging.Filter):
    """Silence uvicorn's chatter from fake-server threads; keep real errors visible."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.threadName or "").startswith(_THREAD_PREFIX):
            return True
        if record.exc_info and isinstance(record.exc_info[1], _StreamCut):
            return False
        return record.levelno >= logging.ERROR


_QUIET = _QuietFilter()
for _name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
    logging.getLogger(_name).addFilter(_QUIET)


class _QuickServer(uvicorn.Server):
    """uvicorn.Server that notices `should_exit` within ~5 ms and shuts down without the
    fixed 0.1 s sleeps of the stock implementation (tests start and stop one per test)."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            for _ in range(20):  # on_tick every 0.1 s, as uvicorn does
                if self.should_exit:
                    return
                await asyncio.sleep(0.005)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()  # closes idle keep-alive connections, finishes busy ones
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.timeout_graceful_shutdown or 1.0)
        while (state.connections or state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        for task in list(state.tasks):
            task.cancel()
        for connection in list(state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
        await asyncio.sleep(0)
        await self.lifespan.shutdown()


class _BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _new_id(prefix: str) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(24))


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _content_text(content: Any) -> list[str]:
    """The countable text parts of a message content (string or list of blocks)."""
    if isinstance(content, str):
        return [content]
    parts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif block.get("type") == "tool_result":
                parts.extend(_content_text(block.get("content")))
    return parts


def _word_pieces(text: str) -> list[str]:
    """Split into one piece per word (with its leading whitespace); joins back to `text`."""
    pieces: list[str] = re.findall(r"\s*\S+", text)
    tail = text[sum(len(p) for p in pieces) :]
    if tail:
        if pieces:
            pieces[-1] += tail
        else:
            pieces.append(tail)
    return pieces


def _validate_messages(body: Any, *, need_max_tokens: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _BadRequest("body: Input should be a valid dictionary")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _BadRequest("model: Field required")
    if need_max_tokens:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _BadRequest("max_tokens: Field required")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _BadRequest("max_tokens: Input should be greater than or equal to 1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages: Field required (a non-empty list)")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _BadRequest(f"messages.{i}: Input should be a valid dictionary")
        if message.get("role") not in ("user", "assistant"):
            raise _BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise _BadRequest(f"messages.{i}.content.{j}.type: Field required")
        elif not isinstance(content, str):
            raise _BadRequest(f"messages.{i}.content: Input should be a string or a list")
    system = body.get("system")
    if system is not None:
        if isinstance(system, list):
            for j, block in enumerate(system):
                if not (
                    isinstance(block, dict)
                    and block.get("type") == "text"
                    and isinstance(block.get("text"), str)
                ):
                    raise _BadRequest(f"system.{j}: Input should be a text block")
        elif not isinstance(system, str):
            raise _BadRequest("system: Input should be a string or a list of text blocks")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _BadRequest("stream: Input should be a valid boolean")
    return body


def _system_texts(system: Any) -> list[str]:
    if isinstance(system, str):
        return [system]
    if isinstance(system, list):
        return [block["text"] for block in system]
    return []


def _prompt_tokens(body: dict[str, Any]) -> int:
    total = sum(count_tokens(t) for t in _system_texts(body.get("system")))
    for message in body["messages"]:
        total += sum(count_tokens(t) for t in _content_text(message["content"]))
    return total


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            return " ".join(_content_text(message["content"]))
    return ""


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class FakeAnthropic:
    """A fake Messages API on 127.0.0.1:<free port>, served by uvicorn in a daemon thread.

    ``api_key``: when given, requests must carry exactly this key (``x-api-key`` or
    ``Authorization: Bearer``); otherwise any non-empty key is accepted.
    """

    def __init__(self, *, api_key: str | None = None, batch_polls: int = 1) -> None:
        self.api_key = api_key
        self.batch_polls = batch_polls
        """How many retrievals of a new batch answer in_progress before it ends."""
        self.url = ""
        self.requests: list[Recorded] = []
        self._batches: dict[str, _Batch] = {}
        self._lock = threading.Lock()
        self._queues: dict[str | None, deque[Scripted]] = {}
        self._cached_prefixes: set[str] = set()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeAnthropic:
        if self._thread is not None:
            raise RuntimeError("FakeAnthropic already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,
            interface="asgi3",
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        server = _QuickServer(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"{_THREAD_PREFIX}{port}",
            daemon=True,
        )
        self._sock, self._server, self._thread = sock, server, thread
        self.url = f"http://127.0.0.1:{port}"
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake Anthropic server failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        server, thread, sock = self._server, self._thread, self._sock
        self._server = self._thread = self._sock = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
        if sock is not None:
            sock.close()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ test-facing API

    def script(self, *reactions: Scripted, model: str | None = None) -> None:
        """Queue reactions; each valid /v1/messages request pops the next one.

        Reactions queued for a model are consumed only by requests for that model and
        take precedence over the unqualified queue. Empty queues -> a default 200 answer.
        Requests rejected by auth/validation (401/400) consume nothing.
        """
        with self._lock:
            self._queues.setdefault(model, deque()).extend(reactions)

    def pending(self, model: str | None = None) -> int:
        """How many scripted reactions (for `model`, or unqualified ones) are unconsumed."""
        with self._lock:
            return len(self._queues.get(model, ()))

    def message_requests(self, model: str | None = None) -> list[Recorded]:
        """The POST /v1/messages requests received (optionally only for one model)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "POST"
                and r.path == "/v1/messages"
                and (model is None or r.model == model)
            ]

    def calls(self, model: str | None = None) -> int:
        """Number of POST /v1/messages requests (including failed ones and retries)."""
        return len(self.message_requests(model))

    def clear_prompt_cache(self) -> None:
        with self._lock:
            self._cached_prefixes.clear()

    @property
    def batches(self) -> dict[str, list[dict[str, Any]]]:
        """The requests (``custom_id`` and ``params``) of every batch created, by batch id."""
        with self._lock:
            return {key: list(batch.requests) for key, batch in self._batches.items()}

    # ------------------------------------------------------------------ ASGI app

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            name, text = key.decode("latin-1").lower(), value.decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        parsed: Any = None
        if raw:
            with contextlib.suppress(ValueError):
                parsed = json.loads(raw)
        method, path = scope["method"], scope["path"]
        with self._lock:
            self.requests.append(Recorded(method, path, headers, parsed, raw))

        request_id = _new_id("req_")
        if path == _BATCHES or path.startswith(_BATCHES + "/"):
            await self._batch_route(send, method, path, headers, parsed, request_id)
            return
        if path not in ("/v1/messages", "/v1/messages/count_tokens"):
            await self._error(send, 404, "not_found_error", f"Not found: {path}", request_id)
            return
        if method != "POST":
            await self._error(
                send, 405, "invalid_request_error", f"Method {method} not allowed", request_id
            )
            return
        auth_problem = self._check_auth(headers)
        if auth_problem is not None:
            await self._error(send, 401, "authentication_error", auth_problem, request_id)
            return
        if not headers.get("anthropic-version"):
            await self._error(
                send,
                400,
                "invalid_request_error",
                "anthropic-version: header is required",
                request_id,
            )
            return
        if parsed is None:
            await self._error(
                send, 400, "invalid_request_error", "Request body is not valid JSON", request_id
            )
            return
        try:
            body = _validate_messages(parsed, need_max_tokens=path == "/v1/messages")
        except _BadRequest as exc:
            await self._error(send, 400, "invalid_request_error", exc.message, request_id)
            return

        if path == "/v1/messages/count_tokens":
            payload = {"input_tokens": _prompt_tokens(body)}
            await self._json(send, 200, payload, request_id)
            return

        reaction = self._pop(body["model"])
        if reaction.delay_s > 0:
            await asyncio.sleep(reaction.delay_s)
        if reaction.status != 200:
            error_type = reaction.error_type or DEFAULT_ERROR_TYPES.get(
                reaction.status,
                "api_error" if reaction.status >= 500 else "invalid_request_error",
            )
            extra: list[tuple[bytes, bytes]] = []
            if reaction.retry_after is not None:
                extra.append((b"retry-after", _format_seconds(reaction.retry_after).encode()))
            if reaction.retry_after_ms is not None:
                extra.append((b"retry-after-ms", _format_seconds(reaction.retry_after_ms).encode()))
            await self._error(
                send, reaction.status, error_type, f"Scripted {error_type}", request_id, extra
            )
            return

        answer = self._answer(body, reaction)
        if body.get("stream"):
            await self._stream(send, body, reaction, answer, request_id)
        else:
            message = {
                "id": _new_id("msg_"),
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": answer.blocks,
                "stop_reason": answer.stop_reason,
                "stop_sequence": None,
                "usage": answer.usage,
            }
            await self._json(send, 200, message, request_id)

    # ------------------------------------------------------------------ Message Batches

    async def _batch_route(
        self,
        send: Send,
        method: str,
        path: str,
        headers: dict[str, str],
        parsed: Any,
        request_id: str,
    ) -> None:
        parts = path[len(_BATCHES) :].strip("/").split("/") if path != _BATCHES else []
        allowed = "POST" if not parts else "GET"
        if len(parts) > 2 or (len(parts) == 2 and parts[1] != "results"):
            await self._error(send, 404, "not_found_error", f"Not found: {path}", request_id)
            return
        if method != allowed:
            await self._error(
                send, 405, "invalid_request_error", f"Method {method} not allowed", request_id
            )
            return
        auth_problem = self._check_auth(headers)
        if auth_problem is not None:
            await self._error(send, 401, "authentication_error", auth_problem, request_id)
            return
        if not headers.get("anthropic-version"):
            await self._error(
                send, 400, "invalid_request_error", "anthropic-version: header is required",
                request_id,
            )  # fmt: skip
            return
        if not parts:
            try:
                batch = self._create_batch(parsed)
            except _BadRequest as exc:
                await self._error(send, 400, "invalid_request_error", exc.message, request_id)
                return
            await self._json(send, 200, self._batch_json(batch), request_id)
            return
        with self._lock:
            found = self._batches.get(parts[0])
        if found is None:
            message = f"No message batch found with id {parts[0]!r}"
            await self._error(send, 404, "not_found_error", message, request_id)
            return
        if len(parts) == 1:
            self._poll(found)
            await self._json(send, 200, self._batch_json(found), request_id)
            return
        if found.results is None:
            message = f"Message batch {found.id} has not ended yet: no results"
            await self._error(send, 400, "invalid_request_error", message, request_id)
            return
        data = b"".join(json.dumps(line).encode() + b"\n" for line in found.results)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/binary"),
                    (b"content-length", str(len(data)).encode()),
                    (b"request-id", request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    def _create_batch(self, body: Any) -> _Batch:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise _BadRequest("requests: Field required (a non-empty list)")
        seen: set[str] = set()
        for i, request in enumerate(requests):
            if not isinstance(request, dict):
                raise _BadRequest(f"requests.{i}: Input should be a valid dictionary")
            custom_id = request.get("custom_id")
            if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
                raise _BadRequest(
                    f"requests.{i}.custom_id: String should match ^[a-zA-Z0-9_-]{{1,64}}$"
                )
            if custom_id in seen:
                raise _BadRequest(f"requests.{i}.custom_id: {custom_id!r} is not unique")
            seen.add(custom_id)
            if not isinstance(request.get("params"), dict):
                raise _BadRequest(f"requests.{i}.params: Field required")
        batch = _Batch(
            id=_new_id("msgbatch_"),
            requests=requests,
            created_at=time.time(),
            polls_left=self.batch_polls,
        )
        with self._lock:
            self._batches[batch.id] = batch
        return batch

    def _poll(self, batch: _Batch) -> None:
        """One retrieval: the batch ends (and its requests are processed) when its polls run out."""
        with self._lock:
            if batch.results is not None:
                return
            if batch.polls_left > 0:
                batch.polls_left -= 1
                return
        results = [self._batch_result(request) for request in batch.requests]
        with self._lock:
            if batch.results is None:
                batch.results, batch.ended_at = results, time.time()

    def _batch_result(self, request: dict[str, Any]) -> dict[str, Any]:
        custom_id = request["custom_id"]
        try:
            body = _validate_messages(request["params"], need_max_tokens=True)
        except _BadRequest as exc:
            error = {"type": "invalid_request_error", "message": exc.message}
            return self._errored(custom_id, error)
        reaction = self._pop(body["model"])
        if reaction.batch_outcome is not None:
            return {"custom_id": custom_id, "result": {"type": reaction.batch_outcome}}
        if reaction.status != 200:
            error_type = reaction.error_type or DEFAULT_ERROR_TYPES.get(
                reaction.status,
                "api_error" if reaction.status >= 500 else "invalid_request_error",
            )
            return self._errored(
                custom_id, {"type": error_type, "message": f"Scripted {error_type}"}
            )
        answer = self._answer(body, reaction)
        message = {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": answer.blocks,
            "stop_reason": answer.stop_reason,
            "stop_sequence": None,
            "usage": {**answer.usage, "service_tier": "batch"},
        }
        return {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}

    @staticmethod
    def _errored(custom_id: str, error: dict[str, Any]) -> dict[str, Any]:
        response = {"type": "error", "error": error, "request_id": _new_id("req_")}
        return {"custom_id": custom_id, "result": {"type": "errored", "error": response}}

    def _batch_json(self, batch: _Batch) -> dict[str, Any]:
        with self._lock:
            results = batch.results
        counts = dict.fromkeys(("canceled", "errored", "expired", "processing", "succeeded"), 0)
        if results is None:
            counts["processing"] = len(batch.requests)
        else:
            for line in results:
                counts[line["result"]["type"]] += 1
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "in_progress" if results is None else "ended",
            "request_counts": counts,
            "ended_at": _rfc3339(batch.ended_at),
            "created_at": _rfc3339(batch.created_at),
            "expires_at": _rfc3339(batch.created_at + _BATCH_TTL_S),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": None if results is None else f"{self.url}{_BATCHES}/{batch.id}/results",
        }

    def _check_auth(self, headers: dict[str, str]) -> str | None:
        key = headers.get("x-api-key")
        if not key:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        if not key:
            return "x-api-key header is required"
        if self.api_key is not None and key != self.api_key:
            return "invalid x-api-key"
        return None

    def _pop(self, model: str) -> Scripted:
        with self._lock:
            for key in (model, None):
                queue = self._queues.get(key)
                if queue:
                    return queue.popleft()
        return Scripted()

    def _answer(self, body: dict[str, Any], reaction: Scripted) -> _Answer:
        stop_reason = reaction.stop_reason
        if reaction.tool_use and stop_reason == "end_turn":
            stop_reason = "tool_use"
        text = reaction.text
        if text is None and not reaction.tool_use:
            text = default_answer(_last_user_text(body["messages"]))
        output_tokens = 0
        blocks: list[dict[str, Any]] = []
        if text is not None:
            if stop_reason == "max_tokens":
                text = "".join(_word_pieces(text)[: body["max_tokens"]])
            blocks.append({"type": "text", "text": text})
            output_tokens += count_tokens(text)
        if reaction.tool_use:
            blocks.append(
                {"type": "tool_use", "id": _new_id("toolu_"), "name": TOOL_NAME, "input": {}}
            )
            output_tokens += count_tokens(TOOL_NAME) + count_tokens("{}")
        if stop_reason == "max_tokens":
            output_tokens = body["max_tokens"]

        total = _prompt_tokens(body)
        created = read = 0
        ttl = "5m"
        system = body.get("system")
        if isinstance(system, list):
            marked = [i for i, block in enumerate(system) if block.get("cache_control")]
            if marked:
                prefix = system[: marked[-1] + 1]
                cache_control = system[marked[-1]]["cache_control"]
                if isinstance(cache_control, dict) and cache_control.get("ttl") == "1h":
                    ttl = "1h"
                prefix_tokens = sum(count_tokens(block["text"]) for block in prefix)
                key = json.dumps([body["model"], prefix], sort_keys=True)
                with self._lock:
                    if key in self._cached_prefixes:
                        read = prefix_tokens
                    else:
                        created = prefix_tokens
                        self._cached_prefixes.add(key)
        usage = {
            "input_tokens": total - created - read,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": created if ttl == "5m" else 0,
                "ephemeral_1h_input_tokens": created if ttl == "1h" else 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        return _Answer(blocks, stop_reason, usage)

    async def _stream(
        self,
        send: Send,
        body: dict[str, Any],
        reaction: Scripted,
        answer: _Answer,
        request_id: str,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"request-id", request_id.encode()),
                ],
            }
        )

        async def emit(event: str, data: dict[str, Any]) -> None:
            await send({"type": "http.response.body", "body": _sse(event, data), "more_body": True})

        start_usage = {**answer.usage, "output_tokens": 1}
        await emit(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": _new_id("msg_"),
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
        deltas_sent = 0
        for index, block in enumerate(answer.blocks):
            if block["type"] == "text":
                start_block: dict[str, Any] = {"type": "text", "text": ""}
            else:
                start_block = {**block, "input": {}}
            await emit(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start_block},
            )
            if index == 0:
                await emit("ping", {"type": "ping"})
            if block["type"] == "text":
                for piece in _word_pieces(block["text"]):
                    cut, fail = reaction.stream_cut_after, reaction.stream_error_after
                    if cut is not None and deltas_sent >= cut:
                        raise _StreamCut
                    if fail is not None and deltas_sent >= fail:
                        await self._stream_error(send, reaction)
                        return
                    await emit(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
                    deltas_sent += 1
            else:
                partial = json.dumps(block["input"]) if block["input"] else ""
                await emit(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": partial},
                    },
                )
            await emit("content_block_stop", {"type": "content_block_stop", "index": index})
        if reaction.stream_cut_after is not None:
            raise _StreamCut
        if reaction.stream_error_after is not None:
            await self._stream_error(send, reaction)
            return
        await emit(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": answer.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": answer.usage["output_tokens"]},
            },
        )
        await emit("message_stop", {"type": "message_stop"})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream_error(self, send: Send, reaction: Scripted) -> None:
        error_type = reaction.error_type or "overloaded_error"
        data = {"type": "error", "error": {"type": error_type, "message": f"Scripted {error_type}"}}
        await send({"type": "http.response.body", "body": _sse("error", data), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _json(
        self,
        send: Send,
        status: int,
        payload: dict[str, Any],
        request_id: str,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    (b"request-id", request_id.encode()),
                    *(extra_headers or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def _error(
        self,
        send: Send,
        status: int,
        error_type: str,
        message: str,
        request_id: str,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        payload = {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        }
        await self._json(send, status, payload, request_id, extra_headers)


@pytest.fixture(name="fake_anthropic")
def fake_anthropic_fixture() -> Iterator[FakeAnthropic]:
    """A started FakeAnthropic (fixture name ``fake_anthropic``), stopped after the test.

    Import either name into a conftest or test module. In a test module, importing
    ``fake_anthropic_fixture`` avoids ruff F811 on every ``fake_anthropic`` parameter.
    """
    with FakeAnthropic() as fake:
        yield fake


fake_anthropic = fake_anthropic_fixture
