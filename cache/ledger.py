"""The token ledger: every upstream call and every hit, in SQLite, to prove what is saved.

Rows are buffered in memory and written in one transaction per flush (every few seconds and
before any read), so the lookup path never waits on a disk write. A crash can lose at most
one flush interval of ledger rows; cache entries are stored separately and are never lost.

The same transaction keeps rollups per minute and per hour (`ledger_minute`, `ledger_hour`,
and the lookups' `lookup_minute`, `lookup_hour`), hit counts per entry (`entry_hits`) and the
latest reported wrong hits (`wrong_hits`), so the dashboard reads aggregated rows, however
many raw rows the ledger holds.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

import msgspec

from .entry import Usage
from .totals import TOTALS_SQL, LedgerTotal, RunningTotals, TotalKey

log = logging.getLogger(__name__)

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

-- Hits per entry (from hit rows) and the latest reported wrong hits, kept by every flush.
CREATE TABLE IF NOT EXISTS entry_hits (
    namespace TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    hits INTEGER NOT NULL,
    last_ts REAL NOT NULL,
    PRIMARY KEY (namespace, entry_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entry_hits_rank ON entry_hits (namespace, hits);
CREATE TABLE IF NOT EXISTS wrong_hits (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    namespace TEXT NOT NULL,
    lookup_id TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    question TEXT NOT NULL,            -- the question as matched (normalised, after its context)
    similarity REAL NOT NULL,
    match TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS wrong_hits_ns ON wrong_hits (namespace, id);
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
ROLLUP_UNITS = {"minute": 60, "hour": 3_600}
"""The rollups' granularities: a chart of a week reads hours, not ten thousand minutes."""
# Per unit: the raw rows summed per unit of time (from the rows each flush adds, see _roll_up),
# and the lookups counted per unit of time (from record_lookup).
_ROLLUP_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_{unit} (
    {unit} INTEGER NOT NULL,           -- Unix seconds at the start of the {unit} (UTC)
    namespace TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,                -- 'call', 'failed' (a call that ended in an error), 'hit'
    n INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_creation_input_tokens INTEGER NOT NULL,
    cache_read_input_tokens INTEGER NOT NULL,
    usd REAL NOT NULL,
    PRIMARY KEY ({unit}, namespace, endpoint, model, source, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lookup_{unit} (
    {unit} INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    exact_hits INTEGER NOT NULL,
    semantic_hits INTEGER NOT NULL,
    misses INTEGER NOT NULL,
    errors INTEGER NOT NULL,           -- misses that were a failure (fail open), not a miss
    PRIMARY KEY ({unit}, namespace)
) WITHOUT ROWID;
"""
_SCHEMA += "".join(_ROLLUP_SCHEMA.format(unit=unit) for unit in ROLLUP_UNITS)

# The raw rows with ids up to this marker are in the rollups. Advanced in the transaction that
# rolls them up, so rows are never counted twice, and rows written by a build without rollups
# (an older data dir) are caught up the next time the ledger is opened.
_MARKER = "rolled_up_to"
_KIND = "CASE WHEN kind = 'call' AND stop_reason LIKE 'error%' THEN 'failed' ELSE kind END"
_ROLL_ROWS = """
INSERT INTO ledger_{unit} ({unit}, namespace, endpoint, model, source, kind, n, input_tokens,
    output_tokens, cache_creation_input_tokens, cache_read_input_tokens, usd)
SELECT CAST(ts / {seconds} AS INTEGER) * {seconds}, namespace, endpoint, model, source,
    {kind}, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_creation_input_tokens),
    SUM(cache_read_input_tokens), SUM(COALESCE(cost_usd, 0))
FROM ledger WHERE id > ? AND id <= ? GROUP BY 1, 2, 3, 4, 5, 6
ON CONFLICT ({unit}, namespace, endpoint, model, source, kind) DO UPDATE SET
    n = n + excluded.n,
    input_tokens = input_tokens + excluded.input_tokens,
    output_tokens = output_tokens + excluded.output_tokens,
    cache_creation_input_tokens = cache_creation_input_tokens
        + excluded.cache_creation_input_tokens,
    cache_read_input_tokens = cache_read_input_tokens + excluded.cache_read_input_tokens,
    usd = usd + excluded.usd
"""
_ROLL_ENTRIES = """
INSERT INTO entry_hits (namespace, entry_id, hits, last_ts)
SELECT namespace, entry_id, COUNT(*), MAX(ts) FROM ledger
WHERE id > ? AND id <= ? AND kind = 'hit' AND entry_id IS NOT NULL GROUP BY 1, 2
ON CONFLICT (namespace, entry_id) DO UPDATE SET
    hits = hits + excluded.hits, last_ts = MAX(last_ts, excluded.last_ts)
"""
_ADD_LOOKUPS = """
INSERT INTO lookup_{unit} ({unit}, namespace, exact_hits, semantic_hits, misses, errors)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT ({unit}, namespace) DO UPDATE SET
    exact_hits = exact_hits + excluded.exact_hits,
    semantic_hits = semantic_hits + excluded.semantic_hits,
    misses = misses + excluded.misses,
    errors = errors + excluded.errors
"""
WRONG_HITS_KEPT = 200
"""Reported wrong hits kept per namespace, newest first; older ones are dropped at flush."""
_TRIM_WRONG = """
DELETE FROM wrong_hits WHERE id IN (
    SELECT id FROM (
        SELECT id, ROW_NUMBER() OVER (PARTITION BY namespace ORDER BY id DESC) AS newer
        FROM wrong_hits
    ) WHERE newer > ?
)
"""
_OUTCOMES = {"exact_hits": 0, "semantic_hits": 1, "misses": 2}
"""Column of each lookup outcome (Counters.record_lookup's names) in a pending count."""


def minute_of(ts: float) -> int:
    """The start of the minute holding `ts`, as the rollups key it."""
    return int(ts // 60) * 60


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
    sources: dict[str, UsageLine] = msgspec.field(default_factory=dict)
    """Per source of the rows: 'warm' is cache warm-up, apart from live traffic."""


class WrongHit(msgspec.Struct, kw_only=True, frozen=True):
    """A hit that its caller reported wrong (POST /v1/feedback)."""

    namespace: str
    lookup_id: str
    entry_id: str
    question: str
    similarity: float
    match: str
    ts: float


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
        self._lookups: dict[tuple[int, str], list[int]] = {}
        self._wrongs: list[WrongHit] = []
        self._catch_up()
        self._totals = RunningTotals()
        self._totals_upto = 0  # ledger ids up to this one are in `_totals`

    def _catch_up(self) -> None:
        """Roll up raw rows no flush has rolled up: all of them in a ledger written before
        rollups existed (once; seconds for a million rows), else none."""
        (done,) = self._db.execute(
            "SELECT COALESCE((SELECT value FROM ledger_meta WHERE key = ?), 0)", (_MARKER,)
        ).fetchone()
        (last,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM ledger").fetchone()
        if last <= done:
            return
        log.info("rolling up %d ledger rows for the dashboard", last - done)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._roll_up()
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                # Not fatal: every flush rolls up whatever lies past the marker.
                log.warning("ledger rollup failed; the next flush retries", exc_info=True)

    def _roll_up(self) -> None:
        """Add the raw rows after the marker to the rollups; inside the caller's transaction."""
        (done,) = self._db.execute(
            "SELECT COALESCE((SELECT value FROM ledger_meta WHERE key = ?), 0)", (_MARKER,)
        ).fetchone()
        (last,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM ledger").fetchone()
        if last <= done:
            return
        for unit, seconds in ROLLUP_UNITS.items():
            sql = _ROLL_ROWS.format(unit=unit, seconds=seconds, kind=_KIND)
            self._db.execute(sql, (done, last))
        self._db.execute(_ROLL_ENTRIES, (done, last))
        self._db.execute(
            "INSERT INTO ledger_meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_MARKER, last),
        )

    def record(self, row: LedgerRow) -> None:
        with self._pending_lock:
            self._pending.append(row)

    def totals(self) -> dict[TotalKey, LedgerTotal]:
        """Every row ever recorded, summed by kind, model, tier and source.

        Only rows added since the last call are read (the ledger is append-only), so a
        metrics scrape costs what was recorded meanwhile, rows written by another process
        (`semcache warm --batch`) included."""
        try:
            self.flush()
        except sqlite3.Error:
            log.warning("ledger flush failed; totals lack the latest rows", exc_info=True)
        with self._lock:
            (last,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM ledger").fetchone()
            if last > self._totals_upto:
                self._totals.add_rows(
                    self._db.execute(TOTALS_SQL, (self._totals_upto, last)).fetchall()
                )
                self._totals_upto = last
        return self._totals.snapshot()

    def record_lookup(
        self, namespace: str, outcome: str, error: bool = False, ts: float | None = None
    ) -> None:
        """Count one lookup ('exact_hits', 'semantic_hits' or 'misses') in its minute."""
        key = (minute_of(time.time() if ts is None else ts), namespace)
        with self._pending_lock:
            counts = self._lookups.get(key)
            if counts is None:
                counts = self._lookups[key] = [0, 0, 0, 0]
            counts[_OUTCOMES[outcome]] += 1
            if error:
                counts[3] += 1

    def record_wrong(self, wrong: WrongHit) -> None:
        with self._pending_lock:
            self._wrongs.append(wrong)

    def flush(self) -> int:
        """Write what was recorded, rollups included, in one transaction; the raw rows
        written. On failure nothing is written and everything stays pending."""
        with self._lock:
            with self._pending_lock:
                rows, self._pending = self._pending, []
                lookups, self._lookups = self._lookups, {}
                wrongs, self._wrongs = self._wrongs, []
            if not rows and not lookups and not wrongs:
                return 0
            try:
                # IMMEDIATE: `semcache report` may open the same file; taking the write lock
                # first means the rollup marker read below cannot go stale before the write.
                self._db.execute("BEGIN IMMEDIATE")
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
                self._roll_up()
                for unit, seconds in ROLLUP_UNITS.items():
                    per_unit: dict[tuple[int, str], list[int]] = {}
                    for (minute, ns), counts in lookups.items():
                        summed = per_unit.setdefault((minute // seconds * seconds, ns), [0] * 4)
                        for column, count in enumerate(counts):
                            summed[column] += count
                    self._db.executemany(
                        _ADD_LOOKUPS.format(unit=unit),
                        [(start, ns, *counts) for (start, ns), counts in per_unit.items()],
                    )
                if wrongs:
                    self._db.executemany(
                        "INSERT INTO wrong_hits (ts, namespace, lookup_id, entry_id, question,"
                        " similarity, match) VALUES (?,?,?,?,?,?,?)",
                        [
                            (w.ts, w.namespace, w.lookup_id, w.entry_id, w.question,
                             w.similarity, w.match)
                            for w in wrongs
                        ],
                    )  # fmt: skip
                    self._db.execute(_TRIM_WRONG, (WRONG_HITS_KEPT,))
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                with self._pending_lock:  # keep everything for the next flush
                    self._pending = rows + self._pending
                    for key, counts in lookups.items():
                        kept = self._lookups.setdefault(key, [0, 0, 0, 0])
                        for column, count in enumerate(counts):
                            kept[column] += count
                    self._wrongs = wrongs + self._wrongs
                raise
            return len(rows)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run a read-only query after flushing, so results include every recorded row.

        A flush that fails (a full disk) keeps its rows for later and does not fail the read:
        the answer then lacks the rows recorded since the last flush that worked."""
        try:
            self.flush()
        except sqlite3.Error:
            log.warning("ledger flush failed; reading without the latest rows", exc_info=True)
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    def report(self, since: float | None = None, until: float | None = None) -> UsageReport:
        where, params = _window(since, until)
        groups: dict[str, dict[str, UsageLine]] = {
            "endpoint": {},
            "model": {},
            "namespace": {},
            "source": {},
        }
        totals = UsageLine()
        sums = (
            "SUM(input_tokens), SUM(output_tokens), SUM(cache_creation_input_tokens),"
            " SUM(cache_read_input_tokens)"
        )
        if since is None and until is None:
            # All time (/v1/stats asks this on every call): the hourly rollup has the same
            # groups in a few rows per hour, where the raw table has one per call and hit.
            sql = (
                f"SELECT endpoint, model, namespace, source, kind, SUM(n), {sums}, SUM(usd)"
                " FROM ledger_hour GROUP BY 1, 2, 3, 4, 5"
            )
        else:
            sql = (
                f"SELECT endpoint, model, namespace, source, {_KIND}, COUNT(*), {sums},"
                f" SUM(COALESCE(cost_usd, 0)) FROM ledger {where} GROUP BY 1, 2, 3, 4, 5"
            )
        rows = self.query(sql, params)
        for endpoint, model, namespace, source, kind, n, inp, out, cw, cr, usd in rows:
            lines = [
                totals,
                groups["endpoint"].setdefault(str(endpoint), UsageLine()),
                groups["model"].setdefault(str(model), UsageLine()),
                groups["namespace"].setdefault(str(namespace), UsageLine()),
                groups["source"].setdefault(str(source), UsageLine()),
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
            sources=groups["source"],
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
