"""GET /metrics in the Prometheus text format, request ids, and one JSON log line per request.

The metrics are read back with prometheus_client's own text-format parser and compared with
what the test did and with what /v1/stats and /v1/usage report; the log lines are checked for
their fields and for the absence of every secret the server was given.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cache import Usage
from cache.ledger import Ledger, LedgerRow
from server.app import create_app
from server.logs import configure_logging
from server.settings import Settings
from tests.fake_anthropic import FakeAnthropic
from tests.fakes import HashingEmbedder

Client = TestClient[Litestar]
USAGE = {"input_tokens": 100, "output_tokens": 50}
ADMIN = "admin-token-for-tests"
METRICS = "metrics-token-for-tests"
CLIENT_KEY = "client-key-0123456789"
API_KEY = "sk-ant-server-key-for-tests"


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


@contextmanager
def serve(tmp_path: Path, fake: FakeAnthropic, **settings: Any) -> Iterator[Client]:
    app = create_app(
        Settings(
            data_dir=str(tmp_path / "data"),
            anthropic_api_key=API_KEY,
            anthropic_base_url=fake.url,
            upstream_max_retries=0,
            **settings,
        ),
        embedder=HashingEmbedder(),
    )
    with TestClient(app=app, raise_server_exceptions=False) as client:
        yield client


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and sorted labels; parsing fails on bad text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape[(name, tuple(sorted(labels.items())))]


def test_metrics_match_the_traffic_and_parse(tmp_path: Path) -> None:
    with FakeAnthropic() as fake, serve(tmp_path, fake) as client:
        entry = {"question": "how do I reset my password", "answer": "A.", "model": "m"}
        assert client.post("/v1/entries", json={**entry, "usage": USAGE}).status_code == 201
        lookups = [
            ("how do I reset my password", "exact"),
            ("how do I reset my password now", "semantic"),
            ("what are the opening hours of the shop", "miss"),
        ]
        for question, _ in lookups:
            client.post("/v1/lookup", json={"question": question, "threshold": 0.5})
        asked = client.post("/v1/ask", json={"question": "where is my parcel", "namespace": "b"})
        assert asked.status_code == 200 and asked.json()["source"] == "model"
        again = client.post("/v1/ask", json={"question": "where is my parcel", "namespace": "b"})
        assert again.json()["source"] == "cache"
        bumped = client.post("/admin/namespaces/b/version")
        assert bumped.status_code == 200

        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        scrape = samples(response.text)
        stats = client.get("/v1/stats").json()
        usage = client.get("/v1/usage").json()

    assert value(scrape, "semcache_ready") == 1.0
    assert value(scrape, "semcache_lookups_total", namespace="default") == 3
    assert value(scrape, "semcache_hits_total", namespace="default", kind="exact") == 1
    assert value(scrape, "semcache_hits_total", namespace="default", kind="semantic") == 1
    assert value(scrape, "semcache_misses_total", namespace="default") == 1
    # /v1/ask looks up too: one miss, then an exact hit, in namespace b.
    assert value(scrape, "semcache_lookups_total", namespace="b") == 2
    assert value(scrape, "semcache_hits_total", namespace="b", kind="exact") == 1
    assert value(scrape, "semcache_writes_total", namespace="b") == 1
    assert value(scrape, "semcache_entries", namespace="default") == 1
    assert value(scrape, "semcache_entries", namespace="b") == 0  # bumped: nothing current
    assert value(scrape, "semcache_catalog_version", namespace="b") == 2
    assert stats["lookups"] == 5

    model = asked.json()["model"]
    tier = asked.json()["tier"]
    call = {"model": model, "tier": tier, "source": "ask"}
    assert value(scrape, "semcache_upstream_calls_total", **call, result="ok") == 1
    assert value(scrape, "semcache_upstream_calls_total", **call, result="failed") == 0
    spent = usage["totals"]
    assert (
        value(scrape, "semcache_upstream_tokens_total", **call, type="input")
        == (spent["input_tokens"])
    )
    assert (
        value(scrape, "semcache_upstream_tokens_total", **call, type="output")
        == (spent["output_tokens"])
    )
    assert value(scrape, "semcache_spent_usd_total", **call) == pytest.approx(spent["spend_usd"])
    saved = sum(v for (name, _), v in scrape.items() if name == "semcache_saved_usd_total")
    assert saved == pytest.approx(spent["saved_usd"]) and saved > 0
    assert value(scrape, "semcache_errors_total", kind="lookup") == 0

    def latency_count(outcome: str) -> float:
        name = "semcache_request_duration_seconds_count"
        return value(scrape, name, route="/v1/lookup", outcome=outcome)

    assert [latency_count(o) for o in ("exact", "semantic", "miss")] == [1, 1, 1]
    assert (
        value(scrape, "semcache_request_duration_seconds_count", route="/v1/ask", outcome="exact")
        == 1
    )
    assert value(scrape, "semcache_http_responses_total", route="/v1/entries", status="201") == 1


def test_metrics_count_ledger_rows_another_process_wrote(tmp_path: Path) -> None:
    """`semcache warm --batch` writes its spend into the server's ledger file itself."""
    with FakeAnthropic() as fake, serve(tmp_path, fake) as client:
        before = samples(client.get("/metrics").text)
        assert not [k for k in before if k[0] == "semcache_spent_usd_total"]
        other = Ledger(tmp_path / "data" / "ledger.sqlite3")
        other.record(
            LedgerRow(
                kind="call", source="warm", namespace="default", endpoint="warm",
                model="claude-haiku-4-5", tier="haiku", cost_usd=0.25,
                usage=Usage(input_tokens=1000, output_tokens=200),
            )
        )  # fmt: skip
        other.close()
        scrape = samples(client.get("/metrics").text)
        again = samples(client.get("/metrics").text)  # read once, not again on every scrape
    call = {"model": "claude-haiku-4-5", "tier": "haiku", "source": "warm"}
    for seen in (scrape, again):
        assert value(seen, "semcache_spent_usd_total", **call) == 0.25
        assert value(seen, "semcache_upstream_tokens_total", **call, type="input") == 1000
        assert value(seen, "semcache_upstream_calls_total", **call, result="ok") == 1


def test_metrics_take_the_metrics_or_admin_token(tmp_path: Path) -> None:
    with (
        FakeAnthropic() as fake,
        serve(tmp_path, fake, admin_token=ADMIN, metrics_token=METRICS) as client,
    ):
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/problem+json")
        wrong = client.get("/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        for token in (METRICS, ADMIN):
            answer = client.get("/metrics", headers={"authorization": f"Bearer {token}"})
            assert answer.status_code == 200
            assert samples(answer.text)
        # The metrics token is read-only: it opens no admin route.
        bump = client.post(
            "/admin/namespaces/a/version", headers={"authorization": f"Bearer {METRICS}"}
        )
        assert bump.status_code == 401


def test_request_ids_are_echoed_or_made(tmp_path: Path) -> None:
    with FakeAnthropic() as fake, serve(tmp_path, fake) as client:
        given = client.get("/healthz", headers={"x-request-id": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        made = client.get("/healthz")
        assert len(made.headers["x-request-id"]) == 32
        hostile = client.get("/healthz", headers={"x-request-id": "a\tb" + "x" * 100})
        assert hostile.headers["x-request-id"] != "a\tb" + "x" * 100
        problem = client.post("/v1/lookup", json={"question": ""})
        assert problem.status_code == 400 and problem.headers["x-request-id"]


def test_one_json_line_per_request_with_outcome_and_no_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = {CLIENT_KEY: ["*"]}
    with (
        FakeAnthropic() as fake,
        serve(tmp_path, fake, admin_token=ADMIN, client_keys=keys) as client,
    ):
        headers = {"x-semcache-key": CLIENT_KEY}
        entry = {"question": "how do I reset my password", "answer": "A.", "model": "m"}
        client.post("/v1/entries", json={**entry, "usage": USAGE}, headers=headers)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="semcache.request"):
            hit = client.post(
                "/v1/lookup",
                json={"question": "how do I reset my password now", "threshold": 0.5},
                headers={**headers, "x-request-id": "req-1"},
            )
            client.post("/v1/ask", json={"question": "where is my parcel"}, headers=headers)
            client.post(
                "/admin/namespaces/default/version",
                headers={"authorization": f"Bearer {ADMIN}"},
            )
            client.get("/v1/stats", headers={"x-semcache-key": "wrong-key-0123456789"})

    lines = [r for r in caplog.records if r.name == "semcache.request"]
    assert len(lines) == 4
    lookup, ask, admin, refused = (r.__dict__ for r in lines)
    assert lookup["request_id"] == "req-1" and lookup["request_id"] == hit.headers["x-request-id"]
    assert lookup["outcome"] == "semantic" and lookup["similarity"] >= 0.5
    assert lookup["route"] == "/v1/lookup" and lookup["status"] == 200
    assert lookup["latency_ms"] > 0 and lookup["entry_id"] == hit.json()["entry_id"]
    assert ask["outcome"] == "model" and ask["input_tokens"] > 0 and ask["output_tokens"] > 0
    assert ask["spent_usd"] > 0
    assert admin["route"] == "/admin/namespaces/{namespace}/version"
    assert refused["status"] == 401

    formatter_output = io.StringIO()
    handler = logging.StreamHandler(formatter_output)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", json_lines=True, force=True)
        handler.setFormatter(root.handlers[0].formatter)
        for record in lines:
            handler.handle(record)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    rendered = formatter_output.getvalue().splitlines()
    assert len(rendered) == 4
    parsed = [json.loads(line) for line in rendered]
    assert parsed[0]["outcome"] == "semantic" and parsed[0]["logger"] == "semcache.request"
    for secret in (ADMIN, CLIENT_KEY, "wrong-key-0123456789", API_KEY):
        assert secret not in "\n".join(rendered)


def test_proxied_messages_log_their_outcome_and_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "how long does shipping take"}],
    }
    headers = {"x-api-key": "sk-ant-caller-key", "anthropic-version": "2023-06-01"}
    with (
        FakeAnthropic() as fake,
        serve(tmp_path, fake) as client,
        caplog.at_level(logging.INFO, logger="semcache.request"),
    ):
        first = client.post("/v1/messages", json=body, headers=headers)
        second = client.post("/v1/messages", json=body, headers=headers)
    assert first.status_code == 200 and second.headers["x-semcache-status"] == "hit"
    miss, hit = (r.__dict__ for r in caplog.records if r.name == "semcache.request")
    assert miss["outcome"] == "model" and miss["route"] == "/v1/messages"
    assert miss["input_tokens"] == first.json()["usage"]["input_tokens"] > 0
    assert miss["output_tokens"] == first.json()["usage"]["output_tokens"] > 0
    assert miss["spent_usd"] > 0 and miss["model"] == "claude-haiku-4-5"
    assert hit["outcome"] == "exact" and hit["entry_id"] == second.headers["x-semcache-entry-id"]
    assert "sk-ant-caller-key" not in repr([r.__dict__ for r in caplog.records])
