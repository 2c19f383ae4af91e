"""The dashboard's data: rollups kept by the ledger, and GET /dashboard and /dashboard/data.

The rollups are checked against sums computed here, in Python, from the rows the test
recorded (not against another SQL query of the same table). The browser side is in
test_dashboard_browser.py.
"""

from __future__ import annotations

import random
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from cache import InvalidInput, SemanticCache, Usage
from cache.dashboard import WINDOWS, build
from cache.ledger import ROLLUP_UNITS, WRONG_HITS_KEPT, Ledger, LedgerRow, WrongHit
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeClock, HashingEmbedder

MakeCache = Callable[..., SemanticCache]
T0 = 1_800_000_000.0  # a multiple of 3600: buckets of every window start on it
HAIKU = "claude-haiku-4-5"
KEY_ALPHA = "key-for-alpha-0123456789"
KEY_ALL = "key-for-everything-987654"

# The ledger's table as it was before rollups existed: an older data dir holds only this.
OLD_SCHEMA = """
CREATE TABLE ledger (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL,
    namespace TEXT NOT NULL, endpoint TEXT NOT NULL, tier TEXT, model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cache_creation_input_tokens INTEGER NOT NULL, cache_read_input_tokens INTEGER NOT NULL,
    cost_usd REAL, latency_ms REAL, stop_reason TEXT, reason TEXT, max_tokens INTEGER,
    system_tokens INTEGER, entry_id TEXT
);
CREATE INDEX ledger_ts ON ledger (ts);
"""


def random_rows(count: int, seed: int = 3, span_s: float = 7 * 86_400) -> list[LedgerRow]:
    """Calls (some failed, some warm-up) and hits spread over `span_s` before T0."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        kind = rng.choice(["call", "call", "hit"])
        usage = Usage(
            input_tokens=rng.randint(0, 500),
            output_tokens=rng.randint(0, 300),
            cache_creation_input_tokens=rng.choice([0, 0, 40]),
            cache_read_input_tokens=rng.choice([0, 0, 80]),
        )
        failed = kind == "call" and rng.random() < 0.1
        rows.append(
            LedgerRow(
                kind=kind,
                source="warm"
                if kind == "call" and rng.random() < 0.2
                else rng.choice(["ask", "proxy"]),
                namespace=rng.choice(["alpha", "beta"]),
                endpoint=rng.choice(["faq", "chat"]),
                model=rng.choice([HAIKU, "claude-sonnet-4-5"]),
                usage=Usage(input_tokens=0, output_tokens=0) if failed else usage,
                cost_usd=None if failed else rng.randint(1, 5000) / 1e6,
                stop_reason="error: overloaded" if failed else "end_turn",
                entry_id=f"{rng.randint(0, 30):016x}" if kind == "hit" else None,
                ts=T0 - rng.uniform(1, span_s),
            )
        )
    return rows


def expected_rollup(rows: list[LedgerRow], seconds: int) -> dict[tuple[object, ...], list[float]]:
    """The rollup per `seconds`, summed in Python."""
    out: dict[tuple[object, ...], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0.0])
    for r in rows:
        failed = r.kind == "call" and (r.stop_reason or "").startswith("error")
        key = (
            int(r.ts // seconds) * seconds, r.namespace, r.endpoint, r.model, r.source,
            "failed" if failed else r.kind,
        )  # fmt: skip
        sums = out[key]
        u = r.usage
        for i, value in enumerate(
            (1, u.input_tokens, u.output_tokens, u.cache_creation_input_tokens,
             u.cache_read_input_tokens, r.cost_usd or 0.0)
        ):  # fmt: skip
            sums[i] += value
    return dict(out)


def read_rollup(path: Path, unit: str) -> dict[tuple[object, ...], list[float]]:
    with closing(sqlite3.connect(path)) as db:
        return {
            tuple(row[:6]): list(row[6:])
            for row in db.execute(
                f"SELECT {unit}, namespace, endpoint, model, source, kind, n, input_tokens,"
                " output_tokens, cache_creation_input_tokens, cache_read_input_tokens, usd"
                f" FROM ledger_{unit}"
            )
        }


def assert_rollups(path: Path, rows: list[LedgerRow]) -> None:
    """Both rollups (per minute and per hour) hold exactly the sums of `rows`."""
    for unit, seconds in ROLLUP_UNITS.items():
        assert_same(read_rollup(path, unit), expected_rollup(rows, seconds))


def read_entry_hits(path: Path) -> dict[tuple[str, str], tuple[int, float]]:
    with closing(sqlite3.connect(path)) as db:
        return {
            (ns, entry): (hits, last)
            for ns, entry, hits, last in db.execute(
                "SELECT namespace, entry_id, hits, last_ts FROM entry_hits"
            )
        }


def expected_entry_hits(rows: list[LedgerRow]) -> dict[tuple[str, str], tuple[int, float]]:
    out: dict[tuple[str, str], tuple[int, float]] = {}
    for r in rows:
        if r.kind == "hit" and r.entry_id is not None:
            hits, last = out.get((r.namespace, r.entry_id), (0, 0.0))
            out[(r.namespace, r.entry_id)] = (hits + 1, max(last, r.ts))
    return out


def assert_same(actual: dict[Any, list[float]], expected: dict[Any, list[float]]) -> None:
    assert set(actual) == set(expected)
    for key, sums in expected.items():
        assert actual[key][:5] == sums[:5], key
        assert actual[key][5] == pytest.approx(sums[5], abs=1e-12), key


# rollups ---------------------------------------------------------------------------------------


def test_rollups_equal_the_raw_rows_over_several_flushes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    rows = random_rows(3_000, span_s=600)  # ten minutes: each flush adds to the same keys
    for start in range(0, len(rows), 700):
        for row in rows[start : start + 700]:
            ledger.record(row)
        ledger.flush()
    ledger.close()
    assert_rollups(path, rows)
    assert read_entry_hits(path) == expected_entry_hits(rows)
    # Reopening rolls nothing up twice.
    Ledger(path).close()
    assert_rollups(path, rows)


def test_an_old_ledger_is_rolled_up_once_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    rows = random_rows(1_500, seed=5)
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.executemany(
            "INSERT INTO ledger (ts, kind, source, namespace, endpoint, model, input_tokens,"
            " output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cost_usd,"
            " stop_reason, entry_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (r.ts, r.kind, r.source, r.namespace, r.endpoint, r.model, r.usage.input_tokens,
                 r.usage.output_tokens, r.usage.cache_creation_input_tokens,
                 r.usage.cache_read_input_tokens, r.cost_usd, r.stop_reason, r.entry_id)
                for r in rows
            ],
        )  # fmt: skip
    db.close()
    ledger = Ledger(path)
    report = ledger.report()
    ledger.close()
    assert_rollups(path, rows)
    assert read_entry_hits(path) == expected_entry_hits(rows)
    assert report.totals.calls == sum(r.kind == "call" for r in rows)

    # Rows an older build appends later (it knows nothing of rollups) are caught up too.
    more = random_rows(200, seed=6)
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO ledger (ts, kind, source, namespace, endpoint, model, input_tokens,"
            " output_tokens, cache_creation_input_tokens, cache_read_input_tokens, cost_usd,"
            " stop_reason, entry_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (r.ts, r.kind, r.source, r.namespace, r.endpoint, r.model, r.usage.input_tokens,
                 r.usage.output_tokens, r.usage.cache_creation_input_tokens,
                 r.usage.cache_read_input_tokens, r.cost_usd, r.stop_reason, r.entry_id)
                for r in more
            ],
        )  # fmt: skip
    db.close()
    Ledger(path).close()
    Ledger(path).close()
    assert_rollups(path, rows + more)
    assert read_entry_hits(path) == expected_entry_hits(rows + more)


def test_a_failing_rollup_loses_no_raw_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    rows = random_rows(50, seed=9)
    for row in rows:
        ledger.record(row)
    ledger.record_lookup("alpha", "exact_hits", ts=T0)
    ledger.record_wrong(wrong("alpha", 1))
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER broken BEFORE INSERT ON ledger_minute"
            " BEGIN SELECT RAISE(ABORT, 'rollup broken on purpose'); END"
        )
    db.close()
    with pytest.raises(sqlite3.Error, match="broken on purpose"):
        ledger.flush()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM ledger").fetchone() == (0,)  # all or nothing
        db.execute("DROP TRIGGER broken")
    db.close()
    ledger.record_lookup("alpha", "misses", ts=T0)  # recorded while the flush was failing
    assert ledger.flush() == len(rows)  # the kept rows, written once
    ledger.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM ledger").fetchone() == (len(rows),)
        lookups = db.execute("SELECT exact_hits, misses FROM lookup_minute").fetchall()
        assert lookups == [(1, 1)]
        assert db.execute("SELECT COUNT(*) FROM wrong_hits").fetchone() == (1,)
    db.close()
    assert_rollups(path, rows)


def wrong(namespace: str, i: int) -> WrongHit:
    return WrongHit(
        namespace=namespace, lookup_id=f"{i:032x}", entry_id=f"{i:016x}", question=f"q {i}",
        similarity=0.9, match="semantic", ts=T0 + i,
    )  # fmt: skip


def test_wrong_hits_keep_the_latest_per_namespace(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    for i in range(WRONG_HITS_KEPT + 50):
        ledger.record_wrong(wrong("alpha", i))
    ledger.record_wrong(wrong("beta", 0))
    ledger.flush()
    kept = ledger.query("SELECT namespace, MIN(ts), COUNT(*) FROM wrong_hits GROUP BY 1")
    ledger.close()
    # Beta's single report is not pushed out by alpha's many.
    assert kept == [("alpha", T0 + 50, WRONG_HITS_KEPT), ("beta", T0, 1)]


def test_the_usage_report_shows_warm_up_apart(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    rows = random_rows(400, seed=11)
    for row in rows:
        ledger.record(row)
    report = ledger.report()
    ledger.close()
    warm = [r for r in rows if r.source == "warm"]
    assert warm and set(report.sources) == {r.source for r in rows}
    assert report.sources["warm"].calls == len(warm)
    assert report.sources["warm"].spend_usd == pytest.approx(sum(r.cost_usd or 0 for r in warm))
    # The other groups still count everything, warm-up included.
    assert report.totals.calls == sum(r.kind == "call" for r in rows)
    assert sum(line.calls for line in report.sources.values()) == report.totals.calls


# the dashboard's numbers ---------------------------------------------------------------------


def test_lookups_are_counted_per_minute_through_the_cache(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache()
    clock.now = T0 - 3 * 3600
    cache.put("how do i reset my password", "Use the link.", model=HAIKU,
              usage=Usage(input_tokens=100, output_tokens=50), namespace="alpha")  # fmt: skip
    expected: Counter[tuple[int, str]] = Counter()
    for minute in range(0, 180, 7):
        clock.now = T0 - 3 * 3600 + minute * 60 + 5
        exact = cache.lookup("how do i reset my password", "alpha")
        semantic = cache.lookup("how do i reset my password please", "alpha")
        miss = cache.lookup("opening hours", "alpha")
        assert (exact.match, semantic.match, miss.hit) == ("exact", "semantic", False)
        for outcome in ("exact_hits", "semantic_hits", "misses"):
            expected[(minute, outcome)] += 1
    stored = cache.ledger.query(
        "SELECT minute, exact_hits, semantic_hits, misses FROM lookup_minute WHERE namespace = ?",
        ("alpha",),
    )
    start = int(T0 - 3 * 3600)
    assert {(int(str(m)) - start, e, s, n) for m, e, s, n in stored} == {
        (minute * 60, 1, 1, 1) for minute, _ in expected
    }

    clock.now = T0 - 1
    data = build(cache, "alpha", "24h")
    assert len(data.series.start) == 144 and data.bucket_s == 600
    assert data.totals.lookups == sum(expected.values())
    assert data.totals.exact_hits == data.totals.semantic_hits == data.totals.misses
    assert data.totals.hit_rate == pytest.approx(2 / 3)
    # Each 10-minute bucket holds the lookups of its minutes.
    for start, hits in zip(data.series.start, data.series.exact_hits, strict=True):
        minutes = {
            m for m, _ in expected if start <= T0 - 3 * 3600 + m * 60 < start + data.bucket_s
        }
        assert hits == len(minutes)
    price = cache.prices.cost(HAIKU, Usage(input_tokens=100, output_tokens=50))
    assert price is not None
    assert data.totals.saved_usd == pytest.approx(2 * len(range(0, 180, 7)) * price)
    assert [e.question for e in data.top_entries] == ["how do i reset my password"]
    assert build(cache, "beta", "24h").totals.lookups == 0
    assert data.namespaces[0].name == "alpha" and data.namespaces[0].catalog_version == 1


def test_every_window_has_at_most_200_buckets_ending_now(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache()
    clock.now = T0 + 123.0
    for name, window in WINDOWS.items():
        data = build(cache, None, name)
        assert len(data.series.start) <= 200
        assert data.series.start[-1] <= clock.now < data.series.start[-1] + window.bucket_s
        assert data.series.start[-1] - data.series.start[0] == window.seconds - window.bucket_s
    with pytest.raises(InvalidInput):
        build(cache, None, "2w")
    with pytest.raises(InvalidInput):
        build(cache, "Not A Namespace!", "1h")


def test_reported_wrong_hits_and_stale_top_entries(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache()
    cache.put("where is my order", "In transit.", model=HAIKU,
              usage=Usage(input_tokens=10, output_tokens=5), namespace="alpha")  # fmt: skip
    hit = cache.lookup("where is my order now", "alpha")
    assert hit.match == "semantic"
    cache.feedback(hit.lookup_id, correct=False)
    data = build(cache, "alpha", "1h")
    assert [(w.question, w.entry_question, w.match) for w in data.wrong_hits] == [
        ("where is my order now", "where is my order", "semantic")
    ]
    assert data.wrong_hits[0].similarity == pytest.approx(hit.similarity, abs=1e-6)
    assert [e.hits for e in data.top_entries] == [1]
    cache.set_version("alpha")  # the entry is no longer served: no longer a top entry
    data = build(cache, "alpha", "1h")
    assert data.top_entries == []
    assert data.namespaces[0].catalog_version == 2 and data.namespaces[0].entries == 0
    assert len(data.wrong_hits) == 1


def test_thousands_of_rows_are_read_from_the_rollups_only(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    cache = make_cache()
    clock.now = T0
    rows = random_rows(5_000, seed=13)
    for row in rows:
        cache.ledger.record(row)
    for i in range(2_000):
        cache.ledger.record_lookup(
            "alpha", ["exact_hits", "semantic_hits", "misses"][i % 3], ts=T0 - i * 97.0
        )
    before = build(cache, None, "7d")
    alpha = build(cache, "alpha", "7d")
    # The raw rows gone, the dashboard is unchanged: it never reads them.
    cache.ledger.query("DELETE FROM ledger")
    assert msgspec.json.encode(build(cache, None, "7d")) == msgspec.json.encode(before)
    assert cache.ledger.query("SELECT COUNT(*) FROM ledger") == [(0,)]

    week = [r for r in rows if r.ts >= before.series.start[0]]
    live = [r for r in week if r.kind == "call" and r.source != "warm"]
    warm = [r for r in week if r.kind == "call" and r.source == "warm"]
    hits = [r for r in week if r.kind == "hit"]
    t = before.totals
    assert (t.calls, t.warm_calls, t.hits) == (len(live), len(warm), len(hits))
    assert t.failed_calls == sum((r.stop_reason or "").startswith("error") for r in live)
    assert t.spent_usd == pytest.approx(sum(r.cost_usd or 0 for r in live))
    assert t.warm_usd == pytest.approx(sum(r.cost_usd or 0 for r in warm))
    assert t.saved_usd == pytest.approx(sum(r.cost_usd or 0 for r in hits))
    assert sum(before.series.spent_usd) == pytest.approx(t.spent_usd)
    assert sum(before.series.warm_usd) == pytest.approx(t.warm_usd)
    assert t.spent_tokens == sum(r.usage.total for r in live)
    assert t.lookups == 2_000 and alpha.totals.lookups == 2_000
    assert alpha.totals.calls == sum(r.namespace == "alpha" for r in live)
    by_model = {line.name: line.spent_tokens for line in before.models}
    for model in (HAIKU, "claude-sonnet-4-5"):
        assert by_model[model] == sum(
            r.usage.total for r in week if r.kind == "call" and r.model == model
        )
    sources = {line.name: line.calls for line in before.sources}
    assert sources["warm"] == len(warm)


# HTTP ------------------------------------------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[TestClient[Any]]:
    settings = Settings(data_dir=str(tmp_path / "d"), client_keys={KEY_ALPHA: ["alpha"],
                        KEY_ALL: ["*"]})  # fmt: skip
    app = create_app(settings, embedder=HashingEmbedder(), clock=FakeClock(T0))
    with TestClient(app=app, raise_server_exceptions=False) as client:
        yield client


def test_the_data_needs_a_key_for_every_namespace(keyed: TestClient[Any]) -> None:
    assert keyed.get("/dashboard/data").status_code == 401
    assert (
        keyed.get("/dashboard/data", headers={"x-semcache-key": "unknown-key-123456"}).status_code
        == 401
    )
    narrow = keyed.get("/dashboard/data?namespace=alpha", headers={"x-semcache-key": KEY_ALPHA})
    assert narrow.status_code == 403
    assert narrow.headers["content-type"].startswith("application/problem+json")
    full = keyed.get("/dashboard/data?window=7d", headers={"x-semcache-key": KEY_ALL})
    assert full.status_code == 200, full.text
    body = full.json()
    assert (body["window"], body["bucket_s"], body["namespace"]) == ("7d", 3600, None)
    assert body["now"] == T0
    assert full.headers["cache-control"] == "no-store"
    # The page itself holds no data: it loads without a key, and asks for one.
    page = keyed.get("/dashboard")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_the_page_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=str(tmp_path / "d")), embedder=HashingEmbedder())
    with TestClient(app=app, raise_server_exceptions=False) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        for marker in ("http://", "https://", '="//'):  # '="//': a protocol-relative URL
            assert marker not in page.text
        script = client.get("/dashboard/static/dashboard.js")
        style = client.get("/dashboard/static/dashboard.css")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert style.status_code == 200 and "text/css" in style.headers["content-type"]
        for asset in (script.text, style.text):
            assert "https://" not in asset and "http://" not in asset.replace(SVG_NS, "")
            assert "@import" not in asset and "url(" not in asset
        for name in ("dashboard.html", "app.py", "..%2Fapp.py", "missing.js"):
            assert client.get(f"/dashboard/static/{name}").status_code == 404
        assert client.get("/dashboard/data?window=2w").status_code == 400
        assert client.get("/dashboard/data?namespace=Not%20valid").status_code == 400
        paths = client.get("/schema/openapi.json").json()["paths"]
        assert not [path for path in paths if path.startswith("/dashboard")]


SVG_NS = "http://www.w3.org/2000/svg"
