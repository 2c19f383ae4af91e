"""Prometheus metrics: request latency measured here, everything else read at scrape time.

Cache counters (lookups, hits, writes, errors), entries and catalog versions already live in
memory in the cache, and the ledger keeps running totals of upstream calls, tokens and
dollars; a scrape reads them instead of keeping a second set of counters that could drift.
Each app has its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from typing import Any

from litestar import Response, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cache import SemanticCache, Unauthorized
from cache.totals import LedgerTotal, TotalKey
from embeddings import BatchingEmbedder

from .settings import Settings

TEXT_FORMAT = "text/plain; version=0.0.4"
# Exact hits take well under a millisecond and semantic ones a few; misses through the model
# take seconds: the buckets span both.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0,
)  # fmt: skip


class Metrics:
    def __init__(
        self,
        cache: Callable[[], SemanticCache | None],
        embedder: Callable[[], BatchingEmbedder | None],
    ) -> None:
        self.registry = CollectorRegistry()
        self._latency = Histogram(
            "semcache_request_duration_seconds",
            "Time from request to last byte of response, by route and cache outcome "
            "(exact, semantic, miss, model, none).",
            ["route", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._responses = Counter(
            "semcache_http_responses",
            "HTTP responses by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.registry.register(_CacheCollector(cache, embedder))

    def observe_request(self, route: str, status: int, outcome: str, seconds: float) -> None:
        self._latency.labels(route, outcome).observe(seconds)
        self._responses.labels(route, str(status)).inc()


class _CacheCollector(Collector):
    def __init__(
        self,
        cache: Callable[[], SemanticCache | None],
        embedder: Callable[[], BatchingEmbedder | None],
    ) -> None:
        self._cache = cache
        self._embedder = embedder

    def collect(self) -> Iterator[Metric]:
        cache = self._cache()
        embedder = self._embedder()
        ready = GaugeMetricFamily("semcache_ready", "1 once the model and the store are open.")
        ready.add_metric([], 1.0 if cache is not None else 0.0)
        yield ready
        if embedder is not None:
            calls = CounterMetricFamily(
                "semcache_embedding_calls", "Model calls of the embedder (batched)."
            )
            calls.add_metric([], embedder.calls)
            yield calls
        if cache is None:
            return
        totals = cache.ledger.totals()
        yield from _counters(cache, embedder, totals)
        yield from _ledger(totals)


def _counters(
    cache: SemanticCache,
    embedder: BatchingEmbedder | None,
    totals: dict[TotalKey, LedgerTotal],
) -> Iterator[Metric]:
    raw = cache.counters.snapshot()
    lookups = CounterMetricFamily("semcache_lookups", "Lookups.", labels=["namespace"])
    hits = CounterMetricFamily("semcache_hits", "Hits.", labels=["namespace", "kind"])
    misses = CounterMetricFamily("semcache_misses", "Misses.", labels=["namespace"])
    writes = CounterMetricFamily("semcache_writes", "Entries stored.", labels=["namespace"])
    feedback = CounterMetricFamily(
        "semcache_feedback", "Hits reported right or wrong.", labels=["namespace", "verdict"]
    )
    errors = CounterMetricFamily(
        "semcache_errors",
        "Failures the cache absorbed: lookups that failed open to a miss, writes that stored "
        "nothing, embedding calls that missed their deadline, upstream calls that failed.",
        labels=["kind"],
    )
    absorbed = {"lookup": 0.0, "write": 0.0}
    for namespace, values in sorted(raw.items()):
        lookups.add_metric([namespace], values.get("lookups", 0.0))
        hits.add_metric([namespace, "exact"], values.get("exact_hits", 0.0))
        hits.add_metric([namespace, "semantic"], values.get("semantic_hits", 0.0))
        misses.add_metric([namespace], values.get("misses", 0.0))
        writes.add_metric([namespace], values.get("writes", 0.0))
        feedback.add_metric([namespace, "correct"], values.get("reported_correct", 0.0))
        feedback.add_metric([namespace, "wrong"], values.get("reported_wrong", 0.0))
        absorbed["lookup"] += values.get("lookup_errors", 0.0)
        absorbed["write"] += values.get("write_errors", 0.0)
    errors.add_metric(["lookup"], absorbed["lookup"])
    errors.add_metric(["write"], absorbed["write"])
    errors.add_metric(["embedding_timeout"], embedder.timeouts if embedder else 0.0)
    errors.add_metric(["upstream"], sum(t.failed for t in totals.values()))
    yield from (lookups, hits, misses, writes, feedback, errors)

    entries = GaugeMetricFamily(
        "semcache_entries", "Live entries of the current catalog version.", labels=["namespace"]
    )
    versions = GaugeMetricFamily(
        "semcache_catalog_version", "Current catalog version.", labels=["namespace"]
    )
    for namespace, (version, live) in cache.namespaces().items():
        entries.add_metric([namespace], live)
        versions.add_metric([namespace], version)
    yield entries
    yield versions


def _ledger(totals: dict[TotalKey, LedgerTotal]) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        "semcache_upstream_calls",
        "Calls to the model, by model, tier, source (ask, proxy, warm, ...) and result.",
        labels=["model", "tier", "source", "result"],
    )
    tokens = CounterMetricFamily(
        "semcache_upstream_tokens",
        "Tokens billed by the model, by model, tier, source and token type.",
        labels=["model", "tier", "source", "type"],
    )
    spent = CounterMetricFamily(
        "semcache_spent_usd", "USD spent on model calls.", labels=["model", "tier", "source"]
    )
    saved_tokens = CounterMetricFamily(
        "semcache_saved_tokens", "Tokens not billed thanks to hits.", labels=["model", "type"]
    )
    saved = CounterMetricFamily(
        "semcache_saved_usd", "USD not spent thanks to hits.", labels=["model"]
    )
    saved_by_model: dict[str, LedgerTotal] = {}
    for key, total in sorted(totals.items(), key=lambda item: str(item[0])):
        if key.kind == "hit":
            saved_by_model.setdefault(key.model, LedgerTotal()).add(total)
            continue
        labels = [key.model, key.tier or "", key.source]
        calls.add_metric([*labels, "ok"], total.rows - total.failed)
        calls.add_metric([*labels, "failed"], total.failed)
        for kind, count in total.tokens().items():
            tokens.add_metric([*labels, kind], count)
        spent.add_metric(labels, total.usd)
    for model, total in saved_by_model.items():
        for kind, count in total.tokens().items():
            saved_tokens.add_metric([model, kind], count)
        saved.add_metric([model], total.usd)
    yield from (calls, tokens, spent, saved_tokens, saved)


def metrics_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """With an admin token set, a scraper sends it, or the read-only SEMCACHE_METRICS_TOKEN."""
    settings: Settings = connection.app.state.settings
    tokens = [t for t in (settings.admin_token, settings.metrics_token) if t is not None]
    if not tokens:
        return
    scheme, _sep, given = connection.headers.get("authorization", "").partition(" ")
    supplied = given.strip().encode()
    # Every token is compared, in constant time, whichever matches.
    matches = [hmac.compare_digest(supplied, token.encode()) for token in tokens]
    if scheme.lower() != "bearer" or not any(matches):
        raise Unauthorized(
            "/metrics needs 'Authorization: Bearer <SEMCACHE_METRICS_TOKEN or admin token>'"
        )


@get("/metrics", guards=[metrics_guard], include_in_schema=False, sync_to_thread=True)
def metrics(state: State) -> Response[bytes]:
    """The Prometheus text format."""
    found: Metrics = state.metrics
    # The classic text format every Prometheus version scrapes (Litestar adds the charset).
    return Response(generate_latest(found.registry), media_type=TEXT_FORMAT)
