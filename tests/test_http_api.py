"""End-to-end tests of the HTTP API through Litestar's TestClient, with the real embedder.

Every test builds its own app on its own data directory; the embedding model itself is
loaded once per session by the `real_embedder` fixture.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from embeddings import SentenceTransformerEmbedder
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeClock

Client = TestClient[Litestar]

HAIKU = "claude-haiku-4-5"
QUESTION = "How do I reset my password?"
PARAPHRASE = "how can I reset my password"
UNRELATED = "What are your business hours?"
ANSWER = "Open Settings > Security and choose 'Reset password'."
USAGE = {"input_tokens": 100, "output_tokens": 50}
FULL_USAGE = {
    "input_tokens": 100,
    "output_tokens": 50,
    "cache_creation_input_tokens": 10,
    "cache_read_input_tokens": 20,
}
PROBLEM_JSON = "application/problem+json"
LOOKUP_ID = re.compile(r"^[0-9a-f]{32}$")
ENTRY_ID = re.compile(r"^[0-9a-f]{16}$")
PRICE_FILE = Path(__file__).resolve().parents[1] / "cache" / "prices.toml"


def expected_cost(model: str, usage: dict[str, int]) -> float:
    """USD cost computed straight from the shipped price table (USD per million tokens)."""
    price = tomllib.loads(PRICE_FILE.read_text(encoding="utf-8"))["models"][model]
    return (
        usage.get("input_tokens", 0) * price["input"]
        + usage.get("output_tokens", 0) * price["output"]
        + usage.get("cache_creation_input_tokens", 0) * price["cache_write"]
        + usage.get("cache_read_input_tokens", 0) * price["cache_read"]
    ) / 1_000_000


# helpers -------------------------------------------------------------------------------------


@contextmanager
def serve(
    data_dir: Path,
    embedder: SentenceTransformerEmbedder,
    *,
    clock: FakeClock | None = None,
    **settings: Any,
) -> Iterator[Client]:
    """A running app (lifespan started) on `data_dir`; closing it runs the shutdown flush."""
    app = create_app(Settings(data_dir=str(data_dir), **settings), embedder=embedder, clock=clock)
    # 5xx must come back as responses so tests can assert on them instead of crashing.
    with TestClient(app=app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def client(tmp_path: Path, real_embedder: SentenceTransformerEmbedder) -> Iterator[Client]:
    with serve(tmp_path / "d", real_embedder) as c:
        yield c


def store(
    client: Client,
    question: str = QUESTION,
    answer: str = ANSWER,
    *,
    namespace: str = "default",
    model: str = HAIKU,
    usage: dict[str, int] | None = None,
    ttl_s: float | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "question": question,
        "answer": answer,
        "model": model,
        "usage": usage if usage is not None else USAGE,
        "namespace": namespace,
    }
    if ttl_s is not None:
        body["ttl_s"] = ttl_s
    resp = client.post("/v1/entries", json=body)
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    assert ENTRY_ID.match(created["entry_id"])
    return created


def lookup(client: Client, question: str, **extra: Any) -> dict[str, Any]:
    resp = client.post("/v1/lookup", json={"question": question, **extra})
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    assert LOOKUP_ID.match(out["lookup_id"]), out
    return out


def stats(client: Client) -> dict[str, Any]:
    resp = client.get("/v1/stats")
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def version_of(client: Client, namespace: str = "default", **kw: Any) -> int:
    resp = client.get(f"/admin/namespaces/{namespace}/version", **kw)
    assert resp.status_code == 200, resp.text
    assert resp.json()["namespace"] == namespace
    value: int = resp.json()["catalog_version"]
    return value


def assert_problem(resp: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """An RFC 9457 problem response: the status, the media type and a non-empty detail."""
    if status is None:
        assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    else:
        assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith(PROBLEM_JSON), resp.headers
    body: dict[str, Any] = resp.json()
    assert body["status"] == resp.status_code
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"].strip()
    return body


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# 1. store, semantic hit, miss, exact hit -----------------------------------------------------


def test_store_then_semantic_hit_miss_and_exact_hit(client: Client) -> None:
    cost = expected_cost(HAIKU, USAGE)
    assert cost == pytest.approx((100 * 1.0 + 50 * 5.0) / 1_000_000)

    created = store(client)
    assert created["catalog_version"] == 1
    assert created["namespace"] == "default"
    assert created["expires_at"] is None
    assert created["cost_usd"] > 0
    assert created["cost_usd"] == pytest.approx(cost, rel=1e-9)

    hit = lookup(client, PARAPHRASE)
    assert hit["hit"] is True
    assert hit["match"] == "semantic"
    assert 0.9 <= hit["similarity"] < 1.0
    assert hit["answer"] == ANSWER
    assert hit["entry_id"] == created["entry_id"]
    assert hit["model"] == HAIKU
    assert hit["namespace"] == "default"
    assert hit["saved_tokens"] == 150
    assert hit["saved_usd"] == pytest.approx(cost, rel=1e-9)
    assert hit["saved_usd"] == created["cost_usd"]
    assert hit["catalog_version"] == 1

    miss = lookup(client, UNRELATED)
    assert miss["hit"] is False
    assert isinstance(miss["nearest_similarity"], float)
    assert miss["nearest_similarity"] < 0.9
    assert miss["catalog_version"] == 1
    assert "answer" not in miss and "entry_id" not in miss

    exact = lookup(client, "  HOW DO I RESET MY PASSWORD?? ")
    assert exact["hit"] is True
    assert exact["match"] == "exact"
    assert exact["similarity"] == 1.0
    assert exact["entry_id"] == created["entry_id"]
    assert exact["answer"] == ANSWER
    assert exact["saved_tokens"] == 150

    ids = {hit["lookup_id"], miss["lookup_id"], exact["lookup_id"]}
    assert len(ids) == 3, "every lookup gets its own id"


# 2. empty namespace ---------------------------------------------------------------------------


def test_lookup_in_empty_namespace_misses_with_null_nearest(client: Client) -> None:
    out = lookup(client, QUESTION, threshold=0.0)
    assert out["hit"] is False
    assert out["nearest_similarity"] is None
    assert out["namespace"] == "default"
    assert out["catalog_version"] == 1


# 3. namespace isolation -----------------------------------------------------------------------


def test_namespaces_are_isolated(client: Client) -> None:
    created = store(client, namespace="a")
    other = lookup(client, QUESTION, namespace="b", threshold=0.0)
    assert other["hit"] is False
    assert other["namespace"] == "b"
    assert other["nearest_similarity"] is None
    # ... while the namespace it was written to serves it.
    same = lookup(client, QUESTION, namespace="a")
    assert same["hit"] is True and same["entry_id"] == created["entry_id"]
    # "default" is a namespace like any other.
    assert lookup(client, QUESTION, threshold=0.0)["hit"] is False


# 4. per-request threshold -------------------------------------------------------------------


def test_per_request_threshold_overrides_the_default(client: Client) -> None:
    store(client)
    strict = lookup(client, PARAPHRASE, threshold=0.999)
    assert strict["hit"] is False
    assert 0.9 <= strict["nearest_similarity"] < 0.999

    default = lookup(client, PARAPHRASE)
    assert default["hit"] is True and default["match"] == "semantic"
    assert default["similarity"] == pytest.approx(strict["nearest_similarity"], abs=1e-5)

    # A threshold just above the similarity misses; just below it hits.
    sim = default["similarity"]
    assert lookup(client, PARAPHRASE, threshold=min(1.0, sim + 0.001))["hit"] is False
    assert lookup(client, PARAPHRASE, threshold=sim - 0.001)["hit"] is True


# 5. get and delete ----------------------------------------------------------------------------


def test_get_and_delete_entry(client: Client) -> None:
    created = store(client, usage=FULL_USAGE)
    entry_id = created["entry_id"]

    fresh = client.get(f"/v1/entries/{entry_id}")
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["hit_count"] == 0
    assert fresh.json()["last_hit_at"] is None

    assert lookup(client, PARAPHRASE)["hit"] is True
    assert lookup(client, QUESTION)["hit"] is True

    resp = client.get(f"/v1/entries/{entry_id}")
    assert resp.status_code == 200, resp.text
    entry = resp.json()
    assert entry["entry_id"] == entry_id
    assert entry["namespace"] == "default"
    assert entry["catalog_version"] == 1
    assert entry["question"] == QUESTION
    assert entry["normalized_question"] == "how do i reset my password"
    assert entry["answer"] == ANSWER
    assert entry["model"] == HAIKU
    assert entry["usage"] == FULL_USAGE
    assert entry["cost_usd"] == pytest.approx(expected_cost(HAIKU, FULL_USAGE), rel=1e-9)
    assert entry["hit_count"] == 2
    assert entry["last_hit_at"] is not None
    assert entry["expires_at"] is None
    assert parse_time(entry["created_at"]) <= parse_time(entry["last_hit_at"])

    deleted = client.delete(f"/v1/entries/{entry_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["entry_id"] == entry_id
    assert deleted.json()["answer"] == ANSWER

    assert lookup(client, QUESTION)["hit"] is False
    gone = lookup(client, PARAPHRASE, threshold=0.0)
    assert gone["hit"] is False and gone["nearest_similarity"] is None

    body = assert_problem(client.get(f"/v1/entries/{entry_id}"), 404)
    assert entry_id in body["detail"]
    assert_problem(client.delete(f"/v1/entries/{entry_id}"), 404)
    assert stats(client)["entries"] == 0


# 6. catalog versions --------------------------------------------------------------------------


def test_catalog_version_bump_invalidates_and_only_moves_forward(client: Client) -> None:
    first = store(client)
    store(client, "How do I change my email address?", "Settings > Account > Email.")
    other = store(client, namespace="other")

    assert version_of(client) == 1
    assert version_of(client, "never-used") == 1

    bump = client.post("/admin/namespaces/default/version")
    assert bump.status_code == 200, bump.text
    assert bump.json() == {"namespace": "default", "catalog_version": 2, "invalidated_entries": 2}
    assert version_of(client) == 2

    after = lookup(client, QUESTION)
    assert after["hit"] is False
    assert after["catalog_version"] == 2
    assert lookup(client, PARAPHRASE, threshold=0.0)["hit"] is False
    assert_problem(client.get(f"/v1/entries/{first['entry_id']}"), 404)
    # Other namespaces are untouched.
    kept = lookup(client, QUESTION, namespace="other")
    assert kept["hit"] is True and kept["entry_id"] == other["entry_id"]
    assert kept["catalog_version"] == 1

    jump = client.post("/admin/namespaces/default/version", json={"version": 5})
    assert jump.status_code == 200, jump.text
    assert jump.json() == {"namespace": "default", "catalog_version": 5, "invalidated_entries": 0}

    for backwards in (3, 5):
        body = assert_problem(
            client.post("/admin/namespaces/default/version", json={"version": backwards}), 409
        )
        assert "5" in body["detail"]
    assert version_of(client) == 5

    fresh = store(client, answer="The v5 answer.")
    assert fresh["catalog_version"] == 5
    served = lookup(client, QUESTION)
    assert served["hit"] is True
    assert served["catalog_version"] == 5
    assert served["answer"] == "The v5 answer."
    semantic = lookup(client, PARAPHRASE)
    assert semantic["hit"] is True and semantic["match"] == "semantic"
    assert semantic["catalog_version"] == 5

    row = stats(client)["namespaces"]["default"]
    assert row["catalog_version"] == 5
    assert row["entries"] == 1


# 7. admin auth --------------------------------------------------------------------------------

TOKEN = "s3cret"


def test_admin_endpoints_require_the_bearer_token(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder
) -> None:
    with serve(tmp_path / "d", real_embedder, admin_token=TOKEN) as client:
        path = "/admin/namespaces/default/version"
        rejected: list[httpx.Response] = [
            client.get(path),
            client.post(path),
            client.post(path, json={"version": 7}),
            client.post("/admin/purge"),
        ]
        for header in (
            "Bearer wrong",
            f"Bearer {TOKEN}x",
            f"Bearer {TOKEN[:-1]}",
            f"Basic {TOKEN}",
            TOKEN,
            "Bearer",
            "",
        ):
            rejected.append(client.get(path, headers={"Authorization": header}))
            rejected.append(client.post(path, headers={"Authorization": header}))
        for resp in rejected:
            body = assert_problem(resp, 401)
            assert "bearer" in resp.headers["www-authenticate"].lower()
            assert TOKEN not in resp.text
            assert all(TOKEN not in value for value in resp.headers.values())
            assert "authorization" in body["detail"].lower() or "bearer" in body["detail"].lower()

        good = {"Authorization": f"Bearer {TOKEN}"}
        # None of the rejected POSTs moved the version.
        assert version_of(client, headers=good) == 1
        assert client.post("/admin/purge", headers=good).status_code == 200

        # The cache API itself needs no token.
        assert client.post("/v1/lookup", json={"question": QUESTION}).status_code == 200
        store(client)
        assert lookup(client, QUESTION)["hit"] is True
        assert client.get("/v1/stats").status_code == 200

        bumped = client.post(path, headers=good)
        assert bumped.status_code == 200, bumped.text
        assert bumped.json()["catalog_version"] == 2

        # Errors of authorised requests do not echo the token either.
        conflict = assert_problem(client.post(path, headers=good, json={"version": 1}), 409)
        invalid = assert_problem(client.post(path, headers=good, content=b"{bad"), 400)
        for body in (conflict, invalid):
            assert TOKEN not in str(body)


# 8. stats and restart -------------------------------------------------------------------------


def _row(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "lookups": 0,
        "hits": 0,
        "exact_hits": 0,
        "semantic_hits": 0,
        "misses": 0,
        "hit_rate": None,
        "lookup_errors": 0,
        "writes": 0,
        "write_errors": 0,
        "entries": 0,
        "catalog_version": 1,
        "saved_tokens": 0,
        "saved_input_tokens": 0,
        "saved_output_tokens": 0,
        "saved_cache_creation_input_tokens": 0,
        "saved_cache_read_input_tokens": 0,
        "saved_usd": 0.0,
    }
    base.update(values)
    return base


def _assert_stats_equal(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, want in expected.items():
        got = actual[key]
        if isinstance(want, float) and want:
            assert got == pytest.approx(want, abs=1e-9), key
        else:
            assert got == want, key


def test_stats_count_exactly_and_survive_a_restart(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder
) -> None:
    data = tmp_path / "d"
    cost = expected_cost(HAIKU, FULL_USAGE)
    with serve(data, real_embedder) as client:
        empty = stats(client)
        assert empty["namespaces"] == {}
        assert empty["lookups"] == 0 and empty["hit_rate"] is None

        created = store(client, usage=FULL_USAGE)
        assert lookup(client, QUESTION)["match"] == "exact"
        assert lookup(client, PARAPHRASE)["match"] == "semantic"
        assert lookup(client, UNRELATED)["hit"] is False
        assert lookup(client, QUESTION, namespace="other")["hit"] is False

        before = stats(client)

    saved = {
        "saved_tokens": 2 * 180,
        "saved_input_tokens": 200,
        "saved_output_tokens": 100,
        "saved_cache_creation_input_tokens": 20,
        "saved_cache_read_input_tokens": 40,
        "saved_usd": 2 * cost,
    }
    default_row = _row(
        lookups=3,
        hits=2,
        exact_hits=1,
        semantic_hits=1,
        misses=1,
        hit_rate=2 / 3,
        writes=1,
        entries=1,
        **saved,
    )
    other_row = _row(lookups=1, misses=1, hit_rate=0.0)
    totals = _row(
        lookups=4,
        hits=2,
        exact_hits=1,
        semantic_hits=1,
        misses=2,
        hit_rate=0.5,
        writes=1,
        entries=1,
        catalog_version=None,
        **saved,
    )
    assert set(before["namespaces"]) == {"default", "other"}
    _assert_stats_equal(before["namespaces"]["default"], default_row)
    _assert_stats_equal(before["namespaces"]["other"], other_row)
    _assert_stats_equal({k: v for k, v in before.items() if k != "namespaces"}, totals)

    # A new process on the same data directory: the shutdown flush kept everything.
    with serve(data, real_embedder) as client:
        assert stats(client) == before
        entry = client.get(f"/v1/entries/{created['entry_id']}").json()
        assert entry["hit_count"] == 2
        assert entry["answer"] == ANSWER
        again = lookup(client, PARAPHRASE)
        assert again["hit"] is True and again["match"] == "semantic"
        assert again["entry_id"] == created["entry_id"]
        assert stats(client)["lookups"] == 5


# 9. health, readiness, OpenAPI ----------------------------------------------------------------


def test_health_readiness_and_openapi(
    client: Client, real_embedder: SentenceTransformerEmbedder
) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"

    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "embedder": real_embedder.name}
    assert ready.json()["embedder"] == "all-MiniLM-L6-v2"

    schema = client.get("/schema/openapi.json")
    assert schema.status_code == 200, schema.text
    paths = schema.json()["paths"]
    for path in ("/v1/lookup", "/v1/entries", "/admin/namespaces/{namespace}/version", "/v1/stats"):
        assert path in paths, sorted(paths)
    assert "post" in paths["/v1/lookup"]
    assert "post" in paths["/v1/entries"]
    assert {"get", "post"} <= set(paths["/admin/namespaces/{namespace}/version"])


# 10. bad input --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunked:
    """A body sent with Transfer-Encoding: chunked (no Content-Length to reject it early)."""

    data: bytes


@dataclass(frozen=True)
class Bad:
    method: str
    path: str
    body: dict[str, Any] | list[Any] | bytes | Chunked | None = None
    status: int | None = 400  # None: any 4xx
    words: tuple[str, ...] = field(default_factory=tuple)  # all must appear in "detail"


VALID_ENTRY: dict[str, Any] = {
    # The baseline question: a bad write that slipped through would overwrite the baseline.
    "question": QUESTION,
    "answer": "OVERWRITTEN",
    "model": HAIKU,
    "usage": USAGE,
}


def _entry(**changes: Any) -> dict[str, Any]:
    return {**VALID_ENTRY, **changes}


def _entry_without(key: str) -> dict[str, Any]:
    return {k: v for k, v in VALID_ENTRY.items() if k != key}


UNKNOWN_ID = "0123456789abcdef"
VERSION_PATH = "/admin/namespaces/default/version"
PADDED = b'{"question": "How do I reset my password?"' + b" " * 3000 + b"}"

BAD_INPUTS: list[Any] = [
    # lookups
    pytest.param(Bad("POST", "/v1/lookup", {}, 400, ("question",)), id="lookup-missing-question"),
    pytest.param(
        Bad("POST", "/v1/lookup", {"question": ""}, 400, ("question",)), id="lookup-empty"
    ),
    pytest.param(
        Bad("POST", "/v1/lookup", {"question": "   ?!"}, 400, ("question", "empty")),
        id="lookup-empty-after-normalisation",
    ),
    pytest.param(Bad("POST", "/v1/lookup", {"question": 42}, 400, ("question",)), id="lookup-int"),
    pytest.param(
        Bad("POST", "/v1/lookup", {"question": [QUESTION]}, 400, ("question",)), id="lookup-list"
    ),
    pytest.param(
        Bad("POST", "/v1/lookup", {"question": None}, 400, ("question",)), id="lookup-null"
    ),
    pytest.param(
        Bad("POST", "/v1/lookup", {"question": "x" * 51}, 400, ("question", "50")),
        id="lookup-question-too-long",
    ),
    pytest.param(Bad("POST", "/v1/lookup", PADDED, 413, ("too large",)), id="lookup-body-too-big"),
    pytest.param(
        Bad("POST", "/v1/lookup", Chunked(PADDED), 413, ("too large",)),
        id="lookup-chunked-body-too-big",
    ),
    pytest.param(
        Bad("POST", "/v1/lookup", b'{"question": oops}', 400, ("json", "malformed")),
        id="lookup-malformed-json",
    ),
    pytest.param(
        Bad("POST", "/v1/lookup", b'{"question": "x"', 400, ("truncated",)),
        id="lookup-truncated-json",
    ),
    pytest.param(
        Bad("POST", "/v1/lookup", [QUESTION], 400, ("object", "array")), id="lookup-json-array"
    ),
    pytest.param(
        Bad("POST", "/v1/lookup", {"question": QUESTION, "treshold": 0.5}, 400, ("treshold",)),
        id="lookup-unknown-field",
    ),
    *[
        pytest.param(
            Bad("POST", "/v1/lookup", {"question": QUESTION, "namespace": ns}, 400, ("namespace",)),
            id=f"lookup-namespace-{label}",
        )
        for label, ns in [
            ("space", "Bad NS"),
            ("empty", ""),
            ("long", "a" * 100),
            ("dots", "../etc"),
        ]
    ],
    *[
        pytest.param(
            Bad("POST", "/v1/lookup", {"question": QUESTION, "threshold": t}, 400, ("threshold",)),
            id=f"lookup-threshold-{t}",
        )
        for t in (-0.1, 1.5, "high")
    ],
    # writes (all aimed at the baseline question, so a write that slipped through shows)
    pytest.param(
        Bad("POST", "/v1/entries", _entry_without("answer"), 400, ("answer",)), id="entry-no-answer"
    ),
    pytest.param(
        Bad("POST", "/v1/entries", _entry(answer=""), 400, ("answer",)), id="entry-empty-answer"
    ),
    pytest.param(
        Bad("POST", "/v1/entries", _entry(answer=" \n "), 400, ("answer",)), id="entry-blank-answer"
    ),
    pytest.param(
        Bad("POST", "/v1/entries", _entry_without("usage"), 400, ("usage",)), id="entry-no-usage"
    ),
    pytest.param(
        Bad(
            "POST",
            "/v1/entries",
            _entry(usage={"input_tokens": -1, "output_tokens": 50}),
            400,
            ("input_tokens",),
        ),
        id="entry-negative-input-tokens",
    ),
    pytest.param(
        Bad(
            "POST",
            "/v1/entries",
            _entry(usage={"input_tokens": 100, "output_tokens": -50}),
            400,
            ("output_tokens",),
        ),
        id="entry-negative-output-tokens",
    ),
    pytest.param(Bad("POST", "/v1/entries", _entry(ttl_s=0), 400, ("ttl_s",)), id="entry-ttl-0"),
    pytest.param(Bad("POST", "/v1/entries", _entry(ttl_s=-5), 400, ("ttl_s",)), id="entry-ttl-neg"),
    pytest.param(
        Bad("POST", "/v1/entries", _entry(model=""), 400, ("model",)), id="entry-empty-model"
    ),
    pytest.param(
        Bad("POST", "/v1/entries", _entry(model="   "), 400, ("model",)), id="entry-blank-model"
    ),
    pytest.param(
        Bad("POST", "/v1/entries", _entry(model="m" * 201), 400, ("model",)), id="entry-long-model"
    ),
    pytest.param(
        Bad("POST", "/v1/entries", _entry(question="   ?!"), 400, ("question",)),
        id="entry-empty-question",
    ),
    pytest.param(
        Bad("POST", "/v1/entries", _entry(question="x" * 51), 400, ("question", "50")),
        id="entry-question-too-long",
    ),
    pytest.param(
        Bad("POST", "/v1/entries", _entry(namespace="../etc"), 400, ("namespace",)),
        id="entry-bad-namespace",
    ),
    pytest.param(
        Bad("POST", "/v1/entries", _entry(tresh=1), 400, ("tresh",)), id="entry-unknown-field"
    ),
    # entry ids
    *[
        pytest.param(Bad(method, f"/v1/entries/{eid}", None, 404, (eid,)), id=f"{method}-{label}")
        for method in ("GET", "DELETE")
        for label, eid in [("unknown-id", UNKNOWN_ID), ("not-an-id", "not-an-id")]
    ],
    # admin
    pytest.param(Bad("POST", VERSION_PATH, {"version": 0}, 400, ("version",)), id="version-0"),
    pytest.param(Bad("POST", VERSION_PATH, {"version": "x"}, 400, ("version",)), id="version-str"),
    pytest.param(
        Bad("POST", VERSION_PATH, {"version": True}, 400, ("version",)), id="version-bool"
    ),
    pytest.param(
        Bad("POST", VERSION_PATH, {"version": 9, "x": 1}, 400, ("unknown field",)),
        id="version-unknown-field",
    ),
    pytest.param(
        Bad("POST", VERSION_PATH, b"{oops", 400, ("version", "malformed")),
        id="version-malformed-json",
    ),
    pytest.param(
        Bad("POST", VERSION_PATH, b'{"version": 9}' + b" " * 3000, 413, ("too large",)),
        id="version-body-too-big",
    ),
    *[
        pytest.param(
            Bad(method, f"/admin/namespaces/{ns}/version", None, 400, ("namespace",)),
            id=f"version-path-{method}-{label}",
        )
        for method in ("GET", "POST")
        for label, ns in [("space", "Bad%20NS"), ("long", "a" * 100), ("upper", "DEFAULT")]
    ],
    pytest.param(
        Bad("POST", "/admin/namespaces/..%2Fetc/version", None, None), id="version-path-dots"
    ),
    # Bugs found once (500s, 503s or data changed by bad input); kept as regressions.
    pytest.param(
        Bad("POST", "/v1/entries", _entry(ttl_s=1e12), 400, ("ttl_s",)),
        id="entry-ttl-beyond-year-9999",
    ),
    pytest.param(
        Bad(
            "POST",
            "/v1/entries",
            _entry(usage={"input_tokens": 2**64, "output_tokens": 1}),
            400,
            ("input_tokens",),
        ),
        id="entry-tokens-over-uint64",
    ),
    pytest.param(
        Bad("POST", VERSION_PATH, {"version": 2**64}, 400, ("version",)),
        id="version-over-uint64",
    ),
    pytest.param(
        Bad("GET", "/admin/namespaces/default%0A/version", None, 400, ("namespace",)),
        id="version-path-trailing-newline",
    ),
    pytest.param(
        Bad("POST", "/v1/lookup", b"", 400, ("body",)),
        id="lookup-empty-body",
    ),
]


def _send(client: Client, case: Bad) -> httpx.Response:
    kwargs: dict[str, Any] = {}
    if isinstance(case.body, Chunked):
        data = case.body.data
        kwargs["content"] = (data[i : i + 512] for i in range(0, len(data), 512))
        kwargs["headers"] = {"content-type": "application/json"}
    elif isinstance(case.body, bytes):
        kwargs["content"] = case.body
        kwargs["headers"] = {"content-type": "application/json"}
    elif case.body is not None:
        kwargs["json"] = case.body
    return client.request(case.method, case.path, **kwargs)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_rejected_and_changes_nothing(
    case: Bad, tmp_path: Path, real_embedder: SentenceTransformerEmbedder
) -> None:
    with serve(tmp_path / "d", real_embedder, max_question_chars=50, max_body_bytes=2048) as client:
        baseline = store(client)
        assert lookup(client, QUESTION)["hit"] is True
        before = stats(client)

        resp = _send(client, case)
        assert resp.status_code < 500, (resp.status_code, resp.text)
        body = assert_problem(resp, case.status)
        detail = body["detail"].lower()
        for word in case.words:
            assert word.lower() in detail, (word, body["detail"])

        # Nothing changed: counters, entries, versions, and the baseline is still served.
        assert stats(client) == before
        assert before["writes"] == 1 and before["entries"] == 1
        assert version_of(client) == 1
        entry = client.get(f"/v1/entries/{baseline['entry_id']}")
        assert entry.status_code == 200, entry.text
        assert entry.json()["answer"] == ANSWER
        assert entry.json()["expires_at"] is None
        assert entry.json()["usage"]["input_tokens"] == 100
        served = lookup(client, QUESTION)
        assert served["hit"] is True
        assert served["entry_id"] == baseline["entry_id"]
        assert served["answer"] == ANSWER
        assert lookup(client, PARAPHRASE)["hit"] is True


# 11. TTL with an injected clock ---------------------------------------------------------------


def test_ttl_expiry_with_an_injected_clock(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder
) -> None:
    clock = FakeClock()
    t0 = clock.now
    with serve(tmp_path / "d", real_embedder, clock=clock) as client:
        created = store(client, ttl_s=60)
        keeper = store(client, UNRELATED, "9 to 5, Monday to Friday.")
        assert keeper["expires_at"] is None
        expires = parse_time(created["expires_at"])
        assert expires == datetime.fromtimestamp(t0, tz=UTC) + timedelta(seconds=60)
        entry = client.get(f"/v1/entries/{created['entry_id']}").json()
        assert parse_time(entry["created_at"]) == datetime.fromtimestamp(t0, tz=UTC)
        assert expires - parse_time(entry["created_at"]) == timedelta(seconds=60)

        clock.advance(59)
        hit = lookup(client, PARAPHRASE)
        assert hit["hit"] is True and hit["match"] == "semantic"
        exact = lookup(client, QUESTION)
        assert exact["hit"] is True and exact["match"] == "exact"

        clock.advance(2)  # now t0 + 61
        assert lookup(client, QUESTION)["hit"] is False
        assert lookup(client, PARAPHRASE)["hit"] is False
        assert_problem(client.get(f"/v1/entries/{created['entry_id']}"), 404)
        # The entry without a TTL is still served.
        assert lookup(client, UNRELATED)["hit"] is True
        assert stats(client)["entries"] == 1


def test_context_keeps_follow_ups_apart(client: Client) -> None:
    """A generic follow-up is matched with the previous user turn, never on its own."""
    france = "What is the capital of France?"
    bread = "How do I bake bread?"
    follow_up = "Can you expand on that?"
    created = client.post(
        "/v1/entries",
        json={"question": follow_up, "context": france, "answer": "Paris has ...",
              "model": HAIKU, "usage": USAGE},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    same = lookup(client, follow_up, context=france)
    assert same["hit"] is True and same["match"] == "exact"
    assert lookup(client, follow_up, context=bread)["hit"] is False
    assert lookup(client, follow_up)["hit"] is False  # no context: a different key
