"""Server settings, read once: defaults, an optional TOML file, SEMCACHE_* variables, flags."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from cache import InvalidInput

ENV_PREFIX = "SEMCACHE_"


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the server can be told. Each field is `SEMCACHE_<FIELD>` in the environment."""

    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8080
    """TCP port to listen on."""
    data_dir: str = "./semcache-data"
    """Folder of the store (diskcache) and the vector index files."""
    threshold: float = 0.90
    """Default cosine similarity a semantic hit must reach (requests may override it)."""
    default_ttl_s: float | None = None
    """TTL in seconds of entries written without `ttl_s`; unset means they never expire."""
    admin_token: str | None = None
    """Bearer token required by /admin endpoints; unset leaves them open (loopback use only)."""
    price_table: str | None = None
    """TOML price table to use instead of the one shipped with the package."""
    model_path: str | None = None
    """Local sentence-transformers model folder to use instead of all-MiniLM-L6-v2."""
    max_body_bytes: int = 1_048_576
    """Largest request body accepted, in bytes."""
    max_question_chars: int = 2_000
    """Longest question accepted, in characters."""
    max_answer_chars: int = 200_000
    """Longest answer accepted, in characters."""
    purge_interval_s: float = 60.0
    """How often expired and invalidated entries are reclaimed."""
    flush_interval_s: float = 5.0
    """How often counters, hit counts and the vector index are written to disk."""
    log_level: str = "info"
    """Python logging level name."""

    def __repr__(self) -> str:
        shown = {f: getattr(self, f) for f in self.__struct_fields__}
        if shown["admin_token"] is not None:
            shown["admin_token"] = "***"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidInput(f"threshold must be between 0 and 1, got {self.threshold}")
        if self.default_ttl_s is not None and self.default_ttl_s <= 0:
            raise InvalidInput("default_ttl_s must be positive (unset it for no expiry)")
        if not 0 < self.port < 65536:
            raise InvalidInput(f"port must be in 1..65535, got {self.port}")
        for name in ("max_body_bytes", "max_question_chars", "max_answer_chars"):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"{name} must be positive")
        if self.purge_interval_s <= 0 or self.flush_interval_s <= 0:
            raise InvalidInput("purge_interval_s and flush_interval_s must be positive")

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
            if raw is not None:
                # An empty value or "none" unsets an optional setting.
                values[name] = None if raw.strip().lower() in ("", "none", "null") else raw
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        values = {k: v for k, v in values.items() if v is not None}
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"invalid settings: {exc}") from exc
