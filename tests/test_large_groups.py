"""Large groups: the move to an IVF index, batch writes and the fast start-up scan.

The IVF policy is shrunk (2,000 entries, 16 lists) so that the code paths a million-entry
namespace takes run here in a second; benchmarks/bench_scale.py measures the real sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import cache.index as index_module
from cache import IndexPolicy, InvalidInput, NewEntry, SemanticCache, Usage
from cache.entry import Entry
from cache.index import GroupIndex
from cache.store import EntryStore
from tests.fakes import FakeClock, HashingEmbedder, count_searches

MakeCache = Callable[..., SemanticCache]
USAGE = Usage(input_tokens=10, output_tokens=5)
DIM = 32
# Probing every list makes the IVF search exact, so its results can be compared one to one.
EXACT_IVF = IndexPolicy(ivf_min_entries=2_000, ivf_lists=16, ivf_probes=16)
SMALL_IVF = IndexPolicy(ivf_min_entries=2_000, ivf_lists=16, ivf_probes=4)


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def filled(policy: IndexPolicy, count: int = 2_500) -> tuple[GroupIndex, np.ndarray]:
    group = GroupIndex(DIM, policy=policy)
    vectors = unit_rows(count, seed=1)
    group.add(list(range(count)), vectors, [None] * count, [i % 50 for i in range(count)])
    return group, vectors


def test_a_large_group_moves_to_ivf_with_the_same_results() -> None:
    group, vectors = filled(EXACT_IVF)
    queries = unit_rows(20, seed=2)
    before = [group.search(q, now=0.0) for q in queries]
    small = GroupIndex(DIM, policy=EXACT_IVF)
    small.add([1, 2], vectors[:2], [None, None], [0, 0])
    assert small.upgrade() is False and small.kind == "flat"  # below the policy's size

    assert group.upgrade() is True and group.kind == "ivf"
    assert group.upgrade() is False  # once
    after = [group.search(q, now=0.0) for q in queries]
    for old, new in zip(before, after, strict=True):
        assert [i for i, _ in old] == [i for i, _ in new]
        assert np.allclose([s for _, s in old], [s for _, s in new], atol=1e-5)
    assert group.index_ids() == set(range(2_500))
    # centroids of an answer's phrasings are read back from the IVF index by id
    sims = group.answer_similarities(vectors[7], [7 % 50])
    members = vectors[[i for i in range(2_500) if i % 50 == 7]].mean(axis=0)
    expected = float(members @ vectors[7]) / float(np.linalg.norm(members))
    assert sims[7] == pytest.approx(expected, abs=1e-5)


def test_ivf_removes_in_place_and_skips_expired() -> None:
    group, vectors = filled(EXACT_IVF)
    group.upgrade()
    assert group.search(vectors[5], now=0.0)[0][0] == 5
    assert group.remove([5, 6, 999_999]) == 2
    assert 5 not in {i for i, _ in group.search(vectors[5], now=0.0)}
    assert group.index_ids() == set(range(2_500)) - {5, 6}
    group.add([10], vectors[10:11], [100.0], [0])  # upsert with a TTL
    assert group.search(vectors[10], now=50.0)[0][0] == 10
    assert 10 not in {i for i, _ in group.search(vectors[10], now=150.0)}
    assert len(group.index_ids()) == 2_498  # the upsert replaced, it did not duplicate


def test_writes_during_the_upgrade_are_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    group, vectors = filled(EXACT_IVF)
    fresh = unit_rows(3, seed=9)
    build = index_module._ivf_index

    def build_while_writing(*args: object) -> object:
        built = build(*args)  # type: ignore[arg-type]
        # What other threads may do while the new index trains, outside the group's lock:
        group.add([9_001, 9_002], fresh[:2], [None, None], [1, 1])  # new ids
        group.add([3], fresh[2:3], [None], [1])  # a rewritten question
        group.remove([4, 9_002])  # a delete, and a delete of a write made meanwhile
        return built

    monkeypatch.setattr(index_module, "_ivf_index", build_while_writing)
    assert group.upgrade() is True and group.kind == "ivf"
    assert group.index_ids() == (set(range(2_500)) - {4}) | {9_001}
    assert group.search(fresh[0], now=0.0)[0][0] == 9_001
    nearest = group.search(fresh[2], now=0.0)[0]
    assert nearest[0] == 3 and nearest[1] == pytest.approx(1.0, abs=1e-5)
    assert 3 not in {i for i, _ in group.search(vectors[3], now=0.0)[:1]}


def test_a_saved_ivf_index_loads_as_ivf(tmp_path: Path) -> None:
    group, vectors = filled(SMALL_IVF)
    group.upgrade()
    group.save(tmp_path / "g.faiss")
    loaded = GroupIndex.load(tmp_path / "g.faiss", DIM, SMALL_IVF)
    assert loaded.kind == "ivf" and loaded.index_ids() == set(range(2_500))
    for int_id in (0, 1_234, 2_499):
        loaded.track(int_id, None, 0)
        assert loaded.search(vectors[int_id], now=0.0)[0][0] == int_id
    with pytest.raises(ValueError, match="dimension"):
        GroupIndex.load(tmp_path / "g.faiss", DIM + 1)


def questions(count: int, start: int = 0) -> list[str]:
    return [f"q{i} alpha{i % 97} beta{i % 89} gamma{i}" for i in range(start, start + count)]


def batch(texts: list[str], **fields: object) -> list[NewEntry]:
    return [
        NewEntry(question=q, answer=f"answer {q}", model="claude-haiku-4-5", usage=USAGE, **fields)
        for q in texts
    ]  # type: ignore[arg-type]


def test_a_large_namespace_is_served_through_restarts_ttl_and_bumps(
    make_cache: MakeCache, embedder: HashingEmbedder, clock: FakeClock
) -> None:
    cache = make_cache(index=SMALL_IVF)
    cache.put_batch(batch(questions(2_400), namespace="big"))
    cache.put_batch(batch(questions(100, start=5_000), namespace="big", ttl_s=60))
    cache.flush()  # moves the group to IVF and saves it
    group = cache._groups[("big", 1, "")]
    assert group.kind == "ivf"
    probe = questions(1, start=17)[0]
    assert cache.lookup(probe + " please", namespace="big", threshold=0.5).entry.question == probe  # type: ignore[union-attr]
    cache.close()

    calls = embedder.calls
    again = make_cache(index=SMALL_IVF)
    assert (again.indexes_loaded, again.indexes_rebuilt) == (1, 0)
    assert embedder.calls == calls
    assert again._groups[("big", 1, "")].kind == "ivf"
    assert again.lookup(probe + " please", namespace="big", threshold=0.5).hit
    short_lived = questions(1, start=5_010)[0]
    assert again.lookup(short_lived, namespace="big").hit
    clock.advance(61)
    assert not again.lookup(short_lived, namespace="big").hit
    assert not again.lookup(short_lived + " please", namespace="big", threshold=0.0).hit
    assert again.purge() == 100
    assert len(again._groups[("big", 1, "")]) == 2_400
    again.set_version("big")
    assert not again.lookup(probe, namespace="big", threshold=0.0).hit


def test_a_large_index_is_saved_on_its_interval_and_at_shutdown(
    make_cache: MakeCache, tmp_path: Path
) -> None:
    policy = IndexPolicy(
        ivf_min_entries=2_000, ivf_lists=16, ivf_probes=4, large_save_interval_s=3_600
    )
    path = tmp_path / "data" / "index" / "big@1.faiss"
    cache = make_cache(index=policy)
    cache.put_batch(batch(questions(2_100), namespace="big"))
    cache.flush()
    first_save = path.read_bytes()  # a new group is saved at once
    cache.put_batch(batch(questions(50, start=3_000), namespace="big"))
    cache.flush()
    assert path.read_bytes() == first_save  # not again within the interval
    # A crash now: the file lags the store by 50 entries, and is caught up at start-up.
    cache._store.close()
    again = make_cache(index=policy)
    assert (again.indexes_loaded, again.indexes_patched, again.indexes_rebuilt) == (1, 1, 0)
    late = questions(1, start=3_049)[0]
    assert again.lookup(late + " please", namespace="big", threshold=0.5).entry.question == late  # type: ignore[union-attr]
    again.close()  # the final flush writes it
    assert path.read_bytes() != first_save
    third = make_cache(index=policy)
    assert (third.indexes_loaded, third.indexes_patched, third.indexes_rebuilt) == (1, 0, 0)


def test_put_batch_is_all_or_nothing_and_embeds_once(
    make_cache: MakeCache, embedder: HashingEmbedder
) -> None:
    cache = make_cache()
    bad = [*batch(questions(5)), *batch(["   "])]
    with pytest.raises(InvalidInput):
        cache.put_batch(bad)
    assert cache.stats()[0].entries == 0 and embedder.calls == 0

    calls = embedder.calls
    stored = cache.put_batch(
        [*batch(questions(300)), *batch(questions(1)), *batch(questions(2), namespace="other")]
    )
    assert embedder.calls - calls == 2  # 303 texts in batches of 256
    assert len(stored) == 303
    assert cache.stats()[1]["default"].entries == 300  # a repeated question is one entry
    assert cache.stats()[1]["other"].entries == 2
    embedder.fail = True
    with pytest.raises(Exception, match="nothing was stored"):
        cache.put_batch(batch(questions(3, start=900)))
    embedder.fail = False
    assert cache.stats()[1]["default"].entries == 300


def test_the_start_up_scan_reads_what_diskcache_holds(tmp_path: Path) -> None:
    store = EntryStore(tmp_path / "store")
    big = "x" * 150_000  # past diskcache's 32 KB limit: kept in a file of its own
    rows = []
    for i, answer in enumerate(["short answer", big, "another"]):
        entry = Entry(
            id=f"{i:016x}",
            namespace="ns",
            catalog_version=1,
            question=f"q{i}",
            normalized_question=f"q{i}",
            answer=answer,
            model="m",
            usage=USAGE,
            cost_usd=None,
            created_at=0.0,
            expires_at=None,
        )
        rows.append((entry, i + 1, unit_rows(1, seed=i)[0]))
    store.put_entries(rows)
    store.set_version("ns", 3)
    store.set_version("n", 2)
    store.add_negative(42)
    scanned = dict(store.iter_entries())
    # Compared with diskcache's public API, one `get` per key.
    assert scanned == {i + 1: store.get_entry(i + 1) for i in range(3)}
    assert scanned[2].answer == big
    assert store.versions() == {"ns": 3, "n": 2}
    assert store.negatives() == {42}
    store.close()


def test_a_group_knows_whether_any_answer_has_aliases() -> None:
    group = GroupIndex(4)
    vectors = np.eye(4, dtype=np.float32)
    group.add([1, 2], vectors[:2], [None, None], [10, 20])
    assert not group.has_aliases
    group.add([3], vectors[2:3], [None], [10])  # a second phrasing of answer 10
    assert group.has_aliases
    group.add([3], vectors[2:3], [None], [30])  # rewritten with another answer
    assert not group.has_aliases
    group.add([4], vectors[3:4], [None], [20])
    assert group.has_aliases
    group.remove([2])
    assert not group.has_aliases


def test_a_large_group_with_aliases_reads_its_neighbours_in_one_search(
    make_cache: MakeCache,
) -> None:
    cache = make_cache(index=SMALL_IVF, threshold=0.0)
    popular = [f"alpha beta gamma variant{i}" for i in range(20)]  # fills the 16 read first
    cache.put_many(popular, "popular answer", model="claude-haiku-4-5", usage=USAGE)
    cache.put_batch(batch([*questions(2_400), "alpha omega psi chi"]))
    cache.flush()
    (group,) = cache._groups.values()
    assert group.kind == "ivf" and group.has_aliases
    searches = count_searches(group)
    found = cache.explain("alpha beta gamma")
    assert found is not None and found.entry.answer == "popular answer"
    assert found.runner_up is not None and searches == [128]
