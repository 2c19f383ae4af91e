"""`semcache calibrate`: threshold and margin for a target precision, via the cache's rule."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cache.calibrate import calibrate, read_labelled, render
from tests.fakes import HashingEmbedder


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def classes_file(tmp_path: Path) -> Path:
    rows = []
    for topic in ("card", "loan", "rate", "atm", "fee", "app"):
        for variant in range(10):
            # three words shared within a class, none across: separable, but not exactly equal
            rows.append([f"{topic} {topic}word {topic}thing variant{chr(97 + variant)}", topic])
    return write_csv(tmp_path / "classes.csv", ["text", "category"], rows)


def test_classes_reach_the_target_with_the_rule(tmp_path: Path) -> None:
    result = calibrate(classes_file(tmp_path), HashingEmbedder(dim=256), progress=False)
    assert result.kind == "classes" and result.rows == 60
    assert result.threshold is not None and result.margin is not None
    assert result.precision is not None and result.precision >= 0.99
    assert result.recall is not None and result.recall > 0
    chosen = next(row for row in result.curve if row["tau"] == result.threshold)
    assert chosen["precision"] == pytest.approx(result.precision)
    assert "SEMCACHE_THRESHOLD=" in render(result)


def test_pairs(tmp_path: Path) -> None:
    rows = [
        ["how do i reset my password", "how do i reset my password please", "1"],
        ["open an account today", "open an account today now", "1"],
        ["what is the fee", "what is the fee for atm", "1"],
        ["how do i reset my password", "where is my parcel", "0"],
        ["refund 5 eur", "refund 50 eur", "0"],
    ] * 12
    path = write_csv(tmp_path / "pairs.csv", ["question1", "question2", "is_duplicate"], rows)
    result = calibrate(path, HashingEmbedder(dim=256), target_precision=0.95, progress=False)
    assert result.kind == "pairs" and result.margin is None
    assert result.precision == 1.0 and result.recall == 1.0  # guards veto the number trap


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need columns"):
        read_labelled(write_csv(tmp_path / "x.csv", ["a", "b"], [["1", "2"]]))
    with pytest.raises(ValueError, match="no rows"):
        read_labelled(write_csv(tmp_path / "y.csv", ["text", "category"], []))


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli import main

    path = classes_file(tmp_path)
    assert main(["calibrate", str(path), "--target-precision", "0.9"]) == 0  # the real model
    out = capsys.readouterr().out
    assert "60 labelled classes" in out and "tau" in out
    assert main(["calibrate", str(tmp_path / "missing.csv")]) == 2
    assert main(["calibrate", str(path), "--target-precision", "1.5"]) == 2
