"""How the cache behaves at 10k, 100k and 1M entries: inserts, search, memory, disk, restart.

Three parts, each size in a fresh subprocess so that resident memory is that case's alone:

- index: `GroupIndex` alone. Insert throughput, search p50/p99 (k=16, one thread), recall
  against exact search, resident memory, file size, save and load times.
- cache: the whole `SemanticCache` (diskcache store + index) filled with `put_batch` and
  flushed every 5 s as the server does: insert throughput, flushes (IVF training + save),
  resident memory when filled and at its peak (beyond the process's start), restart to
  ready (store scan + index file load, not a rebuild), lookup p50/p99, resident memory, and
  TTL expiry and a version bump checked on the full-size namespace.
- e2e: 10k real questions embedded by the server's default embedder; one question's
  embedding and semantic lookups end to end, in process.

Vectors for the index and cache parts are synthetic but shaped like real ones: each is the
all-MiniLM-L6-v2 vector of a question from ../shared/data (BANKING77, CLINC150, QQP), plus
Gaussian noise, so neighbourhoods are clustered as in a real catalog. Queries are other noisy
copies. A synthetic text -> vector table stands in for the model in the cache part, so its
timings exclude embedding (the e2e part measures that).

    .venv/bin/python benchmarks/bench_scale.py > benchmarks/results/bench_scale.txt
    .venv/bin/python benchmarks/bench_scale.py --sizes 10000,100000   # quicker
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import datetime
import json
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import faiss
import numpy as np
import psutil

from cache import IndexPolicy, NewEntry, SemanticCache, Usage
from cache.index import GroupIndex
from cache.quality.loaders import load_banking77, load_clinc150, load_qqp
from cache.quality.memo import MemoEmbedder, default_memo_dir
from embeddings import Matrix, load_embedder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NOISE = 0.35  # norm of the noise added to a unit vector: copies sit at cosine ~0.94
QUERIES = 300
WARMUP = 30
USAGE = Usage(input_tokens=120, output_tokens=80)
MODEL = "claude-haiku-5-5"
CHUNK = 10_000
FLUSH_EVERY_S = 5.0
"""The server's default `SEMCACHE_FLUSH_INTERVAL_S`."""


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """The most this process has held resident so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def timed(run: Callable[[int], object], count: int) -> list[float]:
    """Milliseconds of each call after WARMUP unmeasured ones."""
    for i in range(WARMUP):
        run(i)
    times = []
    for i in range(count):
        start = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - start) * 1000)
    return times


def real_texts(data: Path) -> list[str]:
    texts = [u.text for u in load_banking77(data).items]
    clinc = load_clinc150(data)
    texts += [u.text for u in clinc.train + clinc.lookups + clinc.out_of_scope]
    for pair in load_qqp(data).pairs:
        texts += [pair.a, pair.b]
    return sorted(set(texts))


def base_vectors(data: Path) -> Matrix:
    """Real all-MiniLM-L6-v2 vectors of the dev questions (memoised like `semcache eval`)."""
    memo = MemoEmbedder(load_embedder(), default_memo_dir())
    texts = real_texts(data)
    memo.prime(texts, label="embedding dev questions")
    return memo.embed(texts)


def noisy_copies(base: Matrix, count: int, seed: int) -> tuple[Matrix, np.ndarray]:
    """`count` noisy copies of random base vectors, and which base each one copies."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(base), count)
    noise = rng.standard_normal((count, base.shape[1]), dtype=np.float32)
    out = base[which] + noise * np.float32(NOISE / np.sqrt(base.shape[1]))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32), which


def entry_chunk(base: Matrix, number: int) -> tuple[Matrix, np.ndarray]:
    """Entries CHUNK * number onwards: regenerated alike in every process, never all held."""
    return noisy_copies(base, CHUNK, seed=1_000 + number)


def query_vectors(base: Matrix) -> Matrix:
    return noisy_copies(base, QUERIES + WARMUP, seed=2)[0]


def load_base(path: Path) -> Matrix:
    return np.load(path).astype(np.float32)


# -- part: index -----------------------------------------------------------------------------


def part_index(size: int, base_path: Path, workdir: Path) -> dict[str, Any]:
    faiss.omp_set_num_threads(1)  # as the server runs it: one thread per search
    base = load_base(base_path)
    queries = query_vectors(base)
    exact = faiss.IndexFlatIP(base.shape[1])  # ground truth for recall
    before = rss_mb()
    group = GroupIndex(base.shape[1])
    added = 0.0
    for number in range(-(-size // CHUNK)):
        vectors, which = entry_chunk(base, number)
        count = min(CHUNK, size - number * CHUNK)
        ids = list(range(number * CHUNK, number * CHUNK + count))
        start = time.perf_counter()
        group.add(ids, vectors[:count], [None] * count, which[:count].tolist())
        added += time.perf_counter() - start
        exact.add(vectors[:count])
    start = time.perf_counter()
    group.upgrade()
    upgraded = time.perf_counter() - start
    times = timed(lambda i: group.search(queries[i % len(queries)], now=0.0), QUERIES)
    found = [group.search(q, now=0.0) for q in queries[WARMUP:]]
    faiss.omp_set_num_threads(2)
    _, truth = exact.search(queries[WARMUP:], 16)
    pairs = list(zip(found, truth, strict=True))
    recall1 = float(np.mean([f[0][0] == t[0] for f, t in pairs]))
    recall16 = float(np.mean([len({i for i, _ in f} & set(t.tolist())) / 16 for f, t in pairs]))
    path = workdir / "group.faiss"
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    group.save(path)
    saved = time.perf_counter() - start
    start = time.perf_counter()
    GroupIndex.load(path, base.shape[1])
    loaded = time.perf_counter() - start
    return {
        "index": group.kind,
        "insert_per_s": size / added,
        "upgrade_to_ivf_s": upgraded,
        "search_p50_ms": statistics.median(times),
        "search_p99_ms": percentile(times, 99),
        "recall_at_1": recall1,
        "recall_at_16": recall16,
        "file_mb": path.stat().st_size / 2**20,
        "save_s": saved,
        "load_s": loaded,
        # includes the exact ground-truth index (4 bytes x 384 per vector) held beside it
        "rss_growth_mb": rss_mb() - before,
    }


# -- part: cache (fill, then open in a fresh process) ------------------------------------------


def text(kind: str, number: int) -> str:
    """The question text of entry or query `number`, spelled in letters ("e" 12 -> "e bc"):
    digits would (rightly) trip the number guard between any two texts."""
    return f"{kind} " + "".join(chr(ord("a") + int(d)) for d in str(number))


def number_of(text: str) -> int:
    return int("".join(str(ord(c) - ord("a")) for c in text.split()[1]))


class TableEmbedder:
    """Stands in for the model: text("e", i) is entry i's vector, text("q", i) query i's."""

    name = "bench-table"

    def __init__(self, base: Matrix) -> None:
        self._base, self._queries = base, query_vectors(base)
        self._chunk: tuple[int, Matrix] | None = None

    @property
    def dim(self) -> int:
        return int(self._base.shape[1])

    def _entry(self, i: int) -> np.ndarray:
        number = i // CHUNK
        if self._chunk is None or self._chunk[0] != number:
            self._chunk = (number, entry_chunk(self._base, number)[0])
        return self._chunk[1][i % CHUNK]

    def embed(self, texts: Sequence[str]) -> Matrix:
        rows = [
            self._entry(number_of(t)) if t.startswith("e") else self._queries[number_of(t)]
            for t in texts
        ]
        return np.vstack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def expiring_ids(size: int) -> list[int]:
    return list(range(0, size, max(1, size // 1000)))  # 1,000 entries with a one-hour TTL


def part_fill(size: int, base_path: Path, workdir: Path) -> dict[str, Any]:
    """Fill a store with `size` entries through put_batch, flushing as the server does every
    `FLUSH_EVERY_S` (a group past the IVF size is upgraded there), then a last flush."""
    base = load_base(base_path)
    before = rss_mb()
    cache = SemanticCache(workdir, TableEmbedder(base))
    expiring = set(expiring_ids(size))
    inserted = flushing = 0.0
    last_flush = time.perf_counter()
    for number in range(-(-size // CHUNK)):
        start = time.perf_counter()
        _, which = entry_chunk(base, number)
        first = number * CHUNK
        cache.put_batch(
            [
                NewEntry(
                    question=text("e", i),
                    # copies of one base question share its answer, as paraphrases do
                    answer=f"answer to question {which[i - first]}",
                    model=MODEL,
                    usage=USAGE,
                    namespace="big",
                    ttl_s=3600.0 if i in expiring else None,
                )
                for i in range(first, min(size, first + CHUNK))
            ]
        )
        inserted += time.perf_counter() - start
        if time.perf_counter() - last_flush >= FLUSH_EVERY_S:
            start = time.perf_counter()
            cache.flush()  # the server's periodic flush: upgrades a group past the IVF size
            flushing += time.perf_counter() - start
            last_flush = time.perf_counter()
    start = time.perf_counter()
    cache.flush()  # trains the IVF index of a large group if still flat, then saves it
    flushed = time.perf_counter() - start
    filled_rss = rss_mb() - before
    cache.close()
    disk = sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file()) / 2**20
    index_mb = sum(p.stat().st_size for p in (workdir / "index").iterdir()) / 2**20
    return {
        "insert_per_s": size / inserted,
        "periodic_flushes_s": flushing,
        "flush_s": flushed,
        "rss_filled_mb": filled_rss,
        "rss_peak_mb": peak_rss_mb() - before,
        "disk_mb": disk,
        "of_which_index_mb": index_mb,
    }


def served_itself(cache: SemanticCache, number: int) -> bool:
    """Whether looking up entry `number`'s question serves that very entry."""
    found = cache.lookup(text("e", number), namespace="big")
    return found.entry is not None and found.entry.question == text("e", number)


def part_open(size: int, base_path: Path, workdir: Path) -> dict[str, Any]:
    """A fresh process opens the filled store, as a restarted server does, and checks it."""
    base = load_base(base_path)
    embedder = TableEmbedder(base)
    clock = Clock()
    before = rss_mb()
    start = time.perf_counter()
    cache = SemanticCache(workdir, embedder, clock=clock)
    ready = time.perf_counter() - start
    memory = rss_mb() - before
    reused = f"{cache.indexes_loaded}/{cache.indexes_rebuilt}"
    exact = timed(lambda i: cache.lookup(text("e", (i * 7919) % size), namespace="big"), QUERIES)
    semantic = timed(lambda i: cache.lookup(text("q", i), namespace="big"), QUERIES)
    hits = sum(cache.lookup(text("q", i), namespace="big").hit for i in range(QUERIES))
    # TTL: every expiring entry is served before its time and none after.
    expiring = expiring_ids(size)
    sample = expiring[:200]
    live = [i for i in range(1, 400) if i not in set(expiring)][:200]
    served_before = sum(served_itself(cache, i) for i in sample)
    clock.now += 3601
    # (a live entry with the same answer may still be served: only the expired one may not)
    served_after = sum(served_itself(cache, i) for i in sample)
    start = time.perf_counter()
    purged_expired = cache.purge()
    purge_expired_s = time.perf_counter() - start
    still = sum(cache.lookup(text("e", i), namespace="big").hit for i in live)
    # A version bump: nothing of the old version is served from the moment it returns.
    start = time.perf_counter()
    _, invalidated = cache.set_version("big")
    bump_s = time.perf_counter() - start
    after_bump = sum(cache.lookup(text("e", i), namespace="big").hit for i in live)
    start = time.perf_counter()
    purged_bump = cache.purge()
    purge_bump_s = time.perf_counter() - start
    cache.close()
    return {
        "restart_to_ready_s": ready,
        "indexes_loaded/rebuilt": reused,
        "rss_after_restart_mb": memory,
        "exact_p50_ms": statistics.median(exact),
        "exact_p99_ms": percentile(exact, 99),
        "semantic_p50_ms": statistics.median(semantic),
        "semantic_p99_ms": percentile(semantic, 99),
        "semantic_hits": f"{hits}/{QUERIES}",
        "ttl_served_before": f"{served_before}/{len(sample)}",
        "ttl_expired_served": f"{served_after}/{len(sample)}",
        "purged_expired": purged_expired,
        "purge_expired_s": purge_expired_s,
        "live_still_served": f"{still}/{len(live)}",
        "bump_invalidated": invalidated,
        "bump_s": bump_s,
        "served_after_bump": f"{after_bump}/{len(live)}",
        "purged_after_bump": purged_bump,
        "purge_after_bump_s": purge_bump_s,
    }


# -- part: e2e -------------------------------------------------------------------------------


def part_e2e(size: int, data: Path, workdir: Path) -> dict[str, Any]:
    texts = real_texts(data)
    rng = np.random.default_rng(3)
    chosen = [texts[i] for i in rng.choice(len(texts), size + QUERIES + WARMUP, replace=False)]
    stored, probes = chosen[:size], chosen[size:]
    start = time.perf_counter()
    embedder = load_embedder()  # the graph exported before (user cache), as at a restart
    load_s = time.perf_counter() - start
    bare = timed(lambda i: embedder.embed([probes[i % len(probes)]]), QUERIES)
    cache = SemanticCache(workdir, embedder)
    start = time.perf_counter()
    for first in range(0, size, 1_000):
        cache.put_batch(
            [
                NewEntry(question=q, answer=f"answer {j}", model=MODEL, usage=USAGE)
                for j, q in enumerate(stored[first : first + 1_000], start=first)
            ]
        )
    inserted = time.perf_counter() - start
    # Paraphrase-like lookups: stored questions with a word added are near, not equal.
    near = [q.rstrip("?.! ") + " please" for q in stored[: QUERIES + WARMUP]]
    semantic = timed(lambda i: cache.lookup(near[i % len(near)]), QUERIES)
    misses = timed(lambda i: cache.lookup(probes[i % len(probes)]), QUERIES)
    cache.close()
    return {
        "embedder": f"{type(embedder).__name__}",
        "embedder_load_s": load_s,
        "bare_embed_p50_ms": statistics.median(bare),
        "bare_embed_p99_ms": percentile(bare, 99),
        "insert_per_s (embedding)": size / inserted,
        "semantic_lookup_p50_ms": statistics.median(semantic),
        "semantic_lookup_p99_ms": percentile(semantic, 99),
        "new_question_p50_ms": statistics.median(misses),
    }


# -- driver ----------------------------------------------------------------------------------


def run_child(part: str, size: int, source: Path, workdir: Path) -> dict[str, Any]:
    """One case in a fresh interpreter, so its resident memory is its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", part, str(size), str(source), str(workdir)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 1_000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, rows: dict[int, dict[str, Any]]) -> None:
    print(f"\n## {title}")
    sizes = list(rows)
    keys = list(next(iter(rows.values())))
    print(f"{'entries':28}" + "".join(f"{s:>16,}" for s in sizes))
    for key in keys:
        print(f"{key:28}" + "".join(f"{fmt(rows[s][key]):>16}" for s in sizes))
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the ../shared/data folder")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--parts", default="index,cache,e2e")
    parser.add_argument("--e2e-size", type=int, default=10_000)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # part size source workdir
    args = parser.parse_args()

    if args.child:
        part, size, source, workdir = args.child
        run = {"index": part_index, "fill": part_fill, "open": part_open, "e2e": part_e2e}[part]
        print(json.dumps(run(int(size), Path(source), Path(workdir))))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s]
    parts = [p for p in args.parts.split(",") if p]
    started = time.perf_counter()
    policy = IndexPolicy()
    print(f"# bench_scale  {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    print(f"# platform: {platform.platform()}  cpus: {os.cpu_count()}", end="")
    print(f"  ram: {psutil.virtual_memory().total / 2**30:.0f} GiB")
    print(f"# python {platform.python_version()}  faiss {faiss.__version__}", end="")
    print(f"  numpy {np.__version__}")
    print(f"# command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"# index policy: flat below {policy.ivf_min_entries:,} entries, then IVF", end="")
    print(f" {policy.ivf_lists} lists, {policy.ivf_probes} probed; search k=16, one thread")
    print(f"# vectors: all-MiniLM-L6-v2 vectors of the questions in {args.data}, plus noise")
    print(f"#   (|noise| {NOISE}, copies of one question share its answer); {QUERIES} measured")
    print(f"#   queries after {WARMUP} warm-up; times in ms; each case in a fresh process")
    with tempfile.TemporaryDirectory(prefix="semcache-scale-") as tmp:
        base_path = Path(tmp) / "base.npy"
        if {"index", "cache"} & set(parts):
            np.save(base_path, base_vectors(args.data))
            print(f"# base vectors: {np.load(base_path).shape[0]:,}")
        if "index" in parts:
            rows = {}
            for size in sizes:
                print(f"index {size:,} ...", file=sys.stderr)
                rows[size] = run_child("index", size, base_path, Path(tmp) / f"index-{size}")
            table("index alone (GroupIndex)", rows)
        if "cache" in parts:
            rows = {}
            for size in sizes:
                print(f"cache {size:,} ...", file=sys.stderr)
                store = Path(tmp) / f"cache-{size}"
                rows[size] = run_child("fill", size, base_path, store)
                rows[size] |= run_child("open", size, base_path, store)
                shutil.rmtree(store)
            table("whole cache (SemanticCache: diskcache store + index; no embedding)", rows)
        if "e2e" in parts:
            print("e2e ...", file=sys.stderr)
            row = run_child("e2e", args.e2e_size, args.data, Path(tmp) / "e2e")
            table("end to end with the default embedder (in process)", {args.e2e_size: row})
    print(f"\n# total run time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
