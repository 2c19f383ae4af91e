"""Wire types of the HTTP API. Their Meta bounds validate requests and document the schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from inspect import cleandoc
from typing import Annotated, Any, Literal

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from msgspec import UNSET, Meta, UnsetType

from cache import NAMESPACE_PATTERN, Entry, LookupResult, NamespaceStats, Usage
from cache.entry import MAX_TOKENS_FIELD
from cache.semantic import MAX_TTL_S, MAX_VERSION

Namespace = Annotated[
    str,
    Meta(
        pattern=NAMESPACE_PATTERN,
        description="A hard partition of the cache: a slug of 1-63 of a-z, 0-9, '-' and '_'.",
        examples=["default", "acme-support"],
    ),
]
Question = Annotated[str, Meta(min_length=1, description="The user's question, as asked.")]
Threshold = Annotated[
    float, Meta(ge=0.0, le=1.0, description="Cosine similarity a semantic hit must reach.")
]
TokenCount = Annotated[int, Meta(ge=0, le=MAX_TOKENS_FIELD)]
ENDPOINT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}(?!\n)$"
Endpoint = Annotated[
    str,
    Meta(
        pattern=ENDPOINT_PATTERN,
        description="A tag for the ledger: which feature of your app asked.",
    ),
]


def _time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


Context = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=10_000,
        description="The previous user turn of a conversation: matched with the question, "
        "so a follow-up such as 'tell me more' never shares another conversation's entry.",
    ),
]


class LookupRequest(msgspec.Struct, forbid_unknown_fields=True):
    question: Question
    namespace: Namespace = "default"
    threshold: Threshold | None = None
    endpoint: Endpoint = "default"
    context: Context | None = None


class LookupHit(msgspec.Struct, kw_only=True):
    hit: Literal[True]
    answer: str
    entry_id: str
    similarity: float
    match: Literal["exact", "semantic"]
    namespace: str
    catalog_version: int
    model: str
    saved_usd: float | None
    saved_tokens: int
    lookup_id: str


class LookupMiss(msgspec.Struct, kw_only=True):
    hit: Literal[False]
    lookup_id: str
    namespace: str
    catalog_version: int
    nearest_similarity: float | None


def lookup_response(result: LookupResult) -> LookupHit | LookupMiss:
    if result.hit and result.entry is not None:
        assert result.similarity is not None and result.match is not None
        return LookupHit(
            hit=True,
            answer=result.entry.answer,
            entry_id=result.entry.id,
            similarity=round(result.similarity, 6),
            match=result.match,
            namespace=result.namespace,
            catalog_version=result.catalog_version,
            model=result.entry.model,
            saved_usd=result.saved_usd,
            saved_tokens=result.saved_tokens,
            lookup_id=result.lookup_id,
        )
    nearest = result.nearest_similarity
    return LookupMiss(
        hit=False,
        lookup_id=result.lookup_id,
        namespace=result.namespace,
        catalog_version=result.catalog_version,
        nearest_similarity=None if nearest is None else round(nearest, 6),
    )


class UsageIn(msgspec.Struct):
    """The Messages API `usage` object; unknown fields (server_tool_use, ...) are ignored."""

    input_tokens: TokenCount
    output_tokens: TokenCount
    cache_creation_input_tokens: TokenCount | None = None
    cache_read_input_tokens: TokenCount | None = None


class EntryRequest(msgspec.Struct, forbid_unknown_fields=True):
    question: Question
    answer: Annotated[str, Meta(min_length=1)]
    model: Annotated[str, Meta(min_length=1, max_length=200, examples=["claude-haiku-4-5"])]
    usage: UsageIn
    namespace: Namespace = "default"
    ttl_s: (
        Annotated[float, Meta(gt=0, le=MAX_TTL_S, description="Seconds until the entry expires.")]
        | None
    ) = None
    aliases: Annotated[
        list[Question],
        Meta(max_length=100, description="Other phrasings of the question: same answer."),
    ] = msgspec.field(default_factory=list)
    context: Context | None = None


class FeedbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    lookup_id: Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$")]
    correct: bool


class FeedbackOut(msgspec.Struct, kw_only=True):
    lookup_id: str
    entry_id: str
    correct: bool
    min_similarity: float | None


class EntryCreated(msgspec.Struct, kw_only=True):
    entry_id: str
    namespace: str
    catalog_version: int
    expires_at: datetime | None
    cost_usd: float | None
    alias_entry_ids: list[str] = msgspec.field(default_factory=list)


class UsageOut(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


class EntryOut(msgspec.Struct, kw_only=True):
    entry_id: str
    namespace: str
    catalog_version: int
    question: str
    normalized_question: str
    answer: str
    model: str
    usage: UsageOut
    cost_usd: float | None
    created_at: datetime
    expires_at: datetime | None
    hit_count: int
    last_hit_at: datetime | None

    @classmethod
    def of(cls, entry: Entry) -> EntryOut:
        created = _time(entry.created_at)
        assert created is not None
        return cls(
            entry_id=entry.id,
            namespace=entry.namespace,
            catalog_version=entry.catalog_version,
            question=entry.question,
            normalized_question=entry.normalized_question,
            answer=entry.answer,
            model=entry.model,
            usage=usage_out(entry.usage),
            cost_usd=entry.cost_usd,
            created_at=created,
            expires_at=_time(entry.expires_at),
            hit_count=entry.hit_count,
            last_hit_at=_time(entry.last_hit_at),
        )


class VersionOut(msgspec.Struct, kw_only=True):
    namespace: str
    catalog_version: int


class VersionRequest(msgspec.Struct, forbid_unknown_fields=True):
    version: Annotated[
        int, Meta(ge=1, le=MAX_VERSION, description="Version to set; must exceed the current one.")
    ]


class VersionChanged(msgspec.Struct, kw_only=True):
    namespace: str
    catalog_version: int
    invalidated_entries: int


class PurgeOut(msgspec.Struct, kw_only=True):
    purged_entries: int


class StatsOut(NamespaceStats, kw_only=True):
    """Totals over all namespaces, and the same counters per namespace."""

    namespaces: dict[str, NamespaceStats]


class Health(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    embedder: str | None = None


class AskRequest(msgspec.Struct, forbid_unknown_fields=True):
    question: Question
    namespace: Namespace = "default"
    tier: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    system: Annotated[str, Meta(min_length=1, max_length=100_000)] | None = None
    max_tokens: Annotated[int, Meta(ge=1, le=64_000)] | None = None
    endpoint: Endpoint = "default"
    threshold: Threshold | None = None


class AttemptOut(msgspec.Struct, kw_only=True):
    tier: str
    model: str
    outcome: str


class AskResponse(msgspec.Struct, kw_only=True):
    answer: str
    source: Literal["cache", "model"]
    model: str
    tier: str | None
    usage: UsageOut
    cost_usd: float | None
    saved_usd: float | None
    entry_id: str | None
    similarity: float | None
    lookup_id: str
    match: str | None
    stored: bool
    reason: str | None
    attempts: list[AttemptOut]
    spent_usd: float


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(**msgspec.structs.asdict(usage))


class Problem(msgspec.Struct, kw_only=True):
    """An RFC 9457 problem+json error body."""

    type: str
    title: str
    status: int
    detail: str
    instance: str


# ----------------------------------------------------------------- POST /v1/messages (the proxy)
# Documentation only: the proxy reads its body itself and forwards it as sent, so these types
# never decode a request. They are open (unknown fields are allowed) as the API is.


class ContentBlock(msgspec.Struct, kw_only=True):
    """A content block. Only text is matched against the cache: a question with any other
    kind (image, document, tool_use, tool_result, ...) is forwarded and never cached."""

    type: Annotated[str, Meta(examples=["text", "image", "tool_use", "tool_result"])]
    text: Annotated[str, Meta(description="The text of a `text` block.")] | UnsetType = UNSET


class InputMessage(msgspec.Struct, kw_only=True):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class SystemBlock(msgspec.Struct, kw_only=True):
    type: Literal["text"]
    text: str


class MessagesRequest(msgspec.Struct, kw_only=True):
    """A Messages API request, forwarded as sent on a miss: any field not listed here is
    accepted and passed through. semcache itself checks only that `model` is a string,
    `messages` a list and `max_tokens` an integer, and the nesting depth (`max_json_depth`, 64
    by default); the API validates the rest, as documented here. Every field but `messages`,
    `stream` and `metadata` is part of the cache scope: a hit needs the same ones."""

    model: Annotated[str, Meta(min_length=1, examples=["claude-haiku-4-5"])]
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[
        list[InputMessage],
        Meta(
            min_length=1,
            description="The conversation. When the last turn is a user's text it is the "
            "question looked up, with the previous user turn as its context. At most "
            "`max_messages` turns (a server setting, 1000 by default).",
        ),
    ]
    system: str | list[SystemBlock] | UnsetType = UNSET
    stream: (
        Annotated[bool, Meta(description="Answer as text/event-stream, hits included.")] | UnsetType
    ) = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] | UnsetType = UNSET
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | UnsetType = UNSET
    top_k: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    tools: list[dict[str, Any]] | UnsetType = UNSET
    tool_choice: dict[str, Any] | UnsetType = UNSET


class MessageUsage(msgspec.Struct, kw_only=True):
    """Tokens billed; all zero on a hit, which makes no upstream call."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | UnsetType | None = UNSET
    cache_read_input_tokens: int | UnsetType | None = UNSET


class Message(msgspec.Struct, kw_only=True):
    """A Messages API answer: the API's own on a miss; on a hit, the stored text as one
    text block, with id `msg_semcache_<entry_id>`."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[ContentBlock]
    stop_reason: str | None
    stop_sequence: str | None
    usage: MessageUsage


class ErrorDetail(msgspec.Struct, kw_only=True):
    type: Annotated[str, Meta(examples=["invalid_request_error", "overloaded_error"])]
    message: str


class AnthropicError(msgspec.Struct, kw_only=True):
    """An error in the Messages API's own form, so the SDK raises its usual exception class:
    the API's errors are passed through, and semcache words its own the same way."""

    type: Literal["error"]
    error: ErrorDetail


# ------------------------------------------------------- bodies that handlers read themselves


@dataclass
class JSONSchema(Schema):
    """A schema written as JSON Schema. Litestar documents a body from the handler's `data`
    parameter; a handler that reads `request.body()` itself has none, so its body's schema
    comes from msgspec instead."""

    document: dict[str, Any] = field(default_factory=dict)

    def to_schema(self) -> dict[str, Any]:
        return self.document


def inline_json_schema(type_: Any) -> dict[str, Any]:
    """msgspec's JSON Schema of `type_` with every `$ref` replaced by its definition: an
    operation's schema cannot add definitions to the document's components."""
    schema = msgspec.json.schema(type_)
    definitions: dict[str, Any] = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            inlined = {key: inline(value) for key, value in node.items()}
            if isinstance(inlined.get("description"), str):
                # msgspec takes a Struct's docstring as written, indentation included.
                inlined["description"] = cleandoc(inlined["description"])
            return inlined
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    document: dict[str, Any] = inline(schema)
    return document


def json_request_body(
    type_: Any, *, required: bool, description: str, example: Any = None
) -> RequestBody:
    schema = JSONSchema(document=inline_json_schema(type_))
    media = OpenAPIMediaType(schema=schema, example=example)
    return RequestBody(
        content={"application/json": media}, required=required, description=description
    )


def documented_body(type_: Any, *, required: bool, description: str) -> type[Operation]:
    """An `operation_class` documenting `type_` as the JSON body of a handler that reads
    its body itself (so that it keeps its own errors and empty-body meaning)."""

    @dataclass
    class BodyDocumented(Operation):
        def __post_init__(self) -> None:
            self.request_body = json_request_body(type_, required=required, description=description)

    return BodyDocumented
