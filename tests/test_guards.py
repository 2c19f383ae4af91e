from __future__ import annotations

import pytest

from cache.guards import check


@pytest.mark.parametrize(
    ("query", "stored", "reason"),
    [
        ("How do I get a refund of 5 EUR?", "How do I get a refund of 50 EUR?", "numbers"),
        ("Can I withdraw 200 dollars?", "Can I withdraw two hundred dollars?", "numbers"),
        ("Are you open on Monday?", "Are you open on Sunday?", "dates"),
        ("What happens after I cancel?", "What happens before I cancel?", "opposite"),
        ("How do I enable 2FA?", "How do I disable 2FA?", "opposite"),
        ("How do I turn on notifications?", "How do I turn off notifications?", "opposite"),
        ("Why was my card unblocked?", "Why was my card blocked?", "opposite"),
        ("I did not receive my card", "I received my card", "negation"),
        ("Why can't I log in?", "Why can I log in?", "negation"),
        ("What is the capital of France?", "What is the capital of Spain?", "names"),
        ("Do you deliver to New York?", "Do you deliver to Boston?", "names"),
        ("Can I pay in Paris with Visa?", "Can I pay in London with Visa?", "names"),
        ("Why cant I log in?", "Why can I log in?", "negation"),
        ("Can I order two cards?", "Can I order 3 cards?", "numbers"),
    ],
)
def test_traps_are_vetoed(query: str, stored: str, reason: str) -> None:
    verdict = check(query, stored)
    assert verdict is not None and reason in verdict


@pytest.mark.parametrize(
    ("query", "stored"),
    [
        ("How do I reset my password?", "how can I reset my password"),
        ("Refund five euros please", "refund 5 euros"),
        ("Where is my card? It hasn't arrived", "My card has not arrived yet"),
        ("How do I enable 2FA?", "Steps to enable 2FA"),
        ("Open an account", "How can I open a new account?"),
        ("What is the capital of France?", "capital of france please"),
        ("Can I pay with Visa?", "Is Visa accepted as payment?"),
        # names both sides have, in any case, are shared
        ("Why doesn't my Google pay top up work?", "My Google Pay Top up is not working"),
        ("How do I get Top Up to work in Apple Pay?", "Can I top-up via Apple Pay?"),
        # "one" is rarely a count: "more than one", "in one go"
        ("I need a second card, can I have more than one?", "Can I have a second card?"),
        # negation typed without an apostrophe is still negation
        ("There is a charge I don't recognize", "there is a charge i dont recognize"),
    ],
)
def test_paraphrases_pass(query: str, stored: str) -> None:
    assert check(query, stored) is None
