"""Server settings, read once: defaults, an optional TOML file, SEMCACHE_* variables, flags."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from cache import NAMESPACE_PATTERN, InvalidInput
from cache.answering import DEFAULT_TIERS, Tier

ENV_PREFIX = "SEMCACHE_"
NAMESPACE_RE = re.compile(NAMESPACE_PATTERN)
SECRET_FIELDS = ("admin_token", "anthropic_api_key", "metrics_token")
# Structured settings given in the environment are JSON.
_JSON_FIELDS = ("tiers", "endpoint_tiers", "history_window", "client_keys")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the server can be told. Each field is `SEMCACHE_<FIELD>` in the environment."""

    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8080
    """TCP port to listen on."""
    data_dir: str = "./semcache-data"
    """Folder of the store (diskcache) and the vector index files."""
    threshold: float = 0.86
    """Default similarity a semantic hit must reach (requests may override it)."""
    margin: float = 0.04
    """Least margin of the nearest phrasing over the nearest phrasing of another answer, for
    every match."""
    margin_weight: float = 2.0
    """Where answers have several phrasings, how much that margin lowers the score: each 0.01
    below 0.15 costs this x 0.01 (a larger margin earns nothing); 0 ignores it."""
    piece_weight: float = 2.0
    """Where answers have several phrasings, how much a served answer whose phrasings agree
    with the question's word pieces less than 0.2 better than its nearest rivals' do loses
    score: each 0.01 short costs this x 0.01 (0 to 10); 0 turns the rule off and stores no
    word pieces."""
    guards: bool = True
    """Veto matches whose numbers, dates, names, actions or negation differ."""
    default_ttl_s: float | None = None
    """TTL in seconds of entries written without `ttl_s`; unset means they never expire."""
    admin_token: str | None = None
    """Bearer token required by /admin endpoints; unset leaves them open (loopback use only)."""
    client_keys: dict[str, list[str]] = msgspec.field(default_factory=dict)
    """Client keys (sent as `x-semcache-key`) and the namespaces each may use, "*" for all.
    Empty: no key needed."""
    price_table: str | None = None
    """TOML price table to use instead of the one shipped with the package."""
    model_path: str | None = None
    """Local sentence-transformers model folder to use instead of all-MiniLM-L6-v2."""
    embedder_backend: Literal["onnx", "onnx-int8", "torch"] = "onnx"
    """`onnx`: ONNX Runtime on a graph exported once from the model (same vectors, about 3x
    faster); `onnx-int8`: the same with int8 weights (about 2x faster again, vectors within
    cosine ~0.98); `torch`: sentence-transformers. ONNX falls back to torch if export fails."""
    graph_dir: str | None = None
    """Folder of the exported ONNX graph; unset: `<data_dir>/models`. Servers may share one."""
    embed_threads: int = 0
    """Threads of one embedding call under ONNX Runtime; 0 means one per CPU."""
    embed_spin: bool = True
    """Let those threads spin, not sleep, within a call: a lone lookup about 1 ms faster,
    3-6% less throughput at saturation. Turn off on a host whose cores others need."""
    embed_deadline_s: float = 5.0
    """How long a lookup waits on a model call that does not answer before it fails open to
    a miss (bulk writes get this per 64 texts). While a call is that late, /readyz is 503."""
    max_body_bytes: int = 1_048_576
    """Largest request body accepted, in bytes."""
    max_question_chars: int = 2_000
    """Longest question accepted, in characters."""
    max_answer_chars: int = 200_000
    """Longest answer accepted, in characters."""
    max_messages: int = 1_000
    """Most messages a /v1/messages request may carry."""
    max_json_depth: int = 64
    """Deepest nesting of arrays and objects accepted in a /v1/messages body."""
    purge_interval_s: float = 60.0
    """How often expired and invalidated entries are reclaimed."""
    shutdown_timeout_s: float = 30.0
    """On SIGTERM, how long requests in flight may take to finish before they are cut off."""
    flush_interval_s: float = 5.0
    """How often counters, hit counts and the vector index are written to disk."""
    log_level: str = "info"
    """Python logging level name."""
    log_format: Literal["json", "text"] = "json"
    """`json`: one JSON object per log line (request lines carry the request id, the cache
    outcome, similarity, latency and tokens); `text`: plain lines for a terminal."""
    access_log: bool = True
    """Log one line per HTTP request (see `log_format`)."""
    metrics_token: str | None = None
    """A read-only bearer token for GET /metrics; /metrics is open only while neither this nor
    the admin token is set."""
    anthropic_api_key: str | None = None
    """Key for calls made on misses; defaults to the SDK's own ANTHROPIC_API_KEY."""
    anthropic_base_url: str | None = None
    """Messages API base URL; defaults to the SDK's ANTHROPIC_BASE_URL, else Anthropic's."""
    upstream_timeout_s: float = 60.0
    """Timeout of one upstream call, in seconds."""
    upstream_max_retries: int = 2
    """Retries of the SDK on 408/409/429/5xx before a tier counts as failed."""
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    """Model tiers, cheapest first: `[[tiers]]` tables (name, model, max_tokens, escalate)."""
    endpoint_tiers: dict[str, str] = msgspec.field(default_factory=dict)
    """Default tier per endpoint tag, e.g. {"checkout-help": "sonnet"}."""
    cache_truncated: bool = False
    """Also cache answers that stopped on max_tokens."""
    prompt_cache_min_chars: int | None = None
    """Mark system prompts at least this long with cache_control (prompt caching); unset: off."""
    history_window: dict[str, int] = msgspec.field(default_factory=dict)
    """Per namespace: keep the last N messages, summarise older ones with the first tier."""

    def __repr__(self) -> str:
        shown = {f: getattr(self, f) for f in self.__struct_fields__}
        for secret in SECRET_FIELDS:
            if shown[secret] is not None:
                shown[secret] = "***"
        shown["client_keys"] = [f"***: {spaces}" for spaces in self.client_keys.values()]
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidInput(f"threshold must be between 0 and 1, got {self.threshold}")
        if self.default_ttl_s is not None and self.default_ttl_s <= 0:
            raise InvalidInput("default_ttl_s must be positive (unset it for no expiry)")
        if not 0 < self.port < 65536:
            raise InvalidInput(f"port must be in 1..65535, got {self.port}")
        for name in (
            "max_body_bytes",
            "max_question_chars",
            "max_answer_chars",
            "max_messages",
            "max_json_depth",
        ):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"{name} must be positive")
        if self.purge_interval_s <= 0 or self.flush_interval_s <= 0 or self.shutdown_timeout_s <= 0:
            raise InvalidInput("purge, flush and shutdown intervals must be positive")
        if not 0.0 <= self.margin <= 1.0:
            raise InvalidInput(f"margin must be between 0 and 1, got {self.margin}")
        if not 0.0 <= self.margin_weight <= 10.0:
            raise InvalidInput(f"margin_weight must be between 0 and 10, got {self.margin_weight}")
        if not 0.0 <= self.piece_weight <= 10.0:
            raise InvalidInput(f"piece_weight must be between 0 and 10, got {self.piece_weight}")
        if self.upstream_timeout_s <= 0 or self.upstream_max_retries < 0:
            raise InvalidInput("upstream_timeout_s must be positive, upstream_max_retries >= 0")
        if self.embed_deadline_s <= 0:
            raise InvalidInput(f"embed_deadline_s must be positive, got {self.embed_deadline_s}")
        if self.embed_threads < 0:
            raise InvalidInput(
                f"embed_threads must be 0 (all cores) or more, got {self.embed_threads}"
            )
        if not self.tiers:
            raise InvalidInput("at least one tier must be configured")
        names = [tier.name for tier in self.tiers]
        if len(set(names)) != len(names):
            raise InvalidInput(f"tier names must be unique, got {names}")
        for endpoint, tier in self.endpoint_tiers.items():
            if tier not in names:
                raise InvalidInput(f"endpoint {endpoint!r} defaults to unknown tier {tier!r}")
        if any(tier.max_tokens < 1 for tier in self.tiers):
            raise InvalidInput("every tier needs max_tokens >= 1")
        for key, spaces in self.client_keys.items():
            if len(key) < 16:
                raise InvalidInput("client keys must be at least 16 characters long")
            for space in spaces:
                if space != "*" and not NAMESPACE_RE.fullmatch(space):
                    raise InvalidInput(f"client_keys names an invalid namespace {space!r}")
        if any(n < 2 for n in self.history_window.values()):
            raise InvalidInput("history_window values must be at least 2 messages")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return cls.__struct_fields__

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        config_file: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Defaults < TOML file (`SEMCACHE_CONFIG` or `config_file`) < environment < overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = config_file if config_file is not None else env.get(ENV_PREFIX + "CONFIG")
        if path:
            try:
                values.update(tomllib.loads(Path(path).read_text(encoding="utf-8")))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise InvalidInput(f"settings file {path} cannot be read: {exc}") from exc
        for name in cls.field_names():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if raw.strip().lower() in ("", "none", "null"):
                values[name] = None  # an empty value or "none" unsets an optional setting
            elif name in _JSON_FIELDS:
                try:
                    values[name] = msgspec.json.decode(raw)
                except msgspec.DecodeError as exc:
                    raise InvalidInput(f"{ENV_PREFIX}{name.upper()} must be JSON: {exc}") from exc
            else:
                values[name] = raw
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        values = {k: v for k, v in values.items() if v is not None}
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"invalid settings: {exc}") from exc
