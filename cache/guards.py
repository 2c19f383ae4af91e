"""Guards for what sentence embeddings are blind to.

"refund 5 EUR" and "refund 50 EUR", "enable 2FA" and "disable 2FA" embed almost alike but
must never share an answer. A guard compares the query with the stored question and names
the difference that vetoes the match; None means no objection.
"""

from __future__ import annotations

import re
import unicodedata

_NUMBER_WORDS = {
    "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "fifteen": "15", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50",
    "hundred": "100", "thousand": "1000", "million": "1000000", "half": "0.5",
    "first": "1st", "second": "2nd", "third": "3rd",
}  # fmt: skip
# "one" is left out: "more than one", "in one go" and "one of my cards" use it as a pronoun far
# more often than as a count (BANKING77 dev: most of its number vetoes were right answers).
_DATE_WORDS = frozenset(
    "monday tuesday wednesday thursday friday saturday sunday weekend weekday "
    "january february march april may june july august september october november december "
    "today tomorrow yesterday tonight morning afternoon evening night noon midnight "
    "week month year daily weekly monthly yearly annual annually hourly".split()
)
# Pairs of actions that embed alike and mean the opposite. Each word maps to its pair's id.
_ANTONYMS = [
    ("enable", "disable"), ("activate", "deactivate"), ("lock", "unlock"), ("block", "unblock"),
    ("freeze", "unfreeze"), ("add", "remove"), ("increase", "decrease"), ("raise", "lower"),
    ("open", "close"), ("subscribe", "unsubscribe"), ("install", "uninstall"),
    ("upgrade", "downgrade"), ("before", "after"), ("buy", "sell"), ("deposit", "withdraw"),
    ("import", "export"), ("upload", "download"), ("start", "stop"), ("turn on", "turn off"),
    ("sign in", "sign out"), ("log in", "log out"), ("login", "logout"), ("accept", "decline"),
    ("min", "max"), ("minimum", "maximum"), ("cancel", "renew"), ("credit", "debit"),
    ("incoming", "outgoing"), ("send", "receive"), ("win", "lose"), ("allow", "deny"),
    ("show", "hide"), ("include", "exclude"), ("encrypt", "decrypt"), ("join", "leave"),
]  # fmt: skip
_NEGATIONS = frozenset(
    "not no never cannot can't won't don't doesn't didn't isn't aren't wasn't weren't "
    "haven't hasn't hadn't shouldn't wouldn't couldn't mustn't without none nothing "
    # typed without the apostrophe, as people often do
    "cant wont dont doesnt didnt isnt arent wasnt werent havent hasnt hadnt shouldnt "
    "wouldnt couldnt".split()
)
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _words(text: str) -> list[str]:
    folded = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    return _TOKEN.findall(folded)


def _numbers(words: list[str]) -> list[str]:
    found = []
    for word in words:
        if _NUMBER.fullmatch(word):
            found.append(word.replace(",", ""))
        elif word in _NUMBER_WORDS:
            found.append(_NUMBER_WORDS[word])
    return sorted(found)


def _actions(text: str) -> dict[int, set[int]]:
    """Which side of each antonym pair the text uses: {pair index: {0, 1}}."""
    padded = " " + " ".join(_words(text)) + " "
    used: dict[int, set[int]] = {}
    for index, pair in enumerate(_ANTONYMS):
        for side, word in enumerate(pair):
            if f" {word} " in padded:
                used.setdefault(index, set()).add(side)
    return used


def _undone(a: list[str], b: list[str]) -> str | None:
    """A word one side has and the other has with un-, e.g. blocked / unblocked."""
    a_set, b_set = set(a), set(b)
    for word in a_set ^ b_set:
        if word.startswith("un") and len(word) > 4:
            base = word[2:]
            if (base in a_set and word in b_set) or (base in b_set and word in a_set):
                return base
    return None


def check(query: str, stored: str) -> str | None:
    """Why `query` must not be answered with the answer to `stored`, or None.

    A slot vetoes only when both questions fill it differently: "my card has not arrived
    after 2 weeks" may still share the answer of "where is my card?", but "refund 5 EUR"
    never shares the answer of "refund 50 EUR". Negation vetoes only near-identical
    wordings, where it is the one thing that differs.
    """
    q_words, s_words = _words(query), _words(stored)
    q_numbers, s_numbers = _numbers(q_words), _numbers(s_words)
    if q_numbers and s_numbers and q_numbers != s_numbers:
        return "numbers differ"
    q_dates = {w for w in q_words if w in _DATE_WORDS}
    s_dates = {w for w in s_words if w in _DATE_WORDS}
    if q_dates and s_dates and q_dates != s_dates:
        return "dates or times differ"
    # A name the other question also has, in any case or as the start of a word ("Google
    # pay" / "Google Pay", "Top Up" / "top-up", "Tensor" of "TensorFlow"), is shared; only
    # names each side has alone veto.
    q_text, s_text = " " + " ".join(q_words), " " + " ".join(s_words)
    q_own = {name for name in _names(query) if f" {name}" not in s_text}
    s_own = {name for name in _names(stored) if f" {name}" not in q_text}
    if q_own and s_own:
        return "names differ"
    q_actions, s_actions = _actions(query), _actions(stored)
    for pair, sides in q_actions.items():
        other = s_actions.get(pair)
        if other is not None and sides != other:
            return f"opposite actions ({' / '.join(_ANTONYMS[pair])})"
    undone = _undone(q_words, s_words)
    if undone:
        return f"opposite actions ({undone} / un{undone})"
    q_negated, q_rest = _split_negation(q_words)
    s_negated, s_rest = _split_negation(s_words)
    if q_negated != s_negated and _overlap(q_rest, s_rest) >= NEGATION_OVERLAP:
        return "negation differs"
    return None


_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]+(?:\s+[A-Z][a-z]+)*)")
_NOT_NAMES = frozenset(
    "I I'm I've I'd I'll Is Are Do Does Did Can Could Would Should Will What Why How When "
    "Where Who Which Please Hi Hello Thanks".split()
)


def _names(text: str) -> set[str]:
    """Capitalised words inside a sentence: names of people, places, products.

    Only text typed with capitals has them; all-lowercase text yields none, so no veto.
    """
    found = set()
    for match in _CAPITALISED.finditer(text.strip()):
        words = [w for w in match.group(1).split() if w not in _NOT_NAMES]
        if words:
            found.add(" ".join(words).casefold())
    return found


NEGATION_OVERLAP = 0.6
"""Jaccard overlap of the other words above which a difference in negation vetoes."""


_AUXILIARIES = frozenset("do does did is are was were have has had be been will would".split())


def _split_negation(words: list[str]) -> tuple[bool, set[str]]:
    """Whether the words negate, and the content words (no negation, no auxiliaries)."""
    negations = {w for w in words if w in _NEGATIONS or w.endswith("n't")}
    return bool(negations), set(words) - negations - _AUXILIARIES


def _overlap(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0
