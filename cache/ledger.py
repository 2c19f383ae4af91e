"""The token ledger: every upstream call and every hit, in SQLite, to prove what is saved.

Rows are buffered in memory and written in one transaction per flush (every few seconds and
before any read), so the lookup path never waits on a disk write. A crash can lose at most
one flush interval of ledger rows; cache entries are stored separately and are never lost.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

import msgspec

from .entry import Usage

Kind = Literal["call", "hit"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,                -- 'call': tokens spent upstream; 'hit': tokens avoided
    source TEXT NOT NULL,              -- 'lookup', 'ask', 'proxy', 'warm', ...
    namespace TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    tier TEXT,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_creation_input_tokens INTEGER NOT NULL,
    cache_read_input_tokens INTEGER NOT NULL,
    cost_usd REAL,
    latency_ms REAL,
    stop_reason TEXT,
    reason TEXT,                       -- why this tier answered (requested, escalated: ...)
    max_tokens INTEGER,
    system_tokens INTEGER,             -- estimated size of the system prompt sent
    entry_id TEXT
);
CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts);
"""


class LedgerRow(msgspec.Struct, kw_only=True):
    kind: Kind
    source: str
    namespace: str
    endpoint: str
    model: str
    usage: Usage
    cost_usd: float | None
    tier: str | None = None
    latency_ms: float | None = None
    stop_reason: str | None = None
    reason: str | None = None
    max_tokens: int | None = None
    system_tokens: int | None = None
    entry_id: str | None = None
    ts: float = msgspec.field(default_factory=time.time)


class UsageLine(msgspec.Struct, kw_only=True):
    """Totals of one group of ledger rows (an endpoint, a model, or everything)."""

    calls: int = 0
    """Upstream calls, failed ones included."""
    failed_calls: int = 0
    """Calls that ended in an error: no tokens, no answer; not in the averages."""
    hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    total_tokens: int = 0
    avg_input_tokens: float | None = None
    avg_output_tokens: float | None = None
    spend_usd: float = 0.0
    saved_tokens: int = 0
    saved_input_tokens: int = 0
    saved_output_tokens: int = 0
    saved_cache_creation_input_tokens: int = 0
    saved_cache_read_input_tokens: int = 0
    saved_usd: float = 0.0


class UsageReport(msgspec.Struct, kw_only=True):
    since: float | None
    until: float | None
    totals: UsageLine
    endpoints: dict[str, UsageLine]
    models: dict[str, UsageLine]
    namespaces: dict[str, UsageLine]


class Ledger:
    """Append-only ledger in one SQLite file; thread-safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Two locks: a hit appends under `_pending_lock` only, so it never waits for the
        # flush's SQLite transaction (~50-100 ms at a few thousand rows), held under `_lock`.
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[LedgerRow] = []

    def record(self, row: LedgerRow) -> None:
        with self._pending_lock:
            self._pending.append(row)

    def flush(self) -> int:
        with self._lock:
            with self._pending_lock:
                rows, self._pending = self._pending, []
            if not rows:
                return 0
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO ledger (ts, kind, source, namespace, endpoint, tier, model,"
                    " input_tokens, output_tokens, cache_creation_input_tokens,"
                    " cache_read_input_tokens, cost_usd, latency_ms, stop_reason, reason,"
                    " max_tokens, system_tokens, entry_id)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            r.ts, r.kind, r.source, r.namespace, r.endpoint, r.tier, r.model,
                            r.usage.input_tokens, r.usage.output_tokens,
                            r.usage.cache_creation_input_tokens, r.usage.cache_read_input_tokens,
                            r.cost_usd, r.latency_ms, r.stop_reason, r.reason, r.max_tokens,
                            r.system_tokens, r.entry_id,
                        )
                        for r in rows
                    ],
                )  # fmt: skip
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                with self._pending_lock:
                    self._pending = rows + self._pending  # keep them for the next flush
                raise
            return len(rows)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run a read-only query after flushing, so results include every recorded row."""
        self.flush()
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    def report(self, since: float | None = None, until: float | None = None) -> UsageReport:
        where, params = _window(since, until)
        groups: dict[str, dict[str, UsageLine]] = {"endpoint": {}, "model": {}, "namespace": {}}
        totals = UsageLine()
        rows = self.query(
            "SELECT endpoint, model, namespace,"
            " CASE WHEN kind = 'call' AND stop_reason LIKE 'error%' THEN 'failed' ELSE kind END,"
            " COUNT(*), SUM(input_tokens),"
            " SUM(output_tokens), SUM(cache_creation_input_tokens),"
            " SUM(cache_read_input_tokens), SUM(COALESCE(cost_usd, 0))"
            f" FROM ledger {where} GROUP BY 1, 2, 3, 4",
            params,
        )
        for endpoint, model, namespace, kind, n, inp, out, cw, cr, usd in rows:
            lines = [
                totals,
                groups["endpoint"].setdefault(str(endpoint), UsageLine()),
                groups["model"].setdefault(str(model), UsageLine()),
                groups["namespace"].setdefault(str(namespace), UsageLine()),
            ]
            counts = (int(n), int(inp), int(out), int(cw), int(cr))  # type: ignore[call-overload]
            for line in lines:
                _accumulate(line, str(kind), *counts, float(usd))  # type: ignore[arg-type]
        for line in [totals, *(v for g in groups.values() for v in g.values())]:
            _finish(line)
        return UsageReport(
            since=since,
            until=until,
            totals=totals,
            endpoints=groups["endpoint"],
            models=groups["model"],
            namespaces=groups["namespace"],
        )


def window_clauses(since: float | None, until: float | None) -> tuple[list[str], list[object]]:
    """SQL conditions (and their parameters) selecting rows from `since` until `until`."""
    clauses: list[str] = []
    params: list[object] = []
    if since is not None:
        clauses.append("ts >= ?")
        params.append(since)
    if until is not None:
        clauses.append("ts < ?")
        params.append(until)
    return clauses, params


def _window(since: float | None, until: float | None) -> tuple[str, tuple[object, ...]]:
    clauses, params = window_clauses(since, until)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _accumulate(
    line: UsageLine, kind: str, n: int, inp: int, out: int, cw: int, cr: int, usd: float
) -> None:
    tokens = inp + out + cw + cr
    if kind == "failed":
        line.calls += n
        line.failed_calls += n
    elif kind == "call":
        line.calls += n
        line.input_tokens += inp
        line.output_tokens += out
        line.cache_creation_input_tokens += cw
        line.cache_read_input_tokens += cr
        line.total_tokens += tokens
        line.spend_usd += usd
    else:
        line.hits += n
        line.saved_tokens += tokens
        line.saved_input_tokens += inp
        line.saved_output_tokens += out
        line.saved_cache_creation_input_tokens += cw
        line.saved_cache_read_input_tokens += cr
        line.saved_usd += usd


def _finish(line: UsageLine) -> None:
    answered = line.calls - line.failed_calls
    if answered:
        line.avg_input_tokens = round(line.input_tokens / answered, 1)
        line.avg_output_tokens = round(line.output_tokens / answered, 1)
    line.spend_usd = round(line.spend_usd, 9)
    line.saved_usd = round(line.saved_usd, 9)
