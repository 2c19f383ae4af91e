"""HTTP handlers. Thin: they translate wire types and call the cache."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from cache import InvalidInput, LookupResult, SemanticCache, Unauthorized, Unavailable, Usage
from cache.answering import Answerer
from cache.ledger import UsageReport
from cache.warm import probe, warm_ask
from embeddings import BatchingEmbedder

from .access import access_of
from .observe import note
from .problems import documented
from .schemas import (
    AskRequest,
    AskResponse,
    AttemptOut,
    EntryCreated,
    EntryOut,
    EntryRequest,
    FeedbackOut,
    FeedbackRequest,
    Health,
    LookupHit,
    LookupMiss,
    LookupRequest,
    Namespace,
    PurgeOut,
    StatsOut,
    VersionChanged,
    VersionOut,
    VersionRequest,
    _time,
    documented_body,
    lookup_response,
    usage_out,
)
from .settings import Settings
from .warm import is_warm

EntryId = Annotated[str, Parameter(description="16 hex digits, as returned by POST /v1/entries")]
NamespacePath = Annotated[str, Parameter(pattern=Namespace.__metadata__[0].pattern)]


def _timestamp(moment: datetime) -> float:
    """Unix seconds; a time without a zone is taken as UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _rounded(similarity: float | None) -> float | None:
    return None if similarity is None else round(similarity, 4)


def _not_ready(state: State) -> Unavailable:
    return Unavailable(
        state.get("load_error") or "the cache is still starting (loading the embedding model)"
    )


def provide_cache(state: State) -> SemanticCache:
    cache: SemanticCache | None = state.get("cache")
    if cache is None:
        raise _not_ready(state)
    return cache


def provide_answerer(state: State) -> Answerer:
    answerer: Answerer | None = state.get("answerer")
    if answerer is None:
        raise _not_ready(state)
    return answerer


def provide_settings(state: State) -> Settings:
    settings: Settings = state.settings
    return settings


DEPENDENCIES = {
    "cache": Provide(provide_cache, sync_to_thread=False),
    "answerer": Provide(provide_answerer, sync_to_thread=False),
    "settings": Provide(provide_settings, sync_to_thread=False),
}


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    token: str | None = connection.app.state.settings.admin_token
    if token is None:
        return
    scheme, _sep, given = connection.headers.get("authorization", "").partition(" ")
    # compare_digest on bytes: constant time whatever the length or content of `given`.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <SEMCACHE_ADMIN_TOKEN>'")


class CacheController(Controller):
    path = "/v1"
    tags = ("cache",)

    @post("/lookup", status_code=HTTP_200_OK, responses=documented(400, 401, 403, 413, 503))
    async def lookup(
        self,
        data: JSONBody[LookupRequest],
        cache: NamedDependency[SemanticCache],
        request: Request[Any, Any, Any],
    ) -> LookupHit | LookupMiss:
        """Find a stored answer for a question: exact match first, then semantic."""
        access_of(request).check(data.namespace)
        if is_warm(request.headers):  # decided by the same rule, counted nowhere (cache/warm.py)
            result: LookupResult | None = await anyio.to_thread.run_sync(
                lambda: probe(
                    cache, data.question, data.namespace, data.threshold, context=data.context
                )
            )
        else:
            # A repeat is answered here on the event loop (a hash and a read); only a lookup
            # that needs the model goes to a worker thread, where concurrent ones share its calls.
            result = cache.lookup_exact(
                data.question,
                data.namespace,
                data.threshold,
                endpoint=data.endpoint,
                context=data.context,
            )
        if result is None:
            result = await anyio.to_thread.run_sync(
                lambda: cache.lookup(
                    data.question,
                    data.namespace,
                    data.threshold,
                    endpoint=data.endpoint,
                    context=data.context,
                )
            )
        note(
            request,
            namespace=result.namespace,
            outcome=result.match or "miss",
            similarity=_rounded(result.similarity or result.nearest_similarity),
            lookup_id=result.lookup_id,
            entry_id=result.entry.id if result.entry else None,
            saved_tokens=result.saved_tokens,
        )
        return lookup_response(result)

    @post(
        "/entries",
        status_code=HTTP_201_CREATED,
        sync_to_thread=True,
        responses=documented(400, 401, 403, 413, 503),
    )
    def create_entry(
        self,
        data: JSONBody[EntryRequest],
        cache: NamedDependency[SemanticCache],
        request: Request[Any, Any, Any],
    ) -> EntryCreated:
        """Store an answer (after your own Claude call on a miss) with its token usage."""
        access_of(request).check(data.namespace)
        usage = Usage(
            input_tokens=data.usage.input_tokens,
            output_tokens=data.usage.output_tokens,
            cache_creation_input_tokens=data.usage.cache_creation_input_tokens or 0,
            cache_read_input_tokens=data.usage.cache_read_input_tokens or 0,
        )
        entry, *aliases = cache.put_many(
            [data.question, *data.aliases],
            data.answer,
            namespace=data.namespace,
            model=data.model,
            usage=usage,
            ttl_s=data.ttl_s,
            context=data.context,
        )
        return EntryCreated(
            entry_id=entry.id,
            namespace=entry.namespace,
            catalog_version=entry.catalog_version,
            expires_at=_time(entry.expires_at),
            cost_usd=entry.cost_usd,
            alias_entry_ids=[alias.id for alias in aliases],
        )

    @post(
        "/feedback",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        responses=documented(400, 401, 403, 404, 413, 503),
    )
    def feedback(
        self,
        data: JSONBody[FeedbackRequest],
        cache: NamedDependency[SemanticCache],
        request: Request[Any, Any, Any],
    ) -> FeedbackOut:
        """Report whether a hit was right. A wrong hit is never repeated for that question,
        tightens its entry, and counts in the measured false-hit rate of /v1/stats."""
        namespace = cache.hit_namespace(data.lookup_id)
        if namespace is not None:
            access_of(request).check(namespace)
        result = cache.feedback(data.lookup_id, data.correct)
        floor = result.min_similarity
        return FeedbackOut(
            lookup_id=result.lookup_id,
            entry_id=result.entry_id,
            correct=result.correct,
            min_similarity=None if floor is None else round(floor, 6),
        )

    @get("/entries/{entry_id:str}", sync_to_thread=True, responses=documented(401, 403, 404, 503))
    def get_entry(
        self,
        entry_id: EntryId,
        cache: NamedDependency[SemanticCache],
        request: Request[Any, Any, Any],
    ) -> EntryOut:
        """A servable entry (live, current catalog version) by id."""
        entry = cache.get(entry_id)
        access_of(request).check(entry.namespace)
        return EntryOut.of(entry)

    @delete(
        "/entries/{entry_id:str}",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        responses=documented(401, 403, 404, 503),
    )
    def delete_entry(
        self,
        entry_id: EntryId,
        cache: NamedDependency[SemanticCache],
        request: Request[Any, Any, Any],
    ) -> EntryOut:
        """Delete an entry; returns what was deleted."""
        found = cache.find(entry_id)
        if found is not None:
            access_of(request).check(found.namespace)
        return EntryOut.of(cache.delete(entry_id))

    @post("/ask", status_code=HTTP_200_OK, responses=documented(400, 401, 403, 413, 502, 503, 504))
    async def ask(
        self,
        data: JSONBody[AskRequest],
        answerer: NamedDependency[Answerer],
        request: Request[Any, Any, Any],
    ) -> AskResponse:
        """Answer from the cache, else from the cheapest tier that serves; store the answer."""
        access_of(request).check(data.namespace)
        ask = partial(warm_ask, answerer) if is_warm(request.headers) else answerer.ask
        result = await ask(
            data.question,
            namespace=data.namespace,
            tier=data.tier,
            system=data.system,
            max_tokens=data.max_tokens,
            endpoint=data.endpoint,
            threshold=data.threshold,
        )
        note(
            request,
            namespace=data.namespace,
            outcome=result.match or "model",
            similarity=_rounded(result.similarity),
            lookup_id=result.lookup_id,
            entry_id=result.entry_id,
            model=result.model,
            tier=result.tier,
            input_tokens=result.usage.input_tokens,
            output_tokens=result.usage.output_tokens,
            spent_usd=result.spent_usd,
            saved_usd=result.saved_usd,
        )
        return AskResponse(
            answer=result.answer,
            source=result.source,
            model=result.model,
            tier=result.tier,
            usage=usage_out(result.usage),
            cost_usd=result.cost_usd,
            saved_usd=result.saved_usd,
            entry_id=result.entry_id,
            similarity=None if result.similarity is None else round(result.similarity, 6),
            lookup_id=result.lookup_id,
            match=result.match,
            stored=result.stored,
            reason=result.reason,
            attempts=[AttemptOut(**msgspec.structs.asdict(a)) for a in result.attempts],
            spent_usd=result.spent_usd,
        )

    @get("/usage", sync_to_thread=True, responses=documented(400, 401, 403, 503))
    def usage(
        self,
        request: Request[Any, Any, Any],
        cache: NamedDependency[SemanticCache],
        since: Annotated[
            datetime | None, Parameter(description="Start of the window (ISO 8601).")
        ] = None,
        until: Annotated[
            datetime | None, Parameter(description="End of the window (ISO 8601).")
        ] = None,
    ) -> UsageReport:
        """Upstream calls, hits, tokens, spend and savings per endpoint, per model, in total."""
        access_of(request).check_all()
        return cache.ledger.report(
            since=None if since is None else _timestamp(since),
            until=None if until is None else _timestamp(until),
        )

    @get("/stats", sync_to_thread=True, responses=documented(401, 403, 503))
    def stats(
        self, cache: NamedDependency[SemanticCache], request: Request[Any, Any, Any]
    ) -> StatsOut:
        """Lookups, hits, misses, entries and savings, in total and per namespace."""
        access_of(request).check_all()
        total, rows = cache.stats()
        return StatsOut(**msgspec.structs.asdict(total), namespaces=rows)


class AdminController(Controller):
    path = "/admin"
    tags = ("admin",)
    guards = (admin_guard,)

    @get(
        "/namespaces/{namespace:str}/version",
        sync_to_thread=False,
        responses=documented(400, 401, 503),
    )
    def get_version(
        self, namespace: NamespacePath, cache: NamedDependency[SemanticCache]
    ) -> VersionOut:
        """The current catalog version of a namespace (1 until bumped)."""
        return VersionOut(namespace=namespace, catalog_version=cache.catalog_version(namespace))

    @post(
        "/namespaces/{namespace:str}/version",
        status_code=HTTP_200_OK,
        responses=documented(400, 401, 409, 413, 503),
        # The body is read below, not by Litestar: an empty one is valid (+1).
        operation_class=documented_body(
            VersionRequest,
            required=False,
            description='`{"version": N}` to move to version N, or no body to add one. '
            "Every entry of an older version stops being served at once.",
        ),
    )
    async def set_version(
        self,
        namespace: NamespacePath,
        request: Request[Any, Any, Any],
        cache: NamedDependency[SemanticCache],
    ) -> VersionChanged:
        """Move to a new catalog version (body `{"version": N}`, or none for +1).

        Every entry of an older version stops being served as soon as this returns.
        """
        body = await request.body()
        target: int | None = None
        if body.strip():
            try:
                target = msgspec.json.decode(body, type=VersionRequest).version
            except msgspec.DecodeError as exc:
                raise InvalidInput(
                    f'body must be {{"version": <int >= 1>}} or empty: {exc}'
                ) from exc
        version, invalidated = await anyio.to_thread.run_sync(cache.set_version, namespace, target)
        return VersionChanged(
            namespace=namespace, catalog_version=version, invalidated_entries=invalidated
        )

    @post("/purge", status_code=HTTP_200_OK, sync_to_thread=True, responses=documented(401, 503))
    def purge(self, cache: NamedDependency[SemanticCache]) -> PurgeOut:
        """Reclaim expired and invalidated entries now instead of at the next periodic purge."""
        return PurgeOut(purged_entries=cache.purge())


@get("/healthz", tags=["health"], sync_to_thread=False)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@get("/readyz", tags=["health"], sync_to_thread=False, responses=documented(503))
def readyz(cache: NamedDependency[SemanticCache], state: State) -> Health:
    """The embedding model is loaded and the store is open (503 until then), and the model
    answers: while a model call is late past `embed_deadline_s`, lookups fail open to misses
    and this answers 503."""
    embedder: BatchingEmbedder | None = state.get("embedder")
    late = embedder.stalled_for() if embedder is not None else None
    if late is not None and embedder is not None:  # a hung or starved model
        raise Unavailable(
            f"an embedding call is {late:.1f} s past its deadline of {embedder.deadline_s} s;"
            " lookups are failing open to misses"
        )
    return Health(status="ready", embedder=cache.embedder_name)
