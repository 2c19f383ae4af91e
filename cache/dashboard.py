"""What the dashboard shows: one namespace (or all) over a recent window, from the rollups.

Every query here reads the ledger's rollups (per minute for windows of a day or less, per hour
for longer ones), its hit counts per entry (`entry_hits`) and its kept wrong hits, never the
raw `ledger` table: a refresh reads a few rows per minute (or hour) of the window, however
many rows the ledger holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from .errors import InvalidInput
from .ledger import ROLLUP_UNITS
from .normalize import validate_namespace
from .semantic import SemanticCache

WARM = "warm"
"""The ledger source of cache warm-up: spend that is not live traffic."""
TOP_ENTRIES = 10
LATEST_WRONG = 20
_TOKENS = (
    "SUM(input_tokens + output_tokens + cache_creation_input_tokens + cache_read_input_tokens)"
)
_TOP_CANDIDATES = 200
"""Most-hit entries read to find TOP_ENTRIES that are still served (a version bump or a
purge leaves the old ids in `entry_hits`)."""


@dataclass(frozen=True)
class Window:
    seconds: int
    bucket_s: int
    """Sized so that a chart has at most ~200 points."""


WINDOWS = {
    "1h": Window(3_600, 60),
    "24h": Window(86_400, 600),
    "7d": Window(7 * 86_400, 3_600),
    "30d": Window(30 * 86_400, 6 * 3_600),
}


class Series(msgspec.Struct, kw_only=True):
    """One value per bucket of the window, oldest first (columns, not rows: half the bytes)."""

    start: list[int]
    """Start of each bucket, Unix seconds."""
    exact_hits: list[int]
    semantic_hits: list[int]
    misses: list[int]
    lookup_errors: list[int]
    hit_rate: list[float | None]
    """Hits per lookup; None for a bucket without lookups."""
    spent_usd: list[float]
    """Upstream spend of live traffic (every source but warm-up)."""
    warm_usd: list[float]
    saved_usd: list[float]


class Totals(msgspec.Struct, kw_only=True):
    lookups: int
    exact_hits: int
    semantic_hits: int
    misses: int
    lookup_errors: int
    hit_rate: float | None
    calls: int
    """Upstream calls of live traffic, failed ones included."""
    failed_calls: int
    hits: int
    """Hits in the ledger (each saved a call)."""
    spent_usd: float
    spent_tokens: int
    warm_calls: int
    warm_usd: float
    warm_tokens: int
    saved_usd: float
    saved_tokens: int


class TokenLine(msgspec.Struct, kw_only=True):
    """Tokens and USD of one endpoint, model or source in the window."""

    name: str
    calls: int
    hits: int
    spent_tokens: int
    saved_tokens: int
    spent_usd: float
    saved_usd: float


class TopEntry(msgspec.Struct, kw_only=True):
    entry_id: str
    namespace: str
    question: str
    hits: int
    """Hits since the ledger began (not only in the window)."""
    last_hit: float


class ReportedWrong(msgspec.Struct, kw_only=True):
    ts: float
    namespace: str
    lookup_id: str
    entry_id: str
    question: str
    """The question that got the wrong answer, normalised (after its context, if any)."""
    entry_question: str | None
    """The question of the entry that was served; None once the entry is gone."""
    similarity: float
    match: str


class NamespaceRow(msgspec.Struct, kw_only=True):
    name: str
    catalog_version: int
    entries: int
    lookups: int
    hits: int
    hit_rate: float | None
    reported_wrong: int


class Dashboard(msgspec.Struct, kw_only=True):
    now: float
    window: str
    bucket_s: int
    namespace: str | None
    """None: every namespace together."""
    namespaces: list[NamespaceRow]
    totals: Totals
    series: Series
    endpoints: list[TokenLine]
    models: list[TokenLine]
    sources: list[TokenLine]
    top_entries: list[TopEntry]
    wrong_hits: list[ReportedWrong]


def _n(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _usd(value: object) -> float:
    return round(_float(value), 9)


def build(cache: SemanticCache, namespace: str | None = None, window: str = "24h") -> Dashboard:
    """The dashboard of `namespace` (None: all) over the `window` up to the cache's clock."""
    if namespace is not None:
        namespace = validate_namespace(namespace)
    shape = WINDOWS.get(window)
    if shape is None:
        raise InvalidInput(f"window must be one of {', '.join(WINDOWS)}")
    now = cache.now()
    step = shape.bucket_s
    last = int(now // step) * step
    count = shape.seconds // step
    first = last - (count - 1) * step
    starts = [first + i * step for i in range(count)]
    # The coarsest rollup whose unit divides the bucket: the fewest rows to read.
    unit = max(
        (u for u, seconds in ROLLUP_UNITS.items() if step % seconds == 0),
        key=lambda u: ROLLUP_UNITS[u],
    )
    where = f"{unit} >= ? AND {unit} < ?"
    params: tuple[object, ...] = (first, last + step)
    if namespace is not None:
        where += " AND namespace = ?"
        params += (namespace,)
    ledger = cache.ledger

    series = Series(
        start=starts,
        exact_hits=[0] * count,
        semantic_hits=[0] * count,
        misses=[0] * count,
        lookup_errors=[0] * count,
        hit_rate=[None] * count,
        spent_usd=[0.0] * count,
        warm_usd=[0.0] * count,
        saved_usd=[0.0] * count,
    )
    for bucket, exact, semantic, misses, errors in ledger.query(
        f"SELECT ({unit} - ?) / ?, SUM(exact_hits), SUM(semantic_hits), SUM(misses),"
        f" SUM(errors) FROM lookup_{unit} WHERE {where} GROUP BY 1",
        (first, step, *params),
    ):
        i = _n(bucket)
        series.exact_hits[i], series.semantic_hits[i] = _n(exact), _n(semantic)
        series.misses[i], series.lookup_errors[i] = _n(misses), _n(errors)
        lookups = _n(exact) + _n(semantic) + _n(misses)
        series.hit_rate[i] = (_n(exact) + _n(semantic)) / lookups if lookups else None

    money = ledger.query(
        f"SELECT ({unit} - ?) / ?, kind, source = '{WARM}', SUM(n), {_TOKENS}, SUM(usd)"
        f" FROM ledger_{unit} WHERE {where} GROUP BY 1, 2, 3",
        (first, step, *params),
    )
    totals = Totals(
        lookups=sum(series.exact_hits) + sum(series.semantic_hits) + sum(series.misses),
        exact_hits=sum(series.exact_hits),
        semantic_hits=sum(series.semantic_hits),
        misses=sum(series.misses),
        lookup_errors=sum(series.lookup_errors),
        hit_rate=None,
        calls=0,
        failed_calls=0,
        hits=0,
        spent_usd=0.0,
        spent_tokens=0,
        warm_calls=0,
        warm_usd=0.0,
        warm_tokens=0,
        saved_usd=0.0,
        saved_tokens=0,
    )
    if totals.lookups:
        totals.hit_rate = (totals.exact_hits + totals.semantic_hits) / totals.lookups
    for bucket, kind, warm, n, used, usd in money:
        i, dollars = _n(bucket), _float(usd)
        if kind == "hit":
            series.saved_usd[i] += dollars
            totals.hits += _n(n)
            totals.saved_usd += dollars
            totals.saved_tokens += _n(used)
        elif warm:
            series.warm_usd[i] += dollars
            totals.warm_calls += _n(n)
            totals.warm_usd += dollars
            totals.warm_tokens += _n(used)
        else:
            series.spent_usd[i] += dollars
            totals.calls += _n(n)
            totals.failed_calls += _n(n) if kind == "failed" else 0
            totals.spent_usd += dollars
            totals.spent_tokens += _n(used)
    for column in (series.spent_usd, series.warm_usd, series.saved_usd):
        column[:] = [round(value, 9) for value in column]
    totals.spent_usd, totals.warm_usd = _usd(totals.spent_usd), _usd(totals.warm_usd)
    totals.saved_usd = _usd(totals.saved_usd)

    # One read for the three breakdowns: by endpoint, by model and by source.
    groups: tuple[dict[str, TokenLine], ...] = ({}, {}, {})
    for endpoint, model, source, kind, n, used, usd in ledger.query(
        f"SELECT endpoint, model, source, kind, SUM(n), {_TOKENS}, SUM(usd)"
        f" FROM ledger_{unit} WHERE {where} GROUP BY 1, 2, 3, 4",
        params,
    ):
        for group, name in zip(groups, (endpoint, model, source), strict=True):
            line = group.get(str(name))
            if line is None:
                line = group[str(name)] = TokenLine(
                    name=str(name), calls=0, hits=0, spent_tokens=0, saved_tokens=0,
                    spent_usd=0.0, saved_usd=0.0,
                )  # fmt: skip
            if kind == "hit":
                line.hits += _n(n)
                line.saved_tokens += _n(used)
                line.saved_usd += _float(usd)
            else:
                line.calls += _n(n)
                line.spent_tokens += _n(used)
                line.spent_usd += _float(usd)
    endpoints, models, sources = (_ranked(group) for group in groups)

    return Dashboard(
        now=now,
        window=window,
        bucket_s=step,
        namespace=namespace,
        namespaces=_namespaces(cache),
        totals=totals,
        series=series,
        endpoints=endpoints,
        models=models,
        sources=sources,
        top_entries=_top_entries(cache, namespace, now),
        wrong_hits=_wrong_hits(cache, namespace),
    )


def _ranked(lines: dict[str, TokenLine]) -> list[TokenLine]:
    for line in lines.values():
        line.spent_usd, line.saved_usd = _usd(line.spent_usd), _usd(line.saved_usd)
    return sorted(lines.values(), key=lambda x: (-(x.spent_tokens + x.saved_tokens), x.name))


def _namespaces(cache: SemanticCache) -> list[NamespaceRow]:
    counters = cache.counters.snapshot()
    rows = []
    for name, (version, entries) in cache.namespaces().items():
        values = counters.get(name, {})
        lookups = int(values.get("lookups", 0))
        hits = int(values.get("exact_hits", 0) + values.get("semantic_hits", 0))
        rows.append(
            NamespaceRow(
                name=name,
                catalog_version=version,
                entries=entries,
                lookups=lookups,
                hits=hits,
                hit_rate=hits / lookups if lookups else None,
                reported_wrong=int(values.get("reported_wrong", 0)),
            )
        )
    return rows


def _top_entries(cache: SemanticCache, namespace: str | None, now: float) -> list[TopEntry]:
    where, params = ("WHERE namespace = ?", (namespace,)) if namespace else ("", ())
    found: list[TopEntry] = []
    for entry_id, hits, last_ts in cache.ledger.query(
        f"SELECT entry_id, hits, last_ts FROM entry_hits {where}"
        " ORDER BY hits DESC, last_ts DESC LIMIT ?",
        (*params, _TOP_CANDIDATES),
    ):
        entry = cache.find(str(entry_id))
        # Only entries still served: an old version's entries can no longer be hit.
        if (
            entry is None
            or not entry.is_live(now)
            or entry.catalog_version != cache.version(entry.namespace)
        ):
            continue
        found.append(
            TopEntry(
                entry_id=entry.id,
                namespace=entry.namespace,
                question=entry.question,
                hits=_n(hits),
                last_hit=_float(last_ts),
            )
        )
        if len(found) == TOP_ENTRIES:
            break
    return found


def _wrong_hits(cache: SemanticCache, namespace: str | None) -> list[ReportedWrong]:
    where, params = ("WHERE namespace = ?", (namespace,)) if namespace else ("", ())
    found = []
    for ts, ns, lookup_id, entry_id, question, similarity, match in cache.ledger.query(
        "SELECT ts, namespace, lookup_id, entry_id, question, similarity, match"
        f" FROM wrong_hits {where} ORDER BY id DESC LIMIT ?",
        (*params, LATEST_WRONG),
    ):
        entry = cache.find(str(entry_id))
        found.append(
            ReportedWrong(
                ts=_float(ts),
                namespace=str(ns),
                lookup_id=str(lookup_id),
                entry_id=str(entry_id),
                question=str(question),
                entry_question=entry.question if entry is not None else None,
                similarity=round(_float(similarity), 6),
                match=str(match),
            )
        )
    return found
