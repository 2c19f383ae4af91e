from __future__ import annotations

import pytest

from cache import InvalidInput, normalize_question
from cache.normalize import validate_namespace, validate_question, validate_threshold


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("How do I reset my password?", "how do i reset my password"),
        ("  HOW   do I\treset\nmy password??  ", "how do i reset my password"),
        ("¿Dónde está mi pedido?", "dónde está mi pedido"),
        ("\uff26\uff35\uff2c\uff2c question", "full question"),  # NFKC folds fullwidth
        ("Straße", "strasse"),  # casefold, not lower
        ('"quoted" question...', 'quoted" question'),
        ("what's 2+2?", "what's 2+2"),  # inner punctuation stays
        ("refund 5 EUR", "refund 5 eur"),
        ("?!...", ""),
    ],
)
def test_normalize_question(raw: str, expected: str) -> None:
    assert normalize_question(raw) == expected


def test_normal_form_is_idempotent() -> None:
    once = normalize_question("  Hello,  WORLD!! ")
    assert normalize_question(once) == once


@pytest.mark.parametrize("name", ["default", "acme-support", "a", "t_1", "x" * 63])
def test_valid_namespaces(name: str) -> None:
    assert validate_namespace(name) == name


@pytest.mark.parametrize("name", ["", "Acme", "a b", "../etc", "-lead", "x" * 64, "ns/1", "é"])
def test_invalid_namespaces(name: str) -> None:
    with pytest.raises(InvalidInput, match="namespace"):
        validate_namespace(name)


@pytest.mark.parametrize("value", [-0.01, 1.01, float("nan"), float("inf"), True])
def test_invalid_thresholds(value: float) -> None:
    with pytest.raises(InvalidInput, match="threshold"):
        validate_threshold(value)


def test_zero_threshold_is_a_real_value() -> None:
    assert validate_threshold(0) == 0.0


def test_question_limits() -> None:
    assert validate_question("Hi there?", 20) == "hi there"
    with pytest.raises(InvalidInput, match="limit is 5"):
        validate_question("too long question", 5)
    with pytest.raises(InvalidInput, match="empty"):
        validate_question(" ... ", 20)
