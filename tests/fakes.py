"""Test doubles for the injected dependencies (never for our own code)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import numpy as np

from cache.index import GroupIndex
from embeddings import Matrix, l2_normalise


class HashingEmbedder:
    """Deterministic bag-of-words embedder: texts sharing words get similar vectors.

    Fast and model-free, for unit tests of cache mechanics. Counts its calls so tests can
    prove a path did (or did not) embed.
    """

    def __init__(self, dim: int = 64) -> None:
        self._dim = dim
        self.calls = 0
        self.texts: list[str] = []
        self._lock = threading.Lock()
        self.fail = False

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return f"hashing-{self._dim}"

    def embed(self, texts: Sequence[str]) -> Matrix:
        with self._lock:
            self.calls += 1
            self.texts.extend(texts)
        if self.fail:
            raise RuntimeError("embedder broken on purpose")
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.split():
                digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
                out[row, int.from_bytes(digest, "big") % self._dim] += 1.0
        return l2_normalise(out)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def count_searches(group: GroupIndex) -> list[int]:
    """Record the `k` of every search of `group` from now on, in the list returned."""
    searches: list[int] = []
    search = group.search

    def counted(vector: Matrix, now: float, k: int = 16) -> list[tuple[int, float]]:
        searches.append(k)
        return search(vector, now, k)

    group.search = counted  # type: ignore[method-assign]
    return searches
