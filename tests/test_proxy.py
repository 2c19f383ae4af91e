"""`POST /v1/messages` end to end: the real `anthropic` SDK against our app under uvicorn.

Everything of ours runs for real (Litestar under uvicorn on a loopback port, the cache with
the real all-MiniLM-L6-v2 model, diskcache, faiss, the SQLite ledger); only the model is
simulated, by `FakeAnthropic` on another loopback port. The application under test is
driven exactly the way a user switches to semcache: by changing the SDK's `base_url`.

One app is shared by the module; each test works in its own namespace and counts upstream
calls as a difference, so tests do not see each other's entries.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
import uvicorn
from litestar import Litestar

from embeddings import SentenceTransformerEmbedder
from server.app import create_app
from server.settings import Settings
from tests.fake_anthropic import TOOL_NAME, FakeAnthropic, Scripted, count_tokens

MODEL = "claude-haiku-4-5"
INPUT_USD_PER_MTOK = 1.0  # cache/prices.toml, claude-haiku-4-5
OUTPUT_USD_PER_MTOK = 5.0
CALLER_KEY = "caller-key"
SERVER_KEY = "server-key"
LONG_ANSWER = (
    "To reset your password, open Settings, choose Security, press 'Reset password' "
    "and follow the link we email you; the link stays valid for one hour."
)
_namespace_ids = itertools.count(1)


# --------------------------------------------------------------------------- running the app


def proxy_settings(data_dir: Path, upstream_url: str) -> Settings:
    return Settings(
        data_dir=str(data_dir),
        anthropic_base_url=upstream_url,
        anthropic_api_key=SERVER_KEY,
        upstream_max_retries=0,
    )


@contextlib.contextmanager
def serve(app: Litestar) -> Iterator[str]:
    """Run `app` under uvicorn on a free 127.0.0.1 port in a daemon thread; yield its URL.

    On exit the server is told to stop and joined; uvicorn then runs the Litestar lifespan
    shutdown, which closes the cache (checked: the lifespan clears `app.state.cache`).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound here and handed over: no race for the port
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        # No dictConfig of the process's logging: records propagate to the root logger
        # (caplog sees them) and no handler keeps a stream of a finished test.
        log_config=None,
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"semcache-{port}", daemon=True
    )
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert thread.is_alive(), "semcache under uvicorn exited during start-up"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "semcache never became ready"
            time.sleep(0.02)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"
    assert app.state.get("cache") is None, "the lifespan shutdown did not run"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as upstream:
        yield upstream


@dataclass
class Server:
    base: str
    fake: FakeAnthropic
    data_dir: Path


@pytest.fixture(scope="module")
def server(
    fake: FakeAnthropic,
    real_embedder: SentenceTransformerEmbedder,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("proxy") / "data"
    app = create_app(proxy_settings(data_dir, fake.url), embedder=real_embedder)
    with serve(app) as base:
        yield Server(base, fake, data_dir)


@dataclass
class Ctx:
    """One test's view of the shared server: its own namespace, its own call count."""

    base: str
    fake: FakeAnthropic
    namespace: str
    started_calls: int
    _clients: list[anthropic.Anthropic] = field(default_factory=list)

    def calls(self) -> int:
        """Upstream /v1/messages requests made since this test started."""
        return self.fake.calls() - self.started_calls

    def upstream(self, index: int = -1) -> Any:
        """One of the upstream requests made by this test (default: the last)."""
        return self.fake.message_requests()[self.started_calls :][index]

    def client(
        self,
        api_key: str = CALLER_KEY,
        *,
        namespace: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> anthropic.Anthropic:
        client = anthropic.Anthropic(
            base_url=self.base,
            api_key=api_key,
            max_retries=0,
            default_headers={
                "x-semcache-namespace": namespace or self.namespace,
                **(headers or {}),
            },
        )
        self._clients.append(client)
        return client

    def other_namespace(self) -> str:
        return f"{self.namespace[:50]}-x{next(_namespace_ids)}"

    def usage(self, since: float | None = None) -> dict[str, Any]:
        params = {} if since is None else {"since": datetime.fromtimestamp(since, UTC).isoformat()}
        response = httpx.get(f"{self.base}/v1/usage", params=params, timeout=10)
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()
        return report


def _drain(upstream: FakeAnthropic) -> int:
    """Consume scripted reactions a failed test left behind (public API only)."""
    left = upstream.pending()
    for _ in range(left):
        httpx.post(
            f"{upstream.url}/v1/messages",
            headers={"x-api-key": "drain", "anthropic-version": "2023-06-01"},
            json={
                "model": "drain",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
            },
            timeout=10,
        )
    return left


@pytest.fixture
def ctx(server: Server, request: pytest.FixtureRequest) -> Iterator[Ctx]:
    slug = re.sub(r"[^a-z0-9_-]+", "-", request.node.name.lower()).strip("-_")
    namespace = f"t{next(_namespace_ids)}-{slug}"[:63].rstrip("-_")
    context = Ctx(server.base, server.fake, namespace, server.fake.calls())
    yield context
    for client in context._clients:
        client.close()
    left = _drain(server.fake)
    assert left == 0, f"the test left {left} scripted upstream reactions unconsumed"


def user(text: str) -> list[anthropic.types.MessageParam]:
    return [{"role": "user", "content": text}]


def create(
    client: anthropic.Anthropic,
    question: str | None = None,
    *,
    messages: list[Any] | None = None,
    model: str = MODEL,
    max_tokens: int = 200,
    **params: Any,
) -> tuple[anthropic.types.Message, Any]:
    """One non-streamed Messages call through the SDK: (parsed Message, response headers)."""
    raw = client.messages.with_raw_response.create(
        model=model,
        max_tokens=max_tokens,
        messages=messages if messages is not None else user(question or ""),
        **params,
    )
    return raw.parse(), raw.headers


def text_of(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def stream_text(
    client: anthropic.Anthropic, question: str, **params: Any
) -> tuple[str, anthropic.types.Message, Any]:
    """One streamed call with the SDK's helper: (text seen, final Message, headers)."""
    params.setdefault("max_tokens", 200)
    with client.messages.stream(model=MODEL, messages=user(question), **params) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        headers = stream.response.headers
    return text, final, headers


def cost(input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * INPUT_USD_PER_MTOK + output_tokens * OUTPUT_USD_PER_MTOK) / 1e6


def anthropic_error_body(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["type"] == "error"
    assert set(body["error"]) >= {"type", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


# --------------------------------------------------------------------------- 1, 2: hits, keys


def test_plain_miss_then_semantic_and_exact_hits(ctx: Ctx) -> None:
    client = ctx.client()
    ctx.fake.script(Scripted(text=LONG_ANSWER))
    miss, headers = create(client, "How do I reset my password?")

    assert isinstance(miss, anthropic.types.Message)
    assert text_of(miss) == LONG_ANSWER
    assert headers["x-semcache-status"] == "miss"
    assert "x-semcache-similarity" not in headers
    assert miss.id.startswith("msg_") and not miss.id.startswith("msg_semcache_")
    assert miss.stop_reason == "end_turn"
    assert miss.usage.input_tokens == count_tokens("How do I reset my password?")
    assert miss.usage.output_tokens == count_tokens(LONG_ANSWER)
    assert ctx.calls() == 1
    assert ctx.upstream().json["messages"] == user("How do I reset my password?")

    hit, headers = create(client, "how can I reset my password")
    assert text_of(hit) == LONG_ANSWER
    assert headers["x-semcache-status"] == "hit"
    similarity = float(headers["x-semcache-similarity"])
    assert 0.9 <= similarity < 1.0  # a semantic match, not the same normalised text
    assert re.fullmatch(r"[0-9a-f]{16}", headers["x-semcache-entry-id"])
    assert ctx.calls() == 1
    assert hit.type == "message"
    assert hit.role == "assistant"
    assert hit.model == MODEL
    assert hit.stop_reason == "end_turn"
    assert hit.stop_sequence is None
    assert hit.id == f"msg_semcache_{headers['x-semcache-entry-id']}"
    assert [block.type for block in hit.content] == ["text"]
    assert (hit.usage.input_tokens, hit.usage.output_tokens) == (0, 0)

    exact, headers = create(client, "  HOW DO I RESET MY PASSWORD  ")
    assert text_of(exact) == LONG_ANSWER
    assert headers["x-semcache-status"] == "hit"
    assert float(headers["x-semcache-similarity"]) == 1.0
    assert ctx.calls() == 1


def test_upstream_gets_the_callers_key_and_hits_ignore_keys(ctx: Ctx) -> None:
    question = "Which payment methods do you accept?"
    miss, headers = create(ctx.client(CALLER_KEY), question)
    assert headers["x-semcache-status"] == "miss"
    sent = ctx.upstream().headers
    assert sent["authorization"] == f"Bearer {CALLER_KEY}"
    assert "x-api-key" not in sent
    assert not any(SERVER_KEY in value for value in sent.values())

    # The cache does not verify keys: any caller who reaches the proxy gets a stored answer,
    # whatever key it sends. Client keys (and their checks) come in a later issue.
    hit, headers = create(ctx.client("another-callers-key"), question)
    assert headers["x-semcache-status"] == "hit"
    assert text_of(hit) == text_of(miss)
    assert ctx.calls() == 1

    # A caller using the x-api-key header form: its key goes upstream too.
    response = httpx.post(
        f"{ctx.base}/v1/messages",
        headers={"x-api-key": "raw-callers-key", "x-semcache-namespace": ctx.namespace},
        json={"model": MODEL, "max_tokens": 50, "messages": user("Do you ship abroad?")},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-semcache-status"] == "miss"
    assert ctx.calls() == 2
    assert ctx.upstream().headers["authorization"] == "Bearer raw-callers-key"

    # A caller without any key: the server's own key is used for the upstream call.
    keyless, headers = create(
        ctx.client(),
        "Can I pay by bank transfer?",
        extra_headers={"Authorization": anthropic.Omit()},
    )
    assert headers["x-semcache-status"] == "miss"
    assert ctx.calls() == 3
    assert ctx.upstream().headers["authorization"] == f"Bearer {SERVER_KEY}"
    assert text_of(keyless)


# --------------------------------------------------------------------------- 3, 4: streaming


def test_streamed_miss_is_stored_then_replayed_as_sse(ctx: Ctx) -> None:
    client = ctx.client()
    question = "How do I reset my password?"
    ctx.fake.script(Scripted(text=LONG_ANSWER))
    text, final, headers = stream_text(client, question)

    assert headers["x-semcache-status"] == "miss"
    assert text == LONG_ANSWER
    assert text_of(final) == LONG_ANSWER
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == count_tokens(question)
    assert final.usage.output_tokens == count_tokens(LONG_ANSWER)
    assert ctx.calls() == 1
    assert ctx.upstream().json["stream"] is True

    # Stored once message_stop went through: a non-streamed identical request is a hit.
    hit, headers = create(client, question)
    assert headers["x-semcache-status"] == "hit"
    assert text_of(hit) == LONG_ANSWER
    assert ctx.calls() == 1

    # A streamed hit: the SDK parses our replayed SSE into the exact stored text.
    text, final, headers = stream_text(client, "how can I reset my password")
    assert headers["x-semcache-status"] == "hit"
    assert float(headers["x-semcache-similarity"]) >= 0.9
    assert text == LONG_ANSWER
    assert text_of(final) == LONG_ANSWER
    assert final.stop_reason == "end_turn"
    assert final.type == "message"
    assert final.id.startswith("msg_semcache_")
    assert final.usage.output_tokens == 0
    assert ctx.calls() == 1

    # The raw event sequence of a hit, as the SDK yields it.
    with client.messages.create(
        model=MODEL, max_tokens=200, messages=user(question), stream=True
    ) as events_stream:
        assert events_stream.response.headers["x-semcache-status"] == "hit"
        events = list(events_stream)
    deltas = math.ceil(len(LONG_ANSWER) / 48)
    assert deltas > 1
    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]
    assert isinstance(start, anthropic.types.RawMessageStartEvent)
    assert start.message.content == []
    assert start.message.stop_reason is None
    pieces = [e.delta.text for e in events if e.type == "content_block_delta"]  # type: ignore[union-attr]
    assert "".join(pieces) == LONG_ANSWER
    delta = events[-2]
    assert isinstance(delta, anthropic.types.RawMessageDeltaEvent)
    assert delta.delta.stop_reason == "end_turn"
    assert ctx.calls() == 1


def test_streamed_miss_relays_the_upstream_event_sequence(ctx: Ctx) -> None:
    answer = "Paris is the capital of France."
    ctx.fake.script(Scripted(text=answer))
    with ctx.client().messages.create(
        model=MODEL, max_tokens=100, messages=user("Capital of France?"), stream=True
    ) as events_stream:
        assert events_stream.response.headers["x-semcache-status"] == "miss"
        events = list(events_stream)
    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * count_tokens(answer),  # one delta per word, as upstream
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert ctx.calls() == 1


def test_streams_are_served_as_text_event_stream(ctx: Ctx) -> None:
    """The SDK parses SSE whatever the content-type; other clients (EventSource, curl -N
    behind proxies, other SDKs) rely on `text/event-stream`, as the real API sends it."""
    request = {
        "model": MODEL,
        "max_tokens": 100,
        "messages": user("What is your phone number?"),
        "stream": True,
    }
    statuses, content_types = [], []
    for _ in range(2):  # a relayed miss, then a replayed hit
        response = httpx.post(
            f"{ctx.base}/v1/messages",
            headers={"x-api-key": CALLER_KEY, "x-semcache-namespace": ctx.namespace},
            json=request,
            timeout=10,
        )
        assert response.status_code == 200
        assert "event: message_stop" in response.text
        statuses.append(response.headers["x-semcache-status"])
        content_types.append(response.headers["content-type"].split(";")[0])
    assert statuses == ["miss", "hit"]
    assert ctx.calls() == 1
    assert content_types == ["text/event-stream", "text/event-stream"]


def test_interrupted_upstream_stream_errors_and_stores_nothing(
    ctx: Ctx, caplog: pytest.LogCaptureFixture
) -> None:
    client = ctx.client()
    question = "What does the premium plan include?"
    answer = "alpha beta gamma delta epsilon"
    ctx.fake.script(Scripted(text=answer, stream_cut_after=2))
    received: list[str] = []
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(anthropic.APIStatusError) as excinfo,
        client.messages.stream(model=MODEL, max_tokens=200, messages=user(question)) as stream,
    ):
        assert stream.response.headers["x-semcache-status"] == "miss"
        for text in stream.text_stream:
            received.append(text)
    # The caller gets what arrived, then an SSE error event: the SDK raises its generic
    # status error (the HTTP status was already 200) rather than ending "successfully".
    assert received == ["alpha", " beta"]
    assert excinfo.value.status_code == 200
    assert excinfo.value.type == "api_error"
    assert stream.current_message_snapshot.stop_reason is None
    assert ctx.calls() == 1
    assert any(
        "upstream stream failed; nothing stored" in record.getMessage() for record in caplog.records
    )

    # Our server survived, and nothing was stored: the same question is a miss again.
    text, final, headers = stream_text(client, question)
    assert headers["x-semcache-status"] == "miss"
    assert text == f"Answer to: {question}"
    assert final.stop_reason == "end_turn"
    assert ctx.calls() == 2
    again, headers = create(client, question)
    assert headers["x-semcache-status"] == "hit"
    assert text_of(again) == f"Answer to: {question}"
    assert ctx.calls() == 2

    # The interrupted call is still in the ledger, as a call.
    assert ctx.usage()["namespaces"][ctx.namespace]["calls"] == 2


# --------------------------------------------------------------------------- 5: upstream errors


def test_rate_limit_passes_through_and_is_not_cached(ctx: Ctx) -> None:
    client = ctx.client()
    question = "When does my subscription renew?"
    ctx.fake.script(Scripted(status=429, retry_after=7))
    with pytest.raises(anthropic.RateLimitError) as excinfo:
        create(client, question)
    err = excinfo.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "7"
    assert err.response.headers["x-semcache-status"] == "miss"
    assert err.type == "rate_limit_error"
    assert isinstance(err.body, dict)
    assert err.body["error"]["type"] == "rate_limit_error"
    assert err.request_id is not None and err.request_id == err.body["request_id"]
    assert ctx.calls() == 1

    message, headers = create(client, question)
    assert headers["x-semcache-status"] == "miss"
    assert text_of(message) == f"Answer to: {question}"
    assert ctx.calls() == 2


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (529, anthropic.OverloadedError, "overloaded_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (500, anthropic.InternalServerError, "api_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_upstream_errors_raise_the_sdks_usual_class(
    ctx: Ctx,
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
    stream: bool,
) -> None:
    client = ctx.client()
    question = "Is there a student discount?"
    ctx.fake.script(Scripted(status=status))
    with pytest.raises(error_class) as excinfo:
        if stream:
            stream_text(client, question)
        else:
            create(client, question)
    assert type(excinfo.value) is error_class
    assert excinfo.value.status_code == status
    assert excinfo.value.type == error_type
    assert excinfo.value.response.headers["x-semcache-status"] == "miss"
    assert ctx.calls() == 1

    # Errors are never cached: the next identical request goes upstream.
    message, headers = create(client, question)
    assert headers["x-semcache-status"] == "miss"
    assert text_of(message) == f"Answer to: {question}"
    assert ctx.calls() == 2


# --------------------------------------------------------------------------- 6, 7: scope, context


def test_scope_is_a_hard_filter(ctx: Ctx) -> None:
    client = ctx.client()
    question = "What are your opening hours?"
    tools: Any = [
        {
            "name": TOOL_NAME,
            "description": "Look up the store's hours.",
            "input_schema": {"type": "object", "properties": {}},
        }
    ]
    _, headers = create(client, question)
    assert headers["x-semcache-status"] == "miss"
    assert ctx.calls() == 1

    variants: list[tuple[str, dict[str, Any]]] = [
        ("system prompt", {"system": "You are a pirate."}),
        ("model", {"model": "claude-sonnet-4-6"}),
        ("max_tokens", {"max_tokens": 300}),
        ("tools", {"tools": tools}),
        # A field this SDK version does not name: sent as extra_body, forwarded as such.
        ("temperature", {"extra_body": {"temperature": 0.2}}),
    ]
    for expected_calls, (what, params) in enumerate(variants, start=2):
        _, headers = create(client, question, **params)
        assert headers["x-semcache-status"] == "miss", what
        assert ctx.calls() == expected_calls, what
    assert ctx.upstream().json["temperature"] == 0.2
    assert ctx.upstream(-2).json["tools"] == tools

    # Same parameters: hits (each variant was stored under its own scope).
    _, headers = create(client, question)
    assert headers["x-semcache-status"] == "hit"
    _, headers = create(client, question, system="You are a pirate.")
    assert headers["x-semcache-status"] == "hit"
    # metadata and stream are not part of the scope.
    _, headers = create(client, question, metadata={"user_id": "someone-else"})
    assert headers["x-semcache-status"] == "hit"
    assert ctx.calls() == len(variants) + 1

    # Another namespace never sees these entries.
    _, headers = create(ctx.client(namespace=ctx.other_namespace()), question)
    assert headers["x-semcache-status"] == "miss"
    assert ctx.calls() == len(variants) + 2


def test_previous_user_turn_is_part_of_the_match(ctx: Ctx) -> None:
    client = ctx.client()
    follow_up = {"role": "user", "content": "Can you expand on that?"}
    conversation_a: list[Any] = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        follow_up,
    ]
    conversation_b: list[Any] = [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour, water, yeast and salt, then bake."},
        follow_up,
    ]
    ctx.fake.script(
        Scripted(text="Paris has been France's capital for centuries."),
        Scripted(text="Knead the dough, let it rise twice, bake at 230 C."),
    )
    a, headers = create(client, messages=conversation_a)
    assert headers["x-semcache-status"] == "miss"
    assert ctx.calls() == 1
    assert ctx.upstream().json["messages"] == conversation_a  # the whole conversation went up

    b, headers = create(client, messages=conversation_b)
    assert headers["x-semcache-status"] == "miss"
    assert text_of(b) == "Knead the dough, let it rise twice, bake at 230 C."
    assert ctx.calls() == 2

    again, headers = create(client, messages=conversation_a)
    assert headers["x-semcache-status"] == "hit"
    assert text_of(again) == text_of(a) == "Paris has been France's capital for centuries."
    again_b, headers = create(client, messages=conversation_b)
    assert headers["x-semcache-status"] == "hit"
    assert text_of(again_b) == text_of(b)
    assert ctx.calls() == 2


def test_unmatchable_conversations_are_forwarded_and_never_cached(ctx: Ctx) -> None:
    client = ctx.client()
    prefill: list[Any] = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "The colour is"},
    ]
    for expected in (1, 2):
        _, headers = create(client, messages=prefill)
        assert headers["x-semcache-status"] == "bypass"
        assert ctx.calls() == expected


# --------------------------------------------------------------------------- 8, 9: not stored


def test_cache_control_no_cache_and_no_store(ctx: Ctx) -> None:
    client = ctx.client()
    question = "How long does delivery take?"
    ctx.fake.script(Scripted(text="Three to five days."), Scripted(text="Two to four days."))
    _, headers = create(client, question)
    assert headers["x-semcache-status"] == "miss"
    assert ctx.calls() == 1

    fresh, headers = create(client, question, extra_headers={"cache-control": "no-cache"})
    assert headers["x-semcache-status"] == "bypass"
    assert text_of(fresh) == "Two to four days."  # from upstream, although cached
    assert ctx.calls() == 2
    # no-cache skips the lookup, not the write: the fresh answer replaced the stored one.
    cached, headers = create(client, question)
    assert headers["x-semcache-status"] == "hit"
    assert text_of(cached) == "Two to four days."
    assert ctx.calls() == 2

    other = "Do you deliver on Sundays?"
    for expected in (3, 4):
        _, headers = create(client, other, extra_headers={"cache-control": "no-store"})
        assert headers["x-semcache-status"] == "miss"
        assert ctx.calls() == expected
    _, headers = create(client, other)
    assert headers["x-semcache-status"] == "miss"  # no-store answers were never stored
    assert ctx.calls() == 5

    third = "Can I change my delivery address?"
    _, headers = create(client, third, extra_headers={"cache-control": "no-cache, no-store"})
    assert headers["x-semcache-status"] == "bypass"
    _, headers = create(client, third)
    assert headers["x-semcache-status"] == "miss"
    assert ctx.calls() == 7


@pytest.mark.parametrize(
    ("case", "reaction"),
    [
        ("max_tokens", Scripted(text="one two three four five six", stop_reason="max_tokens")),
        ("tool_use", Scripted(text="Let me check.", tool_use=True)),
        ("tool_use_only", Scripted(tool_use=True)),
        ("empty", Scripted(text="")),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_incomplete_answers_are_not_cached(
    ctx: Ctx, case: str, reaction: Scripted, stream: bool
) -> None:
    client = ctx.client()
    question = "Tell me about your refund policy."
    ctx.fake.script(reaction)
    if stream:
        with client.messages.stream(model=MODEL, max_tokens=3, messages=user(question)) as s:
            assert s.response.headers["x-semcache-status"] == "miss"
            message = s.get_final_message()
    else:
        message, headers = create(client, question, max_tokens=3)
        assert headers["x-semcache-status"] == "miss"
    expected = {
        "max_tokens": ("max_tokens", ["text"], "one two three"),
        "tool_use": ("tool_use", ["text", "tool_use"], "Let me check."),
        "tool_use_only": ("tool_use", ["tool_use"], ""),
        "empty": ("end_turn", ["text"], ""),
    }[case]
    assert (message.stop_reason, [b.type for b in message.content], text_of(message)) == expected
    assert ctx.calls() == 1

    again, headers = create(client, question, max_tokens=3)
    assert headers["x-semcache-status"] == "miss"
    assert ctx.calls() == 2
    assert text_of(again) == f"Answer to: {question}"
    # That complete answer was stored: the third identical request is a hit.
    _, headers = create(client, question, max_tokens=3)
    assert headers["x-semcache-status"] == "hit"
    assert ctx.calls() == 2


# --------------------------------------------------------------------------- 10: secrets


def test_keys_are_never_persisted_or_logged(
    fake: FakeAnthropic,
    real_embedder: SentenceTransformerEmbedder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    data_dir = tmp_path / "data"
    app = create_app(proxy_settings(data_dir, fake.url), embedder=real_embedder)
    started = fake.calls()
    marker = "The warranty covers parts and labour for two years."
    with serve(app) as base:
        ctx = Ctx(base, fake, "secrets", started)
        client = ctx.client()
        fake.script(
            Scripted(text=marker),
            Scripted(text="A streamed answer about returns and refunds."),
            Scripted(status=429, retry_after=1),
            Scripted(text="never finished", stream_cut_after=1),
        )
        _, headers = create(client, "What does the warranty cover?")
        assert headers["x-semcache-status"] == "miss"
        _, headers = create(client, "what is covered by the warranty")
        assert headers["x-semcache-status"] == "hit"
        _, _, headers = stream_text(client, "How do returns work?")
        assert headers["x-semcache-status"] == "miss"
        _, _, headers = stream_text(client, "How do returns work?")
        assert headers["x-semcache-status"] == "hit"
        with pytest.raises(anthropic.RateLimitError):
            create(client, "Is there a waiting list?")
        with pytest.raises(anthropic.APIStatusError):
            stream_text(client, "Why was my order cancelled?")
        # No caller key: the server's key goes upstream (and must not leak either).
        create(client, "Do you sell gift cards?", extra_headers={"Authorization": anthropic.Omit()})
        httpx.post(
            f"{base}/v1/messages",
            headers={"x-api-key": CALLER_KEY},
            json={"model": MODEL, "max_tokens": 50, "messages": user("Gift wrapping?")},
            timeout=10,
        ).raise_for_status()
        assert ctx.usage()["totals"]["calls"] >= 5
        for closing in ctx._clients:
            closing.close()
    assert fake.calls() - started == 6
    sent = [r.headers["authorization"] for r in fake.message_requests()[started:]]
    assert sent.count(f"Bearer {SERVER_KEY}") == 1
    assert sent.count(f"Bearer {CALLER_KEY}") == 5
    # The lifespan closed the ledger: SQLite folded its write-ahead log back into the file.
    assert (data_dir / "ledger.sqlite3").is_file()
    assert not (data_dir / "ledger.sqlite3-wal").exists()

    files = [path for path in data_dir.rglob("*") if path.is_file()]
    assert len(files) >= 3
    persisted = b"".join(path.read_bytes() for path in files)
    assert marker.encode() in persisted  # the scan does see what was stored
    captured = capfd.readouterr()
    logged = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    assert "upstream stream failed" in logged  # the logs were captured at all
    for secret in (CALLER_KEY, SERVER_KEY):
        assert secret.encode() not in persisted, f"{secret} persisted under {data_dir}"
        assert secret not in logged, f"{secret} logged"
        assert secret not in captured.err, f"{secret} written to stderr"
        assert secret not in captured.out, f"{secret} written to stdout"


# --------------------------------------------------------------------------- 11: ledger


def test_ledger_counts_calls_hits_and_spend(ctx: Ctx) -> None:
    since = time.time()
    faq = ctx.client(headers={"x-semcache-endpoint": "faq"})
    first = "How do I update my billing address?"
    second = "Where can I download my invoices?"
    ctx.fake.script(
        Scripted(text="Open Billing, then Address, edit it and press Save."),
        Scripted(text="Invoices are under Billing, then History; each has a PDF link."),
    )
    miss_1, headers = create(faq, first)
    assert headers["x-semcache-status"] == "miss"
    _, headers = create(faq, "how can I change my billing address")
    assert headers["x-semcache-status"] == "hit"
    _, miss_2, headers = stream_text(faq, second)
    assert headers["x-semcache-status"] == "miss"
    _, _, headers = stream_text(faq, second)
    assert headers["x-semcache-status"] == "hit"
    _, headers = create(faq, second)
    assert headers["x-semcache-status"] == "hit"
    assert ctx.calls() == 2

    # The usage the fake reported (passed through to us unchanged) prices every call.
    assert miss_1.usage.input_tokens == count_tokens(first)
    assert miss_2.usage.input_tokens == count_tokens(second)
    inputs = miss_1.usage.input_tokens + miss_2.usage.input_tokens
    outputs = miss_1.usage.output_tokens + miss_2.usage.output_tokens
    saved_inputs = miss_1.usage.input_tokens + 2 * miss_2.usage.input_tokens
    saved_outputs = miss_1.usage.output_tokens + 2 * miss_2.usage.output_tokens

    # Without an endpoint header, calls are tagged "proxy".
    plain_namespace = ctx.other_namespace()
    plain, headers = create(ctx.client(namespace=plain_namespace), "Do you have an app?")
    assert headers["x-semcache-status"] == "miss"
    assert ctx.calls() == 3

    report = ctx.usage(since=since)
    assert set(report["endpoints"]) == {"faq", "proxy"}
    for line in (report["endpoints"]["faq"], report["namespaces"][ctx.namespace]):
        assert line["calls"] == 2
        assert line["hits"] == 3
        assert line["input_tokens"] == inputs
        assert line["output_tokens"] == outputs
        assert line["spend_usd"] == pytest.approx(cost(inputs, outputs), abs=1e-9)
        assert line["spend_usd"] == pytest.approx(
            (inputs * 1.0 + outputs * 5.0) / 1_000_000, rel=1e-9
        )
        assert line["saved_input_tokens"] == saved_inputs
        assert line["saved_output_tokens"] == saved_outputs
        assert line["saved_usd"] == pytest.approx(cost(saved_inputs, saved_outputs), abs=1e-9)
    proxy_line = report["endpoints"]["proxy"]
    assert (proxy_line["calls"], proxy_line["hits"]) == (1, 0)
    assert proxy_line["spend_usd"] == pytest.approx(
        cost(plain.usage.input_tokens, plain.usage.output_tokens), abs=1e-9
    )
    assert report["namespaces"][plain_namespace]["calls"] == 1
    assert report["models"][MODEL]["calls"] == 3
    assert report["models"][MODEL]["hits"] == 3
    assert report["totals"]["calls"] == 3


def test_ledger_counts_failed_upstream_calls(ctx: Ctx) -> None:
    since = time.time()
    client = ctx.client(headers={"x-semcache-endpoint": "failing"})
    ctx.fake.script(Scripted(status=529), Scripted(status=429, retry_after=1))
    with pytest.raises(anthropic.OverloadedError):
        create(client, "Is the service down?")
    with pytest.raises(anthropic.RateLimitError):
        stream_text(client, "Is the service down?")
    assert ctx.calls() == 2
    line = ctx.usage(since=since)["endpoints"].get("failing", {})
    assert line.get("calls") == 2
    assert line.get("spend_usd") == 0.0


# --------------------------------------------------------------------------- 12: bad requests


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'["a", "list"]', "with a model"),
        (b'{"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}', "with a model"),
        (b'{"model": 42, "max_tokens": 10, "messages": []}', "with a model"),
    ],
    ids=["not-json", "empty", "array", "no-model", "model-not-string"],
)
def test_malformed_bodies_are_anthropic_style_400s(ctx: Ctx, body: bytes, fragment: str) -> None:
    response = httpx.post(
        f"{ctx.base}/v1/messages",
        content=body,
        headers={"content-type": "application/json", "x-api-key": CALLER_KEY},
        timeout=10,
    )
    payload = anthropic_error_body(response, 400)
    assert payload["error"]["type"] == "invalid_request_error"
    assert fragment in payload["error"]["message"]
    assert ctx.calls() == 0


def test_bad_namespace_header_is_a_400(ctx: Ctx) -> None:
    for bad in ("Not A Slug", "-leading-dash", "x" * 64, "ns/with/slashes"):
        response = httpx.post(
            f"{ctx.base}/v1/messages",
            headers={"x-api-key": CALLER_KEY, "x-semcache-namespace": bad},
            json={"model": MODEL, "max_tokens": 10, "messages": user("hello")},
            timeout=10,
        )
        payload = anthropic_error_body(response, 400)
        assert payload["error"]["type"] == "invalid_request_error"
        assert "namespace" in payload["error"]["message"]

    # The SDK turns that body into its usual exception.
    with pytest.raises(anthropic.BadRequestError) as excinfo:
        create(ctx.client(namespace="Not A Slug"), "hello")
    assert excinfo.value.status_code == 400
    assert excinfo.value.type == "invalid_request_error"
    assert ctx.calls() == 0


def test_upstream_validation_errors_reach_the_sdk(ctx: Ctx) -> None:
    # An empty conversation cannot be matched: it is forwarded, and upstream's 400 comes back.
    with pytest.raises(anthropic.BadRequestError) as excinfo:
        create(ctx.client(), messages=[])
    assert excinfo.value.status_code == 400
    assert excinfo.value.type == "invalid_request_error"
    assert excinfo.value.response.headers["x-semcache-status"] == "bypass"
    assert "messages" in str(excinfo.value)
    assert ctx.calls() == 1


def test_questions_too_long_to_cache_are_still_answered(ctx: Ctx) -> None:
    client = ctx.client()
    question = "Please summarise this: " + "lorem ipsum " * 250  # over max_question_chars
    assert len(question) > Settings().max_question_chars
    for expected in (1, 2):
        message, headers = create(client, question)
        assert headers["x-semcache-status"] == "bypass"  # not matchable: the cache stays out
        assert text_of(message) == f"Answer to: {question}"
        assert ctx.calls() == expected  # never stored, so never a hit


def test_no_upstream_key_and_unreachable_upstream(
    real_embedder: SentenceTransformerEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens there
    settings = Settings(
        data_dir=str(tmp_path / "data"), anthropic_base_url=closed_url, upstream_max_retries=0
    )
    app = create_app(settings, embedder=real_embedder)
    with (
        serve(app) as base,
        anthropic.Anthropic(base_url=base, api_key=CALLER_KEY, max_retries=0) as client,
    ):
        # Neither the caller nor the server has a key: 401, as the real API would answer.
        with pytest.raises(anthropic.AuthenticationError) as excinfo:
            create(client, "Hello?", extra_headers={"Authorization": anthropic.Omit()})
        assert excinfo.value.status_code == 401
        assert excinfo.value.type == "authentication_error"
        assert excinfo.value.response.headers["x-semcache-status"] == "miss"

        # A key, but upstream cannot be reached: 502 api_error, for JSON and for streams.
        with pytest.raises(anthropic.InternalServerError) as excinfo_502:
            create(client, "Hello?")
        assert excinfo_502.value.status_code == 502
        assert excinfo_502.value.type == "api_error"
        with pytest.raises(anthropic.InternalServerError) as excinfo_502:
            stream_text(client, "Hello?")
        assert excinfo_502.value.status_code == 502
        assert excinfo_502.value.response.headers["x-semcache-status"] == "miss"
