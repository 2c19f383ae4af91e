"""/v1/ask: hits, misses through the real SDK to a fake model API, tiers, escalation, ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient, TestClient

from cache import PriceTable, Usage
from cache.answering import default_system_prompt
from embeddings import SentenceTransformerEmbedder
from server import Settings, create_app
from tests.fake_anthropic import FakeAnthropic, Scripted, count_tokens, default_answer

HAIKU, SONNET, OPUS = "claude-haiku-5-5", "claude-sonnet-5-5", "claude-opus-5-5"
SHORT_SYSTEM = "Answer in 2-3 sentences. Be direct."
PRICES = PriceTable.load()


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's own variables must not leak in from the machine running the tests.
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


def make_app(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, fake: FakeAnthropic, **settings: Any
) -> Litestar:
    settings.setdefault("anthropic_api_key", "server-key")
    settings.setdefault("upstream_max_retries", 0)
    return create_app(
        Settings(data_dir=str(tmp_path / "data"), anthropic_base_url=fake.url, **settings),
        embedder=embedder,
    )


def usage_for(system: str, question: str, answer: str) -> Usage:
    return Usage(
        input_tokens=count_tokens(system) + count_tokens(question),
        output_tokens=count_tokens(answer),
    )


def test_miss_then_hit_with_exact_usage_and_cost(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    question = "How do I reset my password?"
    expected_usage = usage_for(SHORT_SYSTEM, question, default_answer(question))
    cost = PRICES.cost(HAIKU, expected_usage)
    assert cost is not None
    with TestClient(make_app(tmp_path, real_embedder, fake)) as client:
        miss = client.post("/v1/ask", json={"question": question, "endpoint": "faq"})
        assert miss.status_code == 200, miss.text
        body = miss.json()
        assert body["source"] == "model" and body["tier"] == "haiku" and body["model"] == HAIKU
        assert body["answer"] == default_answer(question)
        assert body["usage"]["input_tokens"] == expected_usage.input_tokens
        assert body["usage"]["output_tokens"] == expected_usage.output_tokens
        assert body["cost_usd"] == pytest.approx(cost) and body["spent_usd"] == pytest.approx(cost)
        assert body["stored"] is True and body["entry_id"]
        sent = fake.message_requests()[0].json
        assert sent["model"] == HAIKU and sent["max_tokens"] == 400
        assert sent["system"] == SHORT_SYSTEM  # tens of tokens, not thousands

        hit = client.post(
            "/v1/ask", json={"question": "how can I reset my password", "endpoint": "faq"}
        ).json()
        assert hit["source"] == "cache" and hit["match"] == "semantic"
        assert hit["answer"] == body["answer"] and hit["entry_id"] == body["entry_id"]
        assert hit["saved_usd"] == pytest.approx(cost) and hit["spent_usd"] == 0
        assert fake.calls() == 1

        usage = client.get("/v1/usage").json()
        faq = usage["endpoints"]["faq"]
        assert (faq["calls"], faq["hits"]) == (1, 1)
        assert faq["spend_usd"] == pytest.approx(cost) and faq["saved_usd"] == pytest.approx(cost)
        assert faq["avg_input_tokens"] == expected_usage.input_tokens
        stats = client.get("/v1/stats").json()
        assert stats["saved_usd"] == pytest.approx(cost)  # savings come from the ledger
        assert stats["saved_tokens"] == expected_usage.total


def test_tier_choice_request_endpoint_default(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    app = make_app(tmp_path, real_embedder, fake, endpoint_tiers={"billing": "opus"})
    with TestClient(app) as client:
        assert client.post("/v1/ask", json={"question": "q one"}).json()["model"] == HAIKU
        requested = client.post("/v1/ask", json={"question": "q two", "tier": "sonnet"}).json()
        assert requested["model"] == SONNET and requested["reason"] == "requested"
        billing = client.post("/v1/ask", json={"question": "q three", "endpoint": "billing"})
        assert billing.json()["model"] == OPUS and billing.json()["reason"] == "endpoint default"
        unknown = client.post("/v1/ask", json={"question": "q four", "tier": "gpt"})
        assert unknown.status_code == 400 and "unknown tier" in unknown.json()["detail"]
        assert fake.calls() == 3


def test_escalation_when_a_tier_stops_on_max_tokens(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    question = "Explain the refund policy in detail"
    fake.script(Scripted(stop_reason="max_tokens"), model=HAIKU)
    with TestClient(make_app(tmp_path, real_embedder, fake)) as client:
        body = client.post("/v1/ask", json={"question": question}).json()
        assert body["tier"] == "sonnet" and body["model"] == SONNET
        assert body["reason"] == "escalated: haiku stopped at max_tokens (400)"
        assert [a["outcome"] for a in body["attempts"]] == ["max_tokens", "answered"]
        truncated = Usage(
            input_tokens=count_tokens(SHORT_SYSTEM) + count_tokens(question), output_tokens=400
        )
        answered = usage_for(SHORT_SYSTEM, question, default_answer(question))
        expected = (PRICES.cost(HAIKU, truncated) or 0) + (PRICES.cost(SONNET, answered) or 0)
        assert body["spent_usd"] == pytest.approx(expected)
        assert body["stored"] is True
        again = client.post("/v1/ask", json={"question": question}).json()
        assert again["source"] == "cache" and again["model"] == SONNET
        models = client.get("/v1/usage").json()["models"]
        assert models[HAIKU]["calls"] == 1 and models[SONNET]["calls"] == 1


def test_escalation_on_overload_after_sdk_retries(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    fake.script(
        Scripted(status=529, retry_after=0.001),
        Scripted(status=529, retry_after=0.001),
        model=HAIKU,
    )
    app = make_app(tmp_path, real_embedder, fake, upstream_max_retries=1)
    with TestClient(app) as client:
        body = client.post("/v1/ask", json={"question": "Is the service up?"}).json()
        assert body["tier"] == "sonnet"
        assert body["reason"] == "escalated: haiku failed (error 529)"
        assert fake.calls(HAIKU) == 2  # the SDK retried once before the tier counted as failed
        assert fake.calls(SONNET) == 1


def test_all_tiers_failing_is_a_clear_503_with_retry_after(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    for model in (HAIKU, SONNET, OPUS):
        fake.script(Scripted(status=429, retry_after=30), model=model)
    with TestClient(make_app(tmp_path, real_embedder, fake)) as client:
        response = client.post("/v1/ask", json={"question": "Anything?"})
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["retry-after"] == "30"
        assert response.json()["upstream_status"] == 429
        assert client.get("/v1/stats").json()["entries"] == 0


def test_a_tier_that_does_not_escalate_fails_alone(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    fake.script(Scripted(status=500), model=OPUS)
    with TestClient(make_app(tmp_path, real_embedder, fake)) as client:
        response = client.post("/v1/ask", json={"question": "Hard one", "tier": "opus"})
        assert response.status_code == 502
        assert fake.calls() == 1


@pytest.mark.parametrize(
    ("reaction", "tier"),
    [
        (Scripted(stop_reason="max_tokens"), "opus"),  # truncated on the last tier
        (Scripted(tool_use=True), "haiku"),
        (Scripted(text=""), "haiku"),
    ],
    ids=["truncated", "tool-use", "empty"],
)
def test_answers_that_are_not_cached(
    tmp_path: Path,
    real_embedder: SentenceTransformerEmbedder,
    fake: FakeAnthropic,
    reaction: Scripted,
    tier: str,
) -> None:
    fake.script(reaction)
    with TestClient(make_app(tmp_path, real_embedder, fake)) as client:
        first = client.post("/v1/ask", json={"question": "Not cacheable?", "tier": tier}).json()
        assert first["source"] == "model" and first["stored"] is False
        second = client.post("/v1/ask", json={"question": "Not cacheable?", "tier": tier}).json()
        assert second["source"] == "model"
        assert fake.calls() == 2


def test_truncated_answers_cached_when_configured(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    fake.script(Scripted(stop_reason="max_tokens"))
    app = make_app(tmp_path, real_embedder, fake, cache_truncated=True)
    with TestClient(app) as client:
        first = client.post("/v1/ask", json={"question": "Long story", "tier": "opus"}).json()
        assert first["stored"] is True
        assert client.post("/v1/ask", json={"question": "Long story"}).json()["source"] == "cache"


async def test_concurrent_identical_misses_make_one_upstream_call(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    fake.script(Scripted(text="The one answer.", delay_s=0.5))
    async with AsyncTestClient(make_app(tmp_path, real_embedder, fake)) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/ask", json={"question": "What is the plan?"}) for _ in range(20))
        )
        bodies = [r.json() for r in responses]
        assert all(r.status_code == 200 for r in responses)
        assert {b["answer"] for b in bodies} == {"The one answer."}
        assert fake.calls() == 1
        assert sum(b["source"] == "model" for b in bodies) == 1
        usage = (await client.get("/v1/usage")).json()["totals"]
        assert (usage["calls"], usage["hits"]) == (1, 19)


def test_without_an_api_key_lookups_work_and_misses_are_503(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    app = make_app(tmp_path, real_embedder, fake, anthropic_api_key=None)
    with TestClient(app) as client:
        client.post(
            "/v1/entries",
            json={"question": "Stored?", "answer": "Yes.", "model": HAIKU,
                  "usage": {"input_tokens": 1, "output_tokens": 1}},
        )  # fmt: skip
        assert client.post("/v1/ask", json={"question": "stored"}).json()["answer"] == "Yes."
        response = client.post("/v1/ask", json={"question": "Something new entirely"})
        assert response.status_code == 503
        assert "API key" in response.json()["detail"]
        assert fake.calls() == 0


def test_caller_system_prompt_scopes_the_entry(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    with TestClient(make_app(tmp_path, real_embedder, fake)) as client:
        pirate = {"question": "Where is my order?", "system": "Talk like a pirate."}
        assert client.post("/v1/ask", json=pirate).json()["source"] == "model"
        assert fake.message_requests()[-1].json["system"] == "Talk like a pirate."
        assert client.post("/v1/ask", json=pirate).json()["source"] == "cache"
        plain = client.post("/v1/ask", json={"question": "Where is my order?"}).json()
        assert plain["source"] == "model"
        assert fake.calls() == 2


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Give me 3 tips for saving money", "Answer in exactly 3 bullet points."),
        ("List five ways to improve sleep", "Answer in exactly 5 bullet points."),
        ("What are 10 key steps to onboard?", "Answer in exactly 10 bullet points."),
        ("How do I reset my password?", SHORT_SYSTEM),
        ("What happened in 1999?", SHORT_SYSTEM),
    ],
)
def test_default_system_prompt(question: str, expected: str) -> None:
    assert default_system_prompt(question) == expected


def test_prompt_caching_marks_large_system_prompts(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    system = "You are the support assistant of Acme. " * 20
    app = make_app(tmp_path, real_embedder, fake, prompt_cache_min_chars=200)
    with TestClient(app) as client:
        first = client.post("/v1/ask", json={"question": "First question?", "system": system})
        second = client.post("/v1/ask", json={"question": "Other topic?", "system": system})
        sent = fake.message_requests()[0].json["system"]
        assert sent[0]["cache_control"] == {"type": "ephemeral"}
        assert first.json()["usage"]["cache_creation_input_tokens"] == count_tokens(system)
        assert second.json()["usage"]["cache_read_input_tokens"] == count_tokens(system)
        cheap = PRICES.price(HAIKU)
        assert cheap is not None
        read_cost = count_tokens(system) * cheap.cache_read / 1e6
        other = (count_tokens("Other topic?") * cheap.input + 4 * cheap.output) / 1e6
        assert second.json()["cost_usd"] == pytest.approx(read_cost + other)


def test_ledger_survives_a_restart(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    with TestClient(make_app(tmp_path, real_embedder, fake)) as client:
        client.post("/v1/ask", json={"question": "Persist me", "endpoint": "e1"})
        client.post("/v1/ask", json={"question": "persist me!", "endpoint": "e1"})
        before = client.get("/v1/usage").json()
    with TestClient(make_app(tmp_path, real_embedder, fake)) as client:
        after = client.get("/v1/usage").json()
    assert after == before
    assert (after["endpoints"]["e1"]["calls"], after["endpoints"]["e1"]["hits"]) == (1, 1)


def test_usage_time_window(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    with TestClient(make_app(tmp_path, real_embedder, fake)) as client:
        client.post("/v1/ask", json={"question": "In the window"})
        now = client.get("/v1/usage").json()["totals"]["calls"]
        future = client.get("/v1/usage", params={"since": "2999-01-01T00:00:00Z"}).json()
        past = client.get("/v1/usage", params={"until": "2000-01-01T00:00:00"}).json()
        assert now == 1 and future["totals"]["calls"] == 0 and past["totals"]["calls"] == 0
        assert client.get("/v1/usage", params={"since": "yesterday"}).status_code == 400


def test_history_window_summarises_older_turns(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder, fake: FakeAnthropic
) -> None:
    fake.script(Scripted(text="They discussed shipping to Norway."), model=HAIKU)
    app = make_app(tmp_path, real_embedder, fake, history_window={"default": 2})
    conversation = [
        {"role": "user", "content": "Do you ship to Norway?"},
        {"role": "assistant", "content": "Yes, in 5 days."},
        {"role": "user", "content": "How much does it cost?"},
        {"role": "assistant", "content": "10 EUR."},
        {"role": "user", "content": "And to Sweden?"},
    ]
    with TestClient(app) as client:
        response = client.post(
            "/v1/messages",
            json={"model": SONNET, "max_tokens": 100, "messages": conversation},
            headers={"x-api-key": "caller-key"},
        )
        assert response.status_code == 200, response.text
        summary_call, forwarded = fake.message_requests()
        assert "Do you ship to Norway?" in summary_call.json["messages"][0]["content"]
        sent = forwarded.json["messages"]
        assert sent[0]["content"].endswith("They discussed shipping to Norway.")
        assert sent[1]["role"] == "assistant" and sent[2:] == conversation[-1:]
        endpoints = client.get("/v1/usage").json()["endpoints"]
        assert endpoints["history-summary"]["calls"] == 1
