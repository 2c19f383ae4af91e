"""Choosing and loading the embedding backend: ONNX Runtime by default, torch as the fallback."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from .base import Embedder

log = logging.getLogger(__name__)

Backend = Literal["onnx", "onnx-int8", "torch"]


def default_graph_dir() -> Path:
    """Where exported ONNX graphs are kept when no folder is given: the user's cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semcache" / "onnx"


def load_embedder(
    model_path: str | Path | None = None,
    *,
    backend: Backend = "onnx",
    graph_dir: str | Path | None = None,
    threads: int = 0,
    spin: bool = True,
) -> Embedder:
    """Load the model folder (default all-MiniLM-L6-v2) with the chosen backend.

    `onnx` and `torch` give the same vectors and the same name; `onnx-int8` (int8 weights,
    about 2x faster again) gives vectors within cosine ~0.98 and another name. If the ONNX
    export fails (an architecture the exporter cannot trace, a mismatch with torch), the torch
    backend is used and a warning says why, because a slower server is better than none.
    `spin` lets ONNX Runtime's threads spin within a call (faster alone, see OnnxEmbedder).
    """
    if backend in ("onnx", "onnx-int8"):
        from .onnx_embedder import ExportError, OnnxEmbedder

        try:
            return OnnxEmbedder(
                model_path,
                cache_dir=graph_dir if graph_dir is not None else default_graph_dir(),
                threads=threads,
                quantized=backend == "onnx-int8",
                spin=spin,
            )
        except (ExportError, ImportError) as exc:
            log.warning("ONNX backend unavailable (%s); using sentence-transformers", exc)
    elif backend != "torch":
        raise ValueError(
            f"unknown embedder backend {backend!r}; use 'onnx', 'onnx-int8' or 'torch'"
        )
    from .sentence import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(model_path)
