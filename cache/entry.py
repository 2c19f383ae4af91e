"""What the cache stores: entries, their token usage, and how their ids are derived."""

from __future__ import annotations

import hashlib

import msgspec


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens the model call that produced an answer consumed (the Messages API's `usage`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )


class Entry(msgspec.Struct, kw_only=True):
    """One cached answer. Times are Unix seconds."""

    id: str
    namespace: str
    catalog_version: int
    question: str
    normalized_question: str
    answer: str
    model: str
    usage: Usage
    cost_usd: float | None
    created_at: float
    expires_at: float | None
    hit_count: int = 0
    last_hit_at: float | None = None
    scope: str = ""
    """Hash of the request parameters that must match exactly (model, system prompt, ...)."""
    context: str | None = None
    """The previous user turn this question followed, if any (part of the key)."""
    min_similarity: float | None = None
    """A floor above the threshold, raised each time a hit of this entry is reported wrong."""

    def is_live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


_ID_MASK = (1 << 63) - 1


MAX_TOKENS_FIELD = 2**53 - 1  # the largest integer JSON clients agree on


def key_text(normalized_question: str, normalized_context: str | None) -> str:
    """What is matched (exactly, and embedded): the question, after its context if any."""
    return (
        normalized_question
        if not normalized_context
        else f"{normalized_context}\n{normalized_question}"
    )


def entry_int_id(namespace: str, version: int, scope: str, text: str) -> int:
    """The deterministic id of a (namespace, version, scope, key text) slot, as an int63.

    Deterministic ids make a repeated write of the same question an overwrite rather than a
    duplicate, and let the exact path find an entry without any index: hash, then one read.
    """
    digest = hashlib.blake2b(
        f"{namespace}\x00{version}\x00{scope}\x00{text}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") & _ID_MASK


def format_entry_id(int_id: int) -> str:
    return f"{int_id:016x}"


def parse_entry_id(entry_id: str) -> int | None:
    """The int id behind a public entry id, or None if it is not one of ours."""
    if len(entry_id) != 16:
        return None
    try:
        value = int(entry_id, 16)
    except ValueError:
        return None
    return value if value <= _ID_MASK else None
