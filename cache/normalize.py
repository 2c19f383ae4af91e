"""Question normalisation and input validation shared by every cache operation."""

from __future__ import annotations

import math
import re
import unicodedata

from .errors import InvalidInput

# The lookahead keeps `$` from accepting a trailing newline (Python and JS regex alike).
NAMESPACE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}(?!\n)$"
_NAMESPACE_RE = re.compile(NAMESPACE_PATTERN)


def _is_edge_noise(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith("P")


def normalize_question(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, surrounding punctuation stripped.

    Two questions with the same normal form are the same question: they are matched
    exactly, without an embedding.
    """
    # NFKC again after casefold: folding can leave pairs NFKC recombines ("ß\u0301" folds to
    # "ss\u0301", whose NFKC is "s\u015b"), and a normal form must be its own normal form.
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    collapsed = " ".join(folded.split())
    start, end = 0, len(collapsed)
    while start < end and _is_edge_noise(collapsed[start]):
        start += 1
    while end > start and _is_edge_noise(collapsed[end - 1]):
        end -= 1
    return collapsed[start:end]


def validate_namespace(namespace: str) -> str:
    """Return `namespace` if it is a short lowercase slug, else raise InvalidInput."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidInput(
            f"namespace {namespace!r} is not a slug: 1-63 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )
    return namespace


def validate_threshold(threshold: float) -> float:
    """A cosine-similarity threshold in [0, 1]; 0 is a real value (accept everything)."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise InvalidInput("threshold must be a number")
    if not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise InvalidInput(
            f"threshold must be between 0 and 1 (cosine similarity), got {threshold}"
        )
    return float(threshold)


def validate_question(question: str, max_chars: int) -> str:
    """Return the normal form of `question`, or raise InvalidInput if it is empty or too long."""
    if not isinstance(question, str):
        raise InvalidInput("question must be a string")
    if len(question) > max_chars:
        raise InvalidInput(f"question is {len(question)} characters long; the limit is {max_chars}")
    normalized = normalize_question(question)
    if not normalized:
        raise InvalidInput("question is empty once whitespace and punctuation are removed")
    return normalized
