"""Offline study: does agreement of word pieces (token-level MaxSim) tell right hits from wrong?

A sentence vector is one mean. The model's last layer also has a vector per word piece, in
context, and "declined card payment" and "declined transfer" differ there more than in
their means. For each lookup of S1 (BANKING77 dev, the suite's own split), this takes the
answer the rule without word pieces would serve, and its rival answers, and measures

    agreement(answer) = mean over the query's word pieces of the best cosine to any word piece
                        of any phrasing of that answer

then adds `weight * min(0, agreement(served) - agreement(rival) - pivot)` to the score
(a penalty only: a reward served unanswerable questions in small FAQs, S6s), where the rival
is the nearest other answer (rivals 1) or the best-agreeing of up to four others met among
the phrasings read (rivals 4, what the server ships). It prints the hit rate at <= 1% wrong
answers (S1, m = 5 and m = all), and, at the threshold where the held-out intents (S6-like)
and three small FAQs of 5, 10 and 20 answers (S6s-like) all stay <= 1% wrong, the hit rate
and wrong answers there.

This is a study, not the evaluation: the rule is re-implemented here in numpy (without the
alias offset, the score cap and the feedback floor, which change no ranking on S1), and it
finds the best threshold on a continuous scale where `semcache eval` steps by 0.01, so its
numbers sit up to a point above the evaluation's. Compare
rows with each other, not with benchmarks/results/S1.json.

    .venv/bin/python benchmarks/study_token_margin.py ../shared/data \\
        > benchmarks/results/study_token_margin.txt
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import datetime
import platform
import random
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np

from cache import guards
from cache.normalize import normalize_question
from cache.quality import loaders, suites
from cache.semantic import MARGIN_PIVOT, PIECE_RIVALS, CacheConfig, agreement
from embeddings.onnx_embedder import OnnxEmbedder

Array = np.ndarray[Any, Any]
WIDEST = 128  # CacheConfig.neighbours x WIDER_SEARCH
SMALL_FAQ_SIZES = (5, 10, 20)
DRAWS = 3


def hit_rate_at(score: Array, right: Array, error: float = 0.01) -> float:
    """Most lookups answered, best score first, with wrong answers <= `error` of all."""
    order = np.argsort(-score)
    wrong = np.cumsum(~right[order])
    ok = np.where(wrong <= error * len(score))[0]
    return float((ok.max() + 1) / len(score)) if len(ok) else 0.0


class Texts:
    """Every text once: its sentence vector and its word-piece vectors (int8 would do)."""

    def __init__(self, embedder: OnnxEmbedder, texts: list[str]) -> None:
        self.row = {t: i for i, t in enumerate(texts)}
        vectors, tokens = [], []
        for start in range(0, len(texts), 256):
            v, t = embedder.embed_with_tokens(
                [normalize_question(x) for x in texts[start : start + 256]]
            )
            vectors.append(v)
            tokens.extend(t)
        self.vectors = np.vstack(vectors)
        self.tokens = tokens

    def bag(self, texts: list[str]) -> Array:
        return np.vstack([self.tokens[self.row[t]] for t in texts])

    def agreement(self, query: str, bag: Array) -> float:
        return agreement(self.tokens[self.row[query]], bag)  # the server's own measure


def features(
    data: Texts, stored: list[tuple[str, str]], queries: list[tuple[str, str | None]]
) -> Array:
    """Per query: right?, score without the word-piece rule, agreement gap against the
    nearest rival, guard veto, gap against the best-agreeing of up to `PIECE_RIVALS` rivals
    (other answers met among the 16 nearest phrasings, or the 128 when those are all one
    answer's, as the server reads them)."""
    labels = sorted({label for _, label in stored})
    lab = {label: k for k, label in enumerate(labels)}
    stored_label = np.array([lab[label] for _, label in stored])
    vs = data.vectors[[data.row[t] for t, _ in stored]]
    centroids = np.stack([vs[stored_label == k].mean(axis=0) for k in range(len(labels))])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    bags = [data.bag([t for t, label in stored if label == name]) for name in labels]
    weight = CacheConfig().margin_weight
    rows = []
    for text, label in queries:
        v = data.vectors[data.row[text]]
        sims = vs @ v
        order = np.argsort(-sims)
        best = order[0]
        served = stored_label[best]
        place = next(k for k, j in enumerate(order) if stored_label[j] != served)
        rival = order[place]
        # Past the 128 phrasings the rule reads at most, it takes the margin as the pivot.
        margin = float(sims[best] - sims[rival]) if place < WIDEST else MARGIN_PIVOT
        matched = (float(sims[best]) + float(centroids[served] @ v)) / 2
        shipped = matched - weight * max(0.0, MARGIN_PIVOT - margin)
        ours = data.agreement(text, bags[served])
        gap = ours - data.agreement(text, bags[stored_label[rival]])
        read = order[:16] if place < 16 else order[:WIDEST]
        rivals = list(dict.fromkeys(int(stored_label[j]) for j in read))
        rivals = [r for r in rivals if r != served]
        gaps = ours - max(data.agreement(text, bags[r]) for r in rivals[:PIECE_RIVALS] or [rival])
        vetoed = guards.check(text, stored[best][0]) is not None
        rows.append((labels[served] == label, shipped, gap, vetoed, gaps))
    return np.array(rows, dtype=np.float64)


def scored(f: Array, weight: float, pivot: float, rivals: int = 1) -> Array:
    gap = f[:, 2] if rivals == 1 else f[:, 4]
    s = f[:, 1] + weight * np.minimum(gap - pivot, 0.0)
    s[f[:, 3] > 0] = -9.0
    return s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    ctx = types.SimpleNamespace(
        seed=7, config=CacheConfig(), data_dir=args.data_dir, split="auto", quick=False
    )
    banking = loaders.load_banking77(args.data_dir, "auto")
    by_intent = suites._by_intent(ctx, suites._valid_items(ctx, banking.items))
    cached, held = suites._split_intents(ctx, list(by_intent), suites.S1_HELD_OUT)
    every = sorted({t for ts in by_intent.values() for t in ts})
    with tempfile.TemporaryDirectory() as tmp:
        embedder = OnnxEmbedder(cache_dir=os.environ.get("SEMCACHE_GRAPH_DIR", tmp))
        data = Texts(embedder, every)

    settings: dict[str, list[tuple[list[tuple[str, str]], list[tuple[str, str | None]]]]] = {}
    m5_stored = [(t, i) for i in cached for t in by_intent[i][:5]]
    m5_queries = [(t, i) for i in cached for t in by_intent[i][5:]]
    m5_queries += [(t, None) for i in held for t in by_intent[i]]
    settings["S1 m=5"] = [(m5_stored, m5_queries)]
    folds = []
    for fold in range(5):
        stored = [(t, i) for i in cached for j, t in enumerate(by_intent[i]) if j % 5 != fold]
        queries: list[tuple[str, str | None]] = [
            (t, i) for i in cached for j, t in enumerate(by_intent[i]) if j % 5 == fold
        ]
        if fold == 0:
            queries += [(t, None) for i in held for t in by_intent[i]]
        folds.append((stored, queries))
    settings["S1 m=all"] = folds
    small = []
    intents = sorted(by_intent)
    for size in SMALL_FAQ_SIZES:
        for draw in range(DRAWS):
            faq = random.Random(100 * size + draw).sample(intents, size)
            small.append(
                (
                    [(t, i) for i in faq for t in by_intent[i][:5]],
                    [(t, None) for i in intents if i not in faq for t in by_intent[i]],
                )
            )
    feats = {
        name: np.vstack([features(data, s, q) for s, q in runs]) for name, runs in settings.items()
    }
    small_feats = [features(data, s, q) for s, q in small]
    held_rows = np.array([label is None for _, label in m5_queries])

    print(f"# study_token_margin  {datetime.datetime.now(datetime.UTC).isoformat()}")
    print(f"# platform: {platform.platform()}  cpus: {os.cpu_count()}")
    print(
        f"# data: {args.data_dir}/banking77, {len(every)} texts, {len(cached)} cached intents, "
        f"{len(held)} held out; small FAQs {SMALL_FAQ_SIZES} x {DRAWS} draws"
    )
    pieces = np.array([len(t) for t in data.tokens])
    print(
        f"# word pieces per text: mean {pieces.mean():.1f}, max {pieces.max()}; stored as int8"
        f" with a float32 scale, {pieces.mean() * (embedder.dim + 4) / 1024:.1f} KiB per text"
    )
    print("# score = score without word pieces + weight * min(0, agreement gap - pivot);")
    print("#   guards veto")
    print("# HR@1%: hit rate at <= 1% wrong answers; tau: lowest threshold (step 0.0025) where the")
    print(
        "#   held-out intents of S1 m=5 and every small FAQ stay <= 1% wrong; at tau: S1 hit rate"
    )
    print("#   and wrong answers, and the small FAQs' wrong answers (%), 5/10/20 answers")
    print()
    print(
        f"{'weight':>6} {'pivot':>5} {'rivals':>6} {'m=5 HR@1%':>10} {'all HR@1%':>10} {'tau':>7} "
        f"{'m=5 HR/ER at tau':>17} {'all HR at tau':>13}  small FAQs wrong at tau"
    )
    taus = np.arange(0.6, 1.1, 0.0025)
    variants = [(0.0, 0.0, 1)]
    variants += [(w, c, 1) for w in (1.0, 2.0) for c in (0.1, 0.15, 0.2, 0.25)]
    variants += [(w, 0.2, PIECE_RIVALS) for w in (1.0, 1.5, 2.0)]
    for weight, pivot, rivals in variants:
        hr = {
            name: hit_rate_at(scored(f, weight, pivot, rivals), f[:, 0] > 0)
            for name, f in feats.items()
        }
        m5 = scored(feats["S1 m=5"], weight, pivot, rivals)
        small_scores = [scored(f, weight, pivot, rivals) for f in small_feats]
        tau = next(
            t
            for t in taus
            if (m5[held_rows] >= t).mean() <= 0.01
            and all((s >= t).mean() <= 0.01 for s in small_scores)
        )
        right5 = feats["S1 m=5"][:, 0] > 0
        all_scores = scored(feats["S1 m=all"], weight, pivot, rivals)
        by_size = [
            100 * np.mean(np.concatenate(small_scores[k * DRAWS : (k + 1) * DRAWS]) >= tau)
            for k in range(len(SMALL_FAQ_SIZES))
        ]
        print(
            f"{weight:>6.1f} {pivot:>5.2f} {rivals:>6} "
            f"{hr['S1 m=5']:>10.3f} {hr['S1 m=all']:>10.3f} "
            f"{tau:>7.4f} {(m5 >= tau).mean():>9.3f}/{((m5 >= tau) & ~right5).mean():.4f} "
            f"{(all_scores >= tau).mean():>13.3f}  " + " / ".join(f"{x:.2f}" for x in by_size)
        )
    print()
    print("# weight 0: the rule without word pieces (this re-implementation)")
    print(f"# rivals 1: against the nearest other answer; {PIECE_RIVALS}: the best-agreeing of the")
    print("#   other answers among the phrasings read (the server's rule, weight 2, pivot 0.2)")
    print(f"# total run time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
