"""Writing a suite's results: CSV (one row per threshold), JSON (operating points) and the
combined summary (JSON and a Markdown table)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import BASELINE, SERVER, Curve
from .metrics import METRIC_COLUMNS, operating_points
from .suites import SuiteResult

CSV_COLUMNS = ("suite", "dataset", "embedder", "rule", "margin", "tau", *METRIC_COLUMNS)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_csv(result: SuiteResult, embedder: str, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for curve in result.curves:
            for p in curve.points:
                head = [result.suite, curve.dataset, embedder, curve.rule, curve.margin, p.tau]
                writer.writerow([_cell(v) for v in head + [getattr(p, c) for c in METRIC_COLUMNS]])


def _clean(value: Any) -> Any:
    """NaN becomes null (JSON has no NaN), numpy scalars Python ones; containers are walked."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def suite_summary(result: SuiteResult, meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON of one suite: per dataset, the oracle, the shipped default, operating points."""
    datasets: dict[str, Any] = {}
    described = result.info.get("datasets", {})
    for curve in result.curves:
        row = datasets.setdefault(
            curve.dataset,
            {
                **described.get(curve.dataset, {}),
                "oracle_hit_rate": curve.oracle,
                "default": {},
                "rules": {},
            },
        )
        row["default"][curve.rule] = {"margin": curve.margin, **curve.default.as_dict()}
        row["rules"][curve.rule] = {"margin": curve.margin, **operating_points(curve.points)}
    info = {k: v for k, v in result.info.items() if k != "datasets"}
    cleaned: dict[str, Any] = _clean(
        {
            "suite": result.suite,
            "title": result.title,
            **meta,
            "seconds": round(result.seconds, 1),
            "datasets": datasets,
            **info,
        }
    )
    return cleaned


def write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_clean(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _at(op: dict[str, Any] | None, field: str, pct: bool = True) -> str:
    if op is None:
        return "never"
    text = _pct(op[field]) if pct else _num(op[field])
    return f"{text} (τ {op['tau']:.2f})"


def markdown(summary: dict[str, Any]) -> str:
    """The operating points of every suite as one Markdown table, with machine and date."""
    cfg = summary["config"]
    lines = [
        "# semcache answer-quality evaluation",
        "",
        f"- date: {summary['date']}",
        f"- machine: {summary['machine']['platform']}, {summary['machine']['cpu_count']} CPUs",
        f"- embedder: {summary['embedder']}",
        f"- shipped rule: threshold {cfg['threshold']}, margin {cfg['margin']}, "
        f"margin weight {cfg.get('margin_weight', 0.0)}, "
        + (f"word-piece weight {cfg['piece_weight']}, " if cfg.get("piece_weight") else "")
        + f"guards {'on' if cfg['guards'] else 'off'}",
        f"- data: {summary['data_dir']} (split {summary['split']}"
        f"{', --quick' if summary['quick'] else ''}); seed {summary['seed']}",
        f"- run time: {summary['seconds']:.0f} s",
        "",
        "Server = the shipped decision rule (answer-level score moved by the margin, guards) "
        "swept over τ; "
        "threshold-only = the same cache code set up as a static cosine threshold on the "
        "nearest phrasing (guards off, margin ignored, one answer per phrasing). "
        "HR = hit rate, ER = wrong answers / lookups, P = precision.",
        "",
        "| suite | dataset | n | oracle HR | shipped: HR | ER | P | HR @ ER≤1% server "
        "| HR @ ER≤1% threshold-only | recall @ P≥0.99 server | best F1 server |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for suite, data in summary["suites"].items():
        for name, row in data["datasets"].items():
            server = row["rules"].get(SERVER, {})
            base = row["rules"].get(BASELINE, {})
            d = row["default"].get(SERVER, {})
            f1 = server.get("best_f1")
            lines.append(
                f"| {suite} | {name} | {d.get('n', '-')} | {_pct(row.get('oracle_hit_rate'))} "
                f"| {_pct(d.get('hit_rate'))} | {_pct(d.get('error_rate'), 2)} "
                f"| {_num(d.get('precision'))} "
                f"| {_at(server.get('hr_at_er', {}).get('1.0%'), 'hit_rate')} "
                f"| {_at(base.get('hr_at_er', {}).get('1.0%'), 'hit_rate')} "
                f"| {_at(server.get('recall_at_precision', {}).get('0.99'), 'recall')} "
                f"| {_at(f1, 'f1', pct=False)} |"
            )
    extras = _extras(summary)
    if extras:
        lines += ["", *extras]
    return "\n".join(lines) + "\n"


def _extras(summary: dict[str, Any]) -> list[str]:
    out: list[str] = []
    suites = summary["suites"]
    if "S3" in suites:
        for name, row in suites["S3"]["datasets"].items():
            if row.get("roc_auc_similarity") is not None:
                out.append(
                    f"- S3 {name}: ROC-AUC of the compare similarity "
                    f"{row['roc_auc_similarity']:.3f}"
                )
    if "traps" in suites:
        t = suites["traps"]
        out.append(
            f"- traps: {t['traps_missed']} of {t['traps']} traps missed and "
            f"{t['controls_hit']} of {t['controls']} controls hit at the shipped default"
        )
        for kind, row in t["kinds"].items():
            out.append(
                f"  - {kind} (must {row['must']}): {row['passed']}/{row['count']} "
                f"(threshold-only: {row['passed_threshold_only']}/{row['count']})"
            )
    if "S5" in suites:
        c = suites["S5"]["construction"]
        out.append(
            f"- S5: {c['stored']} conversations cached, {c['paraphrase_lookups']} paraphrase "
            f"lookups; {c['generic_follow_ups']} generic follow-ups asked after "
            f"{c['generic_new_turn_lookups']} never-cached and "
            f"{c['generic_cached_turn_lookups']} cached first turns of other conversations"
        )
    agreement = summary.get("lookup_agreement", {})
    if agreement:
        out.append(
            f"- lookup() replayed on {agreement.get('checked', 0)} lookups: "
            f"{agreement.get('disagreed', 0)} disagreed with explain()"
        )
    return out


def curves_by_dataset(curves: Sequence[Curve]) -> dict[str, list[Curve]]:
    out: dict[str, list[Curve]] = {}
    for curve in curves:
        out.setdefault(curve.dataset, []).append(curve)
    return out
