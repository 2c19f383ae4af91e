"""`semcache warm FILE`: answer the questions users are expected to ask before they ask them,
so that the first users after a catalog version bump hit.

Like `semcache import`, it works through a running server's HTTP API: the server's in-memory
index has to see what is stored, and only the server knows the current catalog version. Every
request is marked as warm-up (`x-semcache-warm: true`): the cache is checked by the lookup's own
rule but counts no lookup, hit or saving, and the calls are ledgered with source 'warm'.

By default each question goes to `POST /v1/ask`: the server answers it now through its tiers.
With --batch, the questions the cache does not answer yet go to the Message Batches API from
this process, at half price, with the key, tiers and price table of the settings it reads (run
it with the server's settings); answers are stored through `POST /v1/entries` as each batch
ends, and the batches' calls are written to the server's ledger file
(`<data_dir>/ledger.sqlite3`, which SQLite lets processes share), so --batch runs where the
server's data directory is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
from tqdm import tqdm

from cache import InvalidInput, PriceTable, SemcacheError
from cache.answering import starting_tier
from cache.ledger import Ledger
from cache.normalize import validate_namespace, validate_question
from cache.upstream import ModelReply, UpstreamError
from cache.warm import BatchClient, BatchWarmer, WarmFailure, WarmReport

from .access import HEADER as KEY_HEADER
from .settings import Settings

WARM_HEADER = "x-semcache-warm"
"""Marks a /v1/ask or /v1/lookup request as warm-up (see `cache.warm`)."""

_T = TypeVar("_T")
_R = TypeVar("_R")


class _Question(msgspec.Struct, forbid_unknown_fields=True):
    question: str


_Item = str | _Question


def read_questions(path: Path, *, max_chars: int) -> tuple[list[str], int]:
    """The questions of a file, each once (by normal form), and how many repeats were dropped.

    `.json`: a JSON list; `.jsonl` (or a `.json` that does not start with `[`): one JSON value
    a line; anything else: one question a line, blank lines skipped. A JSON value is a string
    or {"question": "..."}. Raises ValueError, naming the file and line, for anything else, so
    that a bad file changes nothing.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc
    found: list[tuple[int, str]] = []  # (line number, 0 in a JSON list; question)
    lines = list(enumerate(text.splitlines(), 1))
    if path.suffix.lower() not in (".json", ".jsonl", ".ndjson"):
        found = [(number, line.strip()) for number, line in lines if line.strip()]
    elif text.lstrip().startswith("["):
        try:
            found = [(0, _text(item)) for item in msgspec.json.decode(text, type=list[_Item])]
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise ValueError(f"{path}: {exc}") from exc
    else:
        for number, line in lines:
            if not line.strip():
                continue
            try:
                found.append((number, _text(msgspec.json.decode(line, type=_Item))))
            except msgspec.DecodeError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
    questions: list[str] = []
    seen: set[str] = set()
    for number, question in found:
        try:
            normal = validate_question(question, max_chars)
        except InvalidInput as exc:
            where = f"{path}:{number}" if number else f"{path}: {question[:60]!r}"
            raise ValueError(f"{where}: {exc.detail}") from exc
        if normal not in seen:
            seen.add(normal)
            questions.append(question)
    if not questions:
        raise ValueError(f"{path}: no questions in it")
    return questions, len(found) - len(questions)


def _text(item: _Item) -> str:
    return item if isinstance(item, str) else item.question


def _each(
    work: Callable[[_T], _R],
    items: Sequence[_T],
    *,
    concurrency: int,
    desc: str,
    progress: bool,
) -> list[_R]:
    """`work` on every item, `concurrency` at a time, with a bar; results in item order."""
    with (
        ThreadPoolExecutor(max_workers=concurrency) as pool,
        tqdm(total=len(items), desc=desc, unit="question", disable=not progress) as bar,
    ):
        futures: list[Future[_R]] = [pool.submit(work, item) for item in items]
        try:
            for _ in as_completed(futures):
                bar.update(1)
        except BaseException:
            # Interrupted: questions not yet sent are not sent; answers stored are kept.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        return [future.result() for future in futures]


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: {response.text[:200]}"
    detail = body.get("detail") if isinstance(body, dict) else None
    return f"{response.status_code}: {detail or response.text[:200]}"


def warm_now(
    questions: Sequence[str],
    *,
    client: httpx.Client,
    namespace: str,
    tier: str | None = None,
    endpoint: str = "default",
    concurrency: int = 4,
    progress: bool = True,
) -> WarmReport:
    """Ask each question of `questions` as warm-up through `POST /v1/ask` (see the module)."""

    def ask(question: str) -> dict[str, Any] | WarmFailure:
        body: dict[str, Any] = {"question": question, "namespace": namespace, "endpoint": endpoint}
        if tier is not None:
            body["tier"] = tier
        try:
            response = client.post("/v1/ask", json=body, headers={WARM_HEADER: "true"})
        except httpx.HTTPError as exc:
            return WarmFailure(question, f"the server did not answer: {exc}")
        if response.status_code != 200:
            return WarmFailure(question, _detail(response))
        answer: dict[str, Any] = response.json()
        return answer

    report = WarmReport()
    results = _each(ask, questions, concurrency=concurrency, desc="warm", progress=progress)
    for question, result in zip(questions, results, strict=True):
        if isinstance(result, WarmFailure):
            report.failures.append(result)
            continue
        report.spent_usd += float(result.get("spent_usd") or 0.0)
        if result["source"] == "cache":
            report.cached += 1
        elif result["stored"]:
            report.answered += 1
        else:
            attempts = result.get("attempts") or [{}]
            outcome = attempts[-1].get("outcome", "answered")
            report.failures.append(
                WarmFailure(question, f"answered but not stored (last call: {outcome})")
            )
    return report


class ServerRefused(Exception):
    """The semcache server answered a request of --batch with an error."""


class _Server:
    """The calls --batch makes to the semcache server (all blocking: run in threads)."""

    def __init__(self, client: httpx.Client, namespace: str, probe_question: str) -> None:
        self.client = client
        self.namespace = namespace
        self.probe_question = probe_question

    def lookup(self, question: str) -> dict[str, Any]:
        response = self.client.post(
            "/v1/lookup",
            json={"question": question, "namespace": self.namespace},
            headers={WARM_HEADER: "true"},
        )
        if response.status_code != 200:
            raise ServerRefused(_detail(response))
        found: dict[str, Any] = response.json()
        return found

    def catalog_version(self) -> int:
        return int(self.lookup(self.probe_question)["catalog_version"])

    def store(self, question: str, reply: ModelReply) -> str:
        body = {
            "question": question,
            "answer": reply.text,
            "model": reply.model,
            "usage": msgspec.to_builtins(reply.usage),
            "namespace": self.namespace,
        }
        response = self.client.post("/v1/entries", json=body)
        if response.status_code != 201:
            raise ServerRefused(_detail(response))
        return str(response.json()["entry_id"])


async def warm_batched(
    questions: Sequence[str],
    *,
    client: httpx.Client,
    batch_client: BatchClient,
    ledger: Ledger,
    settings: Settings,
    namespace: str,
    tier: str | None = None,
    endpoint: str = "default",
    resume: str | None = None,
    poll_interval_s: float = 60.0,
    concurrency: int = 4,
    progress: bool = True,
    on_batch: Callable[[str], None] | None = None,
) -> WarmReport:
    """Warm `questions` through the Message Batches API (see the module). With `resume`,
    finish that batch (made from the same questions) instead of checking and creating one."""
    server = _Server(client, namespace, questions[0])
    warmer = BatchWarmer(
        batch_client,
        ledger=ledger,
        prices=PriceTable.load(settings.price_table),
        store=server.store,
        catalog_version=server.catalog_version,
        tiers=settings.tiers,
        namespace=namespace,
        endpoint=endpoint,
        cache_truncated=settings.cache_truncated,
        prompt_cache_min_chars=settings.prompt_cache_min_chars,
        poll_interval_s=poll_interval_s,
        on_batch=on_batch,
        progress=progress,
    )
    report = WarmReport()
    if resume is not None:
        return await warmer.resume(resume, questions, report)
    start_index, reason = starting_tier(settings.tiers, settings.endpoint_tiers, tier, endpoint)

    def check(question: str) -> bool | WarmFailure:
        try:
            return bool(server.lookup(question)["hit"])
        except (httpx.HTTPError, ServerRefused) as exc:
            return WarmFailure(question, f"not checked, not asked: {exc}")

    checks = await asyncio.to_thread(
        _each, check, questions, concurrency=concurrency, desc="check", progress=progress
    )
    pending: list[str] = []
    for question, hit in zip(questions, checks, strict=True):
        if isinstance(hit, WarmFailure):
            report.failures.append(hit)
        elif hit:
            report.cached += 1
        else:
            pending.append(question)
    return await warmer.run(pending, start_index, reason, report)


# The command line -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        type=Path,
        help='questions: one a line, or .json/.jsonl of strings or {"question": ...}',
    )
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--url", help="server base URL (default: from host and port settings)")
    parser.add_argument("--key", help="client key (x-semcache-key), if the server needs one")
    parser.add_argument("--tier", help="tier to start on (default: as /v1/ask chooses)")
    parser.add_argument(
        "--endpoint", default="default", help="ledger tag; also selects endpoint_tiers"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="requests to the server at a time"
    )
    parser.add_argument(
        "--batch", action="store_true", help="use the Message Batches API (half price, slower)"
    )
    parser.add_argument(
        "--resume", metavar="BATCH_ID", help="finish a batch an interrupted --batch run made"
    )
    parser.add_argument(
        "--poll-interval-s", type=float, default=60.0, help="seconds between batch polls"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--config", help="TOML settings file (else $SEMCACHE_CONFIG)")
    parser.add_argument("--data-dir", help="the server's data directory (--batch ledgers there)")
    parser.add_argument("--price-table")


def run(settings: Settings, args: argparse.Namespace, *, client: httpx.Client | None = None) -> int:
    """The `semcache warm` command: 0 if every question is answered, 1 if some failed, 2 if
    it could not start (bad input, no server, no key) or a batch run stopped on an API
    error. `client`: the server, if not by URL."""
    try:
        questions, repeats = read_questions(args.file, max_chars=settings.max_question_chars)
        validate_namespace(args.namespace)
        if args.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if not args.poll_interval_s >= 0:
            raise ValueError("--poll-interval-s must be 0 or more")
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    except InvalidInput as exc:
        return _fail(exc.detail)
    if repeats:
        print(f"semcache: {repeats} repeated questions skipped", file=sys.stderr)
    base = args.url or f"http://{settings.host}:{settings.port}"
    headers = {KEY_HEADER: args.key} if args.key else {}
    # A warm-up /v1/ask may try every tier, each with the SDK's retries.
    per_call = settings.upstream_timeout_s * (settings.upstream_max_retries + 1)
    timeout = httpx.Timeout(30.0, read=per_call * len(settings.tiers) + 30.0)
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(
                httpx.Client(base_url=base, timeout=timeout, headers=headers)
            )
        else:
            base = str(client.base_url)
            client.headers.update(headers)
        try:
            ready = client.get("/readyz")
        except httpx.HTTPError as exc:
            return _fail(f"cannot reach {base}: {exc}")
        if ready.status_code != 200:
            return _fail(f"server at {base} is not ready: {_detail(ready)}")
        progress = not args.no_progress
        if args.batch or args.resume:
            report = _run_batched(settings, args, questions, client, progress)
            if isinstance(report, int):
                return report
        else:
            try:
                report = warm_now(
                    questions,
                    client=client,
                    namespace=args.namespace,
                    tier=args.tier,
                    endpoint=args.endpoint,
                    concurrency=args.concurrency,
                    progress=progress,
                )
            except KeyboardInterrupt:
                return _fail("interrupted: the answers stored so far are kept", status=130)
    for failure in report.failures:
        print(f"semcache: failed: {failure.question!r}: {failure.reason}", file=sys.stderr)
    batches = f" in batches {', '.join(report.batches)}" if report.batches else ""
    print(
        f"warmed namespace {args.namespace!r}: {report.cached} already cached, "
        f"{report.answered} answered, {report.failed} failed; "
        f"spent ${report.spent_usd:.6f}{batches}"
    )
    return 1 if report.failed else 0


def _run_batched(
    settings: Settings,
    args: argparse.Namespace,
    questions: list[str],
    client: httpx.Client,
    progress: bool,
) -> WarmReport | int:
    from .upstream import AnthropicModelClient

    path = Path(settings.data_dir) / "ledger.sqlite3"
    if not path.exists():
        return _fail(
            f"no ledger at {path}: --batch writes its spend to the server's ledger, so run it "
            "where the server's data directory is (--data-dir or SEMCACHE_DATA_DIR)"
        )
    try:
        starting_tier(settings.tiers, settings.endpoint_tiers, args.tier, args.endpoint)
    except InvalidInput as exc:
        return _fail(exc.detail)
    made: list[str] = [args.resume] if args.resume else []

    def created(batch_id: str) -> None:
        made.append(batch_id)
        print(
            f"semcache: batch {batch_id} created; if this run stops before it ends, store its "
            f"answers with: semcache warm {args.file} --namespace {args.namespace} "
            f"--resume {batch_id}",
            file=sys.stderr,
        )

    async def go() -> WarmReport:
        model_client = AnthropicModelClient(
            api_key=settings.anthropic_api_key,
            base_url=settings.anthropic_base_url,
            timeout_s=settings.upstream_timeout_s,
            max_retries=settings.upstream_max_retries,
        )
        try:
            if not model_client.configured:
                raise UpstreamError(
                    "no upstream API key: set ANTHROPIC_API_KEY or SEMCACHE_ANTHROPIC_API_KEY"
                )
            return await warm_batched(
                questions,
                client=client,
                batch_client=model_client,
                ledger=ledger,
                settings=settings,
                namespace=args.namespace,
                tier=args.tier,
                endpoint=args.endpoint,
                resume=args.resume,
                poll_interval_s=args.poll_interval_s,
                concurrency=args.concurrency,
                progress=progress,
                on_batch=created,
            )
        finally:
            await model_client.aclose()

    ledger = Ledger(path)
    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        return _fail(_stopped("interrupted", made, args), status=130)
    except (SemcacheError, httpx.HTTPError, ServerRefused) as exc:
        detail = exc.detail if isinstance(exc, SemcacheError) else str(exc)
        return _fail(_stopped(detail, made, args))
    finally:
        ledger.close()


def _stopped(why: str, made: list[str], args: argparse.Namespace) -> str:
    if not made:
        return f"{why}; no batch was created"
    return (
        f"{why}; batch {made[-1]} keeps running: store its answers with "
        f"semcache warm {args.file} --namespace {args.namespace} --resume {made[-1]}"
    )


def _fail(message: str, *, status: int = 2) -> int:
    print(f"semcache: {message}", file=sys.stderr)
    return status


def is_warm(headers: Mapping[str, str]) -> bool:
    """Whether a request is marked as warm-up (`x-semcache-warm: true`)."""
    value = headers.get(WARM_HEADER)
    if value is None or value.strip().lower() in ("false", "0", ""):
        return False
    if value.strip().lower() in ("true", "1"):
        return True
    raise InvalidInput(f"{WARM_HEADER} must be true or false, got {value!r}")
