"""Text embedders. Knows nothing of the cache or of HTTP."""

from .base import Embedder, Matrix, TokenEmbedder, l2_normalise
from .batching import BatchingEmbedder, EmbeddingTimeout
from .loading import Backend, default_graph_dir, load_embedder
from .sentence import SentenceTransformerEmbedder, default_model_path

__all__ = [
    "Backend",
    "BatchingEmbedder",
    "Embedder",
    "EmbeddingTimeout",
    "Matrix",
    "SentenceTransformerEmbedder",
    "TokenEmbedder",
    "default_graph_dir",
    "default_model_path",
    "l2_normalise",
    "load_embedder",
]
