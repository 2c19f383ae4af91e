"""Answer-quality metrics: pure functions over outcome arrays, no model and no cache.

A lookup has three facts: whether it was *accepted* (a hit) at a threshold, whether the
entry it would serve is of the query's class (*correct*), and whether the query's class was
in the cache at all (*possible*). From them, per threshold:

    TP = accepted and correct          FP = accepted and not correct
    FN = not accepted and possible     TN = not accepted and not possible

A pair (S3) fits the same mould: accepted = the two questions are matched, correct =
possible = they are labelled duplicates.

Undefined ratios (a precision with no hits, say) are NaN here and null in JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Z95 = 1.959963984540054
"""Two-sided 95% normal quantile."""
MIN_HITS = 30
"""Fewest hits a point needs before its precision counts (recall at precision)."""

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def wilson_lower(successes: int, n: int, z: float = Z95) -> float:
    """Lower end of the Wilson score interval of a proportion (NaN when n is 0)."""
    if n == 0:
        return math.nan
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z2 / n))


@dataclass(frozen=True)
class Point:
    """The confusion counts at one threshold, and every ratio the protocol names."""

    tau: float
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def hits(self) -> int:
        return self.tp + self.fp

    @property
    def hit_rate(self) -> float:
        return _ratio(self.hits, self.n)

    @property
    def error_rate(self) -> float:
        """Wrong answers per lookup (vCache's error rate)."""
        return _ratio(self.fp, self.n)

    @property
    def false_hit_rate(self) -> float:
        """Wrong answers per answer served: 1 - precision."""
        return _ratio(self.fp, self.hits)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.hits)

    @property
    def precision_lb95(self) -> float:
        return wilson_lower(self.tp, self.hits)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r) or p + r == 0:
            return math.nan
        return 2 * p * r / (p + r)

    def as_dict(self) -> dict[str, float | int | None]:
        """Counts and ratios, NaN as None (JSON null)."""
        out: dict[str, float | int | None] = {"tau": self.tau}
        for name in METRIC_COLUMNS:
            value = getattr(self, name)
            out[name] = None if isinstance(value, float) and math.isnan(value) else value
        return out


METRIC_COLUMNS = (
    "n",
    "tp",
    "fp",
    "fn",
    "tn",
    "hit_rate",
    "error_rate",
    "false_hit_rate",
    "precision",
    "precision_lb95",
    "recall",
    "f1",
)


def point(tau: float, accepted: Bools, correct: Bools, possible: Bools) -> Point:
    """Counts of one threshold's decisions (`accepted`, one per lookup)."""
    acc = np.asarray(accepted, dtype=bool)
    ok = np.asarray(correct, dtype=bool)
    can = np.asarray(possible, dtype=bool)
    if not acc.shape == ok.shape == can.shape:
        raise ValueError(f"shapes differ: {acc.shape}, {ok.shape}, {can.shape}")
    return Point(
        tau=tau,
        tp=int(np.count_nonzero(acc & ok)),
        fp=int(np.count_nonzero(acc & ~ok)),
        fn=int(np.count_nonzero(~acc & can)),
        tn=int(np.count_nonzero(~acc & ~can)),
    )


def sweep(taus: Sequence[float], accepted: Bools, correct: Bools, possible: Bools) -> list[Point]:
    """One Point per threshold; `accepted` has one row per threshold, one column per lookup."""
    acc = np.asarray(accepted, dtype=bool)
    if acc.ndim != 2 or acc.shape[0] != len(taus):
        raise ValueError(f"accepted must be (len(taus), n), got {acc.shape}")
    return [point(tau, row, correct, possible) for tau, row in zip(taus, acc, strict=True)]


def oracle_hit_rate(possible: Bools) -> float:
    """Share of lookups whose class is in the cache: the most a perfect cache could serve."""
    can = np.asarray(possible, dtype=bool)
    return _ratio(float(np.count_nonzero(can)), float(can.size))


def hr_at_er(points: Sequence[Point], max_error_rate: float) -> Point | None:
    """The point with the highest hit rate whose error rate is at most `max_error_rate`."""
    eligible = [p for p in points if p.n and p.error_rate <= max_error_rate + 1e-12]
    if not eligible:
        return None
    return max(eligible, key=lambda p: (p.hit_rate, -p.error_rate, p.tau))


def recall_at_precision(
    points: Sequence[Point], min_precision: float, min_hits: int = MIN_HITS
) -> Point | None:
    """The point with the highest recall whose precision is at least `min_precision`.

    Only points with `min_hits` hits or more count: a precision of 1 on three hits says little.
    """
    eligible = [p for p in points if p.hits >= min_hits and p.precision >= min_precision - 1e-12]
    if not eligible:
        return None
    return max(eligible, key=lambda p: (p.recall, p.precision, p.tau))


def best_f1(points: Sequence[Point]) -> Point | None:
    scored = [p for p in points if not math.isnan(p.f1)]
    return max(scored, key=lambda p: (p.f1, p.tau)) if scored else None


def area_precision_hit_rate(points: Sequence[Point]) -> float:
    """Trapezoidal area under precision against hit rate, over the swept points with hits.

    Not extrapolated: the curve runs from the smallest to the largest hit rate the sweep
    reached, so a curve that stops early has less area. NaN with fewer than two points.
    """
    pts = sorted(
        ((p.hit_rate, p.precision) for p in points if p.hits), key=lambda hp: (hp[0], -hp[1])
    )
    if len(pts) < 2:
        return math.nan
    xs = np.array([x for x, _ in pts])
    ys = np.array([y for _, y in pts])
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half.

    Mann-Whitney U with mid-ranks. NaN when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    start = 0
    while start < len(s):  # mid-ranks for tied scores
        end = start
        while end + 1 < len(s) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    u = float(ranks[y].sum()) - positives * (positives + 1) / 2
    return u / (positives * negatives)


ER_BOUNDS = (0.005, 0.01, 0.02)
PRECISION_FLOORS = (0.95, 0.99)


def _point_or_none(p: Point | None) -> dict[str, Any] | None:
    return None if p is None else p.as_dict()


def operating_points(points: Sequence[Point]) -> dict[str, Any]:
    """The protocol's operating points of one curve, as JSON-ready values."""
    area = area_precision_hit_rate(points)
    return {
        "hr_at_er": {f"{b:.1%}": _point_or_none(hr_at_er(points, b)) for b in ER_BOUNDS},
        "recall_at_precision": {
            f"{p:.2f}": _point_or_none(recall_at_precision(points, p)) for p in PRECISION_FLOORS
        },
        "best_f1": _point_or_none(best_f1(points)),
        "area_precision_hit_rate": None if math.isnan(area) else area,
    }
