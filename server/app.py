"""The application factory. Heavy resources (model, store, index) open in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig

from cache import CacheConfig, PriceTable, SemanticCache
from cache.answering import Answerer
from embeddings import BatchingEmbedder, Embedder, load_embedder

from .access import ClientKeys
from .dashboard import dashboard
from .memory import release_freed_memory
from .metrics import Metrics
from .metrics import metrics as metrics_route
from .observe import RequestObserver
from .problems import EXCEPTION_HANDLERS
from .proxy import Proxy, messages
from .routes import DEPENDENCIES, AdminController, CacheController, healthz, readyz
from .settings import Settings
from .upstream import AnthropicModelClient

log = logging.getLogger(__name__)


def _report_load_failure(app: Litestar, task: asyncio.Task[None]) -> None:
    """A server that cannot load its model or store must not linger half-alive: stop it."""
    if not task.cancelled() and task.exception() is not None:
        app.state.load_error = f"start-up failed: {task.exception()}"
        log.critical("semcache could not start; stopping", exc_info=task.exception())
        os.kill(os.getpid(), signal.SIGTERM)


async def _every(seconds: float, job: Callable[[], object], what: str) -> None:
    """Run `job` in a worker thread every `seconds`; a failure is logged, never fatal."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await anyio.to_thread.run_sync(job)
        except Exception:
            log.exception("periodic %s failed; will retry", what)


def _purge_and_trim(cache: SemanticCache) -> None:
    cache.purge()
    release_freed_memory()


def create_app(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    model_client: AnthropicModelClient | None = None,
    clock: Callable[[], float] | None = None,
) -> Litestar:
    """Build the server. The embedder, the model client and the clock are injectable, so
    tests hand in their own instead of patching globals."""
    prices = PriceTable.load(settings.price_table)  # fail fast on a bad price table
    config = CacheConfig(
        threshold=settings.threshold,
        margin=settings.margin,
        margin_weight=settings.margin_weight,
        piece_weight=settings.piece_weight,
        guards=settings.guards,
        default_ttl_s=settings.default_ttl_s,
        max_question_chars=settings.max_question_chars,
        max_answer_chars=settings.max_answer_chars,
    )

    async def open_resources(app: Litestar, opened: list[Any]) -> None:
        loaded = embedder
        if loaded is None:
            loaded = await anyio.to_thread.run_sync(
                lambda: load_embedder(
                    settings.model_path,
                    backend=settings.embedder_backend,
                    graph_dir=settings.graph_dir or Path(settings.data_dir) / "models",
                    threads=settings.embed_threads,
                    spin=settings.embed_spin,
                )
            )
        # Lookups run in worker threads: concurrent ones share model calls, and give up
        # (a miss) on a model call that hangs.
        model = BatchingEmbedder(loaded, deadline_s=settings.embed_deadline_s)
        opened.append(model)
        app.state.embedder = model
        kwargs = {"clock": clock} if clock is not None else {}
        cache = await anyio.to_thread.run_sync(
            lambda: SemanticCache(
                Path(settings.data_dir), model, prices=prices, config=config, **kwargs
            )
        )
        opened.append(cache)
        client = model_client or AnthropicModelClient(
            api_key=settings.anthropic_api_key,
            base_url=settings.anthropic_base_url,
            timeout_s=settings.upstream_timeout_s,
            max_retries=settings.upstream_max_retries,
        )
        if model_client is None:
            opened.append(client)
        answerer = Answerer(
            cache,
            client,
            tiers=settings.tiers,
            endpoint_tiers=settings.endpoint_tiers,
            cache_truncated=settings.cache_truncated,
            prompt_cache_min_chars=settings.prompt_cache_min_chars,
            history_window=settings.history_window,
        )
        if not client.configured:
            log.warning("no ANTHROPIC_API_KEY: lookups work; misses of /v1/ask answer 503")
        opened.append(asyncio.create_task(_every(settings.flush_interval_s, cache.flush, "flush")))
        opened.append(
            asyncio.create_task(
                _every(settings.purge_interval_s, lambda: _purge_and_trim(cache), "purge")
            )
        )
        app.state.answerer = answerer
        app.state.proxy = Proxy(cache, client, answerer, cache_truncated=settings.cache_truncated)
        app.state.cache = cache  # last: handlers treat a cache on the state as "ready"
        log.info("semcache ready (data in %s)", settings.data_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        opened: list[Any] = []
        loader = asyncio.create_task(open_resources(app, opened))
        if embedder is not None:
            await loader  # an injected embedder is already loaded: be ready at once
        else:
            # Loading the model takes seconds: answer /healthz (and 503 on /readyz) meanwhile.
            loader.add_done_callback(lambda task: _report_load_failure(app, task))
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
            app.state.cache = app.state.answerer = app.state.proxy = None
            for resource in reversed(opened):
                if isinstance(resource, asyncio.Task):
                    resource.cancel()
                    await asyncio.gather(resource, return_exceptions=True)
                elif isinstance(resource, AnthropicModelClient):
                    await resource.aclose()
                elif isinstance(resource, BatchingEmbedder):
                    resource.close()
                else:
                    await anyio.to_thread.run_sync(resource.close)
                    log.info("semcache stopped; index and counters saved")

    metrics = Metrics(
        cache=lambda: app.state.get("cache"), embedder=lambda: app.state.get("embedder")
    )
    app = Litestar(
        route_handlers=[
            CacheController,
            AdminController,
            healthz,
            readyz,
            messages,
            dashboard,
            metrics_route,
        ],
        middleware=[
            DefineMiddleware(RequestObserver, metrics=metrics, log_requests=settings.access_log)
        ],
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        state=State(
            {
                "settings": settings,
                "client_keys": ClientKeys(settings.client_keys),
                "cache": None,
                "answerer": None,
                "proxy": None,
                "load_error": None,
                "embedder": None,
                "metrics": metrics,
            }
        ),
        request_max_body_size=settings.max_body_bytes,
        # Logging is configured once by the process (the CLI), not by the framework.
        logging_config=None,
        openapi_config=OpenAPIConfig(
            title="semcache",
            version="0.1.0",
            description="A semantic response cache for the Claude API.",
            path="/schema",
        ),
    )
    return app
