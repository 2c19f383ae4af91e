"""The miss path: answer on the cheapest tier that serves, escalate, store, account.

lookup ── hit ──────────────────────────────▶ answer from the cache (ledger: hit)
   └─ miss ─ same question already in flight? ─▶ wait for that call's answer
            └─ call tier (request > endpoint default > cheapest)
                 ├─ stop_reason max_tokens, or 429/529/5xx after retries ─▶ next tier up
                 └─ answer ─▶ store if cacheable ─▶ answer (ledger: one row per call)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import anyio
import msgspec

from .entry import Entry, Usage
from .errors import InvalidInput
from .ledger import LedgerRow
from .normalize import normalize_question
from .semantic import LookupResult, SemanticCache
from .upstream import ModelClient, ModelReply, UpstreamError, UpstreamNotConfigured

log = logging.getLogger(__name__)


class Tier(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model tier. Tiers are tried cheapest first, in the order they are configured."""

    name: str
    model: str
    max_tokens: int = 400
    escalate: bool = True
    """On truncation or overload, let the next tier up answer instead."""


# The current generation (the SDK lists claude-sonnet-4-5 and claude-opus-4-5 as deprecated).
DEFAULT_TIERS = (
    Tier(name="haiku", model="claude-haiku-5-5", max_tokens=400),
    Tier(name="sonnet", model="claude-sonnet-5-5", max_tokens=800),
    Tier(name="opus", model="claude-opus-5-5", max_tokens=1200, escalate=False),
)

_NUMBERS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10,
}  # fmt: skip
_POINTS = re.compile(
    r"\b(\d{1,2}|" + "|".join(_NUMBERS) + r")\s+(?:[a-z-]+\s+){0,2}?"
    r"(?:bullet points|bullets|points|tips|ways|steps|reasons|ideas|examples|things|items)\b",
    re.IGNORECASE,
)


def default_system_prompt(question: str) -> str:
    """A system prompt of a few tokens that keeps the answer short (cost guidance)."""
    match = _POINTS.search(question)
    if match:
        raw = match.group(1).lower()
        count = int(raw) if raw.isdigit() else _NUMBERS[raw]
        if 1 <= count <= 20:
            return f"Answer in exactly {count} bullet points."
    return "Answer in 2-3 sentences. Be direct."


def starting_tier(
    tiers: Sequence[Tier], endpoint_tiers: Mapping[str, str], tier: str | None, endpoint: str
) -> tuple[int, str]:
    """The index of the tier a question starts on, and why: the requested tier, else the
    endpoint's default, else the cheapest. Raises InvalidInput for an unknown tier."""
    names = [t.name for t in tiers]
    if tier is not None:
        if tier not in names:
            raise InvalidInput(f"unknown tier {tier!r}; configured tiers: {', '.join(names)}")
        return names.index(tier), "requested"
    if endpoint in endpoint_tiers:
        return names.index(endpoint_tiers[endpoint]), "endpoint default"
    return 0, "default (cheapest tier)"


def cached_system(system: str, min_chars: int | None) -> str | list[dict[str, Any]]:
    """Mark a large system prompt for prompt caching, so repeated misses pay read prices."""
    if min_chars is not None and len(system) >= min_chars:
        return [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    return system


def cacheable(reply: ModelReply, cache_truncated: bool) -> bool:
    """Whether an answer may be stored: text only, and complete unless `cache_truncated`."""
    return (
        bool(reply.text.strip())
        and not reply.has_tool_use
        and (reply.stop_reason != "max_tokens" or cache_truncated)
    )


def estimate_tokens(text: str) -> int:
    """About four characters a token: good enough to flag oversized system prompts."""
    return (len(text) + 3) // 4


def system_text(system: Any) -> str:
    """The text of a system prompt or message content: a string or a list of text blocks.
    Anything else (a caller's malformed value, refused upstream) has no text."""
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        return ""
    return "".join(str(block.get("text", "")) for block in system if isinstance(block, dict))


class Attempt(msgspec.Struct, kw_only=True):
    tier: str
    model: str
    outcome: str
    """'answered', 'max_tokens', or 'error <status>'."""


class AskResult(msgspec.Struct, kw_only=True):
    answer: str
    source: Literal["cache", "model"]
    model: str
    tier: str | None
    usage: Usage
    cost_usd: float | None
    saved_usd: float | None
    entry_id: str | None
    similarity: float | None
    lookup_id: str
    match: str | None = None
    stored: bool = False
    reason: str | None = None
    """Why this tier answered: requested, endpoint default, default, or escalated: ..."""
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    spent_usd: float = 0.0
    """Cost of every upstream call made for this request (escalations included)."""


class Answerer:
    """Answers questions from the cache, else from the tiered model, storing what it learns."""

    def __init__(
        self,
        cache: SemanticCache,
        client: ModelClient,
        *,
        tiers: tuple[Tier, ...] = DEFAULT_TIERS,
        endpoint_tiers: dict[str, str] | None = None,
        cache_truncated: bool = False,
        prompt_cache_min_chars: int | None = None,
        history_window: dict[str, int] | None = None,
    ) -> None:
        if not tiers:
            raise InvalidInput("at least one tier must be configured")
        self.cache = cache
        self.client = client
        self.tiers = tiers
        self._by_name = {t.name: i for i, t in enumerate(tiers)}
        self.endpoint_tiers = dict(endpoint_tiers or {})
        for endpoint, name in self.endpoint_tiers.items():
            if name not in self._by_name:
                raise InvalidInput(f"endpoint {endpoint!r} defaults to unknown tier {name!r}")
        self.cache_truncated = cache_truncated
        self.prompt_cache_min_chars = prompt_cache_min_chars
        self.history_window = dict(history_window or {})
        self._inflight: dict[tuple[str, str, str], asyncio.Future[AskResult]] = {}

    def tier_for_model(self, model: str) -> str | None:
        return next((t.name for t in self.tiers if t.model == model), None)

    def choose_tier(self, tier: str | None, endpoint: str) -> tuple[int, str]:
        return starting_tier(self.tiers, self.endpoint_tiers, tier, endpoint)

    def system_param(self, system: str) -> str | list[dict[str, Any]]:
        return cached_system(system, self.prompt_cache_min_chars)

    async def prepare_proxy_body(
        self, body: dict[str, Any], namespace: str, api_key: str | None
    ) -> dict[str, Any]:
        """Apply the optional cost policies to a proxied request before it goes upstream."""
        prepared = dict(body)
        system = prepared.get("system")
        if isinstance(system, str):
            prepared["system"] = self.system_param(system)
        window = self.history_window.get(namespace)
        messages = prepared.get("messages")
        if window and isinstance(messages, list) and len(messages) > window:
            prepared["messages"] = await self._summarise(messages, window, namespace, api_key)
        return prepared

    async def _summarise(
        self, messages: list[Any], window: int, namespace: str, api_key: str | None
    ) -> list[Any]:
        """Keep the last `window` messages; replace older ones by a short summary (first tier).

        Fails soft: if the summary cannot be made, the conversation goes up unchanged.
        """
        split = len(messages) - window
        while split < len(messages) and not (
            isinstance(messages[split], dict) and messages[split].get("role") == "user"
        ):
            split += 1  # the kept part must start with a user turn
        if split <= 0 or split >= len(messages):
            return messages
        lines = []
        for message in messages[:split]:
            if isinstance(message, dict):
                content = message.get("content")
                text = content if isinstance(content, str) else system_text(content)
                lines.append(f"{message.get('role')}: {text}")
        tier = self.tiers[0]
        prompt = (
            "Summarise this conversation in at most five sentences. Keep every fact, name, "
            "number and decision.\n\n" + "\n".join(lines)
        )
        started = time.perf_counter()
        try:
            reply = await self.client.create(
                model=tier.model,
                max_tokens=300,
                messages=[{"role": "user", "content": prompt}],
                api_key=api_key,
            )
        except UpstreamError:
            log.warning("history summary failed; sending the whole conversation")
            return messages
        cost = self.cache.prices.cost(reply.model, reply.usage)
        self._record_call(
            namespace, "history-summary", tier, reply.model, reply.usage, cost, started,
            reply.stop_reason, "history window", 300, "", "proxy",
        )  # fmt: skip
        summary = [
            {"role": "user", "content": f"Summary of our earlier conversation: {reply.text}"},
            {"role": "assistant", "content": "Understood."},
        ]
        return summary + list(messages[split:])

    def from_cache(self, found: LookupResult, entry: Entry, *, saved: bool) -> AskResult:
        """The answer of a hit; `saved` False for warm-up, whose hits save nothing."""
        return AskResult(
            answer=entry.answer,
            source="cache",
            model=entry.model,
            tier=self.tier_for_model(entry.model),
            usage=entry.usage,
            cost_usd=entry.cost_usd,
            saved_usd=entry.cost_usd if saved else None,
            entry_id=entry.id,
            similarity=found.similarity,
            lookup_id=found.lookup_id,
            match=found.match,
        )

    async def ask(
        self,
        question: str,
        *,
        namespace: str = "default",
        tier: str | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        endpoint: str = "default",
        threshold: float | None = None,
    ) -> AskResult:
        start_index, reason = self.choose_tier(tier, endpoint)
        # A caller's own system prompt changes the answer, so it scopes the cache entry.
        scope = SemanticCache.scope_of({"system": system}) if system else ""
        found = await anyio.to_thread.run_sync(
            lambda: self.cache.lookup(
                question, namespace, threshold, scope=scope, endpoint=endpoint, source="ask"
            )
        )
        if found.hit and found.entry is not None:
            return self.from_cache(found, found.entry, saved=True)
        key = (namespace, scope, normalize_question(question))
        running = self._inflight.get(key)
        if running is not None:
            shared = await asyncio.shield(running)
            self.cache.ledger.record(
                LedgerRow(
                    kind="hit",
                    source="ask",
                    namespace=namespace,
                    endpoint=endpoint,
                    model=shared.model,
                    usage=shared.usage,
                    cost_usd=shared.cost_usd,
                    tier=shared.tier,
                    reason="joined a call in flight",
                    entry_id=shared.entry_id,
                )
            )
            return msgspec.structs.replace(
                shared,
                source="cache",
                match="in-flight",
                saved_usd=shared.cost_usd,
                lookup_id=found.lookup_id,
                spent_usd=0.0,
                attempts=[],
            )
        future: asyncio.Future[AskResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._answer(
                question,
                namespace=namespace,
                scope=scope,
                start_index=start_index,
                reason=reason,
                system=system,
                max_tokens=max_tokens,
                endpoint=endpoint,
                lookup_id=found.lookup_id,
            )
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: with no waiter, asyncio would log it as lost
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def _answer(
        self,
        question: str,
        *,
        namespace: str,
        scope: str,
        start_index: int,
        reason: str,
        system: str | None,
        max_tokens: int | None,
        endpoint: str,
        lookup_id: str,
        source: str = "ask",
    ) -> AskResult:
        if not self.client.configured:
            raise UpstreamNotConfigured(
                "cache miss, and no upstream API key is configured: set ANTHROPIC_API_KEY "
                "(or SEMCACHE_ANTHROPIC_API_KEY) to let misses fall through to Claude"
            )
        prompt = system or default_system_prompt(question)
        system_param = self.system_param(prompt)
        attempts: list[Attempt] = []
        spent = 0.0
        reply: ModelReply | None = None
        tier = self.tiers[start_index]
        for index in range(start_index, len(self.tiers)):
            tier = self.tiers[index]
            has_next = index + 1 < len(self.tiers)
            # A caller's max_tokens holds on the first tier; a tier reached by escalation
            # gets at least its own, or escalating on truncation would buy nothing.
            limit = max_tokens or tier.max_tokens
            if max_tokens and index > start_index:
                limit = max(max_tokens, tier.max_tokens)
            started = time.perf_counter()
            try:
                reply = await self.client.create(
                    model=tier.model,
                    max_tokens=limit,
                    messages=[{"role": "user", "content": question}],
                    system=system_param,
                )
            except UpstreamNotConfigured:
                raise
            except UpstreamError as exc:
                outcome = f"error {exc.status or exc.error_type or 'connection'}"
                attempts.append(Attempt(tier=tier.name, model=tier.model, outcome=outcome))
                self._record_call(
                    namespace, endpoint, tier, tier.model, Usage(), None, started, outcome,
                    reason, limit, prompt, source,
                )  # fmt: skip
                if exc.escalatable and tier.escalate and has_next:
                    reason = f"escalated: {tier.name} failed ({outcome})"
                    continue
                raise
            cost = self.cache.prices.cost(reply.model, reply.usage)
            spent += cost or 0.0
            self._record_call(
                namespace, endpoint, tier, reply.model, reply.usage, cost, started,
                reply.stop_reason, reason, limit, prompt, source,
            )  # fmt: skip
            truncated = reply.stop_reason == "max_tokens"
            attempts.append(
                Attempt(
                    tier=tier.name,
                    model=reply.model,
                    outcome="max_tokens" if truncated else "answered",
                )
            )
            if truncated and tier.escalate and has_next:
                reason = f"escalated: {tier.name} stopped at max_tokens ({limit})"
                continue
            break
        assert reply is not None
        cost = self.cache.prices.cost(reply.model, reply.usage)
        entry_id = None
        if cacheable(reply, self.cache_truncated):
            entry_id = await self._store(question, reply, namespace, scope)
        return AskResult(
            answer=reply.text,
            source="model",
            model=reply.model,
            tier=tier.name,
            usage=reply.usage,
            cost_usd=cost,
            saved_usd=None,
            entry_id=entry_id,
            similarity=None,
            lookup_id=lookup_id,
            stored=entry_id is not None,
            reason=reason,
            attempts=attempts,
            spent_usd=round(spent, 9),
        )

    async def _store(
        self, question: str, reply: ModelReply, namespace: str, scope: str
    ) -> str | None:
        """Cache writes fail soft: the caller still gets the answer it paid for."""
        try:
            entry = await anyio.to_thread.run_sync(
                lambda: self.cache.put(
                    question,
                    reply.text,
                    namespace=namespace,
                    model=reply.model,
                    usage=reply.usage,
                    scope=scope,
                )
            )
        except Exception:
            log.exception("answer not cached (namespace %s)", namespace)
            return None
        return entry.id

    def _record_call(
        self,
        namespace: str,
        endpoint: str,
        tier: Tier,
        model: str,
        usage: Usage,
        cost: float | None,
        started: float,
        stop_reason: str | None,
        reason: str,
        max_tokens: int,
        system: str,
        source: str = "ask",
    ) -> None:
        self.cache.ledger.record(
            LedgerRow(
                kind="call",
                source=source,
                namespace=namespace,
                endpoint=endpoint,
                tier=tier.name,
                model=model,
                usage=usage,
                cost_usd=cost,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                stop_reason=stop_reason,
                reason=reason,
                max_tokens=max_tokens,
                system_tokens=estimate_tokens(system),
            )
        )
