"""The semantic cache: exact and nearest-neighbour lookups, writes, versions, TTL and purge."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import faiss
import msgspec
import numpy as np

from embeddings import Embedder, EmbeddingTimeout, TokenEmbedder

from . import guards
from .entry import (
    MAX_TOKENS_FIELD,
    Entry,
    Usage,
    entry_int_id,
    format_entry_id,
    key_text,
    parse_entry_id,
)
from .errors import InvalidInput, NotFound, Unavailable, VersionConflict
from .index import GroupIndex, IndexPolicy
from .ledger import Ledger, LedgerRow, UsageLine, WrongHit
from .normalize import (
    normalize_question,
    validate_namespace,
    validate_question,
    validate_threshold,
)
from .pricing import PriceTable
from .stats import Counters, NamespaceStats, summarise
from .store import EntryStore

log = logging.getLogger(__name__)

Clock = Callable[[], float]
GroupKey = tuple[str, int, str]  # namespace, catalog version, scope
_REEMBED_BATCH = 256
MAX_TTL_S = 100 * 365 * 86_400.0
MAX_VERSION = 2**53 - 1


@dataclass
class _GroupRows:
    """What start-up keeps of each stored entry of one group, column by column."""

    ids: list[int] = field(default_factory=list)
    expiries: list[float | None] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)


class _NeedsSearch(Exception):
    """An exact-only lookup found no repeat: only an embedding and a search can decide."""


class NewEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One answer to store with `SemanticCache.put_batch`."""

    question: str
    answer: str
    model: str
    usage: Usage
    namespace: str = "default"
    ttl_s: float | None = None
    scope: str = ""
    context: str | None = None


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """Behaviour of the cache that does not depend on HTTP."""

    # The dev-selected operating point (benchmarks/results, README "How often is it wrong?"):
    # the lowest threshold at which the no-hit control (S6) stays under 1% wrong answers.
    threshold: float = 0.86
    """Default similarity a semantic hit must reach."""
    default_ttl_s: float | None = None
    """TTL of entries written without `ttl_s`; None keeps them until deleted or invalidated."""
    max_question_chars: int = 2_000
    """Longest question accepted, in characters."""
    max_answer_chars: int = 200_000
    """Longest answer accepted, in characters."""
    margin: float = 0.04
    """How much the nearest phrasing must beat the nearest phrasing of a different answer by,
    whatever the score."""
    margin_weight: float = 2.0
    """Where answers have several phrasings, how much the margin moves the score (`score`)."""
    piece_weight: float = 2.0
    """Where answers have several phrasings, how much the word-piece gap lowers the score:
    each 0.01 of gap below `PIECE_PIVOT` costs this x 0.01; 0 turns the rule off and stores
    no word pieces. Needs an embedder that gives them (`TokenEmbedder`); without one the rule
    is off whatever this says."""
    guards: bool = True
    """Veto matches whose numbers, dates, actions or negation differ from the query's."""
    turn_threshold: float = 0.7
    """In a conversation, how alike each turn must be on its own (see _conversation_guard)."""
    neighbours: int = 16
    """How many nearest entries are read to find the nearest different answer."""
    index: IndexPolicy = field(default_factory=IndexPolicy)
    """When a large group moves from exact to approximate (IVF) search."""


MARGIN_PIVOT = 0.15
"""Where the margin counts, a match at least this far ahead of every other answer is scored
on its similarity alone; each 0.01 short of it costs `margin_weight` x 0.01 of score."""
ALIAS_OFFSET = 0.05
"""Added to the score when the answer served has several phrasings. Its centroid sits lower
than the single phrasing a question is compared with otherwise; with 0.05, the one default
threshold keeps both no-hit controls (S6, S6s) under 1% wrong answers for both kinds of
namespace (benchmarks/results)."""
SCORE_CEILING = 0.999
"""The offset never lifts a score above this: a threshold of 1 still means "the same
question" (or one that embeds identically)."""


PIECE_PIVOT = 0.2
"""Where the word-piece rule is on, a served answer whose phrasings agree with the question's
word pieces at least this much better than every rival's do is scored as before; each 0.01
short of it costs `piece_weight` x 0.01 (README "How often is it wrong?")."""
PIECE_RIVALS = 4
"""Other answers, nearest first among the neighbours read, that the served answer must beat
on word pieces: about a point more of S1 answered at 1% wrong than against the nearest one
alone, whose phrasings need not be the ones that share the question's words
(benchmarks/study_token_margin.py)."""
BAG_BYTES = 256 * 2**20
"""Memory for answers' word pieces (float32), least recently used dropped first: an answer of
five phrasings takes about 100 KiB, one of 130 phrasings 2.6 MiB."""


def quantise_pieces(
    pieces: np.ndarray[Any, Any],
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """int8 rows and their scales: word-piece agreement is unchanged at this precision."""
    scale = np.maximum(np.abs(pieces).max(axis=1, keepdims=True), 1e-12) / 127.0
    return np.round(pieces / scale).astype(np.int8), scale.astype(np.float32)


def agreement(query: np.ndarray[Any, Any], bag: np.ndarray[Any, Any]) -> float:
    """Mean over the query's word pieces of the best cosine to any piece of `bag`."""
    return float((query @ bag.T).max(axis=1).mean())


def piece_embedder(embedder: Embedder) -> TokenEmbedder | None:
    """`embedder` if it gives word pieces (a wrapper says so by `has_tokens`), else None."""
    has = getattr(embedder, "has_tokens", None)
    gives = bool(has) if has is not None else isinstance(embedder, TokenEmbedder)
    return cast(TokenEmbedder, embedder) if gives else None


def score(similarity: float, margin: float, weight: float, offset: float) -> float:
    """The number the threshold applies to where an answer or its nearest rival has several
    phrasings: `similarity` less `weight` x the margin's shortfall below `MARGIN_PIVOT`, plus
    `offset` (`ALIAS_OFFSET` when the answer itself has several phrasings).

    An answer that barely beats another is where a semantic cache serves the wrong one. No
    reward for a large margin: in a namespace of few answers every match is far ahead of the
    rest, and a reward there served questions the cache had no answer for (S6s,
    benchmarks/results). On BANKING77 dev this lifted the hit rate at 1% wrong answers from
    19% to 24% with five phrasings per answer (README "How often is it wrong?").
    """
    moved = similarity + offset - weight * max(0.0, MARGIN_PIVOT - margin)
    return max(-1.0, min(moved, max(similarity, SCORE_CEILING)))


def answer_key(answer: str) -> int:
    """Entries whose answers normalise alike are one answer for the margin rule."""
    digest = hashlib.blake2b(normalize_question(answer).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


class Candidate(msgspec.Struct, kw_only=True):
    """The entry a lookup would serve, and everything the decision rule looks at."""

    entry: Entry
    match: Literal["exact", "semantic"]
    similarity: float
    """The score the threshold applies to: `matched`, moved by the margin (`score`) where an
    answer has several phrasings."""
    nearest: float
    """Cosine similarity to the nearest stored phrasing."""
    answer_similarity: float
    """Cosine similarity to the centroid of every phrasing of that entry's answer."""
    runner_up: float | None
    """Cosine similarity of the nearest phrasing of a different answer (None: none found)."""
    margin: float
    """`nearest` - `runner_up`; without a runner-up, 1 (no other answer stored) or 0.15 (none
    among the 128 nearest phrasings)."""
    guard: str | None
    """Why a guard vetoes this match; None when no guard objects."""
    piece_gap: float | None = None
    """Word-piece agreement of the question with this answer's phrasings less the highest
    agreement with a rival answer's (up to `PIECE_RIVALS`; None: not measured)."""

    @property
    def matched(self) -> float:
        """The similarity before the margin moves it: mean of `nearest` and
        `answer_similarity`. Feedback raises an entry's floor on this."""
        return (self.nearest + self.answer_similarity) / 2

    def accepts(self, threshold: float, margin: float) -> bool:
        """The decision rule of `lookup`: the one place where hits are decided."""
        if self.guard is not None:
            return False
        if self.match == "exact":
            return True
        if self.matched < (self.entry.min_similarity or 0.0):
            return False  # feedback raised this entry's floor (`SemanticCache.feedback`)
        return self.similarity >= threshold and self.margin >= margin


class RecentHit(msgspec.Struct, frozen=True, kw_only=True):
    """What feedback on a hit needs to know about it."""

    namespace: str
    text: str
    entry_id: str
    similarity: float
    match: str
    matched: float = 1.0
    """What feedback raises the entry's floor above: similarity, not the margin-moved score."""


class Feedback(msgspec.Struct, kw_only=True):
    lookup_id: str
    entry_id: str
    correct: bool
    min_similarity: float | None
    """The entry's similarity floor after this report."""


def negative_pair(entry: Entry, text: str) -> int:
    """One (entry, answer, question) that was reported wrong. The answer is part of it: an
    entry re-stored with a corrected answer is not blocked by reports on the old one."""
    key = f"{entry.id}\x00{answer_key(entry.answer)}\x00{text}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def new_lookup_id() -> str:
    """128 random bits in hex, like uuid4().hex at a fraction of its cost on the hot path."""
    return os.urandom(16).hex()


RECENT_HITS = 100_000
"""How many recent hits feedback can still refer to."""
WIDER_SEARCH = 8
"""When every neighbour read shares one answer, read this many times more."""
TIGHTEN_STEP = 0.01
"""A wrongly served entry then needs at least this much more similarity than it had."""


class Comparison(msgspec.Struct, kw_only=True):
    similarity: float
    guard: str | None

    def accepts(self, threshold: float) -> bool:
        return self.guard is None and self.similarity >= threshold


class LookupResult(msgspec.Struct, kw_only=True):
    hit: bool
    lookup_id: str
    namespace: str
    catalog_version: int
    match: Literal["exact", "semantic"] | None = None
    entry: Entry | None = None
    similarity: float | None = None
    nearest_similarity: float | None = None
    saved_usd: float | None = None
    saved_tokens: int = 0
    margin: float | None = None
    guard: str | None = None


class SemanticCache:
    """A namespaced, versioned semantic cache over diskcache and faiss.

    Thread-safe: lookups run concurrently; writes, deletes and version changes are serialised.
    A *scope* is a further hard partition inside a namespace (a hash of request parameters
    that must match exactly); a *context* is the previous user turn, matched with the question.
    """

    def __init__(
        self,
        directory: str | Path,
        embedder: Embedder,
        *,
        prices: PriceTable | None = None,
        config: CacheConfig | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config or CacheConfig()
        validate_threshold(self.config.threshold)
        self._embedder = embedder
        self.prices = prices or PriceTable.load()
        self._clock = clock
        self._dir = Path(directory)
        self._index_dir = self._dir / "index"
        self._write_lock = threading.Lock()
        self._purging = threading.Lock()  # one purge at a time: periodic and /admin/purge
        # Single queries on a small index are slower with OpenMP threads than without.
        faiss.omp_set_num_threads(1)
        self._store = EntryStore(self._dir / "store")
        self.ledger = Ledger(self._dir / "ledger.sqlite3")
        self._versions: dict[str, int] = self._store.versions()
        self._groups: dict[GroupKey, GroupIndex] = {}
        self._stale_groups: set[GroupKey] = set()
        self._hits_pending: dict[int, tuple[int, float]] = {}
        self._hits_lock = threading.Lock()
        self.counters = Counters(self._store.load_stats())
        self._negatives = self._store.negatives()
        self._recent: OrderedDict[str, RecentHit] = OrderedDict()
        # Word pieces of stored phrasings are read from the store per answer, kept in an LRU.
        self._bags: OrderedDict[tuple[int, ...], np.ndarray[Any, Any]] = OrderedDict()
        self._bag_bytes = 0
        self._bags_lock = threading.Lock()
        self.indexes_loaded = 0
        """How many saved index files were reused at start-up (the rest were rebuilt)."""
        self.indexes_rebuilt = 0
        self.indexes_patched = 0
        """How many reused index files lagged the store (a crash) and were caught up."""
        self._load_groups()

    @staticmethod
    def scope_of(parameters: dict[str, Any]) -> str:
        """A short stable hash of request parameters that must match exactly."""
        canonical = msgspec.json.encode(parameters, order="deterministic")
        return hashlib.blake2b(canonical, digest_size=8).hexdigest()

    @property
    def embedder_name(self) -> str:
        return self._embedder.name

    # start-up ------------------------------------------------------------------------------

    def _embedder_id(self) -> str:
        return f"{self._embedder.name}/{self._embedder.dim}"

    def _load_groups(self) -> None:
        """Rebuild in-memory state from the store, the source of truth; reuse saved indexes.

        Only what the index needs is kept per entry (id, expiry, answer key), never the
        entries themselves: a million of them would stay in the process's memory for good.
        """
        members: dict[GroupKey, _GroupRows] = {}
        for int_id, entry in self._store.iter_entries():
            key = (entry.namespace, entry.catalog_version, entry.scope)
            if entry.catalog_version < self.version(entry.namespace):
                self._stale_groups.add(key)
                continue
            rows = members.get(key)
            if rows is None:
                rows = members[key] = _GroupRows()
            rows.ids.append(int_id)
            rows.expiries.append(entry.expires_at)
            rows.answers.append(answer_key(entry.answer))
        same_model = self._store.embedder_id() in (None, self._embedder_id())
        for key, rows in members.items():
            group = self._load_saved_index(key, set(rows.ids)) if same_model else None
            if group is None:
                group = self._rebuild_group(rows, reuse_vectors=same_model)
                self.indexes_rebuilt += 1
            else:
                self.indexes_loaded += 1
                for int_id, expires, answer in zip(
                    rows.ids, rows.expiries, rows.answers, strict=True
                ):
                    group.track(int_id, expires, answer)
            self._groups[key] = group
        self._store.set_embedder_id(self._embedder_id())

    def _index_path(self, key: GroupKey) -> Path:
        namespace, version, scope = key
        suffix = f".{scope}" if scope else ""
        return self._index_dir / f"{namespace}@{version}{suffix}.faiss"

    def _load_saved_index(self, key: GroupKey, expected: set[int]) -> GroupIndex | None:
        path = self._index_path(key)
        if not path.exists():
            log.info("index %s missing: rebuilding from the store", path.name)
            return None
        try:
            group = GroupIndex.load(path, self._embedder.dim, self.config.index)
        except ValueError as exc:
            log.warning("%s: rebuilding from the store", exc)
            return None
        present = group.index_ids()
        if present != expected:
            # A crash after writes the index file had not caught up with: the same id always
            # has the same vector, so adding the store's missing ids and dropping the ids it
            # no longer has makes the file exact again, without a full rebuild.
            missing = sorted(expected - present)
            found = [self._store.get_vector(i, self._embedder.dim) for i in missing]
            vectors = [v for v in found if v is not None]
            if len(vectors) != len(missing):
                log.warning("index %s is stale: rebuilding from the store", path.name)
                return None
            extra = sorted(present - expected)
            matrix = np.vstack(vectors) if vectors else np.zeros((0, self._embedder.dim))
            group.patch(extra, missing, matrix)
            self.indexes_patched += 1
            log.info("index %s patched: %d added, %d removed", path.name, len(missing), len(extra))
        return group

    def _rebuild_group(self, rows: _GroupRows, *, reuse_vectors: bool) -> GroupIndex:
        group = GroupIndex(self._embedder.dim, policy=self.config.index)
        found: list[int] = []
        vectors: list[np.ndarray[Any, Any]] = []
        missing: list[int] = []
        for row, int_id in enumerate(rows.ids):
            vector = self._store.get_vector(int_id, self._embedder.dim) if reuse_vectors else None
            if vector is None:
                missing.append(row)
            else:
                found.append(row)
                vectors.append(vector)
        if found:
            group.add(
                [rows.ids[r] for r in found],
                np.vstack(vectors),
                [rows.expiries[r] for r in found],
                [rows.answers[r] for r in found],
            )
        # Vectors of another model (or lost ones) are recomputed and stored again.
        for start in range(0, len(missing), _REEMBED_BATCH):
            batch = missing[start : start + _REEMBED_BATCH]
            entries = [self._store.get_entry(rows.ids[r]) for r in batch]
            kept = [(r, e) for r, e in zip(batch, entries, strict=True) if e is not None]
            texts = [key_text(e.normalized_question, e.context) for _, e in kept]
            matrix = self._embedder.embed(texts)
            for (r, entry), vector in zip(kept, matrix, strict=True):
                self._store.put_entry(entry, rows.ids[r], vector)
            group.add(
                [rows.ids[r] for r, _ in kept],
                matrix,
                [rows.expiries[r] for r, _ in kept],
                [rows.answers[r] for r, _ in kept],
            )
        group.upgrade()  # a large group starts on the index it will be saved as
        group.dirty = True
        return group

    # reads ---------------------------------------------------------------------------------

    def version(self, namespace: str) -> int:
        """Current catalog version of `namespace` (1 until first bumped); no validation."""
        return self._versions.get(namespace, 1)

    def catalog_version(self, namespace: str) -> int:
        """Current catalog version of a namespace whose name is validated first."""
        return self.version(validate_namespace(namespace))

    def explain(
        self,
        question: str,
        namespace: str = "default",
        *,
        scope: str = "",
        context: str | None = None,
    ) -> Candidate | None:
        """The entry `lookup` would weigh for `question`, with the evidence; no side effects.

        None when the namespace (and scope) holds no live entry. Raises InvalidInput.
        """
        namespace = validate_namespace(namespace)
        normalized = validate_question(question, self.config.max_question_chars)
        context_key = normalize_question(context) if context else None
        text = key_text(normalized, context_key)
        return self._candidate(
            question, text, (namespace, self.version(namespace), scope), context_key
        )

    def compare(
        self, a: str, b: str, *, context_a: str | None = None, context_b: str | None = None
    ) -> Comparison:
        """How alike two questions are to this cache: similarity and guard verdict."""
        texts = [
            key_text(
                validate_question(q, self.config.max_question_chars),
                normalize_question(c) if c else None,
            )
            for q, c in ((a, context_a), (b, context_b))
        ]
        if texts[0] == texts[1]:
            return Comparison(similarity=1.0, guard=None)
        vectors = self._embedder.embed(texts)
        similarity = min(1.0, max(-1.0, float(vectors[0] @ vectors[1])))
        return Comparison(similarity=similarity, guard=self._guard(a, b))

    def _guard(self, query: str, stored: str) -> str | None:
        return guards.check(query, stored) if self.config.guards else None

    def _conversation_guard(self, question: str, context: str | None, entry: Entry) -> str | None:
        """In a conversation, each turn must match on its own as well as together.

        Embedded together, a long first turn drowns a short follow-up ("What are its
        types?"), and a short follow-up hides which conversation it belongs to; compared
        turn by turn, both differences show (measured on the S5 chains, benchmarks/results).
        """
        if not self.config.guards or (not context and not entry.context):
            return None
        normalized = normalize_question(question)
        texts = [normalized, entry.normalized_question]
        if context and entry.context and context != entry.context:
            texts += [context, entry.context]
        vectors = self._embedder.embed(texts)
        floor = self.config.turn_threshold
        if len(texts) == 4 and float(vectors[2] @ vectors[3]) < floor:
            return "the previous turn differs"
        if normalized != entry.normalized_question and float(vectors[0] @ vectors[1]) < floor:
            return "the follow-up differs"
        if context and entry.context:
            return self._guard(context, entry.context)
        return None

    def _candidate(
        self,
        question: str,
        text: str,
        key: GroupKey,
        context: str | None = None,
        *,
        search: bool = True,
    ) -> Candidate | None:
        """The entry a lookup would weigh, None when there is none; without `search`, raises
        _NeedsSearch where only an embedding could tell."""
        group = self._groups.get(key)
        now = self._clock()
        if group is None or len(group) == 0:
            return None
        int_id = entry_int_id(*key, text)
        if group.is_live(int_id, now):
            entry = self._store.get_entry(int_id)
            if entry is not None:
                wrong = bool(self._negatives) and negative_pair(entry, text) in self._negatives
                return Candidate(
                    entry=entry, match="exact", similarity=1.0, nearest=1.0,
                    answer_similarity=1.0, runner_up=None, margin=1.0,
                    guard="reported wrong for this question" if wrong else None,
                )  # fmt: skip
        if not search:
            raise _NeedsSearch
        query_pieces = None
        # Without aliases in the group the word-piece rule never applies: no pieces asked for.
        pieced = self._piece_embedder() if group.has_aliases else None
        if pieced is not None:
            vectors, pieces = pieced.embed_with_tokens([text])
            vector, query_pieces = vectors[0], pieces[0]
        else:
            vector = self._embedder.embed([text])[0]
        # Where an answer has several phrasings they can fill the first neighbours, and the
        # margin needs the nearest other answer. An IVF search costs its probed lists whatever
        # it returns, so a large group reads wide at once rather than searching twice; a flat
        # one reads wide only when it must (`_runner_up`): there the wide read costs more.
        wide = group.has_aliases and group.kind == "ivf"
        neighbours = group.search(
            vector, now, self.config.neighbours * (WIDER_SEARCH if wide else 1)
        )
        if not neighbours:
            return None
        best_id, nearest = neighbours[0]
        best_answer = group.answer_key(best_id)
        own = nearest
        if best_answer is not None:
            own = group.answer_similarities(vector, [best_answer]).get(best_answer, nearest)
        # Scored by the nearest phrasing and by its answer's centroid together (with one
        # phrasing per answer, both are the plain cosine). The margin is taken between
        # phrasings: centroids of answers asked in hundreds of ways sit too close together
        # to separate them (measured on BANKING77 dev, benchmarks/results).
        matched = (nearest + own) / 2
        runner_up, margin, rivals = self._runner_up(group, vector, now, neighbours, best_answer)
        rival = rivals[0] if rivals else None
        # The margin moves the score only where an answer has several phrasings (aliases, an
        # imported FAQ). Entries stored one per question, as /v1/ask stores its misses, are
        # often one question answered twice: there a near rival is no sign of a wrong match,
        # and scoring it down would keep such a namespace missing as it fills (BANKING77
        # stream, S2). The hard minimum (`margin`) still applies everywhere.
        best_aliased = best_answer is not None and group.phrasings(best_answer) > 1
        piece_gap = None
        if best_aliased or (rival is not None and group.phrasings(rival) > 1):
            offset = ALIAS_OFFSET if best_aliased else 0.0
            similarity = score(matched, margin, self.config.margin_weight, offset)
            if query_pieces is not None and best_answer is not None and rivals:
                piece_gap = self._piece_gap(group, query_pieces, best_answer, rivals)
                if piece_gap is not None:
                    similarity -= self.config.piece_weight * max(0.0, PIECE_PIVOT - piece_gap)
        else:
            similarity = matched
        entry = self._store.get_entry(best_id)
        if entry is None or not entry.is_live(now):
            return None
        guard = self._guard(question, entry.question) or self._conversation_guard(
            question, context, entry
        )
        if self._negatives and negative_pair(entry, text) in self._negatives:
            guard = "reported wrong for this question"
        return Candidate(
            entry=entry,
            match="semantic",
            similarity=similarity,
            nearest=nearest,
            answer_similarity=own,
            runner_up=runner_up,
            margin=margin,
            guard=guard,
            piece_gap=piece_gap,
        )

    def _makes_aliases(self, checked: Sequence[tuple[Any, ...]], texts: list[str]) -> bool:
        """Whether a batch writes into a group whose answers have (or will have) several
        phrasings: only there does the word-piece rule read stored pieces."""
        if self._piece_embedder() is None:
            return False
        seen: dict[tuple[GroupKey, int], str] = {}
        for (item, namespace, _, _, _), text in zip(checked, texts, strict=True):
            key = (namespace, self.version(namespace), item.scope)
            answer = answer_key(item.answer)
            group = self._groups.get(key)
            if group is not None and (group.has_aliases or group.phrasings(answer) > 0):
                return True
            if seen.setdefault((key, answer), text) != text:
                return True
        return False

    def _unpieced_phrasings(
        self, checked: Sequence[tuple[Any, ...]], texts: list[str]
    ) -> list[tuple[Entry, int]]:
        """Stored phrasings of the answers in a batch, not rewritten by it, that have no word
        pieces yet. Only an answer's lone phrasing is looked at: once an answer has several,
        its phrasings were written with pieces (unless while the rule was off)."""
        keys = [(ns, self.version(ns), item.scope) for item, ns, _, _, _ in checked]
        written = {entry_int_id(*key, text) for key, text in zip(keys, texts, strict=True)}
        found: dict[int, Entry] = {}
        for (item, _, _, _, _), key in zip(checked, keys, strict=True):
            group = self._groups.get(key)
            answer = answer_key(item.answer)
            if group is None or group.phrasings(answer) != 1:
                continue
            for int_id in group.members(answer):
                if int_id in written or int_id in found:
                    continue
                if self._store.get_pieces(int_id) is None:
                    entry = self._store.get_entry(int_id)
                    if entry is not None:
                        found[int_id] = entry
        return [(entry, int_id) for int_id, entry in found.items()]

    def _piece_embedder(self) -> TokenEmbedder | None:
        """The embedder to ask for word pieces, None while the word-piece rule is off."""
        return piece_embedder(self._embedder) if self.config.piece_weight > 0 else None

    def _bag(self, group: GroupIndex, answer: int) -> np.ndarray[Any, Any] | None:
        """The word pieces of every phrasing of `answer`; None when there are none to be had."""
        members = tuple(sorted(group.members(answer)))
        with self._bags_lock:
            if members in self._bags:
                self._bags.move_to_end(members)
                return self._bags[members]
        stored = {i: self._store.get_pieces(i) for i in members}
        found = [rows.astype(np.float32) * scales for rows, scales in filter(None, stored.values())]
        missing = [e for i, p in stored.items() if p is None and (e := self._store.get_entry(i))]
        pieced = self._piece_embedder()
        if missing and pieced is not None:
            # Written before its group had aliases (or while the rule was off): embedded now,
            # kept in memory only, so a lookup never writes.
            texts = [key_text(e.normalized_question, e.context) for e in missing]
            try:
                found.extend(pieced.embed_with_tokens(texts)[1])
            except Exception:
                log.exception("word pieces of stored phrasings could not be computed")
                return None
        if not found:
            return None
        bag = np.vstack(found)
        with self._bags_lock:
            if members not in self._bags:
                self._bags[members] = bag
                self._bag_bytes += bag.nbytes
            while self._bag_bytes > BAG_BYTES and len(self._bags) > 1:
                self._bag_bytes -= self._bags.popitem(last=False)[1].nbytes
        return bag

    def _piece_gap(
        self, group: GroupIndex, query: np.ndarray[Any, Any], best: int, rivals: list[int]
    ) -> float | None:
        """How much better the served answer's phrasings agree with the question's word pieces
        than the best-agreeing rival's do; None when the pieces of the served answer, or of
        every rival, could not be had."""
        ours = self._bag(group, best) if len(query) else None
        if ours is None:
            return None
        theirs = [agreement(query, bag) for r in rivals if (bag := self._bag(group, r)) is not None]
        return agreement(query, ours) - max(theirs) if theirs else None

    def _runner_up(
        self,
        group: GroupIndex,
        vector: np.ndarray[Any, Any],
        now: float,
        neighbours: list[tuple[int, float]],
        best: int | None,
    ) -> tuple[float | None, float, list[int]]:
        """The similarity of the nearest phrasing of another answer than `best` (None: none
        found), the margin of the nearest phrasing over it, and the other answers met among
        the neighbours read, nearest first (at most `PIECE_RIVALS`).

        An answer stored in many phrasings can fill the first `neighbours` read; then the wider
        read (searched here unless `neighbours` holds it already) finds its competitor, so
        the margin is measured, not assumed.
        """
        nearest = neighbours[0][1]
        first_read = neighbours[: self.config.neighbours]

        def others(read: list[tuple[int, float]]) -> tuple[float | None, list[int]]:
            first: float | None = None
            found: list[int] = []
            for i, sim in read[1:]:
                answer = group.answer_key(i)
                if answer == best or (answer is not None and answer in found):
                    continue
                if first is None:
                    first = sim
                if answer is not None:
                    found.append(answer)
                if len(found) == PIECE_RIVALS:
                    break
            return first, found

        first, rivals = others(first_read)
        if first is None and len(first_read) >= self.config.neighbours:
            wide = self.config.neighbours * WIDER_SEARCH
            if len(neighbours) <= len(first_read):  # not read wide yet
                neighbours = group.search(vector, now, wide)
            first, rivals = others(neighbours)
            if first is None and len(neighbours) >= wide:
                # 128 phrasings of one answer before any other: as clear as the rule asks,
                # though all of them may sit within a hair of each other.
                return None, MARGIN_PIVOT, []
        if first is None:
            return None, 1.0, []  # that was every live phrasing: no other answer to confuse
        return first, nearest - first, rivals

    def lookup(
        self,
        question: str,
        namespace: str = "default",
        threshold: float | None = None,
        *,
        scope: str = "",
        context: str | None = None,
        endpoint: str = "default",
        source: str = "lookup",
    ) -> LookupResult:
        """Find a servable answer for `question`: exact first, then the nearest neighbour.

        Invalid input raises InvalidInput; a failing embedder or store is a miss (fail open).
        """
        decided = self._lookup(
            question, namespace, threshold, scope, context, endpoint, source, search=True
        )
        assert decided is not None  # with search, every lookup is decided
        return decided

    def lookup_exact(
        self,
        question: str,
        namespace: str = "default",
        threshold: float | None = None,
        *,
        scope: str = "",
        context: str | None = None,
        endpoint: str = "default",
        source: str = "lookup",
    ) -> LookupResult | None:
        """`lookup` when no embedding is needed (a repeat, or a namespace with nothing in it):
        microseconds, fine on an event loop. None means only `lookup` can tell."""
        return self._lookup(
            question, namespace, threshold, scope, context, endpoint, source, search=False
        )

    def _lookup(
        self,
        question: str,
        namespace: str,
        threshold: float | None,
        scope: str,
        context: str | None,
        endpoint: str,
        source: str,
        *,
        search: bool,
    ) -> LookupResult | None:
        namespace = validate_namespace(namespace)
        normalized = validate_question(question, self.config.max_question_chars)
        threshold = self.config.threshold if threshold is None else validate_threshold(threshold)
        context_key = normalize_question(context) if context else None
        text = key_text(normalized, context_key)
        version = self.version(namespace)
        result = LookupResult(
            hit=False, lookup_id=new_lookup_id(), namespace=namespace, catalog_version=version
        )
        try:
            candidate = self._candidate(
                question, text, (namespace, version, scope), context_key, search=search
            )
        except _NeedsSearch:
            return None
        except EmbeddingTimeout as exc:  # expected while the model hangs: no traceback flood
            log.warning("lookup failed open to a miss (namespace %s): %s", namespace, exc)
            self._count(namespace, "misses", error=True)
            return result
        except Exception:
            log.exception("lookup failed open to a miss (namespace %s)", namespace)
            self._count(namespace, "misses", error=True)
            return result
        if candidate is not None:
            result.nearest_similarity = candidate.similarity
            result.margin = candidate.margin
            result.guard = candidate.guard
        if candidate is None or not candidate.accepts(threshold, self.config.margin):
            self._count(namespace, "misses")
            return result
        entry = candidate.entry
        result.hit = True
        result.match = candidate.match
        result.entry = entry
        result.similarity = candidate.similarity
        result.saved_usd = entry.cost_usd
        result.saved_tokens = entry.usage.total
        self._count(namespace, "exact_hits" if candidate.match == "exact" else "semantic_hits")
        self.ledger.record(
            LedgerRow(
                kind="hit",
                source=source,
                namespace=namespace,
                endpoint=endpoint,
                model=entry.model,
                usage=entry.usage,
                cost_usd=entry.cost_usd,
                reason=candidate.match,
                entry_id=entry.id,
                ts=self._clock(),
            )
        )
        self._note_hit(entry)
        with self._hits_lock:
            self._recent[result.lookup_id] = RecentHit(
                namespace=namespace,
                text=text,
                entry_id=entry.id,
                similarity=candidate.similarity,
                match=candidate.match,
                matched=candidate.matched,
            )
            if len(self._recent) > RECENT_HITS:
                self._recent.popitem(last=False)
        return result

    def _count(self, namespace: str, outcome: str, *, error: bool = False) -> None:
        """One lookup: in the totals of /v1/stats and in its minute for the dashboard."""
        self.counters.record_lookup(namespace, outcome, error=error)
        self.ledger.record_lookup(namespace, outcome, error=error, ts=self._clock())

    def feedback(self, lookup_id: str, correct: bool) -> Feedback:
        """Record whether a hit was right. A wrong hit is never served again for that
        question, and its entry then needs more similarity to be served at all."""
        with self._hits_lock:
            hit = self._recent.pop(lookup_id, None)
        if hit is None:
            raise NotFound(
                f"no recent hit with lookup_id {lookup_id!r} (misses take no feedback, "
                "and each hit takes one report)"
            )
        self.counters.add(hit.namespace, "reported_correct" if correct else "reported_wrong")
        if correct:
            entry = self._store_entry(hit.entry_id)
            return Feedback(
                lookup_id=lookup_id,
                entry_id=hit.entry_id,
                correct=True,
                min_similarity=entry.min_similarity if entry else None,
            )
        self.ledger.record_wrong(
            WrongHit(
                namespace=hit.namespace,
                lookup_id=lookup_id,
                entry_id=hit.entry_id,
                question=hit.text,
                similarity=hit.similarity,
                match=hit.match,
                ts=self._clock(),
            )
        )
        floor: float | None = None
        with self._write_lock:
            entry = self._store_entry(hit.entry_id)
            if entry is None:
                raise NotFound(f"entry {hit.entry_id} of that hit no longer exists")
            pair = negative_pair(entry, hit.text)
            self._store.add_negative(pair)
            self._negatives.add(pair)
            if hit.match == "semantic":
                floor = min(1.0, max(entry.min_similarity or 0.0, hit.matched + TIGHTEN_STEP))
                entry.min_similarity = floor
                self._store.update_entry(entry, int(entry.id, 16))
        log.info("hit %s reported wrong: entry %s tightened", lookup_id, hit.entry_id)
        return Feedback(
            lookup_id=lookup_id, entry_id=hit.entry_id, correct=False, min_similarity=floor
        )

    def _store_entry(self, entry_id: str) -> Entry | None:
        int_id = parse_entry_id(entry_id)
        return None if int_id is None else self._store.get_entry(int_id)

    def _note_hit(self, entry: Entry) -> None:
        int_id = parse_entry_id(entry.id)
        if int_id is None:
            return
        now = self._clock()
        with self._hits_lock:
            count, _ = self._hits_pending.get(int_id, (0, now))
            self._hits_pending[int_id] = (count + 1, now)
        entry.hit_count += count + 1
        entry.last_hit_at = now

    def find(self, entry_id: str) -> Entry | None:
        """The stored entry with this id, of any version and state, or None."""
        int_id = parse_entry_id(entry_id)
        return self._store.get_entry(int_id) if int_id is not None else None

    def now(self) -> float:
        """The cache's (injectable) clock: reports window on the time lookups are stamped with."""
        return self._clock()

    def namespaces(self) -> dict[str, tuple[int, int]]:
        """Every known namespace: its catalog version and live entries of that version.
        Unlike `stats`, reads no ledger."""
        now = self._clock()
        names = set(self.counters.snapshot()) | set(self._versions)
        names |= {key[0] for key in list(self._groups)}
        return {ns: (self.version(ns), self._live_entries(ns, now)) for ns in sorted(names)}

    def hit_namespace(self, lookup_id: str) -> str | None:
        """The namespace of a recent hit that can still take feedback, or None."""
        with self._hits_lock:
            hit = self._recent.get(lookup_id)
        return None if hit is None else hit.namespace

    def get(self, entry_id: str) -> Entry:
        """A servable entry by id (live, current version), else NotFound."""
        int_id = parse_entry_id(entry_id)
        entry = self._store.get_entry(int_id) if int_id is not None else None
        if (
            entry is None
            or int_id is None
            or not entry.is_live(self._clock())
            or entry.catalog_version != self.version(entry.namespace)
        ):
            raise NotFound(f"no servable entry with id {entry_id!r}")
        with self._hits_lock:
            pending = self._hits_pending.get(int_id)
        if pending is not None:
            entry.hit_count += pending[0]
            entry.last_hit_at = pending[1]
        return entry

    def _live_entries(self, namespace: str, now: float) -> int:
        version = self.version(namespace)
        return sum(
            group.live_count(now)
            for (ns, ver, _), group in list(self._groups.items())
            if ns == namespace and ver == version
        )

    def stats(self) -> tuple[NamespaceStats, dict[str, NamespaceStats]]:
        """Totals over every namespace, and one row per namespace. Savings come from the ledger."""
        now = self._clock()
        raw = self.counters.snapshot()
        savings = self.ledger.report()
        names = sorted(set(raw) | set(self._versions) | {key[0] for key in self._groups})
        rows: dict[str, NamespaceStats] = {}
        total: dict[str, float] = {}
        total_entries = 0
        for namespace in names:
            entries = self._live_entries(namespace, now)
            values = raw.get(namespace, {})
            saved = savings.namespaces.get(namespace, UsageLine())
            rows[namespace] = summarise(values, entries, self.version(namespace), saved)
            total_entries += entries
            for name, value in values.items():
                total[name] = total.get(name, 0.0) + value
        return summarise(total, total_entries, None, savings.totals), rows

    # writes --------------------------------------------------------------------------------

    def _check_write(
        self, answer: str, model: str, usage: Usage, ttl_s: float | None
    ) -> float | None:
        if not isinstance(answer, str) or not answer.strip():
            raise InvalidInput("answer must be a non-empty string")
        if len(answer) > self.config.max_answer_chars:
            raise InvalidInput(
                f"answer is {len(answer)} characters long; the limit is "
                f"{self.config.max_answer_chars}"
            )
        if not isinstance(model, str) or not model.strip():
            raise InvalidInput("model must be a non-empty string")
        counts = msgspec.structs.astuple(usage)
        if any(not 0 <= count <= MAX_TOKENS_FIELD for count in counts):
            raise InvalidInput(f"token counts must be between 0 and {MAX_TOKENS_FIELD}")
        if ttl_s is not None and not (math.isfinite(ttl_s) and 0 < ttl_s <= MAX_TTL_S):
            raise InvalidInput(
                f"ttl_s must be a positive number of seconds, at most {MAX_TTL_S:.0f}"
            )
        return ttl_s if ttl_s is not None else self.config.default_ttl_s

    def put(
        self,
        question: str,
        answer: str,
        *,
        namespace: str = "default",
        model: str,
        usage: Usage,
        ttl_s: float | None = None,
        scope: str = "",
        context: str | None = None,
    ) -> Entry:
        """Store an answer under the namespace's current catalog version.

        Returns once the entry is durable. The same normalised question (and context) in the
        same namespace, scope and version overwrites the earlier entry.
        """
        item = NewEntry(
            question=question,
            answer=answer,
            namespace=namespace,
            model=model,
            usage=usage,
            ttl_s=ttl_s,
            scope=scope,
            context=context,
        )
        return self.put_batch([item])[0]

    def put_many(
        self,
        questions: list[str],
        answer: str,
        *,
        namespace: str = "default",
        model: str,
        usage: Usage,
        ttl_s: float | None = None,
        context: str | None = None,
    ) -> list[Entry]:
        """Store several phrasings (aliases) of one answer, all or none."""
        return self.put_batch(
            [
                NewEntry(
                    question=q,
                    answer=answer,
                    namespace=namespace,
                    model=model,
                    usage=usage,
                    ttl_s=ttl_s,
                    context=context,
                )
                for q in questions
            ]
        )

    def put_batch(self, items: Sequence[NewEntry]) -> list[Entry]:
        """Store many entries with one embedding call per batch and one transaction.

        Every item is checked before anything is written, and the write is one transaction:
        when this returns all are durable, and when it raises none was stored.
        """
        checked = []
        for item in items:
            namespace = validate_namespace(item.namespace)
            normalized = validate_question(item.question, self.config.max_question_chars)
            context = normalize_question(item.context) if item.context else None
            ttl = self._check_write(item.answer, item.model, item.usage, item.ttl_s)
            checked.append((item, namespace, normalized, context, ttl))
        if not checked:
            return []
        texts = [key_text(normalized, context) for _, _, normalized, context, _ in checked]
        namespaces = {namespace for _, namespace, _, _, _ in checked}
        pieces: list[np.ndarray[Any, Any]] | None = None
        pieced = self._piece_embedder() if self._makes_aliases(checked, texts) else None
        # Earlier phrasings of the answers written here that were stored without word pieces
        # (alone at the time): they get theirs now, in the same model calls.
        backfill = self._unpieced_phrasings(checked, texts) if pieced is not None else []
        try:
            if pieced is not None:
                chunks, pieces = [], []
                every = texts + [key_text(e.normalized_question, e.context) for e, _ in backfill]
                for start in range(0, len(every), _REEMBED_BATCH):
                    v, p = pieced.embed_with_tokens(every[start : start + _REEMBED_BATCH])
                    chunks.append(v)
                    pieces.extend(p)
                vectors = np.vstack(chunks)[: len(texts)]
                pieces, backfill_pieces = pieces[: len(texts)], pieces[len(texts) :]
            else:
                vectors = np.vstack(
                    [
                        self._embedder.embed(texts[start : start + _REEMBED_BATCH])
                        for start in range(0, len(texts), _REEMBED_BATCH)
                    ]
                )
        except Exception as exc:
            for namespace in namespaces:
                self.counters.add(namespace, "write_errors")
            log.exception("embedding failed: nothing stored")
            raise Unavailable("the embedding model failed; nothing was stored") from exc
        with self._write_lock:
            now = self._clock()
            rows: list[tuple[Entry, int, GroupKey]] = []
            for (item, namespace, normalized, context, ttl), text in zip(
                checked, texts, strict=True
            ):
                version = self.version(namespace)
                key = (namespace, version, item.scope)
                int_id = entry_int_id(*key, text)
                entry = Entry(
                    id=format_entry_id(int_id),
                    namespace=namespace,
                    catalog_version=version,
                    question=item.question,
                    normalized_question=normalized,
                    answer=item.answer,
                    model=item.model,
                    usage=item.usage,
                    cost_usd=self.prices.cost(item.model, item.usage),
                    created_at=now,
                    expires_at=None if ttl is None else now + ttl,
                    scope=item.scope,
                    context=context,
                )
                rows.append((entry, int_id, key))
            try:
                stored = zip(rows, vectors, strict=True)
                self._store.put_entries(
                    [(entry, int_id, v) for (entry, int_id, _), v in stored],
                    None if pieces is None else [quantise_pieces(p) for p in pieces],
                )
            except Exception as exc:
                for namespace in namespaces:
                    self.counters.add(namespace, "write_errors")
                log.exception("store write failed: nothing stored")
                raise Unavailable("the store could not write; nothing was stored") from exc
            by_group: dict[GroupKey, list[int]] = {}
            for row, (_, _, key) in enumerate(rows):
                by_group.setdefault(key, []).append(row)
            for key, members in by_group.items():
                # A question repeated within one batch: the last write of its id wins.
                last = list({rows[row][1]: row for row in members}.values())
                group = self._groups.get(key)
                if group is None:
                    group = self._groups[key] = GroupIndex(
                        self._embedder.dim, policy=self.config.index
                    )
                group.add(
                    [rows[row][1] for row in last],
                    vectors[last],
                    [rows[row][0].expires_at for row in last],
                    [answer_key(rows[row][0].answer) for row in last],
                )
            if backfill:
                try:
                    self._store.put_pieces(
                        [
                            (entry, int_id, quantise_pieces(p))
                            for (entry, int_id), p in zip(backfill, backfill_pieces, strict=True)
                            if self._store.get_entry(int_id) is not None  # not deleted meanwhile
                        ]
                    )
                except Exception:  # derived data: the lookup computes them if it needs them
                    log.exception("word pieces of earlier phrasings could not be stored")
            with self._hits_lock:
                for _, int_id, _ in rows:
                    self._hits_pending.pop(int_id, None)
        for entry, _, _ in rows:
            self.counters.add(entry.namespace, "writes")
        return [entry for entry, _, _ in rows]

    def delete(self, entry_id: str) -> Entry:
        """Delete an entry (of any version); NotFound if there is none."""
        int_id = parse_entry_id(entry_id)
        with self._write_lock:
            entry = self._store.get_entry(int_id) if int_id is not None else None
            if entry is None or int_id is None:
                raise NotFound(f"no entry with id {entry_id!r}")  # any version: it can be deleted
            self._store.delete_entry(int_id)
            group = self._groups.get((entry.namespace, entry.catalog_version, entry.scope))
            if group is not None:
                group.remove([int_id])
            with self._hits_lock:
                self._hits_pending.pop(int_id, None)
        return entry

    def set_version(self, namespace: str, version: int | None = None) -> tuple[int, int]:
        """Move `namespace` to `version` (default: current + 1). Returns (version, invalidated).

        Every entry of an older version is unservable as soon as this returns; `purge` frees
        their storage later. Versions only move forward, so a purged version never comes back
        half-present.
        """
        namespace = validate_namespace(namespace)
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise InvalidInput("version must be an integer")
        with self._write_lock:
            current = self.version(namespace)
            target = current + 1 if version is None else version
            if target > MAX_VERSION:
                raise InvalidInput(f"version must be at most {MAX_VERSION}")
            if target <= current:
                raise VersionConflict(
                    f"namespace {namespace!r} is at version {current}; a new version must be "
                    f"greater, got {target}"
                )
            now = self._clock()
            current_groups = [
                key for key in self._groups if key[0] == namespace and key[1] == current
            ]
            invalidated = sum(self._groups[key].live_count(now) for key in current_groups)
            self._store.set_version(namespace, target)
            self._versions[namespace] = target
            self._stale_groups.update(current_groups)
        log.info("namespace %s moved to catalog version %d", namespace, target)
        return target, invalidated

    def purge(self) -> int:
        """Reclaim the storage and index slots of expired and invalidated entries."""
        removed = 0
        now = self._clock()
        with self._purging:
            with self._write_lock:
                stale = list(self._stale_groups)
                for key in stale:
                    self._groups.pop(key, None)
            # Old versions take no writes, so evicting their records (minutes for a million)
            # does not hold up the writes of current ones.
            for key in stale:
                removed += self._store.evict_group(key[0], key[1])
                self._index_path(key).unlink(missing_ok=True)
                with self._write_lock:
                    self._stale_groups.discard(key)
            removed += self._purge_expired(now)
        if removed:
            log.info("purged %d expired or invalidated entries", removed)
        return removed

    def _purge_expired(self, now: float) -> int:
        removed = 0
        with self._write_lock:
            for key, group in list(self._groups.items()):
                expired = group.expired_ids(now)
                for int_id in expired:
                    self._store.delete_entry(int_id)
                removed += group.remove(expired)
                if len(group) == 0:  # nothing left to search: drop the group and its file
                    del self._groups[key]
                    self._index_path(key).unlink(missing_ok=True)
        return removed

    # persistence ---------------------------------------------------------------------------

    def flush(self, *, final: bool = False) -> None:
        """Persist counters, hit counts, the ledger and changed indexes. Safe at any time.

        Large indexes are written at most every `large_save_interval_s`, and on the `final`
        flush at shutdown; the store, written on every put, is what makes entries durable.
        """
        with self._hits_lock:
            pending, self._hits_pending = self._hits_pending, {}
        for group in list(self._groups.values()):
            group.upgrade()  # outside the write lock: writes go on while a large group trains
        with self._write_lock:
            for int_id, (count, last) in pending.items():
                entry = self._store.get_entry(int_id)
                if entry is not None:
                    entry.hit_count += count
                    entry.last_hit_at = last
                    self._store.update_entry(entry, int_id)
            now = time.monotonic()
            due = [
                (key, group)
                for key, group in self._groups.items()
                if group.dirty and (final or group.save_due(now))
            ]
        # Written outside the write lock: a large file must not hold up other groups' writes.
        for key, group in due:
            group.save(self._index_path(key))
            with self._write_lock:
                if self._groups.get(key) is not group:  # purged meanwhile: no file to keep
                    self._index_path(key).unlink(missing_ok=True)
        if self.counters.dirty:
            self._store.save_stats(self.counters.snapshot(for_flush=True))
        self.ledger.flush()

    def close(self) -> None:
        self.flush(final=True)
        self.ledger.close()
        self._store.close()
