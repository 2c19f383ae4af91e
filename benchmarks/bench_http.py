"""Lookups over HTTP against the real server, with the load client in a process of its own.

Starts `semcache serve` (uvicorn) in a subprocess on a free loopback port with a temporary
data folder, stores ~200 FAQ entries through POST /v1/entries, then runs
benchmarks/loadgen.py in a separate process per row: exact repeats (same question, other case
and punctuation: no embedding) at 1, 8, 16 and 32 clients, semantic paraphrases (one
embedding) at 1, 8 and 32, unrelated questions (one embedding, a miss) at 1 and 32, and
GET /healthz at 1 and 16 as the floor of the HTTP stack. bench_lookup.py runs its client in
the server's own process, which at 32 clients takes the server's CPU; this one does not.
Also times one bare embedding in this process, for the semantic target.

    nice -n 5 .venv/bin/python benchmarks/bench_http.py > benchmarks/results/bench_http.txt
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import datetime
import json
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import httpx
import psutil

import embeddings
from benchmarks.workload import (
    NAMESPACE,
    UNRELATED,
    exact_variant,
    free_port,
    paraphrase,
    questions,
    version_of,
)
from embeddings import Embedder, SentenceTransformerEmbedder
from server.settings import Settings

REPO = Path(__file__).resolve().parents[1]
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
SEMCACHE = Path(sys.executable).parent / "semcache"
# Rows of the table: (action, path, clients, paced rate or None for back to back). Each row
# is one loadgen process. The paced row asks the exact target's question directly: is the
# median within 1.5 ms while 16 clients send 1,500 lookups/s? Back to back, 16 clients at
# 1.5 ms would need ~10,000/s (Little's law), so the closed-loop rows cannot answer it.
PLAN: list[tuple[str, str, int, float | None]] = [
    ("exact", "/v1/lookup", 1, None),
    ("exact", "/v1/lookup", 8, None),
    ("exact", "/v1/lookup", 16, None),
    ("exact", "/v1/lookup", 32, None),
    ("exact", "/v1/lookup", 16, 1500.0),
    ("semantic", "/v1/lookup", 1, None),
    ("semantic", "/v1/lookup", 8, None),
    ("semantic", "/v1/lookup", 32, None),
    ("miss", "/v1/lookup", 1, None),
    ("miss", "/v1/lookup", 32, None),
    ("healthz", "/healthz", 1, None),
    ("healthz", "/healthz", 16, None),
]
EMBEDDING_ACTIONS = ("semantic", "miss")
VERSIONS = [
    "litestar", "uvicorn", "uvloop", "httptools", "msgspec", "diskcache", "aiohttp",
    "onnxruntime", "torch", "sentence-transformers", "faiss-cpu",
]  # fmt: skip

HEADER = (
    f"{'Mode':<10} {'Action':<9} {'Conc':>4} {'Count':>6} {'Hits':>5} {'Miss':>6} "
    f"{'Median':>8} {'P90':>8} {'P99':>8} {'Max':>8} {'Req/s':>9} {'SrvCPU':>7} {'Cli%':>5}"
)


def server_default_embedder(graph_dir: Path, overrides: dict[str, str]) -> Embedder:
    """The embedder `semcache serve` loads with these settings (server/app.py,
    open_resources), so the bare timing is of the model the server really runs."""
    settings = Settings.load(environ=overrides) if hasattr(Settings, "load") else Settings()
    factory = getattr(embeddings, "load_embedder", None)
    if factory is None:  # a checkout from before the backend choice: torch only
        return SentenceTransformerEmbedder(settings.model_path)
    spin = {"spin": settings.embed_spin} if hasattr(settings, "embed_spin") else {}
    embedder: Embedder = factory(
        settings.model_path,
        backend=getattr(settings, "embedder_backend", "torch"),
        graph_dir=graph_dir,
        threads=getattr(settings, "embed_threads", 0),
        **spin,
    )
    return embedder


def bare_embedding_ms(embedder: Embedder, texts: list[str], samples: int) -> list[float]:
    """Latencies of embedding one short question at a time, after a short warm-up."""
    for text in texts[:10]:
        embedder.embed([text])
    times = []
    for i in range(samples):
        start = time.perf_counter()
        embedder.embed([texts[i % len(texts)]])
        times.append((time.perf_counter() - start) * 1e3)
    return times


class Server:
    """`semcache serve` in a subprocess; its output goes to a file (a pipe nobody reads
    would block it once full)."""

    def __init__(
        self, data_dir: Path, port: int, log_level: str, settings: dict[str, str] | None = None
    ) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = data_dir.parent / "server.log"
        # Inherited SEMCACHE_* settings (a config file, a threshold) would change the results.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHE_")}
        env["HF_HUB_OFFLINE"] = "1"
        env.update(settings or {})
        self.command = [
            str(SEMCACHE), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir), "--log-level", log_level,
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout_s: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.base}/readyz", timeout=5)
                if response.status_code == 200:
                    ready: dict[str, Any] = response.json()
                    return ready
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def memory_mb(self) -> tuple[float, float | None]:
        """Resident memory now and its peak (VmHWM, Linux only), in MiB."""
        rss = self.ps.memory_info().rss / 2**20
        peak = None
        status = Path(f"/proc/{self.proc.pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
        return rss, peak

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> int | None:
        """SIGTERM lets uvicorn drain and the lifespan flush the cache; kill if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def seed(base: str, stored: list[str]) -> float:
    """Store the entries through the API, as an application would; returns seconds taken."""
    start = time.perf_counter()
    with httpx.Client(base_url=base, timeout=60) as client:
        for n, question in enumerate(stored):
            response = client.post(
                "/v1/entries",
                json={
                    "question": question,
                    "answer": f"answer {n}",
                    "model": "claude-haiku-4-5",
                    "usage": {"input_tokens": 100, "output_tokens": 50},
                    "namespace": NAMESPACE,
                },
            )
            response.raise_for_status()
        # The exact path must really be exact before it is timed.
        check = client.post(
            "/v1/lookup", json={"question": exact_variant(stored[0]), "namespace": NAMESPACE}
        ).json()
        if not (check.get("hit") and check.get("match") == "exact"):
            raise RuntimeError(f"exact variant did not hit exactly: {check}")
    return time.perf_counter() - start


def run_loadgen(
    server: Server,
    path: str,
    bodies: Path | None,
    clients: int,
    duration: float,
    warmup: float,
    rate: float | None = None,
) -> tuple[dict[str, Any], float]:
    """One row in a fresh client process; returns its summary and the server CPU ms/request."""
    command = [
        sys.executable, str(LOADGEN), "--url", server.base + path,
        "--concurrency", str(clients), "--duration", str(duration), "--warmup", str(warmup),
    ]  # fmt: skip
    command += ["--requests-file", str(bodies)] if bodies else ["--method", "GET"]
    command += ["--rate", str(rate)] if rate else []
    cpu_before = server.cpu_s()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    cpu = server.cpu_s() - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}):\n{done.stderr}")
    summary: dict[str, Any] = json.loads(done.stdout)
    # Per request the server handled, warm-up included: the CPU time covers the whole run.
    per_request = cpu * 1e3 / summary["sent_total"] if summary["sent_total"] else 0.0
    return summary, per_request


def row(action: str, summary: dict[str, Any], server_cpu_ms: float) -> str:
    times = [summary[k] or 0.0 for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]
    hits, misses = summary["hits"], summary["misses"]
    if action == "healthz":
        hits = misses = 0
    mode = "http" if summary.get("rate") is None else f"{summary['rate']:.0f}/s"
    return (
        f"{mode:<10} {action:<9} {summary['concurrency']:>4} {summary['count']:>6} "
        f"{hits:>5} {misses:>6} "
        + " ".join(f"{v:>8.2f}" for v in times)
        + f" {summary['req_s']:>9.1f} {server_cpu_ms:>7.3f} {summary['client_cpu_pct']:>5.0f}"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured s, exact rows")
    parser.add_argument(
        "--embed-duration", type=float, default=8.0, help="measured s, semantic and miss rows"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="dropped seconds per row")
    parser.add_argument("--bare-samples", type=int, default=200, help="bare embeddings timed")
    parser.add_argument(
        "--log-level", default="info", help="server log level (info, the default, logs access)"
    )
    parser.add_argument(
        "--only", help="comma-separated actions to run (exact,semantic,miss,healthz)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SEMCACHE_X=V",
        help="a setting for the server (repeatable), e.g. SEMCACHE_EMBED_THREADS=1",
    )
    args = parser.parse_args()
    actions = set(args.only.split(",")) if args.only else None

    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"# bench_http  {now}")
    print(
        f"# platform: {platform.platform()}  cpus: {os.cpu_count()}  "
        f"load avg: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  nice: {os.nice(0)}"
    )
    print(
        f"# python {platform.python_version()}  "
        + "  ".join(f"{name} {version_of(name)}" for name in VERSIONS)
    )
    print(f"# command: {shlex.join([sys.executable, *sys.argv])}")

    started = time.perf_counter()
    stored = questions()
    cases = {
        "exact": [exact_variant(q) for q in stored],
        "semantic": [paraphrase(q) for q in stored],
        "miss": UNRELATED,
    }

    with tempfile.TemporaryDirectory(prefix="semcache-bench-http-") as tmp:
        # The server keeps exported graphs in <data_dir>/models: exporting here first means
        # the server reuses the file instead of exporting it again.
        settings = dict(item.split("=", 1) for item in args.set)
        embedder = server_default_embedder(Path(tmp) / "data" / "models", settings)
        bare_kind = f"{embedder.name} via {type(embedder).__name__}"
        bare_p50: float | None = None

        files: dict[str, Path] = {}
        for case, texts in cases.items():
            files[case] = Path(tmp) / f"{case}.json"
            files[case].write_text(
                json.dumps([{"question": t, "namespace": NAMESPACE} for t in texts])
            )
        server = Server(Path(tmp) / "data", free_port(), args.log_level, settings)
        results: dict[tuple[str, int], dict[str, Any]] = {}
        lines: list[str] = []
        try:
            ready = server.wait_ready()
            seed_s = seed(server.base, stored)
            idle_rss, _ = server.memory_mb()
            shown = " ".join(f"{k}={v}" for k, v in settings.items())
            print(f"# server: {shown} {shlex.join(server.command)}  (pid {server.proc.pid})")
            print(f"# embedder: server {ready.get('embedder')}; bare timing {bare_kind}")
            if "backend unavailable" in server.log_tail(200):
                print("# WARNING: the server fell back to another embedding backend (its log)")
            print(
                f"# entries: {len(stored)} in namespace {NAMESPACE!r} stored via POST /v1/entries "
                f"in {seed_s:.1f} s, e.g. {stored[0]!r}"
            )
            for case, texts in cases.items():
                print(f"# {case}: {len(texts)} distinct questions, e.g. {texts[0]!r}")
            print(
                f"# each row: a new loadgen.py process, one keep-alive connection per client, "
                f"{args.warmup:g} s warm-up dropped, then {args.duration:g} s (exact, healthz) or "
                f"{args.embed_duration:g} s (semantic, miss) measured"
            )
            print(
                "# times in ms; Req/s over the measured window; Mode N/s = clients paced to N "
                "requests/s in total\n#   (open loop, latency from when each was due); SrvCPU = "
                "server CPU ms per request (user+sys, warm-up included);\n#   Cli% = load client "
                "CPU in the window"
            )
            print()
            print(HEADER, flush=True)
            for action, path, clients, rate in PLAN:
                if actions is not None and action not in actions:
                    continue
                duration = args.embed_duration if action in EMBEDDING_ACTIONS else args.duration
                if action in EMBEDDING_ACTIONS and bare_p50 is None:
                    # Timed here, next to the rows it is compared with, while the server idles:
                    # on a shared machine the model's speed drifts within minutes.
                    bare = sorted(bare_embedding_ms(embedder, cases["semantic"], args.bare_samples))
                    bare_p50 = statistics.median(bare)
                    print(
                        f"# one bare embedding ({args.bare_samples} single questions, timed in "
                        f"the bench process now): p50 {bare_p50:.2f} ms, "
                        f"p90 {bare[int(0.9 * len(bare)) - 1]:.2f} ms",
                        flush=True,
                    )
                summary, cpu_ms = run_loadgen(
                    server, path, files.get(action), clients, duration, args.warmup, rate
                )
                results[action if rate is None else f"{action}@{rate:.0f}", clients] = summary
                print(row(action, summary, cpu_ms), flush=True)
                if summary["errors"]:
                    lines.append(
                        f"# {action} x{clients}: {summary['errors']} errors, e.g. "
                        f"{summary['error_samples'][:2]}"
                    )
            rss, peak = server.memory_mb()
        finally:
            code = server.stop()
            clean = "semcache stopped" in server.log_tail(50)

    print()
    lines.extend(targets(results, bare_p50))
    for line in lines:
        print(line)
    peak_text = f", peak {peak:.0f} MiB" if peak is not None else ""
    print(
        f"# server resident memory: {idle_rss:.0f} MiB after seeding, {rss:.0f} MiB at the "
        f"end{peak_text}"
    )
    # uvicorn re-raises the signal after its graceful shutdown, hence -15 when all went well.
    print(
        f"# server stopped by SIGTERM: exit code {code}, lifespan shutdown "
        f"{'completed (index and counters saved)' if clean else 'NOT logged: see its log'}"
    )
    print(
        f"# total run time {time.perf_counter() - started:.1f} s; load avg at the end: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


def targets(results: dict[tuple[str, int], dict[str, Any]], bare_p50: float | None) -> list[str]:
    """The project's HTTP targets, checked against this run."""
    out = []
    one, sixteen = results.get(("exact", 1)), results.get(("exact", 16))
    paced = results.get(("exact@1500", 16))
    if one and sixteen:
        out.append(
            f"# target exact, >= 1500 req/s with 16 clients: {sixteen['req_s']:.0f} back to back "
            f"({verdict(sixteen['req_s'] >= 1500)}); p50 <= 1.5 ms: {one['p50_ms']:.2f} ms "
            f"with 1 client ({verdict(one['p50_ms'] <= 1.5)})"
        )
    if paced:
        ok = paced["p50_ms"] <= 1.5 and paced["req_s"] >= 0.98 * 1500 and not paced["errors"]
        out.append(
            f"# target exact, both at once (16 clients paced to 1500 req/s): p50 "
            f"{paced['p50_ms']:.2f} ms at {paced['req_s']:.0f} req/s ({verdict(ok)})"
        )
    sem1, sem32 = results.get(("semantic", 1)), results.get(("semantic", 32))
    if sem1 and bare_p50 is not None:
        limit = 1.25 * bare_p50 + 1.0
        out.append(
            f"# target semantic, 1 client: p50 <= 1.25 x {bare_p50:.2f} + 1 = {limit:.2f} ms: "
            f"{sem1['p50_ms']:.2f} ms ({verdict(sem1['p50_ms'] <= limit)})"
        )
    if sem1 and sem32:
        ratio = sem32["req_s"] / sem1["req_s"] if sem1["req_s"] else 0.0
        out.append(
            f"# target semantic, 32 clients >= 4 x 1 client: {sem32['req_s']:.1f} / "
            f"{sem1['req_s']:.1f} req/s = {ratio:.2f} x ({verdict(ratio >= 4)})"
        )
    return out


if __name__ == "__main__":
    main()
