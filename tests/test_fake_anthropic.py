"""The fake Anthropic server, proven against the real `anthropic` SDK over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from tests.fake_anthropic import (
    TOOL_NAME,
    FakeAnthropic,
    Scripted,
    count_tokens,
    default_answer,
    fake_anthropic_fixture,  # noqa: F401
)

MODEL = "claude-test-1"
USER = "What is the capital of France?"


def user(text: str = USER) -> list[anthropic.types.MessageParam]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def client(fake_anthropic: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake_anthropic.url, api_key="test-key", max_retries=0) as c:
        yield c


def test_count_tokens_is_words() -> None:
    assert count_tokens("") == 0
    assert count_tokens("  one two\nthree\t") == 3


def test_create_returns_real_message(
    fake_anthropic: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    message = client.messages.create(model=MODEL, max_tokens=100, messages=user())

    answer = default_answer(USER)
    assert isinstance(message, anthropic.types.Message)
    assert message.id.startswith("msg_")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert len(message.content) == 1
    block = message.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    assert block.text == answer
    assert message.usage.input_tokens == count_tokens(USER)
    assert message.usage.output_tokens == count_tokens(answer)
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.service_tier == "standard"
    assert message._request_id is not None
    assert message._request_id.startswith("req_")

    [recorded] = fake_anthropic.requests
    assert (recorded.method, recorded.path) == ("POST", "/v1/messages")
    assert recorded.json == {"model": MODEL, "max_tokens": 100, "messages": user()}
    assert recorded.model == MODEL
    # This SDK sends the api_key as a bearer token, not as x-api-key.
    assert recorded.headers["authorization"] == "Bearer test-key"
    assert recorded.headers["anthropic-version"]
    assert fake_anthropic.calls() == 1


def test_x_api_key_header_accepted(fake_anthropic: FakeAnthropic) -> None:
    response = httpx.post(
        f"{fake_anthropic.url}/v1/messages",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "max_tokens": 5, "messages": user("hi")},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["request-id"].startswith("req_")
    body = response.json()
    assert set(body) == {
        "id",
        "type",
        "role",
        "model",
        "content",
        "stop_reason",
        "stop_sequence",
        "usage",
    }
    assert body["content"] == [{"type": "text", "text": "Answer to: hi"}]


def test_input_tokens_count_system_and_all_turns(
    fake_anthropic: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    system = "You are a terse geography tutor."
    messages: list[Any] = [
        {"role": "user", "content": "Capital of Spain?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Madrid."}]},
        {"role": "user", "content": [{"type": "text", "text": "And of Italy?"}]},
    ]
    fake_anthropic.script(Scripted(text="Rome is the capital."))
    message = client.messages.create(model=MODEL, max_tokens=50, system=system, messages=messages)

    expected = count_tokens(system) + count_tokens("Capital of Spain? Madrid. And of Italy?")
    assert message.usage.input_tokens == expected
    assert message.usage.output_tokens == 4
    assert message.content[0].type == "text"
    assert message.content[0].text == "Rome is the capital."

    counted = client.messages.count_tokens(model=MODEL, system=system, messages=messages)
    assert counted.input_tokens == expected
    assert fake_anthropic.calls() == 1  # count_tokens is not a /v1/messages call


def test_stream_helper_yields_text_and_final_usage(
    fake_anthropic: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    answer = "Paris is the capital of France."
    fake_anthropic.script(Scripted(text=answer))
    with client.messages.stream(model=MODEL, max_tokens=100, messages=user()) as stream:
        chunks = list(stream.text_stream)
        final = stream.get_final_message()

    assert len(chunks) == count_tokens(answer)  # one text delta per word
    assert "".join(chunks) == answer
    assert final.content[0].type == "text"
    assert final.content[0].text == answer
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == count_tokens(USER)
    assert final.usage.output_tokens == count_tokens(answer)
    assert fake_anthropic.message_requests()[0].json["stream"] is True


def test_raw_stream_event_order(client: anthropic.Anthropic) -> None:
    stream = client.messages.create(model=MODEL, max_tokens=100, messages=user(), stream=True)
    with stream:
        events = list(stream)

    types = [event.type for event in events]
    n_deltas = count_tokens(default_answer(USER))
    # The SDK swallows the `ping` event (see test_stream_wire_format for the raw bytes).
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * n_deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]
    assert isinstance(start, anthropic.types.RawMessageStartEvent)
    assert start.message.content == []
    assert start.message.stop_reason is None
    assert start.message.usage.input_tokens == count_tokens(USER)
    assert start.message.usage.output_tokens == 1
    delta = events[-2]
    assert isinstance(delta, anthropic.types.RawMessageDeltaEvent)
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == n_deltas


def test_stream_wire_format(fake_anthropic: FakeAnthropic) -> None:
    response = httpx.post(
        f"{fake_anthropic.url}/v1/messages",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "max_tokens": 5, "messages": user("hi"), "stream": True},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.text.split("\n\n")
    assert frames[-1] == ""
    names = []
    for frame in frames[:-1]:
        event_line, data_line = frame.split("\n")
        name = event_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        names.append(name)
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_rate_limit_error(fake_anthropic: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake_anthropic.script(Scripted(status=429, retry_after=7))
    with pytest.raises(anthropic.RateLimitError) as excinfo:
        client.messages.create(model=MODEL, max_tokens=10, messages=user())
    err = excinfo.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "7"
    assert err.type == "rate_limit_error"
    assert err.request_id is not None
    assert err.request_id.startswith("req_")
    assert isinstance(err.body, dict)
    assert err.body["type"] == "error"
    assert err.body["request_id"] == err.request_id
    assert fake_anthropic.calls() == 1


def test_overloaded_error(client: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(Scripted(status=529))
    with pytest.raises(anthropic.OverloadedError) as excinfo:
        client.messages.create(model=MODEL, max_tokens=10, messages=user())
    assert isinstance(excinfo.value, anthropic.InternalServerError)
    assert excinfo.value.status_code == 529
    assert excinfo.value.type == "overloaded_error"
    assert "retry-after" not in excinfo.value.response.headers


def test_internal_server_error(client: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(Scripted(status=500))
    with pytest.raises(anthropic.InternalServerError) as excinfo:
        client.messages.create(model=MODEL, max_tokens=10, messages=user())
    assert type(excinfo.value) is anthropic.InternalServerError
    assert excinfo.value.status_code == 500
    assert excinfo.value.type == "api_error"


def test_missing_api_key_is_401(fake_anthropic: FakeAnthropic, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError) as excinfo:
        client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=user(),
            extra_headers={"Authorization": anthropic.Omit()},
        )
    assert excinfo.value.status_code == 401
    assert excinfo.value.type == "authentication_error"
    assert "authorization" not in fake_anthropic.requests[0].headers
    assert fake_anthropic.calls() == 1


def test_wrong_api_key_is_401() -> None:
    with (
        FakeAnthropic(api_key="right") as fake,
        anthropic.Anthropic(base_url=fake.url, api_key="wrong", max_retries=0) as c,
    ):
        with pytest.raises(anthropic.AuthenticationError):
            c.messages.create(model=MODEL, max_tokens=10, messages=user())
        fake.script(Scripted(text="ok"))
        with anthropic.Anthropic(base_url=fake.url, api_key="right", max_retries=0) as good:
            reply = good.messages.create(model=MODEL, max_tokens=10, messages=user())
        assert reply.content[0].type == "text"
        assert reply.content[0].text == "ok"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": MODEL, "messages": user()}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 0, "messages": user()}, "max_tokens"),
        ({"max_tokens": 5, "messages": user()}, "model"),
        ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
        ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]}, "role"),
        (
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": 3}]},
            "content",
        ),
    ],
)
def test_invalid_bodies_are_400(
    fake_anthropic: FakeAnthropic, body: dict[str, Any], fragment: str
) -> None:
    fake_anthropic.script(Scripted(text="never used"))
    response = httpx.post(
        f"{fake_anthropic.url}/v1/messages",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        json=body,
    )
    assert response.status_code == 400
    payload = response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert fragment in payload["error"]["message"]
    assert payload["request_id"] == response.headers["request-id"]
    assert fake_anthropic.pending() == 1  # rejected requests consume no scripted reaction


def test_missing_version_header_is_400(fake_anthropic: FakeAnthropic) -> None:
    response = httpx.post(
        f"{fake_anthropic.url}/v1/messages",
        headers={"x-api-key": "k"},
        json={"model": MODEL, "max_tokens": 5, "messages": user()},
    )
    assert response.status_code == 400
    assert "anthropic-version" in response.json()["error"]["message"]


def test_max_tokens_truncates(fake_anthropic: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake_anthropic.script(
        Scripted(text="one two three four five", stop_reason="max_tokens"),
        Scripted(text="one two three four five", stop_reason="max_tokens"),
    )
    message = client.messages.create(model=MODEL, max_tokens=3, messages=user())
    assert message.stop_reason == "max_tokens"
    assert message.content[0].type == "text"
    assert message.content[0].text == "one two three"
    assert message.usage.output_tokens == 3

    with client.messages.stream(model=MODEL, max_tokens=3, messages=user()) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert final.content[0].type == "text"
    assert final.content[0].text == "one two three"
    assert final.usage.output_tokens == 3


def test_tool_use(fake_anthropic: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake_anthropic.script(Scripted(tool_use=True), Scripted(tool_use=True, text="Let me check."))
    message = client.messages.create(model=MODEL, max_tokens=50, messages=user())
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert isinstance(block, anthropic.types.ToolUseBlock)
    assert block.name == TOOL_NAME
    assert block.input == {}
    assert block.id.startswith("toolu_")
    assert message.usage.output_tokens == 2

    with client.messages.stream(model=MODEL, max_tokens=50, messages=user()) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].type == "text"
    assert final.content[0].text == "Let me check."
    assert final.content[1].type == "tool_use"
    assert final.content[1].input == {}


def test_stream_cut_raises_transport_error(
    fake_anthropic: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake_anthropic.script(Scripted(text="a b c d e f", stream_cut_after=2))
    received: list[str] = []
    with (
        pytest.raises(httpx2.RemoteProtocolError),  # NOT an anthropic.APIError subclass
        client.messages.stream(model=MODEL, max_tokens=50, messages=user()) as stream,
    ):
        for text in stream.text_stream:
            received.append(text)
    assert received == ["a", " b"]
    snapshot = stream.current_message_snapshot
    assert snapshot.stop_reason is None  # no message_delta arrived
    assert fake_anthropic.calls() == 1  # the SDK never retries a broken stream


def test_mid_stream_error_event(fake_anthropic: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake_anthropic.script(Scripted(text="a b c", stream_error_after=1))
    received: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as excinfo,
        client.messages.stream(model=MODEL, max_tokens=50, messages=user()) as stream,
    ):
        for text in stream.text_stream:
            received.append(text)
    assert received == ["a"]
    # The HTTP status was 200, so the SDK raises the generic class, not OverloadedError.
    assert type(excinfo.value) is anthropic.APIStatusError
    assert excinfo.value.status_code == 200
    assert excinfo.value.type == "overloaded_error"


def test_prompt_caching_usage(fake_anthropic: FakeAnthropic, client: anthropic.Anthropic) -> None:
    system_text = "You are a helpful assistant with a long cached preamble about geography."
    system: Any = [{"type": "text", "text": system_text, "cache_control": {"type": "ephemeral"}}]
    cached = count_tokens(system_text)
    question = count_tokens(USER)

    first = client.messages.create(model=MODEL, max_tokens=50, system=system, messages=user())
    assert first.usage.cache_creation_input_tokens == cached
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.input_tokens == question
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == cached

    with client.messages.stream(
        model=MODEL, max_tokens=50, system=system, messages=user()
    ) as stream:
        second = stream.get_final_message()
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.cache_read_input_tokens == cached
    assert second.usage.input_tokens == question

    other_model = client.messages.create(
        model="claude-other", max_tokens=50, system=system, messages=user()
    )
    assert other_model.usage.cache_creation_input_tokens == cached

    uncached = client.messages.create(
        model=MODEL, max_tokens=50, system=[{"type": "text", "text": system_text}], messages=user()
    )
    assert uncached.usage.cache_creation_input_tokens == 0
    assert uncached.usage.cache_read_input_tokens == 0
    assert uncached.usage.input_tokens == cached + question

    fake_anthropic.clear_prompt_cache()
    again = client.messages.create(model=MODEL, max_tokens=50, system=system, messages=user())
    assert again.usage.cache_creation_input_tokens == cached


def test_scripts_per_model(fake_anthropic: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake_anthropic.script(Scripted(text="for big"), model="big")
    fake_anthropic.script(Scripted(text="for anyone"))

    def ask(model: str) -> str:
        block = client.messages.create(model=model, max_tokens=50, messages=user()).content[0]
        assert block.type == "text"
        return block.text

    assert ask("small") == "for anyone"
    assert ask("small") == default_answer(USER)
    assert ask("big") == "for big"
    assert ask("big") == default_answer(USER)
    assert fake_anthropic.calls() == 4
    assert fake_anthropic.calls("big") == 2
    assert fake_anthropic.calls("small") == 2


async def test_async_client(fake_anthropic: FakeAnthropic) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=fake_anthropic.url, api_key="test-key", max_retries=0
    ) as aclient:
        message = await aclient.messages.create(model=MODEL, max_tokens=50, messages=user())
        assert message.content[0].type == "text"
        assert message.content[0].text == default_answer(USER)

        fake_anthropic.script(Scripted(text="streamed async answer"))
        async with aclient.messages.stream(model=MODEL, max_tokens=50, messages=user()) as stream:
            chunks = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        assert "".join(chunks) == "streamed async answer"
        assert final.usage.output_tokens == 3

        fake_anthropic.script(Scripted(status=529))
        with pytest.raises(anthropic.OverloadedError):
            await aclient.messages.create(model=MODEL, max_tokens=50, messages=user())

        # delay_s sleeps without blocking the server: concurrent requests overlap.
        fake_anthropic.script(
            Scripted(text="slow 1", delay_s=0.4), Scripted(text="slow 2", delay_s=0.4)
        )
        started = time.monotonic()
        replies = await asyncio.gather(
            aclient.messages.create(model=MODEL, max_tokens=50, messages=user()),
            aclient.messages.create(model=MODEL, max_tokens=50, messages=user()),
        )
        assert time.monotonic() - started < 0.75
        texts = sorted(b.text for r in replies for b in r.content if b.type == "text")
        assert texts == ["slow 1", "slow 2"]
    assert fake_anthropic.calls() == 5


def test_retries_then_success(fake_anthropic: FakeAnthropic) -> None:
    """retry-after: 0 is *ignored* by the SDK (it only honours positive values), so the
    retries fall back to exponential backoff: ~0.5 s then ~1 s (x0.75-1 jitter)."""
    fake_anthropic.script(Scripted(status=529, retry_after=0), Scripted(status=529, retry_after=0))
    with anthropic.Anthropic(base_url=fake_anthropic.url, api_key="k", max_retries=2) as c:
        started = time.monotonic()
        message = c.messages.create(model=MODEL, max_tokens=50, messages=user())
        elapsed = time.monotonic() - started
    assert message.content[0].type == "text"
    assert fake_anthropic.calls() == 3
    assert elapsed >= 1.1  # 0.5*0.75 + 1.0*0.75 at the least
    retry_counts = [r.headers["x-stainless-retry-count"] for r in fake_anthropic.requests]
    assert retry_counts == ["0", "1", "2"]


def test_fast_retries_with_tiny_retry_after(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(
        Scripted(status=529, retry_after=0.001),
        Scripted(status=429, retry_after_ms=1),
    )
    with anthropic.Anthropic(base_url=fake_anthropic.url, api_key="k", max_retries=2) as c:
        started = time.monotonic()
        message = c.messages.create(model=MODEL, max_tokens=50, messages=user())
        elapsed = time.monotonic() - started
    assert message.content[0].type == "text"
    assert fake_anthropic.calls() == 3
    assert elapsed < 0.35  # far below the 0.375 s minimum backoff


def test_retries_exhausted(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(*[Scripted(status=429, retry_after=0.001)] * 3)
    with (
        anthropic.Anthropic(base_url=fake_anthropic.url, api_key="k", max_retries=2) as c,
        pytest.raises(anthropic.RateLimitError),
    ):
        c.messages.create(model=MODEL, max_tokens=50, messages=user())
    assert fake_anthropic.calls() == 3
    assert fake_anthropic.pending() == 0


def test_unknown_path_is_404(fake_anthropic: FakeAnthropic) -> None:
    response = httpx.get(f"{fake_anthropic.url}/v1/models")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert fake_anthropic.calls() == 0
    assert fake_anthropic.requests[0].path == "/v1/models"
