"""The semantic cache: storage, index, normalisation and pricing. Knows nothing of HTTP."""

from .entry import Entry, Usage
from .errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    SemcacheError,
    Unauthorized,
    Unavailable,
    VersionConflict,
)
from .index import IndexPolicy
from .normalize import NAMESPACE_PATTERN, normalize_question
from .pricing import ModelPrice, PriceTable
from .semantic import CacheConfig, LookupResult, NewEntry, SemanticCache
from .stats import NamespaceStats

__all__ = [
    "NAMESPACE_PATTERN",
    "CacheConfig",
    "Entry",
    "Forbidden",
    "IndexPolicy",
    "InvalidInput",
    "LookupResult",
    "ModelPrice",
    "NamespaceStats",
    "NewEntry",
    "NotFound",
    "PriceTable",
    "SemanticCache",
    "SemcacheError",
    "Unauthorized",
    "Unavailable",
    "Usage",
    "VersionConflict",
    "normalize_question",
]
