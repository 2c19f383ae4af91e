from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embeddings import Embedder, SentenceTransformerEmbedder, l2_normalise


def test_real_embedder_returns_unit_float32_rows(
    real_embedder: SentenceTransformerEmbedder,
) -> None:
    assert isinstance(real_embedder, Embedder)
    assert real_embedder.dim == 384
    vectors = real_embedder.embed(["How do I reset my password?", "how can i reset my password"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) > 0.9
    assert real_embedder.embed([]).shape == (0, 384)


def test_l2_normalise_keeps_zero_rows() -> None:
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == np.float32
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_importing_the_packages_loads_no_model() -> None:
    code = (
        "import sys, server, cache, embeddings\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_configured_model_folder_overrides_the_default(tmp_path: Path) -> None:
    import shutil

    from embeddings import default_model_path

    local = tmp_path / "my-model"
    shutil.copytree(default_model_path(), local)
    embedder = SentenceTransformerEmbedder(local)
    assert embedder.name == "my-model" and embedder.dim == 384
    assert embedder.embed(["hello"]).shape == (1, 384)
    with pytest.raises(FileNotFoundError, match="not found"):
        SentenceTransformerEmbedder(tmp_path / "missing")
