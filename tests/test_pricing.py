from __future__ import annotations

from pathlib import Path

import pytest

from cache import InvalidInput, PriceTable, Usage


def test_shipped_table_covers_current_and_previous_models() -> None:
    table = PriceTable.load()
    for model in (
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        "claude-opus-4-5",
        "claude-opus-4-1",
        "claude-sonnet-4-0",
        "claude-3-5-haiku-20241022",
    ):
        price = table.price(model)
        assert price is not None, model
        assert price.date and price.source.startswith("https://")
        assert price.cache_read < price.input < price.cache_write


def test_dated_ids_and_aliases_resolve() -> None:
    table = PriceTable.load()
    assert table.price("claude-haiku-4-5-20251001") == table.price("claude-haiku-4-5")
    assert table.price("claude-opus-4-5-20991231") == table.price("claude-opus-4-5")
    assert table.price("claude-sonnet-4-20250514") == table.price("claude-sonnet-4-0")
    assert "gpt-4o" not in table


def test_cost_uses_each_token_kind(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        '[models."m"]\ninput = 1.0\noutput = 2.0\ncache_write = 3.0\ncache_read = 4.0\n'
        'date = "2026-01-01"\nsource = "https://example.com"\n'
    )
    table = PriceTable.load(path)
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=2_000_000,
        cache_creation_input_tokens=3_000_000,
        cache_read_input_tokens=4_000_000,
    )
    assert table.cost("m", usage) == pytest.approx(1 + 4 + 9 + 16)


def test_unknown_model_is_null_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable.load()
    usage = Usage(input_tokens=1, output_tokens=1)
    assert table.cost("mystery-model", usage) is None
    assert table.cost("mystery-model", usage) is None
    warnings = [r for r in caplog.records if "mystery-model" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    "content",
    [
        "not toml at all [",
        '[models."m"]\ninput = 1.0\n',  # missing fields
        '[models."m"]\ninput = -1\noutput = 1\ncache_write = 1\ncache_read = 1\n'
        'date = "d"\nsource = "s"\n',
        '[models."m"]\ninput = "cheap"\noutput = 1\ncache_write = 1\ncache_read = 1\n'
        'date = "d"\nsource = "s"\n',
    ],
)
def test_bad_price_tables_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(content)
    with pytest.raises(InvalidInput, match="price table"):
        PriceTable.load(path)


def test_missing_price_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot be read"):
        PriceTable.load(tmp_path / "nope.toml")
