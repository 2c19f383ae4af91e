"""Text embedders. Knows nothing of the cache or of HTTP."""

from .base import Embedder, Matrix, l2_normalise
from .batching import BatchingEmbedder
from .sentence import SentenceTransformerEmbedder, default_model_path

__all__ = [
    "BatchingEmbedder",
    "Embedder",
    "Matrix",
    "SentenceTransformerEmbedder",
    "default_model_path",
    "l2_normalise",
]
