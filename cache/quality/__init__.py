"""Answer-quality evaluation of the semantic cache (../shared/eval/PROTOCOL.md).

Every suite runs through the server's own code: `SemanticCache.put`, `explain` (the
candidate and evidence `lookup` weighs) and `compare`, with the same normalisation, key,
embedder and decision rule (`Candidate.accepts`). The harness computes no similarity and
decides no hit; it only counts. See `suites` for how each suite is built.

    from cache.quality import run_suites
    summary = run_suites(Path("../shared/data"), Path("benchmarks/results"))
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cache.pricing import PriceTable
from cache.semantic import CacheConfig
from embeddings import Embedder

from .evaluate import STREAM_TAUS, TAUS, Context, grid
from .loaders import DataError, Split
from .memo import MemoEmbedder, default_memo_dir
from .outputs import markdown, suite_summary, write_csv, write_json
from .plots import plot_suite
from .suites import SUITES, SuiteResult

__all__ = ["ALL_SUITES", "DataError", "run_suites"]

ALL_SUITES = ("S1", "S1b", "S2", "S3", "S5", "S6", "S6s", "traps")
QUICK_STREAM_TAUS = grid(0.70, 0.98, 0.04)
log = logging.getLogger(__name__)


def _code_version() -> dict[str, Any]:
    """The git commit the cache code was at, and whether the tree had changes (if known)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cache", "embeddings", ":!cache/quality"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "uncommitted_changes": bool(dirty)} if commit else {}


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def run_suites(
    data_dir: Path,
    out_dir: Path,
    *,
    suites: Sequence[str] = ALL_SUITES,
    quick: bool = False,
    embedder: Embedder | None = None,
    config: CacheConfig | None = None,
    split: Split = "auto",
    memo_dir: Path | None = None,
    traps_path: Path | None = None,
    extra_margins: Sequence[float] = (),
    seed: int = 7,
    progress: bool = True,
    tmp_dir: Path | None = None,
) -> dict[str, Any]:
    """Run `suites` on the data in `data_dir`; write CSV/JSON/PNG per suite and a summary.

    `embedder` defaults to the server's (all-MiniLM-L6-v2); `config` to `CacheConfig()`, the
    shipped defaults. Vectors are memoised under `memo_dir` (default ~/.cache/semcache-eval;
    pass a folder, or set $SEMCACHE_EVAL_CACHE). A suite whose data is missing is skipped
    and named in the summary. Returns the summary that `OUT/summary.json` holds.
    """
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    started = time.perf_counter()
    code = _code_version()  # taken first: the code under test is what was imported by now
    if embedder is None:
        from embeddings import load_embedder

        embedder = load_embedder()
    memo = MemoEmbedder(embedder, memo_dir if memo_dir is not None else default_memo_dir())
    ctx = Context(
        data_dir=Path(data_dir),
        embedder=memo,
        config=config or CacheConfig(),
        prices=PriceTable.load(),
        seed=seed,
        quick=quick,
        split=split,
        taus=TAUS,
        stream_taus=QUICK_STREAM_TAUS if quick else STREAM_TAUS,
        extra_margins=tuple(extra_margins),
        progress=progress,
        tmp_dir=tmp_dir,
        traps_path=traps_path,
    )
    cfg = ctx.config
    meta = {
        "embedder": memo.name,
        "config": {
            "threshold": cfg.threshold,
            "margin": cfg.margin,
            "margin_weight": cfg.margin_weight,
            "piece_weight": cfg.piece_weight,
            "guards": cfg.guards,
            "neighbours": cfg.neighbours,
        },
        "seed": seed,
        "quick": quick,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in suites:
        begun = time.perf_counter()
        log.info("suite %s", name)
        try:
            result: SuiteResult = SUITES[name](ctx)
        except (DataError, FileNotFoundError) as exc:
            log.warning("suite %s skipped: %s", name, exc)
            skipped[name] = str(exc)
            continue
        result.seconds = time.perf_counter() - begun
        write_csv(result, memo.name, out_dir / f"{name}.csv")
        summary = suite_summary(result, meta)
        write_json(summary, out_dir / f"{name}.json")
        plot_suite(f"{name}: {result.title}", result.curves, out_dir / f"{name}.png")
        summaries[name] = summary
    total = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "code": code,
        "data_dir": str(data_dir),
        "split": split,
        **meta,
        "seconds": round(time.perf_counter() - started, 1),
        "embeddings": {"texts": len(memo), "unprimed_misses": memo.misses},
        "lookup_agreement": dict(ctx.agreement),
        "skipped_suites": skipped,
        "suites": summaries,
    }
    write_json(total, out_dir / "summary.json")
    (out_dir / "summary.md").write_text(markdown(total), encoding="utf-8")
    return total
