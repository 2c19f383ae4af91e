"""Warm-up: answering the questions users are expected to ask before they ask them.

Warm-up is not traffic. A question already answered under the current catalog version is
recognised by the lookup's own decision rule, but counts no lookup, no hit and no saving: a
warm-up run over a warm cache would otherwise inflate the hit rate and the savings. Every
call warm-up pays for is written to the ledger with source 'warm', so its spend is reported
apart from live traffic.

Two ways to pay. `warm_ask` answers one question now, through the tiers, as `/v1/ask` does
(the server calls it for requests marked as warm-up). `BatchWarmer` sends many through the
Message Batches API at half price, one batch per tier: the answers a tier cut off at
max_tokens, and the requests it failed with an overload, go to the next tier up in the next
batch, as `/v1/ask` would escalate them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
import msgspec

from .answering import (
    Answerer,
    AskResult,
    Tier,
    cacheable,
    cached_system,
    default_system_prompt,
    estimate_tokens,
)
from .entry import Usage
from .errors import SemcacheError, Unavailable
from .ledger import Ledger, LedgerRow
from .normalize import normalize_question, validate_namespace, validate_threshold
from .pricing import PriceTable
from .semantic import LookupResult, SemanticCache, new_lookup_id
from .upstream import ModelReply, UpstreamError

log = logging.getLogger(__name__)

WARM_SOURCE = "warm"
"""The ledger `source` of every call made for warm-up."""

ESCALATABLE_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error"})
"""Error types of a batch request that the next tier may still answer: the batch's own words
for the 529, 5xx and 429 on which `/v1/ask` escalates."""


def probe(
    cache: SemanticCache,
    question: str,
    namespace: str = "default",
    threshold: float | None = None,
    *,
    scope: str = "",
    context: str | None = None,
) -> LookupResult:
    """What `SemanticCache.lookup` would decide, with none of its side effects.

    A hit's `lookup_id` takes no feedback, and it saves nothing (`saved_usd` None, zero
    tokens). Raises InvalidInput; where a lookup fails open to a miss, this raises
    Unavailable: warm-up must not pay for an answer the cache may already hold.
    """
    namespace = validate_namespace(namespace)
    limit = cache.config.threshold if threshold is None else validate_threshold(threshold)
    try:
        candidate = cache.explain(question, namespace, scope=scope, context=context)
    except SemcacheError:
        raise
    except Exception as exc:
        log.exception("warm-up probe failed (namespace %s)", namespace)
        raise Unavailable("the cache could not be searched; nothing was asked") from exc
    result = LookupResult(
        hit=False,
        lookup_id=new_lookup_id(),
        namespace=namespace,
        catalog_version=cache.version(namespace),
    )
    if candidate is None:
        return result
    result.nearest_similarity = candidate.similarity
    result.margin = candidate.margin
    result.guard = candidate.guard
    if candidate.accepts(limit, cache.config.margin):
        result.hit = True
        result.match = candidate.match
        result.entry = candidate.entry
        result.similarity = candidate.similarity
    return result


async def warm_ask(
    answerer: Answerer,
    question: str,
    *,
    namespace: str = "default",
    tier: str | None = None,
    system: str | None = None,
    max_tokens: int | None = None,
    endpoint: str = "default",
    threshold: float | None = None,
) -> AskResult:
    """`Answerer.ask` for warm-up: a `probe`, then the tiers, calls ledgered as 'warm'.

    A cache answer saves nothing (`saved_usd` None). Not joined with an identical live miss
    in flight: the two race, at worst for one extra call, and the later answer is kept.
    """
    start_index, reason = answerer.choose_tier(tier, endpoint)
    scope = SemanticCache.scope_of({"system": system}) if system else ""
    found = await anyio.to_thread.run_sync(
        lambda: probe(answerer.cache, question, namespace, threshold, scope=scope)
    )
    if found.hit and found.entry is not None:
        return answerer.from_cache(found, found.entry, saved=False)
    return await answerer._answer(
        question,
        namespace=found.namespace,
        scope=scope,
        start_index=start_index,
        reason=reason,
        system=system,
        max_tokens=max_tokens,
        endpoint=endpoint,
        lookup_id=found.lookup_id,
        source=WARM_SOURCE,
    )


# Message Batches --------------------------------------------------------------------------


class BatchRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One Messages API request of a batch."""

    custom_id: str
    model: str
    max_tokens: int
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None


class BatchStatus(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    processing_status: str
    """in_progress, canceling or ended."""
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0

    @property
    def ended(self) -> bool:
        return self.processing_status == "ended"

    @property
    def total(self) -> int:
        return self.processing + self.succeeded + self.errored + self.canceled + self.expired


class BatchItem(msgspec.Struct, frozen=True, kw_only=True):
    """The result of one request of an ended batch."""

    custom_id: str
    outcome: Literal["succeeded", "errored", "canceled", "expired"]
    reply: ModelReply | None = None
    error_type: str | None = None
    error_message: str | None = None


class BatchClient(Protocol):
    """What warm-up needs of the Message Batches API. Raises UpstreamError on failure."""

    @property
    def configured(self) -> bool: ...

    async def create_batch(self, requests: list[BatchRequest]) -> BatchStatus: ...

    async def batch_status(self, batch_id: str) -> BatchStatus: ...

    async def batch_results(self, batch_id: str) -> list[BatchItem]: ...


class WarmFailure(msgspec.Struct, frozen=True):
    question: str
    reason: str


class WarmReport(msgspec.Struct, kw_only=True):
    """What one warm-up run did."""

    cached: int = 0
    """Questions the cache already answered: nothing was paid for them."""
    answered: int = 0
    """Questions answered and stored now."""
    failures: list[WarmFailure] = msgspec.field(default_factory=list)
    spent_usd: float = 0.0
    batches: list[str] = msgspec.field(default_factory=list)
    """Ids of the batches created, in order."""

    @property
    def failed(self) -> int:
        return len(self.failures)


_CUSTOM_ID = re.compile(r"^t(\d{1,4})v(\d{1,16})-([0-9a-f]{32})$")


def question_key(namespace: str, question: str) -> str:
    """A hash of a question's namespace and normal form: the part of a batch request's
    custom_id (at most 64 of [A-Za-z0-9_-]) that finds the question again on --resume."""
    text = f"{namespace}\x00{normalize_question(question)}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def custom_id(tier_index: int, version: int, key: str) -> str:
    """A batch request's id: its tier, the catalog version it was asked for, its question."""
    return f"t{tier_index}v{version}-{key}"


def parse_custom_id(value: str) -> tuple[int, int, str] | None:
    """(tier index, catalog version, question key), or None for an id warm-up did not make."""
    match = _CUSTOM_ID.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), match.group(3)


@dataclass
class _Asked:
    question: str
    reason: str
    """Why its tier was chosen, as /v1/ask words it."""


class BatchWarmer:
    """Answers questions through the Message Batches API: one batch per tier, stored as each
    batch ends. Writes every call of those batches to `ledger` at batch prices.

    `store(question, reply)` stores an answer (returns its entry id); `catalog_version()`
    reads the namespace's current version. Both are blocking and run in worker threads.
    """

    def __init__(
        self,
        client: BatchClient,
        *,
        ledger: Ledger,
        prices: PriceTable,
        store: Callable[[str, ModelReply], str],
        catalog_version: Callable[[], int],
        tiers: Sequence[Tier],
        namespace: str,
        endpoint: str = "default",
        cache_truncated: bool = False,
        prompt_cache_min_chars: int | None = None,
        poll_interval_s: float = 60.0,
        on_batch: Callable[[str], None] | None = None,
        progress: bool = True,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.prices = prices
        self.store = store
        self.catalog_version = catalog_version
        self.tiers = tuple(tiers)
        self.namespace = namespace
        self.endpoint = endpoint
        self.cache_truncated = cache_truncated
        self.prompt_cache_min_chars = prompt_cache_min_chars
        self.poll_interval_s = poll_interval_s
        self.on_batch = on_batch or (lambda _batch_id: None)
        self.progress = progress
        self.sleep = sleep

    async def run(
        self, questions: Sequence[str], start_index: int, reason: str, report: WarmReport
    ) -> WarmReport:
        """Answer `questions` (none of them cached), starting on tier `start_index`."""
        if not questions:
            return report
        version = await anyio.to_thread.run_sync(self.catalog_version)
        asked = {question_key(self.namespace, q): _Asked(q, reason) for q in questions}
        await self._rounds({start_index: asked}, version, report)
        return report

    async def resume(
        self, batch_id: str, questions: Sequence[str], report: WarmReport
    ) -> WarmReport:
        """Wait for a batch an earlier run created, store its answers, then escalate.

        `questions` must hold the batch's questions (the file it was made from).
        """
        known = {question_key(self.namespace, q): _Asked(q, "resumed") for q in questions}
        report.batches.append(batch_id)
        escalated = await self._finish(batch_id, known, None, report)
        for version, waiting in escalated.items():
            await self._rounds(waiting, version, report)
        return report

    async def _rounds(
        self, waiting: dict[int, dict[str, _Asked]], version: int, report: WarmReport
    ) -> None:
        while waiting:
            index = min(waiting)
            asked = waiting.pop(index)
            tier = self.tiers[index]
            requests = [
                BatchRequest(
                    custom_id=custom_id(index, version, key),
                    model=tier.model,
                    max_tokens=tier.max_tokens,
                    messages=[{"role": "user", "content": item.question}],
                    system=cached_system(
                        default_system_prompt(item.question), self.prompt_cache_min_chars
                    ),
                )
                for key, item in asked.items()
            ]
            status = await self.client.create_batch(requests)
            report.batches.append(status.id)
            self.on_batch(status.id)
            escalated = await self._finish(status.id, asked, version, report)
            for more in escalated.values():
                for next_index, items in more.items():
                    waiting.setdefault(next_index, {}).update(items)

    async def _finish(
        self,
        batch_id: str,
        known: dict[str, _Asked],
        version: int | None,
        report: WarmReport,
    ) -> dict[int, dict[int, dict[str, _Asked]]]:
        """Wait for a batch, ledger its calls, store its answers. Returns what goes up a
        tier, by catalog version and tier index. `version` None: any (a resumed batch)."""
        await self._wait(batch_id)
        items = await self.client.batch_results(batch_id)
        # A resumed batch may have been ledgered by the run it was made by, before it stopped.
        already = bool(
            self.ledger.query(
                "SELECT 1 FROM ledger WHERE source = ? AND instr(reason, ?) > 0 LIMIT 1",
                (WARM_SOURCE, _batch_mark(batch_id)),
            )
        )
        escalated: dict[int, dict[int, dict[str, _Asked]]] = {}
        to_store: dict[int, list[tuple[str, ModelReply]]] = {}
        seen: set[str] = set()
        for item in items:
            parsed = parse_custom_id(item.custom_id)
            index, made_for, key = parsed if parsed is not None else (-1, -1, "")
            tier = self.tiers[index] if 0 <= index < len(self.tiers) else None
            asked = known.get(key) if version in (None, made_for) else None
            if not already:
                self._record(batch_id, item, tier, asked, report)
            if asked is None:
                report.failures.append(
                    WarmFailure(
                        item.custom_id,
                        "not a question of this file and namespace: resume with the file and "
                        "--namespace the batch was made from",
                    )
                )
                continue
            if tier is None:
                reason = f"asked on tier {index}, which is not configured any more"
                report.failures.append(WarmFailure(asked.question, reason))
                continue
            seen.add(key)
            up = tier.escalate and index + 1 < len(self.tiers)
            climb: str | None = None  # why it goes up a tier, if it does
            if item.outcome == "succeeded" and item.reply is not None:
                if item.reply.stop_reason == "max_tokens" and up:
                    climb = f"escalated: {tier.name} stopped at max_tokens ({tier.max_tokens})"
                elif cacheable(item.reply, self.cache_truncated):
                    to_store.setdefault(made_for, []).append((asked.question, item.reply))
                else:
                    report.failures.append(WarmFailure(asked.question, _not_cacheable(item.reply)))
            elif item.outcome == "errored" and item.error_type in ESCALATABLE_ERRORS and up:
                climb = f"escalated: {tier.name} failed (error {item.error_type})"
            elif item.outcome == "errored":
                detail = f"{item.error_type}: {item.error_message}"
                report.failures.append(WarmFailure(asked.question, f"errored ({detail})"))
            else:
                report.failures.append(
                    WarmFailure(asked.question, f"{item.outcome} before it was processed")
                )
            if climb is not None:
                waiting = escalated.setdefault(made_for, {}).setdefault(index + 1, {})
                waiting[key] = _Asked(asked.question, climb)
        if version is not None:
            report.failures.extend(
                WarmFailure(item.question, f"no result in batch {batch_id}")
                for key, item in known.items()
                if key not in seen
            )
        # The spend is on record before anything is stored: storing can fail, paying cannot.
        self.ledger.flush()
        for made_for, answers in to_store.items():
            await self._store_all(made_for, answers, report)
        return escalated

    async def _store_all(
        self, made_for: int, answers: list[tuple[str, ModelReply]], report: WarmReport
    ) -> None:
        current = await anyio.to_thread.run_sync(self.catalog_version)
        if current != made_for:
            # Hours may pass while a batch runs: answers made for an older catalog must not
            # be served as the new one's.
            reason = (
                f"not stored: the namespace moved from catalog version {made_for} to "
                f"{current} while the batch ran"
            )
            report.failures.extend(WarmFailure(question, reason) for question, _ in answers)
            return
        from tqdm import tqdm  # imported here: only the CLI draws bars

        for question, reply in tqdm(
            answers, desc="store", unit="answer", disable=not self.progress, leave=False
        ):
            try:
                await anyio.to_thread.run_sync(self.store, question, reply)
            except Exception as exc:  # one refused answer must not lose the others
                report.failures.append(WarmFailure(question, f"not stored: {exc}"))
            else:
                report.answered += 1

    async def _wait(self, batch_id: str) -> BatchStatus:
        from tqdm import tqdm

        bar = tqdm(desc=f"batch {batch_id}", unit="request", disable=not self.progress)
        try:
            while True:
                try:
                    status = await self.client.batch_status(batch_id)
                except UpstreamError as exc:
                    if not exc.escalatable:
                        raise
                    # Polling runs for hours: a passing outage must not lose the batch.
                    log.warning("polling batch %s failed (%s); will retry", batch_id, exc.detail)
                else:
                    bar.total = status.total
                    bar.n = status.total - status.processing
                    bar.set_postfix_str(status.processing_status, refresh=True)
                    if status.ended:
                        return status
                await self.sleep(self.poll_interval_s)
        finally:
            bar.close()

    def _record(
        self,
        batch_id: str,
        item: BatchItem,
        tier: Tier | None,
        asked: _Asked | None,
        report: WarmReport,
    ) -> None:
        if item.outcome in ("canceled", "expired"):
            return  # never processed, never billed
        reply = item.reply
        model = reply.model if reply is not None else (tier.model if tier else "unknown")
        usage = reply.usage if reply is not None else Usage()
        cost = self.prices.cost(model, usage, batch=True) if reply is not None else None
        report.spent_usd += cost or 0.0
        why = asked.reason if asked is not None else "unknown question"
        prompt = default_system_prompt(asked.question) if asked is not None else ""
        self.ledger.record(
            LedgerRow(
                kind="call",
                source=WARM_SOURCE,
                namespace=self.namespace,
                endpoint=self.endpoint,
                tier=tier.name if tier is not None else None,
                model=model,
                usage=usage,
                cost_usd=cost,
                stop_reason=reply.stop_reason if reply is not None else f"error {item.error_type}",
                reason=f"{why}{_batch_mark(batch_id)}",
                max_tokens=tier.max_tokens if tier is not None else None,
                system_tokens=estimate_tokens(prompt) if prompt else None,
            )
        )


def _batch_mark(batch_id: str) -> str:
    # Appended to the ledger's reason, so that reasons still start as /v1/ask's do.
    return f"; batch {batch_id}"


def _not_cacheable(reply: ModelReply) -> str:
    if reply.stop_reason == "max_tokens":
        return "not stored: cut off at max_tokens on the last tier it could use"
    if reply.has_tool_use:
        return "not stored: the answer used a tool"
    return "not stored: empty answer"
