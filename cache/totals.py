"""Running totals of the ledger since it began, kept in memory for metrics scrapes.

A scrape every few seconds must not scan a ledger of millions of rows: each reads only the
rows added since the one before (by id; the ledger is append-only) and adds them up here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import NamedTuple


class TotalKey(NamedTuple):
    kind: str
    """'call' (tokens spent upstream) or 'hit' (tokens avoided)."""
    model: str
    tier: str | None
    source: str


@dataclass
class LedgerTotal:
    rows: int = 0
    failed: int = 0
    """Calls that ended in an error (no tokens)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    usd: float = 0.0

    def add(self, other: LedgerTotal) -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def tokens(self) -> dict[str, int]:
        """Tokens by the type the price table bills them as."""
        return {
            "input": self.input_tokens,
            "output": self.output_tokens,
            "cache_creation": self.cache_creation_input_tokens,
            "cache_read": self.cache_read_input_tokens,
        }


# The rows with ids in (?, ?], grouped by the key; columns are those of LedgerTotal after it.
TOTALS_SQL = (
    "SELECT kind, model, tier, source, COUNT(*),"
    " SUM(CASE WHEN kind = 'call' AND stop_reason LIKE 'error%' THEN 1 ELSE 0 END),"
    " SUM(input_tokens), SUM(output_tokens), SUM(cache_creation_input_tokens),"
    " SUM(cache_read_input_tokens), SUM(COALESCE(cost_usd, 0))"
    " FROM ledger WHERE id > ? AND id <= ? GROUP BY 1, 2, 3, 4"
)


class RunningTotals:
    """Thread-safe; `snapshot` copies, so a scrape never sees a half-added row."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[TotalKey, LedgerTotal] = {}

    def add_rows(self, rows: list[tuple[object, ...]]) -> None:
        """Add the rows of a TOTALS_SQL query."""
        for kind, model, tier, source, *values in rows:
            key = TotalKey(str(kind), str(model), None if tier is None else str(tier), str(source))
            n, failed, inp, out, cw, cr, usd = values
            self.add(
                key,
                LedgerTotal(
                    rows=int(n),  # type: ignore[call-overload]
                    failed=int(failed),  # type: ignore[call-overload]
                    input_tokens=int(inp),  # type: ignore[call-overload]
                    output_tokens=int(out),  # type: ignore[call-overload]
                    cache_creation_input_tokens=int(cw),  # type: ignore[call-overload]
                    cache_read_input_tokens=int(cr),  # type: ignore[call-overload]
                    usd=float(usd),  # type: ignore[arg-type]
                ),
            )

    def add(self, key: TotalKey, amount: LedgerTotal) -> None:
        with self._lock:
            found = self._totals.get(key)
            if found is None:
                self._totals[key] = amount
            else:
                found.add(amount)

    def snapshot(self) -> dict[TotalKey, LedgerTotal]:
        with self._lock:
            return {key: LedgerTotal(**vars(total)) for key, total in self._totals.items()}
