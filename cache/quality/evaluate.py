"""The machinery every suite shares: caches opened on temporary folders, lookups taken
through `SemanticCache.explain`, streams that store on every miss, and the outcomes.

Nothing here computes a similarity or decides a hit: the cache does both. For each lookup
the harness takes the cache's `Candidate` once and asks it, through `Candidate.accepts` (the
rule `lookup` applies), whether it would be served at each threshold of the sweep.

Rules (one curve each):

- ``server``: the shipped configuration (guards as configured), at its own margin. Entries
  of one class share their answer (the class id), as an FAQ entry shares its answer with
  its aliases, so the cache's answer-level scoring (nearest phrasing and answer centroid)
  is at work.
- ``threshold-only``: the protocol's baseline, a static cosine threshold on the nearest
  stored phrasing, obtained from the same cache code configured as one: guards off (the
  per-turn check of conversations too), margin 0, and every stored phrasing given its own
  answer (``"<class> #<n>"``), so that the
  answer-centroid term equals the nearest phrasing's cosine. The harness still decides
  nothing: `Candidate.accepts` does.
- ``margin=M``: the shipped configuration at another margin (optional extra curves).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cache.entry import Usage, key_text
from cache.errors import InvalidInput
from cache.normalize import normalize_question, validate_question
from cache.pricing import PriceTable
from cache.semantic import CacheConfig, SemanticCache

from .loaders import Split
from .memo import MemoEmbedder
from .metrics import Bools, Point, point, sweep

NAMESPACE = "eval"
MODEL = "eval"
SERVER = "server"
BASELINE = "threshold-only"
AGREEMENT_SAMPLE = 100
"""Lookups per cache replayed through `SemanticCache.lookup` to prove explain agrees."""


def grid(start: float, stop: float, step: float) -> tuple[float, ...]:
    """Thresholds from `start` to `stop` inclusive, rounded to hundredths."""
    count = round((stop - start) / step)
    return tuple(round(start + i * step, 2) for i in range(count + 1))


TAUS = grid(0.30, 1.00, 0.01)
STREAM_TAUS = grid(0.70, 0.98, 0.02)


def cache_key_text(question: str, context: str | None = None) -> str:
    """The text the cache embeds for (question, context): its key."""
    return key_text(normalize_question(question), normalize_question(context) if context else None)


def embedded_texts(question: str, context: str | None = None) -> list[str]:
    """Every text the cache embeds for (question, context): what priming must cover.

    The key; and in a conversation each turn on its own as well (the cache compares the
    turns one by one too). Should the cache embed anything else, the memo's `misses` count
    (in summary.json, and checked by the tests) shows it.
    """
    texts = [cache_key_text(question, context)]
    if context:
        texts += [normalize_question(question), normalize_question(context)]
    return texts


def is_valid(question: str, config: CacheConfig) -> bool:
    """Whether the cache accepts `question` at all (not empty, not too long)."""
    try:
        validate_question(question, config.max_question_chars)
    except InvalidInput:
        return False
    return True


@dataclass(frozen=True)
class Rule:
    name: str
    margin: float
    guards: bool
    """Whether the cache this rule reads runs with the configured guards (else with none)."""
    distinct_answers: bool = False
    """Whether every stored phrasing gets its own answer (else a class shares one answer)."""

    @property
    def setting(self) -> tuple[bool, bool]:
        """Rules with the same setting read the same cache."""
        return self.guards, self.distinct_answers


@dataclass
class Context:
    """What every suite needs: data, the memoised embedder, the configuration under test."""

    data_dir: Path
    embedder: MemoEmbedder
    config: CacheConfig
    prices: PriceTable
    seed: int = 7
    quick: bool = False
    split: Split = "auto"
    taus: tuple[float, ...] = TAUS
    stream_taus: tuple[float, ...] = STREAM_TAUS
    extra_margins: tuple[float, ...] = ()
    progress: bool = True
    tmp_dir: Path | None = None
    traps_path: Path | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    """Results one suite computes for another (S6 reads S1's m = 5 outcomes)."""
    agreement: Counter[str] = field(default_factory=Counter)
    """Lookups replayed through `lookup`: how many, and how many disagreed with explain."""

    def rules(self) -> list[Rule]:
        rules = [Rule(SERVER, self.config.margin, True), Rule(BASELINE, 0.0, False, True)]
        rules += [Rule(f"margin={m:g}", m, True) for m in self.extra_margins]
        return rules

    def cache_config(self, guards: bool) -> CacheConfig:
        """The configuration under test, or the baseline's: no guard of any kind, margin 0.

        `guards=False` does not switch off the per-turn check of conversations; a turn
        threshold of -1 (no cosine is below it) does.
        """
        if guards:
            return self.config
        return dataclasses.replace(
            self.config,
            guards=False,
            margin=0.0,
            margin_weight=0.0,
            piece_weight=0.0,
            turn_threshold=-1.0,
        )

    def prime(self, texts: Sequence[tuple[str, str | None]], label: str) -> None:
        self.embedder.prime(
            (t for q, c in texts for t in embedded_texts(q, c)),
            label=label,
            progress=self.progress,
        )


@contextlib.contextmanager
def open_cache(ctx: Context, *, guards: bool) -> Iterator[SemanticCache]:
    """A fresh cache on a temporary folder, closed and deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="semcache-eval-", dir=ctx.tmp_dir) as folder:
        cache = SemanticCache(
            folder, ctx.embedder, prices=ctx.prices, config=ctx.cache_config(guards)
        )
        try:
            yield cache
        finally:
            cache.close()


@dataclass(frozen=True)
class Stored:
    question: str
    answer: str
    context: str | None = None


@dataclass(frozen=True)
class Query:
    question: str
    label: str
    """The query's class: a hit is correct when the served answer equals it."""
    context: str | None = None
    group: str = ""


_DISTINCT = " #"


def answer_for(label: str, serial: int, distinct: bool) -> str:
    """The answer stored for a phrasing of class `label` (its own one when `distinct`)."""
    return f"{label}{_DISTINCT}{serial}" if distinct else label


def class_of(answer: str, distinct: bool) -> str:
    """The class an entry's answer stands for."""
    return answer.rsplit(_DISTINCT, 1)[0] if distinct else answer


def fill(cache: SemanticCache, stored: Sequence[Stored], distinct: bool = False) -> Counter[str]:
    """Write `stored` in order; returns how many live entries hold each class.

    Two questions with the same key overwrite one another (that is the cache's behaviour),
    so a class can vanish: the returned counts say which classes a lookup could still find.
    """
    by_id: dict[str, str] = {}
    for serial, item in enumerate(stored):
        entry = cache.put(
            item.question,
            answer_for(item.answer, serial, distinct),
            namespace=NAMESPACE,
            model=MODEL,
            usage=Usage(),
            context=item.context,
        )
        by_id[entry.id] = item.answer
    return Counter(by_id.values())


@dataclass
class Decisions:
    """One rule's verdicts: per threshold, at the shipped threshold, and whether right."""

    accepted: Bools
    """(thresholds, lookups)."""
    default: Bools
    correct: Bools


@dataclass
class Outcomes:
    """What a set of lookups did under each rule; concatenable and maskable."""

    labels: list[str]
    groups: list[str]
    possible: Bools
    similarity: np.ndarray[Any, np.dtype[np.float64]]
    """The server cache's candidate similarity (NaN: no candidate)."""
    guards: list[str | None]
    rules: dict[str, Decisions]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: Sequence[bool] | Bools) -> Outcomes:
        keep = np.asarray(mask, dtype=bool)
        idx = np.flatnonzero(keep)
        return Outcomes(
            labels=[self.labels[i] for i in idx],
            groups=[self.groups[i] for i in idx],
            possible=self.possible[keep],
            similarity=self.similarity[keep],
            guards=[self.guards[i] for i in idx],
            rules={
                name: Decisions(d.accepted[:, keep], d.default[keep], d.correct[keep])
                for name, d in self.rules.items()
            },
        )

    def where(self, group: str) -> Outcomes:
        return self.subset([g == group for g in self.groups])

    @staticmethod
    def concat(parts: Sequence[Outcomes]) -> Outcomes:
        first = parts[0]
        return Outcomes(
            labels=[x for p in parts for x in p.labels],
            groups=[x for p in parts for x in p.groups],
            possible=np.concatenate([p.possible for p in parts]),
            similarity=np.concatenate([p.similarity for p in parts]),
            guards=[x for p in parts for x in p.guards],
            rules={
                name: Decisions(
                    np.concatenate([p.rules[name].accepted for p in parts], axis=1),
                    np.concatenate([p.rules[name].default for p in parts]),
                    np.concatenate([p.rules[name].correct for p in parts]),
                )
                for name in first.rules
            },
        )


def _check_agreement(
    ctx: Context, cache: SemanticCache, queries: Sequence[Query], defaults: Sequence[bool]
) -> None:
    """Replay a few lookups through `lookup` itself: its verdict must equal explain's."""
    for query, expected in list(zip(queries, defaults, strict=True))[:AGREEMENT_SAMPLE]:
        hit = cache.lookup(query.question, NAMESPACE, context=query.context).hit
        ctx.agreement["checked"] += 1
        ctx.agreement["disagreed"] += int(hit != bool(expected))


def run_lookups(ctx: Context, stored: Sequence[Stored], queries: Sequence[Query]) -> Outcomes:
    """Fill one cache per rule setting with `stored`, then explain every query once."""
    rules = ctx.rules()
    decided: dict[str, Decisions] = {}
    possible = np.zeros(len(queries), dtype=bool)
    similarity = np.full(len(queries), np.nan)
    guard_reasons: list[str | None] = [None] * len(queries)
    for setting in dict.fromkeys(r.setting for r in rules):
        guards, distinct = setting
        mine = [r for r in rules if r.setting == setting]
        with open_cache(ctx, guards=guards) as cache:
            present = fill(cache, stored, distinct)
            accepted = {r.name: np.zeros((len(ctx.taus), len(queries)), dtype=bool) for r in mine}
            default = {r.name: np.zeros(len(queries), dtype=bool) for r in mine}
            correct = np.zeros(len(queries), dtype=bool)
            for j, query in enumerate(queries):
                cand = cache.explain(query.question, NAMESPACE, context=query.context)
                if cand is None:
                    continue
                correct[j] = class_of(cand.entry.answer, distinct) == query.label
                for r in mine:
                    accepted[r.name][:, j] = [cand.accepts(t, r.margin) for t in ctx.taus]
                    default[r.name][j] = cand.accepts(ctx.config.threshold, r.margin)
                if mine[0].name == SERVER:
                    similarity[j] = cand.similarity
                    guard_reasons[j] = cand.guard
            if mine[0].name == SERVER:
                possible = np.array([present[q.label] > 0 for q in queries], dtype=bool)
            own = mine[0]
            _check_agreement(ctx, cache, queries, list(default[own.name]))
            for r in mine:
                decided[r.name] = Decisions(accepted[r.name], default[r.name], correct.copy())
    return Outcomes(
        labels=[q.label for q in queries],
        groups=[q.group for q in queries],
        possible=possible,
        similarity=similarity,
        guards=guard_reasons,
        rules={r.name: decided[r.name] for r in rules},
    )


@dataclass
class StreamRun:
    accepted: Bools
    correct: Bools
    possible: Bools


def run_stream(ctx: Context, order: Sequence[Query], tau: float, rule: Rule) -> StreamRun:
    """Serve `order` from an empty cache that stores every lookup it does not accept.

    Each miss stores its own answer, whatever the rule: in the server a miss calls the
    model, whose answers to two phrasings are two different texts.
    """
    n = len(order)
    accepted = np.zeros(n, dtype=bool)
    correct = np.zeros(n, dtype=bool)
    possible = np.zeros(n, dtype=bool)
    by_id: dict[str, str] = {}
    present: Counter[str] = Counter()
    with open_cache(ctx, guards=rule.guards) as cache:
        for j, query in enumerate(order):
            possible[j] = present[query.label] > 0
            cand = cache.explain(query.question, NAMESPACE, context=query.context)
            if cand is not None and cand.accepts(tau, rule.margin):
                accepted[j] = True
                correct[j] = class_of(cand.entry.answer, True) == query.label
                continue
            entry = cache.put(
                query.question,
                answer_for(query.label, j, True),
                namespace=NAMESPACE,
                model=MODEL,
                usage=Usage(),
                context=query.context,
            )
            previous = by_id.get(entry.id)
            if previous is not None:
                present[previous] -= 1
            by_id[entry.id] = query.label
            present[query.label] += 1
    return StreamRun(accepted, correct, possible)


@dataclass
class Curve:
    """One rule on one dataset: the sweep, and the outcome at the shipped threshold."""

    dataset: str
    rule: str
    margin: float
    points: list[Point]
    default: Point
    oracle: float


def curves_of(ctx: Context, dataset: str, outcomes: Outcomes) -> list[Curve]:
    """The sweep of every rule over a set of lookup outcomes."""
    oracle = float(np.mean(outcomes.possible)) if len(outcomes) else float("nan")
    margins = {r.name: r.margin for r in ctx.rules()}
    return [
        Curve(
            dataset=dataset,
            rule=name,
            margin=margins[name],
            points=sweep(ctx.taus, d.accepted, d.correct, outcomes.possible),
            default=point(ctx.config.threshold, d.default, d.correct, outcomes.possible),
            oracle=oracle,
        )
        for name, d in outcomes.rules.items()
    ]


def group_breakdown(ctx: Context, outcomes: Outcomes) -> dict[str, Any]:
    """Per lookup group, the server rule at the shipped threshold: lookups, hits, wrong."""
    out: dict[str, Any] = {}
    for group in sorted(set(outcomes.groups)):
        part = outcomes.where(group)
        d = part.rules[SERVER]
        p = point(ctx.config.threshold, d.default, d.correct, part.possible)
        out[group or "all"] = {"n": p.n, "hits": p.hits, "wrong": p.fp, "correct": p.tp}
    return out


def guard_counts(outcomes: Outcomes) -> dict[str, int]:
    """How often each guard vetoed the server cache's candidate."""
    return dict(Counter(g for g in outcomes.guards if g is not None).most_common())
