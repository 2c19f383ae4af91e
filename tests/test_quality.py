"""The answer-quality evaluation: metrics on hand-made outcomes, loaders of both formats,
and an end-to-end run on tiny fixtures through the cache (HashingEmbedder, no model)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cache import CacheConfig
from cache.pricing import PriceTable
from cache.quality import loaders, metrics, run_suites
from cache.quality.evaluate import (
    TAUS,
    Context,
    Query,
    Stored,
    cache_key_text,
    embedded_texts,
    grid,
    open_cache,
    run_lookups,
)
from cache.quality.memo import MemoEmbedder
from cache.quality.outputs import CSV_COLUMNS
from cache.quality.suites import build_chain_sets, default_traps_path, is_generic
from tests.fakes import HashingEmbedder

FIXTURES = Path(__file__).parent / "fixtures" / "quality"
ALL = ("S1", "S1b", "S2", "S3", "S5", "S6", "traps")

# metrics -------------------------------------------------------------------------------------


def test_wilson_lower_bound_matches_the_closed_form() -> None:
    assert metrics.wilson_lower(8, 10) == pytest.approx(0.4901624715, abs=1e-9)
    assert metrics.wilson_lower(10, 10) == pytest.approx(0.7224672001, abs=1e-9)
    assert metrics.wilson_lower(0, 10) == 0.0
    assert math.isnan(metrics.wilson_lower(0, 0))


def test_point_counts_each_outcome() -> None:
    accepted = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    correct = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    possible = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    p = metrics.point(0.9, accepted, correct, possible)
    assert (p.tp, p.fp, p.fn, p.tn, p.n) == (2, 1, 1, 2, 6)
    assert p.hit_rate == 0.5
    assert p.error_rate == pytest.approx(1 / 6)
    assert p.false_hit_rate == pytest.approx(1 / 3)
    assert p.precision == pytest.approx(2 / 3)
    assert p.recall == pytest.approx(2 / 3)
    assert p.f1 == pytest.approx(2 / 3)
    assert p.precision_lb95 == pytest.approx(metrics.wilson_lower(2, 3))


def test_undefined_ratios_are_nan_and_null() -> None:
    p = metrics.point(0.9, np.zeros(3, bool), np.zeros(3, bool), np.zeros(3, bool))
    assert p.tn == 3 and math.isnan(p.precision) and math.isnan(p.recall)
    assert p.as_dict()["precision"] is None and p.as_dict()["tn"] == 3


# Three thresholds over 100 lookups, 60 of which could hit.
CURVE = [
    metrics.Point(0.95, tp=10, fp=0, fn=50, tn=40),  # HR .10, ER 0, P 1
    metrics.Point(0.90, tp=30, fp=1, fn=30, tn=39),  # HR .31, ER .01, P .968
    metrics.Point(0.85, tp=50, fp=3, fn=10, tn=37),  # HR .53, ER .03, P .943
]


def test_hit_rate_at_error_rate_takes_the_best_admissible_point() -> None:
    assert metrics.hr_at_er(CURVE, 0.005) is CURVE[0]
    assert metrics.hr_at_er(CURVE, 0.01) is CURVE[1]
    assert metrics.hr_at_er(CURVE, 0.02) is CURVE[1]
    assert metrics.hr_at_er(CURVE, 0.03) is CURVE[2]
    assert metrics.hr_at_er([metrics.Point(0.5, 1, 9, 0, 0)], 0.01) is None


def test_recall_at_precision_needs_thirty_hits() -> None:
    assert metrics.recall_at_precision(CURVE, 0.95) is CURVE[1]
    assert metrics.recall_at_precision(CURVE, 0.99) is None  # only 10 hits reach it
    assert metrics.recall_at_precision(CURVE, 0.99, min_hits=5) is CURVE[0]


def test_best_f1_and_area_under_precision_hit_rate() -> None:
    best = metrics.best_f1(CURVE)
    assert best is CURVE[2] and best.f1 == pytest.approx(
        2 * (50 / 53) * (50 / 60) / (50 / 53 + 50 / 60)
    )
    # trapezoids between (0.10, 1), (0.31, 30/31), (0.53, 50/53)
    assert metrics.area_precision_hit_rate(CURVE) == pytest.approx(0.41683810103, abs=1e-10)
    assert math.isnan(metrics.area_precision_hit_rate(CURVE[:1]))


def test_roc_auc_counts_ordered_pairs_and_halves_ties() -> None:
    assert metrics.roc_auc([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0]) == pytest.approx(5 / 6)
    assert metrics.roc_auc([0.5, 0.5], [1, 0]) == 0.5
    assert metrics.roc_auc([0.2, 0.9, 0.9, 0.1], [0, 1, 0, 1]) == pytest.approx(1.5 / 4)
    assert math.isnan(metrics.roc_auc([0.3, 0.4], [1, 1]))


def test_operating_points_are_json_ready() -> None:
    ops = metrics.operating_points(CURVE)
    assert ops["hr_at_er"]["1.0%"]["tau"] == 0.90
    assert ops["recall_at_precision"]["0.99"] is None
    json.dumps(ops)


def test_threshold_grid_is_exact_hundredths() -> None:
    assert TAUS[0] == 0.30 and TAUS[-1] == 1.00 and len(TAUS) == 71
    assert 0.9 in TAUS and grid(0.70, 0.98, 0.02)[-1] == 0.98


# loaders -------------------------------------------------------------------------------------


def test_banking77_dev_and_test_files() -> None:
    dev = loaders.load_banking77(FIXTURES / "dev")
    test = loaders.load_banking77(FIXTURES / "test")
    assert dev.source == "banking77/train.csv" and test.source == "banking77/test.csv"
    assert len({u.label for u in dev.items}) == 6 and all(u.text for u in test.items)
    with pytest.raises(loaders.DataError):
        loaders.load_banking77(FIXTURES / "dev", "test")


def test_clinc150_val_or_test_keys() -> None:
    dev = loaders.load_clinc150(FIXTURES / "dev")
    test = loaders.load_clinc150(FIXTURES / "test")
    assert dev.source.endswith(":val") and test.source.endswith(":test")
    assert dev.out_of_scope and all(u.label == "oos" for u in test.out_of_scope)
    assert len(dev.train) == 35 and len(test.lookups) == 10


def test_qqp_pairs_and_gptcache_positives() -> None:
    dev = loaders.load_qqp(FIXTURES / "dev")
    test = loaders.load_qqp(FIXTURES / "test")
    assert test.source == "qqp/test.csv" and sum(p.duplicate for p in dev.pairs) == 6
    gpt = loaders.load_gptcache_pairs(FIXTURES / "dev")
    assert gpt is not None and all(p.duplicate for p in gpt.pairs)
    assert loaders.load_gptcache_pairs(FIXTURES / "test") is None


def test_chains_of_both_formats(tmp_path: Path) -> None:
    _, dev = loaders.load_chains(FIXTURES / "dev")
    _, test = loaders.load_chains(FIXTURES / "test")
    assert all(c.answer for c in dev) and all(c.main_paraphrase is None for c in dev)
    assert all(c.answer is None and c.follow_up_paraphrase for c in test)
    (tmp_path / "contextual").mkdir()
    (tmp_path / "contextual" / "bad.json").write_text('[{"question": "x"}]')
    with pytest.raises(loaders.DataError, match="neither known format"):
        loaders.load_chains(tmp_path)


def test_traps_file_is_well_formed() -> None:
    traps, controls = loaders.load_traps(default_traps_path())
    kinds = {t["kind"] for t in traps}
    assert len(traps) >= 60 and len(controls) >= 20
    assert {"number", "date", "name", "negation", "antonym"} <= kinds
    assert min(sum(t["kind"] == k for t in traps) for k in kinds) >= 10
    pairs = [(t["stored"], t["query"]) for t in traps + controls]
    assert len(set(pairs)) == len(pairs) and all(s != q for s, q in pairs)


# memo and S5 construction --------------------------------------------------------------------


def test_memo_embeds_each_text_once_and_reloads_from_disk(tmp_path: Path) -> None:
    base = HashingEmbedder()
    memo = MemoEmbedder(base, tmp_path)
    assert memo.prime(["alpha beta", "gamma", "alpha beta"], progress=False) == 2
    calls = base.calls
    vectors = memo.embed(["gamma", "alpha beta"])
    assert base.calls == calls and memo.misses == 0
    assert np.allclose(vectors, base.embed(["gamma", "alpha beta"]))
    again = MemoEmbedder(HashingEmbedder(), tmp_path)
    assert again.prime(["gamma", "alpha beta"], progress=False) == 0  # read from the files
    assert np.allclose(again.embed(["alpha beta"]), vectors[1:])
    assert again.name == base.name and again.dim == base.dim


def _context(tmp_path: Path) -> Context:
    return Context(
        data_dir=FIXTURES / "dev",
        embedder=MemoEmbedder(HashingEmbedder(), None),
        config=CacheConfig(),
        prices=PriceTable.load(),
        progress=False,
        tmp_dir=tmp_path,
    )


def test_s5_sets_from_dev_chains(tmp_path: Path) -> None:
    _, chains = loaders.load_chains(FIXTURES / "dev")
    sets = build_chain_sets(_context(tmp_path), chains)
    # "What are its types?" is in both files under the same first turn: stored once
    assert sum(f == "What are its types?" for _, f, _ in sets.stored) == 1
    # identical responses: the quantum-mechanics and thermodynamics rewordings are paraphrases
    assert ("What are the laws of thermodynamics?", "What is the second law?") in {
        (m, f) for m, f, _ in sets.paraphrases
    }
    stored_labels = {label for _, _, label in sets.stored}
    assert all(label in stored_labels for _, _, label in sets.paraphrases)
    assert sets.generic_new and sets.generic_cached
    assert all(is_generic(f) for _, f, _ in sets.generic_new + sets.generic_cached)
    stored_mains = {m for m, _, _ in sets.stored}
    assert not {m for m, _, _ in sets.generic_new} & stored_mains
    assert {m for m, _, _ in sets.generic_cached} <= stored_mains


def test_s5_sets_from_test_chains(tmp_path: Path) -> None:
    _, chains = loaders.load_chains(FIXTURES / "test")
    sets = build_chain_sets(_context(tmp_path), chains)
    left_out = sets.notes["never_cached_conversations"]
    assert left_out > 0 and sets.generic_new  # some first turns are kept out of the cache
    assert len(sets.stored) + left_out == len(chains) == len(sets.paraphrases) + left_out
    assert ("Which city is Italy's capital?", "What is that city known for?") in {
        (m, f) for m, f, _ in sets.paraphrases
    }


def test_generic_follow_ups_lean_on_the_previous_turn() -> None:
    assert is_generic("What are its types?")
    assert is_generic("What practical applications does this have in finance?")
    assert not is_generic("What is aggregate demand?")
    assert not is_generic("Which South American country has Portuguese as its official language?")


def test_primed_text_is_the_cache_key() -> None:
    assert cache_key_text("  What IS it?? ", "Tell me about  Rome.") == (
        "tell me about rome\nwhat is it"
    )
    assert embedded_texts("What IS it??", "Tell me about Rome.")[1:] == [
        "what is it",
        "tell me about rome",
    ]
    assert embedded_texts("What IS it??") == ["what is it"]


def test_threshold_only_rule_is_a_static_cosine_threshold(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    stored = [Stored("alpha beta gamma", "one"), Stored("alpha delta epsilon", "one"),
              Stored("zeta eta theta", "two")]  # fmt: skip
    query = Query("alpha beta gamma iota", "one")
    outcomes = run_lookups(ctx, stored, [query])
    with open_cache(ctx, guards=False) as cache:
        cosine = cache.compare(query.question, "alpha beta gamma").similarity
    accepted = outcomes.rules["threshold-only"].accepted[:, 0]
    assert list(accepted) == [cosine >= tau for tau in ctx.taus]
    assert outcomes.rules["threshold-only"].correct[0] and outcomes.possible[0]


# end to end ----------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("split", ["dev", "test"])
def test_run_suites_writes_every_output(tmp_path: Path, split: str) -> None:
    out = tmp_path / "out"
    summary = run_suites(
        FIXTURES / split,
        out,
        embedder=HashingEmbedder(),
        memo_dir=tmp_path / "memo",
        progress=False,
        tmp_dir=tmp_path,
    )
    assert summary["skipped_suites"] == {}
    assert summary["embeddings"]["unprimed_misses"] == 0  # the cache embedded what was primed
    assert summary["lookup_agreement"]["checked"] > 0
    assert summary["lookup_agreement"]["disagreed"] == 0  # lookup() agrees with explain()
    for suite in ALL:
        rows = _read_csv(out / f"{suite}.csv")
        with (out / f"{suite}.csv").open() as handle:
            assert tuple(next(csv.reader(handle))) == CSV_COLUMNS
        assert {r["rule"] for r in rows} == {"server", "threshold-only"}
        assert all(r["suite"] == suite and r["embedder"] == "hashing-64" for r in rows)
        for row in rows:
            assert int(row["tp"]) + int(row["fp"]) + int(row["fn"]) + int(row["tn"]) == int(
                row["n"]
            )
        data = json.loads((out / f"{suite}.json").read_text())
        for dataset in data["datasets"].values():
            assert {"oracle_hit_rate", "default", "rules"} <= set(dataset)
            shipped = dataset["default"]["server"]
            assert shipped["tau"] == CacheConfig().threshold and {
                "hit_rate",
                "error_rate",
                "precision",
            } <= set(shipped)
            ops = dataset["rules"]["server"]
            assert set(ops["hr_at_er"]) == {"0.5%", "1.0%", "2.0%"}
            assert set(ops["recall_at_precision"]) == {"0.95", "0.99"}
            assert "best_f1" in ops and "area_precision_hit_rate" in ops
        assert (out / f"{suite}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s1 = _read_csv(out / "S1.csv")
    assert {r["dataset"] for r in s1} == {"banking77 m=1", "banking77 m=5", "banking77 m=all"}
    assert len([r for r in s1 if r["dataset"] == "banking77 m=1" and r["rule"] == "server"]) == 71
    s6 = json.loads((out / "S6.json").read_text())["datasets"]["banking77 held-out intents"]
    for rule in ("server", "threshold-only"):
        d = s6["default"][rule]
        assert d["tp"] == 0 and d["error_rate"] == d["hit_rate"]  # every hit is wrong
    traps = json.loads((out / "traps.json").read_text())
    assert traps["traps"] >= 60 and traps["controls"] >= 20
    md = (out / "summary.md").read_text()
    assert "| S1 | banking77 m=5 |" in md and "CPUs" in md
    assert json.loads((out / "summary.json").read_text())["machine"]["cpu_count"]


def test_missing_data_skips_the_suite(tmp_path: Path) -> None:
    summary = run_suites(
        tmp_path / "nothing",
        tmp_path / "out",
        suites=["S1", "traps"],
        embedder=HashingEmbedder(),
        memo_dir=tmp_path / "memo",
        progress=False,
        tmp_dir=tmp_path,
    )
    assert set(summary["skipped_suites"]) == {"S1"} and "traps" in summary["suites"]
    with pytest.raises(ValueError, match="unknown suite"):
        run_suites(
            tmp_path,
            tmp_path / "out",
            suites=["S4"],
            embedder=HashingEmbedder(),
            memo_dir=tmp_path / "memo",
        )
