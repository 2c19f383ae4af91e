"""`semcache report`: the usage table and the cost-guidance findings on a seeded ledger."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import msgspec
import pytest

from cache import PriceTable, Usage
from cache.ledger import Ledger, LedgerRow
from cache.report import findings, percentile
from server.cli import main

PRICES = PriceTable.load()


def call(endpoint: str, model: str, *, out: int, inp: int = 100, system: int = 20,
         max_tokens: int = 400, ts: float = 1_800_000_000.0) -> LedgerRow:  # fmt: skip
    usage = Usage(input_tokens=inp, output_tokens=out)
    return LedgerRow(
        kind="call", source="ask", namespace="default", endpoint=endpoint, model=model,
        usage=usage, cost_usd=PRICES.cost(model, usage), stop_reason="end_turn",
        max_tokens=max_tokens, system_tokens=system, ts=ts,
    )  # fmt: skip


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "data" / "ledger.sqlite3")
    for i in range(10):
        # "bloated": 800-token system prompts; output well within max_tokens
        ledger.record(call("bloated", "claude-haiku-5-5", out=300, system=800))
        # "loose": max_tokens 4000 for answers of 90-150 tokens
        ledger.record(call("loose", "claude-haiku-5-5", out=90 + 6 * i, max_tokens=4000))
        # "premium": runs on Sonnet
        ledger.record(call("premium", "claude-sonnet-5-5", out=200, max_tokens=400))
    usage = Usage(input_tokens=100, output_tokens=200)
    ledger.record(
        LedgerRow(kind="hit", source="ask", namespace="default", endpoint="premium",
                  model="claude-sonnet-5-5", usage=usage,
                  cost_usd=PRICES.cost("claude-sonnet-5-5", usage), ts=1_800_000_000.0)
    )  # fmt: skip
    ledger.flush()
    return ledger


def test_percentile_nearest_rank() -> None:
    assert percentile([5, 1, 3, 2, 4], 90) == 5
    assert percentile(list(range(1, 101)), 90) == 90
    assert percentile([7], 50) == 7


def test_findings(ledger: Ledger) -> None:
    found = {(f.kind, f.endpoint): f for f in findings(ledger, PRICES)}
    assert set(found) == {
        ("large-system-prompt", "bloated"),
        ("loose-max-tokens", "loose"),
        ("expensive-model", "premium"),
    }
    p90 = 90 + 6 * 8  # the 9th of 10 sorted outputs 90, 96, ..., 144
    assert found[("loose-max-tokens", "loose")].suggested_value == int(-(-p90 * 1.25 // 1))
    sonnet_spend = 10 * (
        PRICES.cost("claude-sonnet-5-5", Usage(input_tokens=100, output_tokens=200)) or 0
    )
    haiku_cost = 10 * (
        PRICES.cost("claude-haiku-5-5", Usage(input_tokens=100, output_tokens=200)) or 0
    )
    premium = found[("expensive-model", "premium")]
    assert premium.suggested_value == pytest.approx(haiku_cost, abs=1e-6)
    assert f"${sonnet_spend:.4f}" in premium.message
    ledger.close()


def test_report_window_excludes_rows(ledger: Ledger) -> None:
    assert findings(ledger, PRICES, since=1_900_000_000.0) == []
    assert ledger.report(until=1_700_000_000.0).totals.calls == 0
    assert ledger.report().totals.calls == 30
    ledger.close()


def test_report_command(ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger.close()
    data_dir = str(tmp_path / "data")
    assert main(["report", "--data-dir", data_dir]) == 0
    text = capsys.readouterr().out
    assert "premium" in text and "loose" in text and "bloated" in text
    assert "set max_tokens to" in text and "Findings:" in text
    assert main(["report", "--data-dir", data_dir, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usage"]["endpoints"]["premium"]["calls"] == 10
    assert report["usage"]["endpoints"]["premium"]["hits"] == 1
    assert len(report["findings"]) == 3
    assert main(["report", "--data-dir", str(tmp_path / "empty")]) == 1
    assert main(["report", "--data-dir", data_dir, "--since", "not a date"]) == 2


def test_every_command_parses_without_settings_file(tmp_path: Path) -> None:
    """Regression: commands without --config must not crash reading it."""
    assert main(["import", str(tmp_path / "none.json"), "--url", "http://127.0.0.1:9"]) == 2
    assert main(["eval", str(tmp_path / "no-data")]) == 2


def test_recording_never_waits_for_a_flush(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    row = LedgerRow(kind="hit", source="lookup", namespace="ns", endpoint="e", model="m",
                    usage=Usage(input_tokens=1, output_tokens=1), cost_usd=None, reason="exact",
                    entry_id="0", ts=1.0)  # fmt: skip
    with ledger._lock:  # a flush's SQLite transaction in progress
        recorder = threading.Thread(target=ledger.record, args=(row,))
        recorder.start()
        recorder.join(timeout=5)
        assert not recorder.is_alive()
    assert ledger.flush() == 1
    ledger.close()


def test_the_all_time_report_from_rollups_equals_the_raw_rows(tmp_path: Path) -> None:
    """Unwindowed reports (every /v1/stats) read the hourly rollup; windowed ones, raw rows."""
    import random

    chance = random.Random(7)
    book = Ledger(tmp_path / "ledger.sqlite3")
    for i in range(600):
        kind = chance.choice(["call", "hit"])
        book.record(
            LedgerRow(
                kind=kind,  # type: ignore[arg-type]
                source=chance.choice(["ask", "proxy", "warm", "lookup"]),
                namespace=chance.choice(["a", "b"]),
                endpoint=chance.choice(["faq", "chat"]),
                model=chance.choice(["claude-haiku-4-5", "claude-sonnet-4-5"]),
                usage=Usage(input_tokens=chance.randrange(500), output_tokens=chance.randrange(90)),
                cost_usd=chance.choice([None, chance.random() / 100]),
                stop_reason="error 529" if kind == "call" and i % 9 == 0 else "end_turn",
                ts=1_700_000_000 + i * 397.0,
            )
        )
        if i % 100 == 0:
            book.flush()
    rolled = book.report()
    raw = book.report(since=0.0)
    book.close()
    assert rolled.totals.calls > 0 and rolled.totals.failed_calls > 0 and rolled.totals.hits > 0

    def plain(line: object) -> dict[str, object]:
        return msgspec.structs.asdict(line)  # type: ignore[arg-type]

    assert plain(rolled.totals) == pytest.approx(plain(raw.totals))
    for group in ("endpoints", "models", "namespaces", "sources"):
        got, want = getattr(rolled, group), getattr(raw, group)
        assert got.keys() == want.keys()
        for name in want:
            assert plain(got[name]) == pytest.approx(plain(want[name])), (group, name)
