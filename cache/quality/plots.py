"""Precision against hit rate, one PNG per suite (matplotlib, imported only when drawing)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .evaluate import BASELINE, SERVER, Curve

_STYLES = {SERVER: "-", BASELINE: "--"}


def plot_suite(title: str, curves: Sequence[Curve], path: Path) -> None:
    """The server's rule (solid) beside the threshold-only baseline (dashed), per dataset;
    a dot marks the server's shipped threshold.

    Precision against hit rate; datasets of must-miss lookups only (S6, S5's generic
    follow-ups) have no precision to draw and are left out, and a suite made only of them
    gets its wrong-hit rate against the threshold instead.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=110)
    colours: dict[str, str] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawable = [c for c in curves if c.oracle > 0]
    if not drawable:
        _error_rate_against_threshold(ax, title, curves, palette)
        _save(fig, path)
        return
    for curve in drawable:
        colour = colours.setdefault(curve.dataset, palette[len(colours) % len(palette)])
        pts = sorted((p.hit_rate, p.precision) for p in curve.points if p.hits)
        if not pts:
            continue
        ax.plot(
            [x for x, _ in pts],
            [y for _, y in pts],
            _STYLES.get(curve.rule, ":"),
            color=colour,
            linewidth=1.6 if curve.rule == SERVER else 1.1,
            label=f"{curve.dataset} ({curve.rule})",
        )
        d = curve.default
        if curve.rule == SERVER and d.hits and not math.isnan(d.precision):
            ax.plot([d.hit_rate], [d.precision], "o", color=colour, markersize=6)
    ax.set_xlabel("hit rate (hits / lookups)")
    ax.set_ylabel("precision (correct hits / hits)")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(
        f"{title}\nsolid: server rule; dashed: threshold-only; dot: shipped default", fontsize=9
    )
    ax.legend(fontsize=7, loc="lower left")
    _save(fig, path)


def _error_rate_against_threshold(
    ax: Any, title: str, curves: Sequence[Curve], palette: Sequence[str]
) -> None:
    colours: dict[str, str] = {}
    for curve in curves:
        colour = colours.setdefault(curve.dataset, palette[len(colours) % len(palette)])
        ax.plot(
            [p.tau for p in curve.points],
            [p.error_rate for p in curve.points],
            _STYLES.get(curve.rule, ":"),
            color=colour,
            label=f"{curve.dataset} ({curve.rule})",
        )
    ax.set_xlabel("threshold τ")
    ax.set_ylabel("error rate = hit rate (every hit is wrong)")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{title}\nsolid: server rule; dashed: threshold-only", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
