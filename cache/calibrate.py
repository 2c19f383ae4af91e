"""`semcache calibrate FILE`: pick the threshold and margin for a target precision.

FILE is labelled data of your own traffic, either pairs (CSV `question1,question2,
is_duplicate`) or classes (CSV `text,category`: questions with the same category share an
answer). Decisions go through the cache's own rule (`Candidate.accepts`,
`Comparison.accepts`); nothing here computes a similarity itself.
"""

from __future__ import annotations

import csv
import random
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np

from embeddings import Embedder

from .entry import Usage, key_text
from .normalize import normalize_question
from .quality.memo import MemoEmbedder
from .quality.metrics import Point, recall_at_precision, sweep
from .semantic import CacheConfig, SemanticCache

TAUS = tuple(round(0.50 + 0.01 * i, 2) for i in range(51))
MARGINS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.15)
FOLDS = 5
_MODEL = "claude-haiku-4-5"  # any priced model: calibration entries cost nothing


class Calibration(msgspec.Struct, kw_only=True):
    kind: str
    rows: int
    target_precision: float
    threshold: float | None
    margin: float | None
    precision: float | None
    recall: float | None
    hit_rate: float | None
    curve: list[dict[str, float]]
    """Per threshold at the chosen margin: hit rate, precision, recall."""


def read_labelled(path: Path) -> tuple[str, list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} has no rows")
    columns = set(rows[0])
    if {"question1", "question2", "is_duplicate"} <= columns:
        return "pairs", rows
    if {"text", "category"} <= columns:
        return "classes", rows
    raise ValueError(
        f"{path}: need columns question1,question2,is_duplicate or text,category; got "
        + ",".join(sorted(columns))
    )


def calibrate(
    path: Path,
    embedder: Embedder,
    *,
    target_precision: float = 0.99,
    config: CacheConfig | None = None,
    progress: bool = True,
) -> Calibration:
    kind, rows = read_labelled(path)
    base = config or CacheConfig()
    memo = MemoEmbedder(embedder)
    with tempfile.TemporaryDirectory(prefix="semcache-calibrate-") as tmp:
        if kind == "pairs":
            points_by_margin = {0.0: _pairs(rows, memo, base, Path(tmp), progress)}
        else:
            points_by_margin = _classes(rows, memo, base, Path(tmp), progress)
    best: tuple[float, Point] | None = None
    for margin, points in points_by_margin.items():
        found = recall_at_precision(points, target_precision)
        if found is not None and (best is None or found.recall > best[1].recall):
            best = (margin, found)
    margin = best[0] if best else base.margin
    chosen = points_by_margin.get(margin) or next(iter(points_by_margin.values()))
    return Calibration(
        kind=kind,
        rows=len(rows),
        target_precision=target_precision,
        threshold=best[1].tau if best else None,
        margin=best[0] if best and kind == "classes" else None,
        precision=best[1].precision if best else None,
        recall=best[1].recall if best else None,
        hit_rate=best[1].hit_rate if best else None,
        curve=[
            {"tau": p.tau, "hit_rate": p.hit_rate, "precision": p.precision, "recall": p.recall}
            for p in chosen
        ],
    )


def _pairs(
    rows: list[dict[str, str]], memo: MemoEmbedder, config: CacheConfig, tmp: Path, progress: bool
) -> list[Point]:
    memo.prime(
        [
            key_text(normalize_question(r[c]), None)
            for r in rows
            for c in ("question1", "question2")
        ],
        label="embed",
        progress=progress,
    )
    cache = SemanticCache(tmp / "pairs", memo, config=config)
    try:
        verdicts = [cache.compare(r["question1"], r["question2"]) for r in rows]
    finally:
        cache.close()
    labels = np.array([r["is_duplicate"].strip() in ("1", "true", "True") for r in rows])
    accepted = np.array([[v.accepts(tau) for v in verdicts] for tau in TAUS])
    return sweep(TAUS, accepted, labels, labels)


def _classes(
    rows: list[dict[str, str]], memo: MemoEmbedder, config: CacheConfig, tmp: Path, progress: bool
) -> dict[float, list[Point]]:
    """K-fold: store the other folds, look up this one; every row is looked up once."""
    memo.prime(
        [key_text(normalize_question(r["text"]), None) for r in rows],
        label="embed",
        progress=progress,
    )
    order = list(range(len(rows)))
    random.Random(7).shuffle(order)
    folds: dict[int, list[int]] = defaultdict(list)
    for position, index in enumerate(order):
        folds[position % FOLDS].append(index)
    candidates = []
    categories = []
    possible = []
    for fold, members in folds.items():
        cache = SemanticCache(tmp / f"fold{fold}", memo, config=config)
        try:
            stored = set()
            for other, others in folds.items():
                if other == fold:
                    continue
                for index in others:
                    row = rows[index]
                    cache.put(row["text"], row["category"], model=_MODEL, usage=Usage())
                    stored.add(rows[index]["category"])
            for index in members:
                candidates.append(cache.explain(rows[index]["text"]))
                categories.append(rows[index]["category"])
                possible.append(rows[index]["category"] in stored)
        finally:
            cache.close()
    correct = np.array(
        [
            c is not None and c.entry.answer == cat
            for c, cat in zip(candidates, categories, strict=True)
        ]
    )
    can = np.array(possible)
    result = {}
    for margin in MARGINS:
        accepted = np.array(
            [[c is not None and c.accepts(tau, margin) for c in candidates] for tau in TAUS]
        )
        result[margin] = sweep(TAUS, accepted, correct, can)
    return result


def render(result: Calibration, every: Sequence[float] = (0.05,)) -> str:
    lines = [f"{result.rows} labelled {result.kind}; target precision {result.target_precision}"]
    if result.threshold is None:
        lines.append("no threshold reaches the target precision with 30 or more hits")
    else:
        margin = "" if result.margin is None else f", margin {result.margin:.2f}"
        lines.append(
            f"threshold {result.threshold:.2f}{margin}: precision {result.precision:.3f}, "
            f"recall {result.recall:.3f}, hit rate {result.hit_rate:.3f}"
        )
        settings = f"SEMCACHE_THRESHOLD={result.threshold:.2f}"
        if result.margin is not None:  # pairs say nothing about the margin: keep yours
            settings += f" SEMCACHE_MARGIN={result.margin:.2f}"
        lines.append(f"set {settings}")
        if result.kind == "classes":
            lines.append(
                "note: a classes file holds no question that must miss; check the wrong-answer "
                "rate on unrelated questions too (semcache eval, suite S6)"
            )
    lines.append("")
    lines.append(f"{'tau':>6} {'hit rate':>9} {'precision':>10} {'recall':>7}")
    step = every[0]
    for row in result.curve:
        if round(row["tau"] / step, 6) % 1 == 0:
            lines.append(
                f"{row['tau']:>6.2f} {row['hit_rate']:>9.3f} {row['precision']:>10.3f} "
                f"{row['recall']:>7.3f}"
            )
    return "\n".join(lines)
