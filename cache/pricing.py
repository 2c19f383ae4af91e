"""USD prices per model, read from a TOML table: prices live in data, never in code."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import msgspec

from .entry import Usage
from .errors import InvalidInput

log = logging.getLogger(__name__)

DEFAULT_PRICE_TABLE = Path(__file__).with_name("prices.toml")
_DATE_SUFFIX = re.compile(r"-\d{8}$")


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """USD per million tokens of each kind, with where and when the price was read."""

    input: float
    output: float
    cache_write: float
    cache_read: float
    date: str
    source: str
    aliases: list[str] = msgspec.field(default_factory=list)

    def cost(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_creation_input_tokens * self.cache_write
            + usage.cache_read_input_tokens * self.cache_read
        ) / 1_000_000


class _PriceFile(msgspec.Struct, forbid_unknown_fields=True):
    models: dict[str, ModelPrice]
    # Optional in the file, so price tables written before batches were priced stay valid.
    batch_multiplier: float = 0.5


class PriceTable:
    """Looks up a model id (exactly, then without a -YYYYMMDD suffix, then by alias)."""

    def __init__(self, prices: dict[str, ModelPrice], *, batch_multiplier: float = 0.5) -> None:
        self.batch_multiplier = batch_multiplier
        """What the Message Batches API bills of every token kind (0.5: half price)."""
        self._prices: dict[str, ModelPrice] = {}
        for model, price in prices.items():
            for name in (model, *price.aliases):
                self._prices[name] = price
        self._warned: set[str] = set()

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        source = Path(path) if path is not None else DEFAULT_PRICE_TABLE
        try:
            raw = tomllib.loads(source.read_text(encoding="utf-8"))
            parsed = msgspec.convert(raw, _PriceFile)
        except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
            raise InvalidInput(f"price table {source} cannot be read: {exc}") from exc
        for model, price in parsed.models.items():
            values = (price.input, price.output, price.cache_write, price.cache_read)
            if min(values) < 0:
                raise InvalidInput(f"price table {source}: negative price for {model}")
        if not 0 < parsed.batch_multiplier <= 1:
            raise InvalidInput(f"price table {source}: batch_multiplier must be in (0, 1]")
        return cls(parsed.models, batch_multiplier=parsed.batch_multiplier)

    def __contains__(self, model: str) -> bool:
        return self.price(model) is not None

    def price(self, model: str) -> ModelPrice | None:
        found = self._prices.get(model)
        if found is None:
            found = self._prices.get(_DATE_SUFFIX.sub("", model))
        return found

    def cost(self, model: str, usage: Usage, *, batch: bool = False) -> float | None:
        """USD cost of `usage` on `model` (through the Message Batches API if `batch`);
        None (and one warning per model) when unknown."""
        price = self.price(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning(
                    "no price for model %r: its cost and savings are reported as null", model
                )
            return None
        return price.cost(usage) * (self.batch_multiplier if batch else 1.0)
