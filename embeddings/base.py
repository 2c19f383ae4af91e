"""The embedder interface the cache depends on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns a batch of texts into an L2-normalised float32 matrix of shape (n, dim)."""

    @property
    def dim(self) -> int:
        """Width of every vector this embedder returns."""
        ...

    @property
    def name(self) -> str:
        """A short identifier of the model, recorded beside the index it filled."""
        ...

    def embed(self, texts: Sequence[str]) -> Matrix:
        """Embed `texts`; row i is the unit vector of texts[i]."""
        ...


@runtime_checkable
class TokenEmbedder(Embedder, Protocol):
    """An embedder that can also return, from the same model call, the unit vector of each
    word piece of each text in context (the model's last layer, special tokens left out)."""

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[Matrix, list[Matrix]]:
        """The vectors of `embed`, and per text a (pieces, dim) matrix of unit rows."""
        ...


def l2_normalise(matrix: npt.NDArray[np.floating]) -> Matrix:
    """Return `matrix` as float32 rows of unit length (zero rows stay zero)."""
    out = np.asarray(matrix, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-d matrix, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0
    return np.ascontiguousarray(out / norms, dtype=np.float32)
