"""The ONNX Runtime backend: torch's vectors, one export reused, and a safe fallback."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from cache import InvalidInput
from embeddings import (
    Embedder,
    SentenceTransformerEmbedder,
    TokenEmbedder,
    default_model_path,
    load_embedder,
)
from embeddings.onnx_embedder import MIN_EXPORT_COSINE, MIN_INT8_COSINE, ExportError, OnnxEmbedder
from server.settings import Settings

TEXTS = [
    "How do I reset my password?",
    "how can i reset my password",
    "Résumé, naïve café: ünïcödé and 日本語のテキスト",
    "",
    "ok",
    "REFUND 50 EUR!!!",
    # Longer than the model's 256-token window: both backends must truncate alike.
    "please explain the fees " * 120,
    *[
        f"question {i} about card number {i * 7} and a transfer of {i * 13} dollars"
        for i in range(70)
    ],
]


def test_onnx_vectors_match_sentence_transformers(
    onnx_embedder: OnnxEmbedder, real_embedder: SentenceTransformerEmbedder
) -> None:
    assert isinstance(onnx_embedder, Embedder)
    assert (onnx_embedder.name, onnx_embedder.dim) == (real_embedder.name, real_embedder.dim)
    ours = onnx_embedder.embed(TEXTS)
    reference = real_embedder.embed(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(ours * reference, axis=1)
    assert float(cosines.min()) >= MIN_EXPORT_COSINE
    # Row order survives the length-sorted batching: each row is its own text's vector.
    assert np.array_equal(np.argmax(ours @ reference.T, axis=1), np.arange(len(TEXTS)))
    assert onnx_embedder.embed([]).shape == (0, 384)


def test_a_batch_gives_the_vectors_of_single_calls(onnx_embedder: OnnxEmbedder) -> None:
    batch = onnx_embedder.embed(TEXTS[:6])
    singles = np.vstack([onnx_embedder.embed([t]) for t in TEXTS[:6]])
    assert np.allclose(batch, singles, atol=1e-5)


def test_word_pieces_come_from_the_same_call(onnx_embedder: OnnxEmbedder) -> None:
    texts = ["why was my card declined", "ok", "declined transfer to my landlord", ""]
    assert isinstance(onnx_embedder, TokenEmbedder)
    vectors, tokens = onnx_embedder.embed_with_tokens(texts)
    assert np.allclose(vectors, onnx_embedder.embed(texts), atol=1e-6)
    # one unit vector per word piece, [CLS] and [SEP] left out ("" keeps both: nothing else)
    assert [len(t) for t in tokens] == [5, 1, 5, 2]
    assert all(t.dtype == np.float32 and t.shape[1] == 384 for t in tokens)
    assert np.allclose(np.linalg.norm(np.vstack(tokens), axis=1), 1.0, atol=1e-5)
    # in context: "declined" is not the same vector in both questions, but close
    card, transfer = tokens[0][4], tokens[2][0]
    assert 0.5 < float(card @ transfer) < 0.99
    alone = onnx_embedder.embed_with_tokens(texts[:1])[1][0]
    assert np.allclose(alone, tokens[0], atol=1e-5)  # batching does not change them
    assert onnx_embedder.embed_with_tokens([])[1] == []


def test_the_export_is_reused_and_a_damaged_one_is_redone(
    onnx_embedder: OnnxEmbedder, tmp_path: Path
) -> None:
    again = OnnxEmbedder(cache_dir=onnx_embedder.graph_path.parent)
    assert again.exported is False and again.graph_path == onnx_embedder.graph_path

    damaged = tmp_path / onnx_embedder.graph_path.name
    damaged.write_bytes(onnx_embedder.graph_path.read_bytes()[:1000])  # a torn copy
    repaired = OnnxEmbedder(cache_dir=tmp_path)
    assert repaired.exported is True
    assert damaged.stat().st_size == onnx_embedder.graph_path.stat().st_size
    probe = ["why was my card declined"]
    assert np.allclose(repaired.embed(probe), onnx_embedder.embed(probe), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [damaged.name]  # no temporary file left


def _model_copy(tmp_path: Path, pooling: dict[str, bool]) -> Path:
    """The default model folder, linked file by file, with another pooling config."""
    source = default_model_path()
    target = tmp_path / "model"
    for item in source.iterdir():
        if item.is_file():
            (target / item.name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(item, target / item.name)
    (target / "1_Pooling").mkdir()
    config = {"word_embedding_dimension": 384, "pooling_mode_cls_token": False}
    config.update(pooling)
    (target / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return target


def test_an_unsupported_model_falls_back_to_torch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _model_copy(tmp_path, {"pooling_mode_max_tokens": True})
    with pytest.raises(ExportError, match="pooling"):
        OnnxEmbedder(folder, cache_dir=tmp_path / "graphs")
    with caplog.at_level(logging.WARNING):
        fallback = load_embedder(folder, backend="onnx", graph_dir=tmp_path / "graphs")
    assert isinstance(fallback, SentenceTransformerEmbedder)
    assert "ONNX backend unavailable" in caplog.text
    assert fallback.embed(["hello"]).shape == (1, 384)


def test_backend_choice_is_validated(graph_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown embedder backend"):
        load_embedder(backend="tensorflow", graph_dir=graph_dir)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="embedder_backend"):
        Settings.load(environ={"SEMCACHE_EMBEDDER_BACKEND": "gpu"})
    with pytest.raises(InvalidInput, match="embed_threads"):
        Settings.load(environ={"SEMCACHE_EMBED_THREADS": "-1"})
    assert Settings.load(environ={}).embedder_backend == "onnx"


def test_spinning_is_a_setting_and_changes_no_vector(
    graph_dir: Path, onnx_embedder: OnnxEmbedder
) -> None:
    assert Settings.load(environ={}).embed_spin is True
    assert Settings.load(environ={"SEMCACHE_EMBED_SPIN": "false"}).embed_spin is False
    with pytest.raises(InvalidInput, match="embed_spin"):
        Settings.load(environ={"SEMCACHE_EMBED_SPIN": "sometimes"})
    sleeping = load_embedder(backend="onnx", graph_dir=graph_dir, spin=False)
    assert isinstance(sleeping, OnnxEmbedder)
    for embedder, spins in ((onnx_embedder, "1"), (sleeping, "0")):
        options = embedder._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == spins
    assert np.allclose(sleeping.embed(TEXTS[:8]), onnx_embedder.embed(TEXTS[:8]), atol=1e-5)
    assert np.allclose(sleeping.embed(TEXTS[:1]), onnx_embedder.embed(TEXTS[:1]), atol=1e-5)


def test_the_int8_backend_is_close_and_named_apart(
    graph_dir: Path, real_embedder: SentenceTransformerEmbedder, onnx_embedder: OnnxEmbedder
) -> None:
    quantized = load_embedder(backend="onnx-int8", graph_dir=graph_dir)
    assert isinstance(quantized, OnnxEmbedder) and quantized.quantized
    # another name: a store written with full-precision vectors is re-embedded, not mixed
    assert quantized.name == real_embedder.name + "-int8"
    cosines = np.sum(quantized.embed(TEXTS) * real_embedder.embed(TEXTS), axis=1)
    assert MIN_INT8_COSINE <= float(cosines.min()) < 0.9999  # close, and really quantised
    # int8 matrices (the word embeddings stay float32): 56 MB against 86 MB
    assert quantized.graph_path.stat().st_size < 0.7 * onnx_embedder.graph_path.stat().st_size
