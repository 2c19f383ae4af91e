"""Lookup latency and throughput, in process and over HTTP, at several concurrencies.

Stores ~200 FAQ-style entries with the real embedder, then times three cases: an exact
repeat (same question, other case and punctuation: no embedding), a semantic paraphrase
(one embedding; may hit or miss) and an unrelated question (one embedding, a miss).
Warm-up requests are dropped; hits and misses are counted separately.

    .venv/bin/python benchmarks/bench_lookup.py > benchmarks/results/bench_lookup.txt
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import asyncio
import datetime
import itertools
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import faiss
import httpx
import uvicorn

from benchmarks.workload import (
    NAMESPACE,
    UNRELATED,
    exact_variant,
    free_port,
    paraphrase,
    questions,
)
from cache import SemanticCache
from cache.entry import Usage
from embeddings import BatchingEmbedder, Embedder, load_embedder
from server.app import create_app
from server.settings import Settings


class Sample:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.hits = 0
        self.misses = 0
        self.wall = 0.0


def run_in_process(
    cache: SemanticCache, texts: list[str], concurrency: int, warmup: int, requests: int
) -> Sample:
    sample = Sample()

    def one(i: int) -> tuple[float, bool]:
        start = time.perf_counter()
        result = cache.lookup(texts[i % len(texts)], NAMESPACE)
        return time.perf_counter() - start, result.hit

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(warmup)))
        start = time.perf_counter()
        results = list(pool.map(one, range(warmup, warmup + requests)))
        sample.wall = time.perf_counter() - start
    for latency, hit in results:
        sample.latencies.append(latency)
        sample.hits += hit
        sample.misses += not hit
    return sample


def run_http_sync(base: str, texts: list[str], warmup: int, requests: int) -> Sample:
    sample = Sample()
    with httpx.Client(base_url=base) as client:
        for i in range(warmup + requests):
            if i == warmup:
                wall_start = time.perf_counter()
            start = time.perf_counter()
            response = client.post(
                "/v1/lookup", json={"question": texts[i % len(texts)], "namespace": NAMESPACE}
            )
            latency = time.perf_counter() - start
            response.raise_for_status()
            if i >= warmup:
                sample.latencies.append(latency)
                hit = response.json()["hit"]
                sample.hits += hit
                sample.misses += not hit
        sample.wall = time.perf_counter() - wall_start
    return sample


async def run_http_async(
    base: str, texts: list[str], concurrency: int, warmup: int, requests: int
) -> Sample:
    sample = Sample()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def worker(counter: itertools.count[int], stop: int, record: bool) -> None:
            # N workers issue requests back to back until the shared counter reaches `stop`.
            while (i := next(counter)) < stop:
                start = time.perf_counter()
                response = await client.post(
                    "/v1/lookup",
                    json={"question": texts[i % len(texts)], "namespace": NAMESPACE},
                )
                latency = time.perf_counter() - start
                response.raise_for_status()
                if record:
                    sample.latencies.append(latency)
                    hit = response.json()["hit"]
                    sample.hits += hit
                    sample.misses += not hit

        warm = itertools.count(0)
        await asyncio.gather(*(worker(warm, warmup, False) for _ in range(concurrency)))
        measured = itertools.count(warmup)
        start = time.perf_counter()
        await asyncio.gather(
            *(worker(measured, warmup + requests, True) for _ in range(concurrency))
        )
        sample.wall = time.perf_counter() - start
    return sample


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def row(mode: str, case: str, concurrency: int, sample: Sample) -> str:
    values = sorted(sample.latencies)
    ms = [
        statistics.median(values) * 1e3,
        percentile(values, 0.90) * 1e3,
        percentile(values, 0.99) * 1e3,
        values[-1] * 1e3,
    ]
    throughput = len(values) / sample.wall if sample.wall else 0.0
    return (
        f"{mode:<10} {case:<9} {concurrency:>4} {len(values):>6} {sample.hits:>5} "
        f"{sample.misses:>6} " + " ".join(f"{v:>8.2f}" for v in ms) + f" {throughput:>9.1f}"
    )


HEADER = (
    f"{'Mode':<10} {'Action':<9} {'Conc':>4} {'Count':>6} {'Hits':>5} {'Miss':>6} "
    f"{'Median':>8} {'P90':>8} {'P99':>8} {'Max':>8} {'Req/s':>9}"
)


def serve(settings: Settings, embedder: Embedder) -> Callable[[], None]:
    """Start the real app under uvicorn in a thread; return a function that stops it."""
    app = create_app(settings, embedder=embedder)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{settings.port}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not become ready")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)

    return stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per case")
    parser.add_argument("--warmup", type=int, default=30, help="dropped requests per case")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated")
    parser.add_argument("--http", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    embedder = load_embedder()
    print(f"# bench_lookup  {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"# platform: {platform.platform()}  cpus: {os.cpu_count()}")
    print(
        f"# python {platform.python_version()}  faiss {faiss.__version__}  "
        f"embedder {type(embedder).__name__} (the server's default)"
    )
    print(f"# command: {shlex.join([sys.executable, *sys.argv])}")

    started = time.perf_counter()
    stored = questions()
    cases = {
        "exact": [exact_variant(q) for q in stored],
        "semantic": [paraphrase(q) for q in stored],
        "miss": UNRELATED,
    }
    print(f"# entries: {len(stored)} in namespace {NAMESPACE!r}, e.g. {stored[0]!r}")
    for case, texts in cases.items():
        print(f"# {case}: {len(texts)} distinct questions, e.g. {texts[0]!r}")
    print(
        f"# {args.requests} measured requests per row after {args.warmup} warm-up; "
        "times in ms; Req/s over the measured window"
    )
    print()
    print(HEADER)

    with tempfile.TemporaryDirectory(prefix="semcache-bench-") as data_dir:
        # As the server does (server/app.py): concurrent lookups share model calls.
        cache = SemanticCache(Path(data_dir), BatchingEmbedder(embedder))
        usage = Usage(input_tokens=100, output_tokens=50)
        for n, question in enumerate(stored):
            cache.put(
                question, f"answer {n}", namespace=NAMESPACE, model="claude-haiku-4-5", usage=usage
            )
        if args.in_process:
            for case, texts in cases.items():
                for level in levels:
                    sample = run_in_process(cache, texts, level, args.warmup, args.requests)
                    print(row("in-process", case, level, sample), flush=True)
        cache.close()  # flushes the index, so the server below opens the same entries

        if args.http:
            settings = Settings(data_dir=data_dir, host="127.0.0.1", port=free_port())
            stop = serve(settings, embedder)
            base = f"http://127.0.0.1:{settings.port}"
            try:
                for case, texts in cases.items():
                    for level in levels:
                        if level == 1:
                            sample = run_http_sync(base, texts, args.warmup, args.requests)
                        else:
                            sample = asyncio.run(
                                run_http_async(base, texts, level, args.warmup, args.requests)
                            )
                        print(row("http", case, level, sample), flush=True)
            finally:
                stop()

    print()
    print(f"# total run time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
