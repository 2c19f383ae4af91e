"""HTTP load client for semcache benchmarks; runs in its own process so it never competes with
the server for the server's event loop (only for the machine's cores).

N simulated clients each keep one keep-alive connection and send requests back to back,
cycling through the JSON bodies of a requests file (a JSON list, or one JSON value a line).
Warm-up requests are dropped; per-request latency and, for /v1/lookup, hit or miss are
recorded. Prints one JSON summary on stdout:

    .venv/bin/python benchmarks/loadgen.py --url http://127.0.0.1:8080/v1/lookup \\
        --requests-file bodies.json --concurrency 16 --duration 5 --warmup 1

`--count N` measures exactly N requests instead of a duration; `--warmup` is then a number of
requests rather than seconds. `--rate R` paces the clients to R requests/s in total (open
loop; latency counted from when each request was due). `--method GET` (no body) times
endpoints such as /healthz.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # perf_counter, for --latencies-out
    hits: int = 0
    misses: int = 0
    matches: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    sent: int = 0  # every request, warm-up included: the server's work for its CPU time

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


def load_bodies(path: Path) -> list[bytes]:
    """Request bodies, encoded once up front so the timed loop does no JSON encoding."""
    text = path.read_text(encoding="utf-8").strip()
    values: list[Any] = json.loads(text) if text.startswith("[") else []
    if not values:
        values = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not values:
        raise SystemExit(f"loadgen: no request bodies in {path}")
    return [json.dumps(value, separators=(",", ":")).encode() for value in values]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank, as bench_lookup.py computes it, so the two tables compare."""
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


class Runner:
    def __init__(self, args: argparse.Namespace, bodies: list[bytes]) -> None:
        self.url: str = args.url
        self.method: str = args.method.upper()
        self.bodies = bodies
        self.concurrency: int = args.concurrency
        self.rate: float | None = args.rate
        self.next_body = itertools.count()
        self.tally = Tally()

    async def one(
        self, session: aiohttp.ClientSession, record: bool, due: float | None = None
    ) -> None:
        body = self.bodies[next(self.next_body) % len(self.bodies)]
        self.tally.sent += 1
        # Paced runs time from when the request was due, not when it went out: a stalled
        # server then shows as latency instead of hiding as requests never sent.
        start = time.perf_counter() if due is None else due
        try:
            if self.method == "GET":
                request = session.get(self.url)
            else:
                request = session.request(
                    self.method, self.url, data=body, headers={"content-type": "application/json"}
                )
            async with request as response:
                raw = await response.read()
                latency = time.perf_counter() - start
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            if record:
                self.tally.error(f"{type(exc).__name__}: {exc}")
            return
        if not record:
            return
        if status >= 400:
            self.tally.error(f"HTTP {status}: {raw[:200].decode(errors='replace')}")
            return
        self.tally.latencies.append(latency)
        self.tally.starts.append(start)
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("hit"), bool):
            if payload["hit"]:
                self.tally.hits += 1
                match = str(payload.get("match"))
                self.tally.matches[match] = self.tally.matches.get(match, 0) + 1
            else:
                self.tally.misses += 1

    async def phase_for(self, session: aiohttp.ClientSession, seconds: float, record: bool) -> None:
        """Every client sends until the deadline; none starts a request after it."""
        now = time.perf_counter()
        deadline = now + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                await self.one(session, record)

        async def paced(offset: float, interval: float) -> None:
            due = now + offset
            while due < deadline:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.one(session, record, due)
                due += interval

        if self.rate is None:
            await asyncio.gather(*(client() for _ in range(self.concurrency)))
        else:
            # Open loop: each client sends on its own fixed schedule, clients interleaved.
            interval = self.concurrency / self.rate
            await asyncio.gather(
                *(paced(i * interval / self.concurrency, interval) for i in range(self.concurrency))
            )

    async def phase_count(self, session: aiohttp.ClientSession, count: int, record: bool) -> None:
        """The clients share `count` requests, as bench_lookup.py's async clients do."""
        counter = itertools.count()

        async def client() -> None:
            while next(counter) < count:
                await self.one(session, record)

        await asyncio.gather(*(client() for _ in range(self.concurrency)))

    async def run(self, args: argparse.Namespace) -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=False)
        timeout = aiohttp.ClientTimeout(total=args.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            # Warm-up opens every connection and heats the server's caches; dropped.
            if args.count is None:
                if args.warmup > 0:
                    await self.phase_for(session, args.warmup, record=False)
            elif args.warmup > 0:
                await self.phase_count(session, int(args.warmup), record=False)
            cpu_start = time.process_time()
            start = time.perf_counter()
            if args.count is None:
                await self.phase_for(session, args.duration, record=True)
            else:
                await self.phase_count(session, args.count, record=True)
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
        if args.latencies_out is not None:
            # One line per measured request, in completion order, to find stalls over time.
            with args.latencies_out.open("w", encoding="utf-8") as out:
                out.write("start_s,latency_ms\n")
                for began, latency in zip(self.tally.starts, self.tally.latencies, strict=True):
                    out.write(f"{began - start:.6f},{latency * 1e3:.3f}\n")
        return self.summary(wall, cpu)

    def summary(self, wall: float, cpu: float) -> dict[str, Any]:
        values = sorted(self.tally.latencies)
        ms: dict[str, float | None] = dict.fromkeys(
            ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms")
        )
        if values:
            ms = {
                "p50_ms": statistics.median(values) * 1e3,
                "p90_ms": percentile(values, 0.90) * 1e3,
                "p99_ms": percentile(values, 0.99) * 1e3,
                "max_ms": values[-1] * 1e3,
                "mean_ms": statistics.fmean(values) * 1e3,
            }
        return {
            "url": self.url,
            "method": self.method,
            "concurrency": self.concurrency,
            "count": len(values),
            "errors": self.tally.errors,
            "error_samples": self.tally.error_samples,
            "hits": self.tally.hits,
            "misses": self.tally.misses,
            "matches": self.tally.matches,
            **{k: None if v is None else round(v, 4) for k, v in ms.items()},
            "rate": self.rate,
            "req_s": round(len(values) / wall, 1) if wall > 0 else 0.0,
            "wall_s": round(wall, 3),
            "sent_total": self.tally.sent,
            # The client's own CPU share: near 100% means the client, not the server, limits.
            "client_cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else 0.0,
            "loop": type(asyncio.get_event_loop_policy()).__module__.split(".")[0],
            "pid": os.getpid(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="full URL, e.g. http://host:port/v1/lookup")
    parser.add_argument("--requests-file", type=Path, help="JSON list or JSONL of bodies")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--concurrency", type=int, default=1, help="clients = connections")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--count", type=int, help="measured requests (instead of --duration)")
    parser.add_argument(
        "--rate", type=float, help="open loop: total requests/s spread over the clients"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds (or requests with --count) dropped"
    )
    parser.add_argument(
        "--latencies-out", type=Path, help="CSV of each measured request's start and latency"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument(
        "--no-uvloop", action="store_true", help="use asyncio's own loop even if uvloop exists"
    )
    args = parser.parse_args()
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.rate is not None and (args.rate <= 0 or args.count is not None):
        parser.error("--rate must be positive and goes with --duration, not --count")
    if args.method.upper() != "GET" and args.requests_file is None:
        parser.error("--requests-file is required unless --method GET")
    bodies = load_bodies(args.requests_file) if args.requests_file else [b""]
    if not args.no_uvloop:
        # A cheaper client loop leaves more of a shared machine's CPU to the server.
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    result = asyncio.run(Runner(args, bodies).run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
