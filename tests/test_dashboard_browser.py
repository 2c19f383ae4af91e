"""GET /dashboard in a real headless browser: a seeded week of traffic, shown correctly.

The server is the real app (Litestar, diskcache, faiss, the SQLite ledger) served by uvicorn
on a loopback port in a thread, with the bag-of-words `HashingEmbedder` and an injected clock.
A week of traffic goes through the real code paths: entries through POST /v1/entries, every
lookup through POST /v1/lookup, wrong hits through POST /v1/feedback. Upstream spend (live
calls and warm-up calls) is written to the ledger directly, as the answering code writes it,
because this test is about what the dashboard shows, not about calling a model.

Debian's chromium, driven by Playwright's sync API, opens /dashboard; the test checks that the
page loads with no console error, no page error and no request anywhere but this server, that
its totals, bars, lines and tables show the seeded numbers, in the 24-hour and 7-day windows
and for one namespace, and saves a full-page screenshot to test-artifacts/dashboard.png.
Without chromium or the playwright package the test skips, and says which is missing.
"""

from __future__ import annotations

import random
import shutil
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from litestar import Litestar

from cache import PriceTable, Usage
from cache.ledger import LedgerRow
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeClock, HashingEmbedder

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package
ARTIFACT = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard.png"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START = 1_767_225_600.0  # 2026-01-01 00:00 UTC: the seeded week starts on an hour (and day)
HOUR = 3_600
DAYS = 7
END = START + DAYS * 86_400 - 60  # the clock when the page is opened: the week's last minute
HAIKU = "claude-haiku-4-5"
REFRESH_MS = 10_000  # how often the page fetches its data again (dashboard.js)
SONNET = "claude-sonnet-4-5"
PRICES = PriceTable.load()

# What each namespace stores: question -> (model, input tokens, output tokens).
FAQ = {
    "acme": {
        "how do i reset my password": (HAIKU, 120, 80),
        "where is my order": (HAIKU, 90, 60),
        "how can i cancel my subscription": (SONNET, 200, 150),
        "what payment methods do you accept": (HAIKU, 70, 40),
    },
    "beta": {
        "how do i export my data": (SONNET, 300, 220),
        "which browsers are supported": (HAIKU, 50, 30),
    },
}


@dataclass
class Tally:
    """What the test sent, and what the server answered, per namespace and hour."""

    outcomes: dict[tuple[str, int], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    saved_usd: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    spent_usd: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    warm_usd: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    spent_by_endpoint: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    wrong: list[str] = field(default_factory=list)

    def count(self, namespace: str | None, outcome: str, hours: range) -> int:
        return sum(
            counter[outcome]
            for (ns, hour), counter in self.outcomes.items()
            if hour in hours and namespace in (None, ns)
        )

    def usd(self, column: dict[str, float], namespace: str | None) -> float:
        return sum(v for ns, v in column.items() if namespace in (None, ns))


def cost(model: str, inp: int, out: int) -> float:
    price = PRICES.cost(model, Usage(input_tokens=inp, output_tokens=out))
    assert price is not None
    return price


@contextmanager
def serving(app: Litestar) -> Iterator[str]:
    """The app on a loopback port bound here first, so no other process can take it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # a bound on a hung start, not a timing assertion
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def seed_week(base: str, clock: FakeClock, app: Litestar) -> Tally:
    """A week of traffic, busier in the day, through the server's real code paths."""
    tally = Tally()
    with httpx.Client(base_url=base, timeout=30) as client:
        clock.now = START
        for namespace, faq in FAQ.items():
            for question, (model, inp, out) in faq.items():
                created = client.post(
                    "/v1/entries",
                    json={"question": question, "answer": f"answer to {question}", "model": model,
                          "usage": {"input_tokens": inp, "output_tokens": out},
                          "namespace": namespace},
                )  # fmt: skip
                assert created.status_code == 201, created.text
        ledger = app.state.cache.ledger
        rng = random.Random(7)  # the same week on every run
        for hour in range(DAYS * 24):
            busy = 8 <= hour % 24 < 18
            # Fewer misses day by day, as the cache fills up with what people ask.
            miss_share = 0.6 - 0.07 * (hour // 24)
            for namespace, faq in FAQ.items():
                least, most = {"acme": (6, 14), "beta": (2, 6)}[namespace] if busy else (0, 2)
                for j in range(rng.randint(least, most)):
                    clock.now = START + hour * HOUR + j * 60
                    question = rng.choice(list(faq))
                    roll = rng.random()
                    if roll < miss_share:
                        asked = f"opening hours {hour} {j}"  # no word in common with any entry
                    elif roll < (1 + miss_share) / 2:
                        asked = question
                    else:
                        asked = f"{question} please"
                    found = client.post(
                        "/v1/lookup", json={"question": asked, "namespace": namespace}
                    )
                    assert found.status_code == 200, found.text
                    body = found.json()
                    outcome = f"{body['match']}_hits" if body["hit"] else "misses"
                    tally.outcomes[(namespace, hour)][outcome] += 1
                    if body["hit"]:
                        model, inp, out = faq[question]
                        tally.saved_usd[namespace] += cost(model, inp, out)
                # Live spend: one call per busy hour on the namespace's first model.
                if busy:
                    clock.now = START + hour * HOUR + 30 * 60
                    model, inp, out = next(iter(faq.values()))
                    endpoint = "faq" if hour % 2 else "chat"
                    ledger.record(call(namespace, endpoint, "ask", model, inp, out, clock.now))
                    tally.spent_usd[namespace] += cost(model, inp, out)
                    tally.spent_by_endpoint[endpoint] += inp + out
        # Warm-up on the first morning: a burst of calls, apart from live traffic.
        for i in range(12):
            ts = START + 6 * HOUR + i * 60
            ledger.record(call("acme", "warm-up", "warm", SONNET, 400, 300, ts))
            tally.warm_usd["acme"] += cost(SONNET, 400, 300)
        # In the last minutes, two semantic hits are reported wrong (both looked up before the
        # first report, which raises the entry's similarity floor).
        clock.now = END - 30
        hits = []
        for question in ("where is my order quickly", "where is my order now"):
            found = client.post("/v1/lookup", json={"question": question, "namespace": "acme"})
            body = found.json()
            assert body["hit"], body
            tally.outcomes[("acme", DAYS * 24 - 1)][f"{body['match']}_hits"] += 1
            tally.saved_usd["acme"] += cost(*FAQ["acme"]["where is my order"])
            hits.append((question, body["lookup_id"]))
        for question, lookup_id in hits:
            reported = client.post("/v1/feedback", json={"lookup_id": lookup_id, "correct": False})
            assert reported.status_code == 200, reported.text
            tally.wrong.append(question)
    clock.now = END
    return tally


def call(
    namespace: str, endpoint: str, source: str, model: str, inp: int, out: int, ts: float
) -> LedgerRow:
    usage = Usage(input_tokens=inp, output_tokens=out)
    return LedgerRow(
        kind="call", source=source, namespace=namespace, endpoint=endpoint, model=model,
        usage=usage, cost_usd=PRICES.cost(model, usage), stop_reason="end_turn", ts=ts,
    )  # fmt: skip


def number(text: str) -> float:
    return float(text.replace(",", "").replace("$", "").replace("%", ""))


def test_dashboard_shows_a_seeded_week(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"no browser: {CHROMIUM} is missing; the dashboard's browser test needs Debian's "
            "chromium (apt-get install chromium)"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="the playwright package is not installed (pip install -e '.[dev]')",
    )
    clock = FakeClock(START)
    app = create_app(
        Settings(data_dir=str(tmp_path / "data")), embedder=HashingEmbedder(), clock=clock
    )
    with serving(app) as base:
        tally = seed_week(base, clock, app)
        week, last_day = range(DAYS * 24), range((DAYS - 1) * 24, DAYS * 24)
        # The seed must exercise every kind of outcome, or the checks below prove little.
        assert all(
            tally.count(None, kind, week) > 50 for kind in ("exact_hits", "semantic_hits", "misses")
        )

        console_errors: list[str] = []
        page_errors: list[str] = []
        elsewhere: list[str] = []
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            try:
                context = browser.new_context(
                    viewport={"width": 1440, "height": 900}, timezone_id="UTC", locale="en-US"
                )
                page = context.new_page()
                # The page's timers run on a clock that stands still until the test moves it:
                # no refresh comes in the middle of a check, and the one the test wants comes
                # without waiting 10 s for it.
                page_time = datetime(2026, 1, 8, tzinfo=UTC)
                page.clock.install(time=page_time)
                page.on(
                    "console",
                    lambda m: console_errors.append(m.text) if m.type == "error" else None,
                )
                page.on("pageerror", lambda e: page_errors.append(str(e)))
                page.on(
                    "request", lambda r: None if r.url.startswith(base) else elsewhere.append(r.url)
                )

                page.goto(f"{base}/dashboard")
                page.clock.pause_at(page_time + timedelta(seconds=5))
                wait_for(page, "|24h")
                check_totals(page, tally, None, last_day)

                page.get_by_test_id("window-7d").click()
                wait_for(page, "|7d")
                check_totals(page, tally, None, week)
                check_week_charts(page, tally, week)

                page.get_by_test_id("namespace").select_option("beta")
                wait_for(page, "beta|7d")
                check_totals(page, tally, "beta", week)
                assert page.locator("#wrong-hits tbody tr[data-lookup]").count() == 0
                assert page.locator("#sources tr[data-source='warm']").count() == 0
                assert page.get_by_test_id("total-warm").inner_text() == "$0.00"

                page.get_by_test_id("namespace").select_option("")
                wait_for(page, "|7d")
                check_totals(page, tally, None, week)
                ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACT), full_page=True)

                # It refreshes itself: one more lookup shows up once the page's timer fires.
                lookups = tally.count(None, "misses", week) + tally.count(None, "exact_hits", week)
                lookups += tally.count(None, "semantic_hits", week)
                found = httpx.post(f"{base}/v1/lookup", json={"question": "gift wrapping"})
                assert found.status_code == 200 and not found.json()["hit"]
                assert page.get_by_test_id("total-lookups").inner_text() == f"{lookups:,}"
                page.clock.run_for(REFRESH_MS)
                sync_api.expect(page.get_by_test_id("total-lookups")).to_have_text(
                    f"{lookups + 1:,}"
                )
            finally:
                browser.close()
        assert ARTIFACT.stat().st_size > 10_000
        assert console_errors == []
        assert page_errors == []
        assert elsewhere == []  # no CDN, no font service: the page loads only from the server


def wait_for(page: Any, shown: str) -> None:
    """Until the page shows the data of `shown` ("namespace|window")."""
    page.wait_for_selector(f"body[data-state='ready'][data-shown='{shown}']", timeout=60_000)


def check_totals(page: Any, tally: Tally, namespace: str | None, hours: range) -> None:
    exact = tally.count(namespace, "exact_hits", hours)
    semantic = tally.count(namespace, "semantic_hits", hours)
    misses = tally.count(namespace, "misses", hours)
    lookups = exact + semantic + misses

    def shown(testid: str) -> str:
        text: str = page.get_by_test_id(testid).inner_text()
        return text

    assert shown("total-lookups") == f"{lookups:,}"
    assert shown("total-exact") == f"{exact:,}"
    assert shown("total-semantic") == f"{semantic:,}"
    assert shown("total-misses") == f"{misses:,}"
    assert shown("total-hit-rate") == f"{100 * (exact + semantic) / lookups:.1f}%"
    if len(hours) == DAYS * 24:  # the spend and savings of the whole week
        saved = tally.usd(tally.saved_usd, namespace)
        spent = tally.usd(tally.spent_usd, namespace)
        warm = tally.usd(tally.warm_usd, namespace)
        for testid, expected in (
            ("total-saved", saved),
            ("total-spent", spent),
            ("total-warm", warm),
        ):
            value = float(page.get_by_test_id(testid).get_attribute("data-value"))
            assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)
            assert number(shown(testid)) == pytest.approx(
                expected, abs=0.006 if expected >= 1 else 6e-5
            )


def check_week_charts(page: Any, tally: Tally, week: range) -> None:
    # Hit rate: one bar group per hour that had lookups, each with that hour's counts.
    bars = page.locator("[data-testid='chart-hits'] g.bucket")
    busy_hours = {hour for (_, hour), counts in tally.outcomes.items() if counts.total()}
    assert len(busy_hours) < len(week)  # so that empty hours are seen to draw no bar
    assert bars.count() == len(busy_hours)
    shown = bars.evaluate_all(
        "gs => gs.map(g => [+g.dataset.start, +g.dataset.exact, +g.dataset.semantic,"
        " +g.dataset.misses])"
    )
    for start, exact, semantic, misses in shown:
        hour = int((start - START) // HOUR)
        assert [exact, semantic, misses] == [
            tally.count(None, kind, range(hour, hour + 1))
            for kind in ("exact_hits", "semantic_hits", "misses")
        ], f"hour {hour}"
    # The drawn bars are as tall as each hour's hit rate, on one scale.
    heights = bars.evaluate_all(
        "gs => gs.map(g => [...g.querySelectorAll('rect.exact, rect.semantic')]"
        ".reduce((h, r) => h + r.height.baseVal.value, 0))"
    )
    rates = [(e + s) / (e + s + m) for _, e, s, m in shown]
    scale = max(heights) / max(rates)
    assert heights == pytest.approx([scale * rate for rate in rates], abs=1e-3)
    assert min(rates) < 0.5 < max(rates)  # so that equal heights would fail

    # USD: one point per bucket boundary, and each line ends on the seeded total.
    for name, column in (
        ("saved", tally.saved_usd),
        ("spent", tally.spent_usd),
        ("warm", tally.warm_usd),
    ):
        line = page.locator(f"[data-testid='chart-usd'] polyline[data-series='{name}']")
        assert int(line.get_attribute("data-points")) == len(week) + 1
        assert float(line.get_attribute("data-total")) == pytest.approx(tally.usd(column, None))
        label = page.get_by_test_id(f"usd-end-{name}").text_content() or ""
        assert number(label) == pytest.approx(tally.usd(column, None), abs=0.006)

    # Tokens by endpoint: the spend the seed recorded per endpoint tag, warm-up included.
    rows = page.locator("[data-testid='chart-endpoints'] g.token-row")
    spent = dict(rows.evaluate_all("gs => gs.map(g => [g.dataset.name, +g.dataset.spent])"))
    assert spent == {**tally.spent_by_endpoint, "warm-up": 12 * 700, "default": 0}

    # Warm-up is its own line in the sources table.
    warm = page.locator("#sources tr[data-source='warm'] td").all_inner_texts()
    assert warm[0] == "warm (warm-up)" and warm[1] == "12"

    # The namespaces with their catalog versions, and the reported wrong hits, newest first.
    versions = page.locator("#namespaces tbody tr").evaluate_all(
        "rs => rs.map(r => [r.dataset.namespace, r.cells[1].textContent, r.cells[2].textContent])"
    )
    assert versions == [["acme", "1", "4"], ["beta", "1", "2"]]
    asked = page.locator("#wrong-hits tbody tr td:nth-child(2)").all_inner_texts()
    assert asked == list(reversed(tally.wrong))
    top = page.locator("#top-entries tbody tr").evaluate_all("rs => rs.map(r => +r.dataset.hits)")
    assert top == sorted(top, reverse=True) and len(top) == 6
