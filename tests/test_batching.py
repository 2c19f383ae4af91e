"""Concurrent lookups share embedding calls (the batching the performance work relies on)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from cache import SemanticCache, Usage
from embeddings import BatchingEmbedder, Matrix, TokenEmbedder
from tests.fakes import HashingEmbedder


class SlowEmbedder(HashingEmbedder):
    """A model call that takes time whatever the batch size, like the real one on a CPU."""

    def __init__(self, seconds: float = 0.05) -> None:
        super().__init__()
        self.seconds = seconds
        self.batch_sizes: list[int] = []

    def embed(self, texts: Sequence[str]) -> Matrix:
        time.sleep(self.seconds)
        self.batch_sizes.append(len(texts))
        return super().embed(texts)


def run_threads(n: int, target: object) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        barrier.wait()
        try:
            target(i)  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_calls_share_model_calls_and_get_their_own_rows() -> None:
    inner = SlowEmbedder()
    batching = BatchingEmbedder(inner)
    results: dict[int, Matrix] = {}

    def call(i: int) -> None:
        results[i] = batching.embed([f"question {i}", f"other {i}"])

    assert run_threads(16, call) == []
    assert inner.calls < 16  # requests that queued behind a call shared the next one
    assert sum(inner.batch_sizes) == 32 and max(inner.batch_sizes) > 2
    reference = HashingEmbedder()
    for i, rows in results.items():
        np.testing.assert_allclose(rows, reference.embed([f"question {i}", f"other {i}"]))


def test_a_lone_call_is_not_delayed_and_errors_reach_every_caller() -> None:
    inner = SlowEmbedder(seconds=0.0)
    batching = BatchingEmbedder(inner)
    assert batching.embed(["one"]).shape == (1, inner.dim)
    assert batching.embed([]).shape == (0, inner.dim)
    inner.fail = True
    with pytest.raises(RuntimeError, match="broken on purpose"):
        batching.embed(["two"])
    inner.fail = False
    assert batching.embed(["three"]).shape == (1, inner.dim)  # the failure left no lock behind


def test_concurrent_semantic_lookups_share_embedding_calls(tmp_path: Path) -> None:
    inner = SlowEmbedder()
    cache = SemanticCache(tmp_path / "data", BatchingEmbedder(inner))
    try:
        cache.put("alpha beta gamma", "A", model="claude-haiku-4-5", usage=Usage())
        before = inner.calls
        errors = run_threads(12, lambda i: cache.lookup(f"alpha beta gamma {i}", threshold=0.5))
        assert errors == []
        assert inner.calls - before < 12
        assert cache.stats()[0].lookups == 12
    finally:
        cache.close()


class SlowTokenEmbedder(SlowEmbedder):
    """Also gives word pieces: here one unit vector per word, the word's own embedding."""

    def __init__(self, seconds: float = 0.05) -> None:
        super().__init__(seconds)
        self.token_calls = 0

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[Matrix, list[Matrix]]:
        self.token_calls += 1
        vectors = self.embed(texts)
        return vectors, [HashingEmbedder(self.dim).embed(t.split() or [""]) for t in texts]


def test_word_pieces_ride_along_in_shared_model_calls() -> None:
    inner = SlowTokenEmbedder()
    batching = BatchingEmbedder(inner)
    assert isinstance(inner, TokenEmbedder) and batching.has_tokens
    plain: dict[int, Matrix] = {}
    pieces: dict[int, tuple[Matrix, list[Matrix]]] = {}

    def call(i: int) -> None:
        if i % 2:
            pieces[i] = batching.embed_with_tokens([f"word{i} shared", f"alone{i}"])
        else:
            plain[i] = batching.embed([f"question {i}"])

    assert run_threads(16, call) == []
    assert inner.calls < 16 and sum(inner.batch_sizes) == 8 + 16  # shared, every text once
    assert 0 < inner.token_calls <= inner.calls
    words = HashingEmbedder(inner.dim)
    for i, (vectors, tokens) in pieces.items():
        np.testing.assert_allclose(vectors, words.embed([f"word{i} shared", f"alone{i}"]))
        assert [t.shape[0] for t in tokens] == [2, 1]  # each caller gets its own texts' pieces
        np.testing.assert_allclose(tokens[0], words.embed([f"word{i}", "shared"]))
        np.testing.assert_allclose(tokens[1], words.embed([f"alone{i}"]))
    for i, vectors in plain.items():
        np.testing.assert_allclose(vectors, words.embed([f"question {i}"]))
    before = inner.token_calls
    batching.embed(["plain alone"])
    assert inner.token_calls == before  # a batch where nobody wants pieces does not ask
    empty = batching.embed_with_tokens([])
    assert empty[0].shape == (0, inner.dim) and empty[1] == []


def test_asking_word_pieces_of_a_model_without_them_is_an_error() -> None:
    batching = BatchingEmbedder(SlowEmbedder(seconds=0.0))
    assert not batching.has_tokens
    with pytest.raises(TypeError, match="no word-piece vectors"):
        batching.embed_with_tokens(["anything"])
    assert batching.embed(["anything"]).shape == (1, 64)  # plain calls are unaffected
