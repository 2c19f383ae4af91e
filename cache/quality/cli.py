"""Command-line arguments of the evaluation, shared by `semcache eval` and
benchmarks/quality.py so that both take the same options."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cache.semantic import CacheConfig

from . import ALL_SUITES, DataError, run_suites


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", type=Path, help="folder with banking77/, clinc150/, ...")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results"),
        help="output folder (default: benchmarks/results)",
    )
    parser.add_argument(
        "--suites",
        default=",".join(ALL_SUITES),
        help=f"comma-separated subset of {','.join(ALL_SUITES)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="subsample (1500 utterances or pairs per dataset) for a fast run",
    )
    parser.add_argument(
        "--split",
        choices=("auto", "dev", "test"),
        default="auto",
        help="read dev files, test files, or dev when present (default)",
    )
    parser.add_argument("--model-path", type=Path, help="sentence-transformers model folder")
    parser.add_argument(
        "--backend",
        choices=["onnx", "onnx-int8", "torch"],
        default="onnx",
        help="embedding backend (onnx and torch: same vectors; onnx-int8: faster, other vectors)",
    )
    parser.add_argument(
        "--memo-dir",
        type=Path,
        help="where embeddings are memoised (default ~/.cache/semcache-eval)",
    )
    parser.add_argument(
        "--traps", type=Path, help="traps JSON (default benchmarks/data/traps.json)"
    )
    parser.add_argument(
        "--margins",
        default="",
        help="extra margins to sweep beside the shipped one, e.g. 0.02,0.05",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_from_args(
    args: argparse.Namespace,
    *,
    config: CacheConfig | None = None,
    model_path: str | Path | None = None,
) -> int:
    """Run the evaluation `args` describe. `config` is the rule under test (default: the
    shipped `CacheConfig()`); `model_path` the model folder when `--model-path` is not given.
    """
    from embeddings import load_embedder

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    try:
        margins = [float(m) for m in args.margins.split(",") if m.strip()]
    except ValueError:
        print(f"semcache eval: --margins must be numbers, got {args.margins!r}", file=sys.stderr)
        return 2
    if not args.data_dir.is_dir():
        print(f"semcache eval: no data folder {args.data_dir}", file=sys.stderr)
        return 2
    try:
        summary = run_suites(
            args.data_dir,
            args.out,
            suites=suites,
            quick=args.quick,
            embedder=load_embedder(args.model_path or model_path, backend=args.backend),
            config=config,
            split=args.split,
            memo_dir=args.memo_dir,
            traps_path=args.traps,
            extra_margins=margins,
            progress=not args.no_progress,
        )
    except (ValueError, DataError) as exc:
        print(f"semcache eval: {exc}", file=sys.stderr)
        return 2
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    for name, reason in summary["skipped_suites"].items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="semcache eval", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    return run_from_args(args)
