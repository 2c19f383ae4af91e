"""What the cache promises whatever the order of operations, checked on random histories.

Promised (SemanticCache's docstrings, README):

- a hit never serves an expired entry, an entry of an older catalog version, another
  namespace's entry or a deleted one, and its answer is the last one stored for that question
  in that namespace and version;
- a semantic hit reaches the threshold and the margin, and no guard objects to it;
- no acknowledged entry is lost: every entry `put` returned that is not deleted, expired or
  invalidated is served by an exact lookup of its question and by `get(id)`, after a clean
  restart and after a crash too (the store dropped with no flush, so index files lag behind);
- `set_version` reports how many live entries it invalidated, `purge` how many it removed,
  and versions survive restarts;
- entry ids are deterministic: one id per (namespace, version, normal form of the question).

How: a hypothesis state machine drives a real SemanticCache in a temporary directory, with the
deterministic bag-of-words HashingEmbedder and a FakeClock, through random sequences of puts
and batches (a small vocabulary, so repeats, overwrites and near-duplicates are common),
lookups (exact and reworded, at thresholds down to 0), version bumps, clock advances, deletes,
purges, flushes, restarts and crashes. A plain model of what was acknowledged is compared with
every answer, and after every step every servable entry is looked up exactly, by id, and
through the vector index. The machine runs twice: with flat indexes, and with a policy so small
that every group takes the IVF path large groups take. A few @given tests cover question
normalisation and entry ids on their own (they found that casefolding could undo NFKC).

Runs are derandomized (the same histories on every run) so that CI is reproducible.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cache import (
    CacheConfig,
    Entry,
    IndexPolicy,
    LookupResult,
    NewEntry,
    NotFound,
    SemanticCache,
    Usage,
    VersionConflict,
    normalize_question,
)
from cache.entry import entry_int_id, format_entry_id, parse_entry_id
from tests.fakes import FakeClock, HashingEmbedder

USAGE = Usage(input_tokens=100, output_tokens=20)
MODEL = "claude-haiku-4-5"
NAMESPACES = ("alpha", "beta", "gamma-2")

# Near-duplicates on purpose: pairs that embed alike, and pairs only a guard tells apart
# (numbers, weekdays, opposite actions, negation), so both hits and vetoes happen.
QUESTIONS = (
    "how do i reset my password",
    "how can i reset my password",
    "how do i change my password",
    "where is my order",
    "where is my parcel",
    "how do i close my account",
    "how do i open my account",
    "can i get a refund",
    "can i not get a refund",
    "refund 5 eur",
    "refund 50 eur",
    "what are your opening hours on monday",
    "what are your opening hours on sunday",
)
# A few answers shared by several questions: the margin rule then sees phrasings of one answer.
SHARED_ANSWERS = ("Use the reset link.", "It is on its way.", "Refunds take 5 days.")
TTLS = (None, None, None, 1.0, 2.5, 5.0, 30.0)
# Sums of these hit expiry times exactly, so the `expires_at == now` boundary comes up.
ADVANCES = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
THRESHOLDS = (None, 0.0, 0.2, 0.5, 0.7, 0.8, 0.86, 0.9, 0.97, 1.0)


def reword(question: str, how: int) -> str:
    """One of several surface variants; the first four have the question's normal form."""
    words = question.split()
    variants = (
        question,
        question.upper(),
        f"  {question.capitalize()}?? ",
        f"{question}!".replace(" ", "\t", 1),
        f"{question} please",
        " ".join(words[1:]),
        " ".join(reversed(words)),  # the same bag of words: similarity 1, yet not a repeat
        question.replace("my", "the"),
    )
    return variants[how % len(variants)]


namespaces = st.sampled_from(NAMESPACES)
questions = st.builds(reword, st.sampled_from(QUESTIONS), st.integers(0, 7))
# None: a fresh answer, never stored before.
answers = st.one_of(st.none(), st.sampled_from(SHARED_ANSWERS))
ttls = st.sampled_from(TTLS)
thresholds = st.one_of(st.sampled_from(THRESHOLDS), st.floats(0.0, 1.0))


@dataclass
class Acked:
    """What the model keeps of an acknowledged entry."""

    id: str
    question: str
    answer: str
    expires_at: float | None

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


Key = tuple[str, int, str]  # namespace, catalog version, normal form of the question


class CacheMachine(RuleBasedStateMachine):
    """A real cache and a model of what it acknowledged, compared after every step."""

    policy = IndexPolicy()

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="semcache-props-")
        self.directory = Path(self.tmp.name) / "data"
        self.embedder = HashingEmbedder()
        self.clock = FakeClock()
        self.config = CacheConfig(index=self.policy)
        self.cache = self.open()
        self.versions = dict.fromkeys(NAMESPACES, 1)
        self.acked: dict[Key, Acked] = {}
        # Ids deleted or purged (and not stored again since): never served, never deletable.
        self.gone: set[str] = set()
        self.written: defaultdict[tuple[str, int], set[str]] = defaultdict(set)
        self.recent: list[str] = []  # the last questions stored, in any namespace
        self.fresh = 0

    def open(self) -> SemanticCache:
        return SemanticCache(self.directory, self.embedder, config=self.config, clock=self.clock)

    def teardown(self) -> None:
        try:
            self.cache.close()
        finally:
            self.tmp.cleanup()

    # model ---------------------------------------------------------------------------------

    def servable(self, namespace: str) -> list[Acked]:
        now = self.clock.now
        version = self.versions[namespace]
        return [
            acked
            for (ns, ver, _), acked in self.acked.items()
            if ns == namespace and ver == version and acked.live(now)
        ]

    def by_id(self) -> dict[str, tuple[Key, Acked]]:
        return {acked.id: (key, acked) for key, acked in self.acked.items()}

    def acknowledge(self, item: NewEntry, entry: Entry, now: float) -> None:
        version = self.versions[item.namespace]
        key = (item.namespace, version, normalize_question(item.question))
        expected_id = format_entry_id(entry_int_id(item.namespace, version, "", key[2]))
        assert entry.id == expected_id, "entry ids are derived from the question's slot"
        assert (entry.namespace, entry.catalog_version) == (item.namespace, version)
        assert (entry.question, entry.answer) == (item.question, item.answer)
        assert entry.expires_at == (None if item.ttl_s is None else now + item.ttl_s)
        self.acked[key] = Acked(entry.id, item.question, item.answer, entry.expires_at)
        self.written[(item.namespace, version)].add(item.answer)
        self.gone.discard(entry.id)
        self.recent = [*self.recent[-2:], item.question]

    def new_item(
        self, namespace: str, question: str, answer: str | None, ttl: float | None
    ) -> NewEntry:
        if answer is None:
            self.fresh += 1
            answer = f"Answer number {self.fresh}."
        return NewEntry(
            question=question, answer=answer, model=MODEL, usage=USAGE, namespace=namespace,
            ttl_s=ttl,
        )  # fmt: skip

    def check_result(
        self, result: LookupResult, question: str, namespace: str, threshold: float | None
    ) -> None:
        """Everything a lookup's answer must satisfy, hit or miss."""
        version = self.versions[namespace]
        assert (result.namespace, result.catalog_version) == (namespace, version)
        repeat = self.acked.get((namespace, version, normalize_question(question)))
        if repeat is not None and repeat.live(self.clock.now):
            assert result.hit and result.match == "exact", f"{question!r} lost: {repeat}"
        if not result.hit:
            assert result.entry is None
            return
        entry = result.entry
        assert entry is not None
        assert entry.namespace == namespace, "another namespace's entry served"
        assert entry.catalog_version == version, "an invalidated version's entry served"
        assert entry.is_live(self.clock.now), "an expired entry served"
        assert entry.answer in self.written[(namespace, version)]
        key = (namespace, version, entry.normalized_question)
        acked = self.acked.get(key)
        assert acked is not None and acked.id == entry.id, "a deleted or unknown entry served"
        assert (entry.question, entry.answer) == (acked.question, acked.answer), "stale answer"
        if result.match == "exact":
            assert entry.normalized_question == normalize_question(question)
            assert repeat is acked
        else:
            assert result.match == "semantic" and result.guard is None
            floor = self.config.threshold if threshold is None else threshold
            assert result.similarity is not None and result.similarity >= floor
            assert result.margin is not None and result.margin >= self.config.margin

    # rules ---------------------------------------------------------------------------------

    @rule(namespace=namespaces, question=questions, answer=answers, ttl=ttls)
    def store(self, namespace: str, question: str, answer: str | None, ttl: float | None) -> None:
        item = self.new_item(namespace, question, answer, ttl)
        entry = self.cache.put(
            item.question, item.answer, namespace=namespace, model=MODEL, usage=USAGE, ttl_s=ttl
        )
        self.acknowledge(item, entry, self.clock.now)

    @rule(items=st.lists(st.tuples(namespaces, questions, answers, ttls), min_size=1, max_size=4))
    def store_batch(self, items: list[tuple[str, str, str | None, float | None]]) -> None:
        batch = [self.new_item(*item) for item in items]
        entries = self.cache.put_batch(batch)
        assert len(entries) == len(batch)
        for item, entry in zip(batch, entries, strict=True):
            self.acknowledge(item, entry, self.clock.now)  # in order: the last repeat wins

    @rule(namespace=namespaces, question=questions, threshold=thresholds)
    def lookup(self, namespace: str, question: str, threshold: float | None) -> None:
        result = self.cache.lookup(question, namespace, threshold)
        self.check_result(result, question, namespace, threshold)

    @precondition(lambda self: bool(self.acked))
    @rule(namespace=namespaces, how=st.integers(0, 7), threshold=thresholds, data=st.data())
    def lookup_known(
        self, namespace: str, how: int, threshold: float | None, data: st.DataObject
    ) -> None:
        # Random questions mostly miss a thinly filled namespace: reword a stored one instead,
        # of this namespace or of another (which must then not be served from there).
        stored = sorted({acked.question for acked in self.acked.values()})
        question = reword(data.draw(st.sampled_from(stored), label="stored"), how)
        result = self.cache.lookup(question, namespace, threshold)
        self.check_result(result, question, namespace, threshold)

    @rule(namespace=namespaces, question=questions, threshold=thresholds)
    def lookup_exact(self, namespace: str, question: str, threshold: float | None) -> None:
        result = self.cache.lookup_exact(question, namespace, threshold)
        if result is None:  # undecided without an embedding: never for a live repeat
            key = (namespace, self.versions[namespace], normalize_question(question))
            repeat = self.acked.get(key)
            assert repeat is None or not repeat.live(self.clock.now)
            return
        self.check_result(result, question, namespace, threshold)

    @rule(namespace=namespaces, jump=st.sampled_from([None, 1, 2, 5]))
    def bump(self, namespace: str, jump: int | None) -> None:
        current = self.versions[namespace]
        live = len(self.servable(namespace))
        target = current + 1 if jump is None else current + jump
        version, invalidated = self.cache.set_version(namespace, None if jump is None else target)
        assert (version, invalidated) == (target, live)
        self.versions[namespace] = target

    @rule(namespace=namespaces, back=st.sampled_from([0, 1]))
    def bump_backwards(self, namespace: str, back: int) -> None:
        with pytest.raises(VersionConflict):
            self.cache.set_version(namespace, self.versions[namespace] - back)

    @rule(seconds=st.sampled_from(ADVANCES))
    def expire(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: bool(self.acked or self.gone))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        known = self.by_id()
        entry_id = data.draw(st.sampled_from(sorted(known.keys() | self.gone)), label="id")
        if entry_id in self.gone:
            with pytest.raises(NotFound):
                self.cache.delete(entry_id)
            return
        key, acked = known[entry_id]
        deleted = self.cache.delete(entry_id)  # of any version, live or expired
        assert (deleted.id, deleted.answer) == (acked.id, acked.answer)
        del self.acked[key]
        self.gone.add(entry_id)

    @rule()
    def purge(self) -> None:
        now = self.clock.now
        doomed = [
            key
            for key, acked in self.acked.items()
            if key[1] != self.versions[key[0]] or not acked.live(now)
        ]
        assert self.cache.purge() == len(doomed)
        for key in doomed:
            self.gone.add(self.acked.pop(key).id)

    @rule(final=st.booleans())
    def flush(self, final: bool) -> None:
        self.cache.flush(final=final)

    @rule(crash=st.booleans())
    def restart(self, crash: bool) -> None:
        if crash:
            # A crash as test_persistence simulates it: nothing flushed, index files behind
            # the store. The ledger's connection is closed unflushed too (a dead process's
            # rows are lost), not left for the garbage collector to warn about.
            self.cache._store.close()
            self.cache.ledger._db.close()
        else:
            self.cache.close()
        calls = self.embedder.calls
        self.cache = self.open()
        # Stored vectors are reused (and a lagging index patched from them): nothing re-embeds.
        assert self.embedder.calls == calls

    @rule()
    def stats(self) -> None:
        _, rows = self.cache.stats()
        for namespace in NAMESPACES:
            if namespace in rows:
                assert rows[namespace].entries == len(self.servable(namespace))
                assert rows[namespace].catalog_version == self.versions[namespace]
            else:
                assert not self.servable(namespace)

    # invariants ----------------------------------------------------------------------------

    @invariant()
    def versions_agree(self) -> None:
        for namespace, version in self.versions.items():
            assert self.cache.version(namespace) == version

    @invariant()
    def no_acknowledged_entry_lost(self) -> None:
        now = self.clock.now
        for (namespace, version, _), acked in self.acked.items():
            if version == self.versions[namespace] and acked.live(now):
                # threshold 1.0: only the exact path can answer
                for result in (
                    self.cache.lookup(acked.question, namespace, 1.0),
                    self.cache.lookup_exact(acked.question, namespace, 1.0),
                ):
                    assert result is not None and result.hit and result.entry is not None
                    assert result.match == "exact" and result.entry.id == acked.id
                    assert result.entry.answer == acked.answer
                assert self.cache.get(acked.id).answer == acked.answer
            else:
                with pytest.raises(NotFound):  # expired or invalidated: not servable by id
                    self.cache.get(acked.id)

    @invariant()
    def near_recent_writes(self) -> None:
        # Lookups at threshold 0 next to the latest writes, in every namespace, after every
        # step: whatever a bump, an expiry, a delete or a restart just did is probed at once.
        for namespace in NAMESPACES:
            for question in self.recent:
                probe = " ".join(reversed(normalize_question(question).split()))
                self.check_result(self.cache.lookup(probe, namespace, 0.0), probe, namespace, 0.0)

    @invariant()
    def index_reaches_every_entry(self) -> None:
        # The exact path and get() read the store; only a search proves the vector index holds
        # every entry (a crash leaves the saved index behind the store). The same words in
        # reverse order embed exactly alike with the bag-of-words embedder but are another
        # question, so the search runs, and the nearest vector must be that entry's.
        for namespace in NAMESPACES:
            for acked in self.servable(namespace):
                words = normalize_question(acked.question).split()
                candidate = self.cache.explain(" ".join(reversed(words)), namespace)
                assert candidate is not None and candidate.nearest >= 0.999, acked

    @invariant()
    def gone_entries_stay_gone(self) -> None:
        for entry_id in self.gone:
            with pytest.raises(NotFound):
                self.cache.get(entry_id)


# The paths of million-entry groups, shrunk: every group of 2 entries or more moves to an IVF
# index on the next flush or start-up and is then saved only at shutdown, so a crash leaves its
# file far behind. Probing every list keeps the search exact: the invariants are the same.
TINY_IVF = IndexPolicy(ivf_min_entries=2, ivf_lists=2, ivf_probes=2)


class IvfCacheMachine(CacheMachine):
    policy = TINY_IVF


@pytest.mark.parametrize(
    ("machine", "examples"), [(CacheMachine, 80), (IvfCacheMachine, 50)], ids=["flat", "ivf"]
)
def test_cache_state_machine(machine: type[CacheMachine], examples: int) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=50,
            deadline=None,  # disk I/O on a loaded CI machine: no per-example time limit
            derandomize=True,
            database=None,
        ),
    )


# focused properties ----------------------------------------------------------------------

QUICK = settings(max_examples=300, deadline=None, derandomize=True, database=None)


@QUICK
@given(st.text())
def test_normal_form_is_idempotent(text: str) -> None:
    once = normalize_question(text)
    assert normalize_question(once) == once


# Found by the property above: casefold after NFKC left strings NFKC recombines.
@pytest.mark.parametrize("text", ["ß\u0301", "\u0130\u0316", "\u1f80\u0304"])
def test_normal_form_is_idempotent_after_casefold(text: str) -> None:
    once = normalize_question(text)
    assert normalize_question(once) == once


@QUICK
@given(st.integers(0, 2**63 - 1))
def test_entry_ids_round_trip(int_id: int) -> None:
    entry_id = format_entry_id(int_id)
    assert len(entry_id) == 16 and parse_entry_id(entry_id) == int_id


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    namespace=namespaces,
    version=st.integers(1, 5),
    question=st.sampled_from(QUESTIONS),
    first=st.integers(0, 3),
    second=st.integers(0, 3),
)
def test_entry_ids_are_deterministic(
    namespace: str, version: int, question: str, first: int, second: int
) -> None:
    """Two caches, two surface forms of one question: one id, and the second put overwrites."""
    expected = format_entry_id(entry_int_id(namespace, version, "", question))
    ids: list[str] = []
    with tempfile.TemporaryDirectory(prefix="semcache-ids-") as tmp:
        for run, how in enumerate((first, second)):
            cache = SemanticCache(Path(tmp) / str(run), HashingEmbedder(), clock=FakeClock())
            try:
                if version > 1:
                    cache.set_version(namespace, version)
                entry = cache.put(
                    reword(question, how), "A", namespace=namespace, model=MODEL, usage=USAGE
                )
                again = cache.put(
                    reword(question, (how + 1) % 4),
                    "B",
                    namespace=namespace,
                    model=MODEL,
                    usage=USAGE,
                )
                assert again.id == entry.id
                assert cache.get(entry.id).answer == "B"
                ids.append(entry.id)
            finally:
                cache.close()
    assert ids == [expected, expected]
