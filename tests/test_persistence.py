"""Restarts: every acknowledged entry is served again, whatever state the index file is in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cache import CacheConfig, SemanticCache, Usage
from tests.fakes import FakeClock, HashingEmbedder

MakeCache = Callable[..., SemanticCache]
USAGE = Usage(input_tokens=10, output_tokens=5)
QUESTIONS = [f"item{i} code{i} ref{i} tag{i}" for i in range(40)]


def fill(cache: SemanticCache, questions: list[str] = QUESTIONS) -> None:
    for q in questions:
        cache.put(q, f"answer to {q}", model="claude-haiku-4-5", usage=USAGE, namespace="ns")


def assert_all_served(cache: SemanticCache, questions: list[str] = QUESTIONS) -> None:
    for q in questions:
        exact = cache.lookup(q, namespace="ns")
        assert exact.entry is not None and exact.entry.answer == f"answer to {q}"
        # the semantic path goes through the index, so it proves the index too
        near = cache.lookup(q + " please", namespace="ns", threshold=0.5)
        assert near.match == "semantic" and near.entry is not None
        assert near.entry.answer == f"answer to {q}"


def index_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "index" / "ns@1.faiss"


def test_close_and_reopen(make_cache: MakeCache, embedder: HashingEmbedder) -> None:
    first = make_cache()
    fill(first)
    first.lookup(QUESTIONS[0], namespace="ns")
    first.close()
    calls = embedder.calls
    second = make_cache()
    assert embedder.calls == calls  # nothing re-embedded
    assert (second.indexes_loaded, second.indexes_rebuilt) == (1, 0)  # the saved file was used
    assert_all_served(second)
    _, rows = second.stats()
    assert rows["ns"].entries == len(QUESTIONS)
    assert rows["ns"].exact_hits >= 1 + len(QUESTIONS)  # counters survived
    assert second.get(second.lookup(QUESTIONS[1], namespace="ns").entry.id).hit_count >= 1  # type: ignore[union-attr]


def test_versions_survive_restart(make_cache: MakeCache) -> None:
    first = make_cache()
    fill(first, QUESTIONS[:3])
    first.set_version("ns")
    first.close()
    second = make_cache()
    assert second.version("ns") == 2
    assert not second.lookup(QUESTIONS[0], namespace="ns", threshold=0.0).hit
    assert second.purge() == 3


@pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated"])
def test_index_rebuilt_from_store(
    make_cache: MakeCache, tmp_path: Path, embedder: HashingEmbedder, damage: str
) -> None:
    first = make_cache()
    fill(first)
    first.close()
    path = index_file(tmp_path)
    assert path.exists()
    if damage == "missing":
        path.unlink()
    elif damage == "corrupt":
        path.write_bytes(b"not a faiss index at all" * 10)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    calls = embedder.calls
    second = make_cache()
    assert embedder.calls == calls  # rebuilt from stored vectors, not re-embedded
    assert (second.indexes_loaded, second.indexes_rebuilt) == (0, 1)
    assert_all_served(second)
    second.flush()
    group = second._groups[("ns", 1, "")]
    assert path.exists() and group.index_ids() == group.ids()


def test_stale_index_after_crash(make_cache: MakeCache, tmp_path: Path) -> None:
    first = make_cache()
    fill(first, QUESTIONS[:20])
    first.flush()  # the index file now holds 20 entries
    fill(first, QUESTIONS[20:])
    first.delete(first.lookup(QUESTIONS[0], namespace="ns").entry.id)  # type: ignore[union-attr]
    # a crash: the store has every acknowledged write, the index file is behind
    first._store.close()
    second = make_cache()
    # caught up from the store: 20 vectors added, the deleted entry's removed
    assert (second.indexes_loaded, second.indexes_patched, second.indexes_rebuilt) == (1, 1, 0)
    assert_all_served(second, QUESTIONS[1:])
    assert not second.lookup(QUESTIONS[0], namespace="ns").hit
    assert not second.lookup(QUESTIONS[0] + " please", namespace="ns", threshold=0.99).hit
    group = second._groups[("ns", 1, "")]
    served = [second.lookup(q, namespace="ns").entry for q in QUESTIONS[1:]]
    assert group.index_ids() == group.ids() == {int(e.id, 16) for e in served if e is not None}


def test_new_embedding_model_reembeds_everything(tmp_path: Path, clock: FakeClock) -> None:
    old = SemanticCache(tmp_path / "data", HashingEmbedder(dim=32), clock=clock)
    fill(old)
    old.close()
    new_model = HashingEmbedder(dim=48)
    new = SemanticCache(
        tmp_path / "data", new_model, config=CacheConfig(threshold=0.5), clock=clock
    )
    try:
        assert len(new_model.texts) == len(QUESTIONS)
        assert_all_served(new)
    finally:
        new.close()
    # and the re-embedded vectors were stored: a third open embeds nothing more
    again_model = HashingEmbedder(dim=48)
    again = SemanticCache(tmp_path / "data", again_model, clock=clock)
    try:
        assert again_model.calls == 0
        assert_all_served(again)
    finally:
        again.close()


def test_expired_entries_stay_unservable_after_restart(
    make_cache: MakeCache, clock: FakeClock
) -> None:
    first = make_cache()
    first.put("short", "S", model="m", usage=USAGE, ttl_s=5, namespace="ns")
    first.close()
    clock.advance(10)
    second = make_cache()
    assert not second.lookup("short", namespace="ns", threshold=0.0).hit
    assert second.purge() == 1
