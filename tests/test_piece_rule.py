"""The word-piece rule (`piece_weight`): pieces stored with each phrasing, and the score moved by
the agreement gap between the served answer and its nearest rivals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from cache import CacheConfig, SemanticCache, Usage, semantic
from cache.semantic import PIECE_PIVOT, NewEntry, agreement
from embeddings import Matrix, TokenEmbedder
from tests.fakes import HashingEmbedder

NS = "faq"
ANSWERS = {
    "Your card payment was declined by the merchant.": [
        "why was my card payment declined",
        "card payment declined at the shop",
        "my card payment got refused",
    ],
    "Your transfer was declined by the bank.": [
        "why was my transfer declined",
        "transfer declined to my landlord",
        "my transfer got refused",
    ],
}
QUERY = "why was my payment declined or refused"  # its words are nearly all in both answers


class PieceEmbedder(HashingEmbedder):
    """Word pieces: one unit vector per word, the word's own hashing embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.piece_calls = 0

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[Matrix, list[Matrix]]:
        self.piece_calls += 1
        words = HashingEmbedder(self.dim)
        return self.embed(texts), [words.embed(t.split() or [""]) for t in texts]


def fill(cache: SemanticCache) -> None:
    cache.put_batch(
        [
            NewEntry(question=q, answer=a, model="claude-haiku-4-5", usage=Usage(), namespace=NS)
            for a, qs in ANSWERS.items()
            for q in qs
        ]
    )


def open_cache(path: Path, weight: float, embedder: HashingEmbedder) -> SemanticCache:
    config = CacheConfig(piece_weight=weight, guards=False)
    return SemanticCache(path, embedder, config=config)


def test_the_gap_moves_the_score_and_survives_a_restart(tmp_path: Path) -> None:
    embedder = PieceEmbedder()
    assert isinstance(embedder, TokenEmbedder)
    plain = open_cache(tmp_path / "plain", 0.0, embedder)
    fill(plain)
    before = plain.explain(QUERY, NS)
    assert before is not None and before.piece_gap is None  # off: not measured
    plain.close()
    assert embedder.piece_calls == 0  # and no word pieces asked for

    cache = open_cache(tmp_path / "pieces", 1.0, embedder)
    fill(cache)
    found = cache.explain(QUERY, NS)
    assert found is not None and found.piece_gap is not None
    assert found.entry.answer == before.entry.answer
    assert found.piece_gap < PIECE_PIVOT  # close siblings: the rule has something to do
    expected = before.similarity - max(0.0, PIECE_PIVOT - found.piece_gap)
    assert found.similarity == pytest.approx(expected, abs=1e-6)
    cache.close()

    reopened = open_cache(tmp_path / "pieces", 1.0, PieceEmbedder())
    again = reopened.explain(QUERY, NS)
    assert again is not None and again.piece_gap == pytest.approx(found.piece_gap, abs=1e-6)
    reopened.close()


def test_pieces_go_with_their_entry(tmp_path: Path) -> None:
    cache = open_cache(tmp_path, 1.0, PieceEmbedder())
    fill(cache)
    entry = cache.explain(QUERY, NS)
    assert entry is not None
    int_id = int(entry.entry.id, 16)
    stored = cache._store.get_pieces(int_id)
    assert stored is not None
    rows, scales = stored
    assert rows.dtype == np.int8 and rows.shape[0] == len(entry.entry.normalized_question.split())
    assert scales.shape == (rows.shape[0], 1)
    cache.delete(entry.entry.id)
    assert cache._store.get_pieces(int_id) is None

    others = [i for i, _ in cache._store.iter_entries()]
    assert len(others) == 5 and all(cache._store.get_pieces(i) is not None for i in others)
    cache.set_version(NS)  # a bump, then the purge evicts the old version's records
    cache.purge()
    assert [i for i, _ in cache._store.iter_entries()] == []
    assert all(cache._store.get_pieces(i) is None for i in others)
    cache.close()


def test_the_weight_is_a_validated_setting() -> None:
    from cache import InvalidInput
    from server.settings import Settings

    assert Settings.load(environ={}).piece_weight == CacheConfig().piece_weight > 0  # on
    assert Settings.load(environ={"SEMCACHE_PIECE_WEIGHT": "0"}).piece_weight == 0.0
    with pytest.raises(InvalidInput, match="piece_weight"):
        Settings.load(environ={"SEMCACHE_PIECE_WEIGHT": "-1"})


def test_a_model_without_word_pieces_keeps_the_rule_off(tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    cache = open_cache(tmp_path, 1.0, embedder)
    fill(cache)
    found = cache.explain(QUERY, NS)
    assert found is not None and found.piece_gap is None
    assert all(cache._store.get_pieces(i) is None for i, _ in cache._store.iter_entries())
    cache.close()


def test_the_evaluation_memo_gives_pieces_once_per_text() -> None:
    from cache.quality.memo import MemoEmbedder

    base = PieceEmbedder()
    memo = MemoEmbedder(base)
    assert memo.has_tokens and not MemoEmbedder(HashingEmbedder()).has_tokens
    vectors, pieces = memo.embed_with_tokens(
        ["card declined", "transfer declined", "card declined"]
    )
    assert vectors.shape == (3, base.dim) and [len(p) for p in pieces] == [2, 2, 2]
    np.testing.assert_allclose(pieces[0], pieces[2])
    np.testing.assert_allclose(
        pieces[0][0], HashingEmbedder(base.dim).embed(["card"])[0], atol=1e-3
    )
    calls = base.piece_calls
    memo.embed_with_tokens(["transfer declined"])
    assert base.piece_calls == calls  # remembered
    with pytest.raises(TypeError):
        MemoEmbedder(HashingEmbedder()).embed_with_tokens(["x"])


def put_all(cache: SemanticCache, answers: dict[str, list[str]]) -> None:
    cache.put_batch(
        [
            NewEntry(question=q, answer=a, model="claude-haiku-4-5", usage=Usage(), namespace=NS)
            for a, qs in answers.items()
            for q in qs
        ]
    )


def test_the_served_answer_must_beat_every_near_rival(tmp_path: Path) -> None:
    # "refused" is only in the farthest answer's phrasings: it covers the question's words
    # best, though no phrasing of it comes near the question as a whole.
    question = "why was my payment declined or refused"
    answers = {
        "served": ["why was my payment declined", "why was my payment declined today"],
        "nearest rival": ["why was my payment"],
        "far rival": ["refused or declined", "why was it", "my payment"],
    }
    embedder = PieceEmbedder()
    cache = open_cache(tmp_path, 1.0, embedder)
    put_all(cache, answers)
    found = cache.explain(question, NS)
    assert found is not None and found.entry.answer == "served"
    words = HashingEmbedder(embedder.dim)
    query = words.embed(question.split())
    agree = {
        a: agreement(query, words.embed([w for q in qs for w in q.split()]))
        for a, qs in answers.items()
    }
    assert agree["far rival"] > agree["nearest rival"]  # the case this test is about
    assert found.piece_gap == pytest.approx(agree["served"] - agree["far rival"], abs=1e-3)
    assert found.piece_gap < 0 < agree["served"] - agree["nearest rival"]
    cache.close()


def test_word_pieces_in_memory_stay_within_their_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = open_cache(tmp_path, 1.0, PieceEmbedder())
    fill(cache)
    assert cache.explain(QUERY, NS) is not None
    held = sum(bag.nbytes for bag in cache._bags.values())
    assert len(cache._bags) == 2 and cache._bag_bytes == held
    monkeypatch.setattr(semantic, "BAG_BYTES", held // 2)
    cache._bags.clear()
    cache._bag_bytes = 0
    again = cache.explain(QUERY, NS)
    assert again is not None and len(cache._bags) == 1  # the older answer's went
    assert cache._bag_bytes == sum(bag.nbytes for bag in cache._bags.values())
    cache.close()


def test_one_phrasing_per_answer_costs_no_word_pieces(tmp_path: Path) -> None:
    # As /v1/ask stores its misses: the rule has nothing to compare, so nothing is stored
    # and lookups ask the model for the sentence vector only.
    embedder = PieceEmbedder()
    cache = open_cache(tmp_path, 2.0, embedder)
    put_all(cache, {f"answer {n}": [q] for n, q in enumerate(ANSWERS[next(iter(ANSWERS))])})
    found = cache.explain(QUERY, NS)
    assert found is not None and found.piece_gap is None
    assert embedder.piece_calls == 0
    assert all(cache._store.get_pieces(i) is None for i, _ in cache._store.iter_entries())
    cache.close()


def test_phrasings_stored_before_the_first_alias_get_their_pieces(tmp_path: Path) -> None:
    (served, phrasings), (rival, others) = ANSWERS.items()
    cache = open_cache(tmp_path, 1.0, PieceEmbedder())
    put_all(cache, {served: phrasings[:1], rival: others[:1]})  # one phrasing each: no pieces
    ids = {entry.answer: i for i, entry in cache._store.iter_entries()}
    first_served, first_rival = ids[served], ids[rival]
    assert cache._store.get_pieces(first_served) is None
    assert cache._store.get_pieces(first_rival) is None
    put_all(cache, {served: phrasings[1:]})  # the served answer gets aliases
    # its lone earlier phrasing got its pieces with the write; the rival's, still alone, not
    assert cache._store.get_pieces(first_served) is not None
    assert cache._store.get_pieces(first_rival) is None
    found = cache.explain(QUERY, NS)
    assert found is not None and found.piece_gap is not None  # the rival's computed for it
    assert cache._store.get_pieces(first_rival) is None  # a lookup never writes

    complete = open_cache(tmp_path / "complete", 1.0, PieceEmbedder())
    put_all(complete, {served: phrasings, rival: others[:1]})  # every phrasing with pieces
    expected = complete.explain(QUERY, NS)
    assert expected is not None and expected.piece_gap is not None
    assert found.entry.answer == expected.entry.answer
    assert found.piece_gap == pytest.approx(expected.piece_gap, abs=0.02)  # int8 vs float
    complete.close()
    cache.close()
