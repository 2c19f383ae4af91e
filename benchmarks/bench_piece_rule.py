"""What the word-piece rule costs a lookup where answers have aliases.

Builds the same FAQ twice with the server's default embedder, once with the rule on (the
default weight) and once off (`piece_weight` 0): 60 BANKING77 intents, five utterances
each as one answer's phrasings (as `semcache import` stores an FAQ). Then times
`SemanticCache.lookup` of other utterances of those intents, alternating the two caches
question by question so that both see the same machine. Reports lookup p50/p90/p99, the
first lookups after opening (word pieces read from the store) apart from the warm ones,
store size on disk and the word pieces held in memory.

    .venv/bin/python benchmarks/bench_piece_rule.py ../shared/data \\
        > benchmarks/results/bench_piece_rule.txt
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import datetime
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from cache import CacheConfig, NewEntry, SemanticCache, Usage
from cache.quality.loaders import load_banking77
from embeddings import load_embedder

NS = "faq"
ANSWERS = 60
PHRASINGS = 5
COLD = 100
WARM = 2000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    by_intent: dict[str, list[str]] = {}
    for item in load_banking77(args.data_dir).items:
        by_intent.setdefault(item.label, []).append(item.text)
    rng = random.Random(7)
    intents = rng.sample(sorted(by_intent), ANSWERS)
    faq = {i: by_intent[i][:PHRASINGS] for i in intents}
    questions = [q for i in intents for q in by_intent[i][PHRASINGS:]]
    rng.shuffle(questions)
    questions = questions[: COLD + WARM]
    embedder = load_embedder()
    weight = CacheConfig().piece_weight
    with tempfile.TemporaryDirectory(prefix="semcache-pieces-") as tmp:
        caches: dict[str, SemanticCache] = {}
        for name, w in (("rule on", weight), ("rule off", 0.0)):
            path = Path(tmp) / name.replace(" ", "-")
            filling = SemanticCache(path, embedder, config=CacheConfig(piece_weight=w))
            filling.put_batch(
                [
                    NewEntry(
                        question=q,
                        answer=f"The answer about {i}.",
                        model="claude-haiku-4-5",
                        usage=Usage(input_tokens=100, output_tokens=50),
                        namespace=NS,
                    )
                    for i, qs in faq.items()
                    for q in qs
                ]
            )
            filling.close()  # reopened below: word pieces come from the store, as at a restart
            caches[name] = SemanticCache(path, embedder, config=CacheConfig(piece_weight=w))
        times: dict[str, list[float]] = {name: [] for name in caches}
        hits = dict.fromkeys(caches, 0)
        for question in questions:
            for name, cache in caches.items():
                start = time.perf_counter()
                found = cache.lookup(question, namespace=NS)
                times[name].append((time.perf_counter() - start) * 1000)
                hits[name] += found.hit
        on = caches["rule on"]
        held = sum(bag.nbytes for bag in on._bags.values()) / 2**20
        sizes = {name: disk_mb(Path(tmp) / name.replace(" ", "-")) for name in caches}
        for cache in caches.values():
            cache.close()

    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(f"# bench_piece_rule  {now}")
    print(f"# platform: {platform.platform()}  cpus: {os.cpu_count()}")
    print(f"# command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"# FAQ: {ANSWERS} BANKING77 intents x {PHRASINGS} phrasings in one namespace;"
        f" {len(questions)} lookups of other utterances, the two caches alternating;"
    )
    print(f"#   the first {COLD} after opening apart; times in ms; rule on = weight {weight}")
    print()
    print(f"{'':10}{'first p50':>10}{'warm p50':>10}{'warm p90':>10}{'warm p99':>10}", end="")
    print(f"{'hits':>7}{'disk MB':>9}")
    for name, values in times.items():
        cold, warm = values[:COLD], values[COLD:]
        print(
            f"{name:10}{statistics.median(cold):>10.2f}{statistics.median(warm):>10.2f}"
            f"{percentile(warm, 90):>10.2f}{percentile(warm, 99):>10.2f}"
            f"{hits[name]:>7}{sizes[name]:>9.2f}"
        )
    print()
    print(f"# word pieces held in memory with the rule on: {held:.1f} MiB")
    print(f"# total run time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
