"""Per-namespace counters of lookups and hits, kept in memory and flushed to the store.

Counting in memory and flushing every few seconds keeps the lookup path free of disk writes
(GPTCache writes to SQLite on every lookup); a crash loses at most one flush interval of
counts, never an entry.
"""

from __future__ import annotations

import threading

import msgspec

from .ledger import UsageLine

COUNTERS = (
    "lookups",
    "exact_hits",
    "semantic_hits",
    "misses",
    "lookup_errors",
    "writes",
    "write_errors",
    "reported_correct",
    "reported_wrong",
)


class NamespaceStats(msgspec.Struct, kw_only=True):
    """Counters of one namespace (or of all of them, where catalog_version is None)."""

    lookups: int
    hits: int
    exact_hits: int
    semantic_hits: int
    misses: int
    hit_rate: float | None
    lookup_errors: int
    writes: int
    write_errors: int
    entries: int
    catalog_version: int | None
    saved_tokens: int
    saved_input_tokens: int
    saved_output_tokens: int
    saved_cache_creation_input_tokens: int
    saved_cache_read_input_tokens: int
    saved_usd: float
    reported_correct: int
    reported_wrong: int
    measured_false_hit_rate: float | None
    """Wrong hits among the hits whose callers reported an outcome (POST /v1/feedback)."""


class Counters:
    """Thread-safe counters keyed by namespace."""

    def __init__(self, initial: dict[str, dict[str, float]] | None = None) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, float]] = {}
        for namespace, values in (initial or {}).items():
            self._data[namespace] = {name: float(values.get(name, 0.0)) for name in COUNTERS}
        self.dirty = False

    def _ns(self, namespace: str) -> dict[str, float]:
        found = self._data.get(namespace)
        if found is None:
            found = self._data[namespace] = dict.fromkeys(COUNTERS, 0.0)
        return found

    def add(self, namespace: str, name: str, amount: float = 1.0) -> None:
        with self._lock:
            self._ns(namespace)[name] += amount
            self.dirty = True

    def record_lookup(self, namespace: str, outcome: str, error: bool = False) -> None:
        """Count one lookup whose outcome is 'exact_hits', 'semantic_hits' or 'misses'."""
        with self._lock:
            values = self._ns(namespace)
            values["lookups"] += 1
            values[outcome] += 1
            if error:
                values["lookup_errors"] += 1
            self.dirty = True

    def snapshot(self, *, for_flush: bool = False) -> dict[str, dict[str, float]]:
        """A copy of every counter; `for_flush` marks them as saved."""
        with self._lock:
            if for_flush:
                self.dirty = False
            return {ns: dict(values) for ns, values in self._data.items()}


def summarise(
    values: dict[str, float], entries: int, catalog_version: int | None, savings: UsageLine
) -> NamespaceStats:
    """Turn raw counters and ledger savings into the public shape (also for the total)."""
    hits = int(values.get("exact_hits", 0) + values.get("semantic_hits", 0))
    lookups = int(values.get("lookups", 0))
    return NamespaceStats(
        lookups=lookups,
        hits=hits,
        exact_hits=int(values.get("exact_hits", 0)),
        semantic_hits=int(values.get("semantic_hits", 0)),
        misses=int(values.get("misses", 0)),
        hit_rate=hits / lookups if lookups else None,
        lookup_errors=int(values.get("lookup_errors", 0)),
        writes=int(values.get("writes", 0)),
        write_errors=int(values.get("write_errors", 0)),
        entries=entries,
        catalog_version=catalog_version,
        saved_tokens=savings.saved_tokens,
        saved_input_tokens=savings.saved_input_tokens,
        saved_output_tokens=savings.saved_output_tokens,
        saved_cache_creation_input_tokens=savings.saved_cache_creation_input_tokens,
        saved_cache_read_input_tokens=savings.saved_cache_read_input_tokens,
        saved_usd=round(savings.saved_usd, 9),
        reported_correct=int(values.get("reported_correct", 0)),
        reported_wrong=int(values.get("reported_wrong", 0)),
        measured_false_hit_rate=_rate(values),
    )


def _rate(values: dict[str, float]) -> float | None:
    wrong, right = values.get("reported_wrong", 0.0), values.get("reported_correct", 0.0)
    return wrong / (wrong + right) if wrong + right else None
