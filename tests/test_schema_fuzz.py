"""Schemathesis against the server's own OpenAPI document: no 5xx, every answer as documented.

What is promised: whatever the request (documented or not, valid or not), the server never
answers with a 5xx (503 while it starts is the documented exception), and every answer's status
code, media type and body match what GET /schema/openapi.json documents for that operation,
problem+json errors included.

How it is tested:

* The document is the one the app serves at GET /schema/openapi.json, fetched at import from an
  app whose lifespan never runs (serving the schema opens nothing); a test checks that the app
  under test serves the same document.
* `test_fuzz_operation` is one schemathesis test per operation, run in-process over ASGI by
  schemathesis' own client, which runs the Litestar lifespan (the cache opens there) from the
  first request of a test to its teardown. Phases are schemathesis' defaults (explicit examples,
  coverage, fuzzing) with positive and negative data; the fuzzing phase is bounded to
  `MAX_EXAMPLES` examples per operation and derandomized, so every run sends the same requests.
  Checks: not_a_server_error, status_code_conformance, content_type_conformance,
  response_schema_conformance.
* The app is real (Litestar, diskcache, faiss, the SQLite ledger) with two doubles: the
  bag-of-words `HashingEmbedder` (fast, no model), and the model, `FakeAnthropic`, a real HTTP
  server on a loopback port that /v1/ask and /v1/messages reach on misses.
* The fuzzed app has an admin token and client keys, and each example is first sent without
  the credentials it needs: /admin without a token and with a wrong one; /v1 without a client
  key, with an unknown one, and with a key for another namespace. Each must be refused with a
  documented 4xx; then the example is sent with the token and a key for every namespace.
* Random ids never exist, so schemathesis hooks also draw entry ids and lookup ids from entries
  and hits made at the start of each test: GET/DELETE /v1/entries/{id} and /v1/feedback reach
  their 200 answers too. Every operation must answer a 2xx at least once in its test.
* POST /v1/messages and the admin version POST read their bodies themselves; their entries
  document those bodies (open, for /v1/messages: the API validates what semcache forwards), so
  schemathesis fuzzes them like the others. /v1/messages answers the API's own JSON, or
  text/event-stream with `stream: true`. `test_messages_never_5xx` adds bodies schemathesis
  rarely makes: repeated questions (hits, as JSON and replayed as a stream), conversations,
  arbitrary JSON in each field, and semcache's headers.
* States that fuzzing does not reach get one request per operation, checked against the same
  document: the start-up window (the lifespan has not opened the cache: every cache route
  answers a documented 503), a body over `max_body_bytes` (a documented 413), and each kind of
  version body (a raise, the same again, a bad one, none, not JSON).

Bugs found are kept visible as strict xfails (none is open), each a minimal reproduction against
an app without client keys; one that starts passing fails the suite: drop its mark with the
fix. Fixed, and now plain tests: 500s on /v1/messages without `max_tokens` or `messages`, with
a scalar `system`, or with a scalar older turn in a summarised namespace; an undocumented 503
and 413 on /v1/feedback and a 413 on the admin version route; the undocumented bodies of
/v1/messages and of the admin version route, and the undocumented answers of /v1/messages (its
errors, 413 and 503 included, and its event stream).

`SEMCACHE_FUZZ_EXAMPLES=<n>` raises the per-operation example budget for a deeper local run.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient
from schemathesis import Case as GenericCase
from schemathesis import GenerationMode, HookContext, Response
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.settings import Settings
from tests.fake_anthropic import FakeAnthropic
from tests.fakes import HashingEmbedder

Case = GenericCase[Any]

pytestmark = pytest.mark.filterwarnings(
    # The SDK warns when a request names a model on its deprecation list. pytest turns warnings
    # into errors process-wide, so inside the server that warning would become a 500 that
    # production never gives; generated model names may match the list as it grows.
    "ignore:The model .* is deprecated:DeprecationWarning",
)

MAX_EXAMPLES = int(os.environ.get("SEMCACHE_FUZZ_EXAMPLES", "25"))
ADMIN_TOKEN = "fuzz-admin-token"
AUTHORIZED = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FULL_KEY = "fuzz-client-key-for-every-namespace"
NARROW_KEY = "fuzz-client-key-for-one-namespace"
NARROW_NAMESPACE = "fuzz-narrow-only"  # the one namespace NARROW_KEY covers
CLIENT_KEYS = {FULL_KEY: ["*"], NARROW_KEY: [NARROW_NAMESPACE]}
KEYED = {"x-semcache-key": FULL_KEY}
# Headers of requests that must be refused (a 4xx), on /admin and on /v1 (with client keys).
ADMIN_REFUSED: tuple[dict[str, str], ...] = (
    KEYED,
    {**KEYED, "Authorization": "Bearer not-the-token"},
)
CLIENT_REFUSED: tuple[dict[str, str], ...] = (
    {},
    {"x-semcache-key": "not-a-client-key-at-all"},
    {"x-semcache-key": NARROW_KEY},  # generated namespaces are never NARROW_NAMESPACE
)
SMALL_BODY_LIMIT = 1024  # max_body_bytes of the `plain` app
HISTORY_NAMESPACE = "fuzz-history"  # its conversations are summarised past two messages
CONFORMANCE: list[CheckFunction] = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CHECKS: list[CheckFunction] = [not_a_server_error, *CONFORMANCE]
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    # One server serves all examples on purpose (module-scoped app, function-scoped tallies);
    # generated bodies can be large and some are filtered.
    suppress_health_check=list(HealthCheck),
)


def settings_for(data_dir: Path, upstream_url: str, **overrides: Any) -> Settings:
    return Settings(
        data_dir=str(data_dir),
        admin_token=ADMIN_TOKEN,
        anthropic_api_key="server-key",
        anthropic_base_url=upstream_url,
        upstream_max_retries=0,
        history_window={HISTORY_NAMESPACE: 2},
        **overrides,
    )


def served_document() -> dict[str, Any]:
    """GET /schema/openapi.json from an app whose lifespan never runs (nothing is opened)."""
    app = create_app(
        settings_for(Path("/nonexistent/never-opened"), "http://127.0.0.1:9"),
        embedder=HashingEmbedder(),
    )
    # Not entered as a context manager: the lifespan does not run.
    response = TestClient(app).get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


DOCUMENT = served_document()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config())
SCHEMA.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


def validate(
    case: Case,
    response: Response,
    app: object,
    checks: list[CheckFunction],
    headers: dict[str, str] | None = None,
) -> None:
    """Schemathesis' checks on one answer; raises FailureGroup naming every failed check."""
    case.validate_response(response, checks=checks, headers=headers, transport_kwargs={"app": app})


# ---------------------------------------------------------------- ids that exist, for the hooks


@dataclass
class Seeds:
    """Ids of the entries and hits made at the start of the running test."""

    entry_ids: list[str] = field(default_factory=list)
    lookup_ids: list[str] = field(default_factory=list)
    handed_out: int = 0

    def reset(self) -> None:
        self.entry_ids.clear()
        self.lookup_ids.clear()
        self.handed_out = 0

    def next_lookup_id(self) -> str:
        """The hits in turn, then again: a hit takes one report, later ones answer 404.
        (Hypothesis draws the simplest choice most, so sampling would repeat the first.)"""
        lookup_id = self.lookup_ids[self.handed_out % len(self.lookup_ids)]
        self.handed_out += 1
        return lookup_id


SEEDS = Seeds()
SEED_QUESTIONS = ("How do I reset my password?", "What are your opening hours?", "Refund policy?")
HITS_PER_QUESTION = 4
_seed_namespaces = itertools.count(1)


@SCHEMA.hook
def flatmap_path_parameters(
    context: HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """Mostly the id of an entry that exists, else the generated one."""
    if not path_parameters or "entry_id" not in path_parameters or not SEEDS.entry_ids:
        return st.just(path_parameters)
    known = st.sampled_from(SEEDS.entry_ids).map(lambda i: {**path_parameters, "entry_id": i})
    return known | st.just(path_parameters)  # known first: Hypothesis favours it


@SCHEMA.hook
def flatmap_body(context: HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Feedback on a recent hit. Each hit takes one report, so repeats still answer 404, and
    the coverage phase (which runs no hooks) sends ids that never existed."""
    if (
        context.operation is None
        or context.operation.path != "/v1/feedback"
        or not isinstance(body, dict)
        or "lookup_id" not in body
        or not SEEDS.lookup_ids
    ):
        return st.just(body)
    return st.just(body).map(lambda b: {**b, "lookup_id": SEEDS.next_lookup_id()})


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="module")
def app(upstream: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> Litestar:
    """The app fuzzed, with client keys. Schemathesis' ASGI client runs its lifespan from the
    first request of each test to the test's teardown; the data directory outlives those."""
    data_dir = tmp_path_factory.mktemp("schema-fuzz") / "data"
    settings = settings_for(data_dir, upstream.url, client_keys=CLIENT_KEYS)
    return create_app(settings, embedder=HashingEmbedder())


@pytest.fixture(scope="module")
def plain(upstream: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> Litestar:
    """An app without client keys, taking bodies up to `SMALL_BODY_LIMIT` bytes: for single
    requests (a short oversized body, bug reproductions without a key header)."""
    data_dir = tmp_path_factory.mktemp("schema-fuzz-plain") / "data"
    settings = settings_for(data_dir, upstream.url, max_body_bytes=SMALL_BODY_LIMIT)
    return create_app(settings, embedder=HashingEmbedder())


@pytest.fixture
def seeded(app: Litestar) -> Seeds:
    """Entries, and hits on them, made in this test's lifespan (recent hits are kept in memory
    and each takes one feedback report), for the hooks to draw ids from.

    Each test seeds its own namespace: fuzzing reports hits wrong (that question then never
    hits that entry again) and bumps catalog versions, which must not starve the next test.
    """
    SEEDS.reset()
    namespace = f"seed-{next(_seed_namespaces)}"
    for question in SEED_QUESTIONS:
        entry: dict[str, Any] = {
            "namespace": namespace,
            "question": question,
            "answer": f"The answer to: {question}",
            "model": "claude-haiku-4-5",
            "usage": {"input_tokens": 10, "output_tokens": 20},
        }
        created = SCHEMA["/v1/entries"]["POST"].Case(body=entry).call(app=app, headers=KEYED)
        assert created.status_code == 201, created.text
        SEEDS.entry_ids.append(created.json()["entry_id"])
        for _ in range(HITS_PER_QUESTION):
            lookup: dict[str, Any] = {"namespace": namespace, "question": question}
            looked = SCHEMA["/v1/lookup"]["POST"].Case(body=lookup).call(app=app, headers=KEYED)
            assert looked.status_code == 200 and looked.json()["hit"], looked.text
            SEEDS.lookup_ids.append(looked.json()["lookup_id"])
    return SEEDS


@pytest.fixture
def statuses() -> Iterator[dict[str, list[int]]]:
    """Statuses answered per operation in one test; each operation must reach a 2xx once.

    Only requests with the operation's own method count (the coverage phase also sends the
    other methods to each path, to see 405s).
    """
    seen: dict[str, list[int]] = defaultdict(list)
    yield seen
    for label, codes in seen.items():
        assert any(200 <= code < 300 for code in codes), f"{label} never succeeded: {codes}"


def own_method(case: Case) -> bool:
    return bool(case.method.upper() == case.operation.method.upper())


def tally(seen: dict[str, list[int]], case: Case, response: Response) -> None:
    if own_method(case):
        seen[case.operation.label].append(response.status_code)


# --------------------------------------------------------------------------------- the fuzzer


def test_fuzzed_document_is_the_served_one(app: Litestar) -> None:
    with TestClient(app) as client:
        response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    assert response.json() == DOCUMENT


@SCHEMA.parametrize()
@FUZZ_SETTINGS
def test_fuzz_operation(
    case: Case, app: Litestar, seeded: Seeds, statuses: dict[str, list[int]]
) -> None:
    headers = KEYED
    refusals: tuple[dict[str, str], ...] = ()
    if case.path.startswith("/admin/"):
        headers, refusals = {**KEYED, **AUTHORIZED}, ADMIN_REFUSED
    elif case.path.startswith("/v1/"):
        refusals = CLIENT_REFUSED
    for refused in refusals:
        response = case.call(app=app, headers=refused)
        validate(case, response, app, CHECKS, refused)
        if own_method(case):  # the coverage phase also sends OPTIONS (204, no key needed)
            assert 400 <= response.status_code < 500, f"served with {refused}: {response.text}"
    response = case.call(app=app, headers=headers)
    tally(statuses, case, response)
    validate(case, response, app, CHECKS, headers)


# ------------------------------------------------ POST /v1/messages, beyond what schemathesis makes

MESSAGES = SCHEMA["/v1/messages"]["POST"]
JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


ANY_JSON = st.recursive(JSON_LEAF, json_containers, max_leaves=6)
TEXT_BLOCK = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40)})
CONTENT = st.text(max_size=80) | st.lists(TEXT_BLOCK, min_size=1, max_size=3)
TURN = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": CONTENT})
QUESTION = st.sampled_from(SEED_QUESTIONS) | st.text(min_size=1, max_size=60)
CONVERSATION = st.tuples(st.lists(TURN, max_size=3), QUESTION).map(
    lambda t: [*t[0], {"role": "user", "content": t[1]}]  # ends with a user turn: matchable
)
WELL_FORMED = st.fixed_dictionaries(
    {
        # The repeated ones make cache hits, as JSON and replayed as a stream.
        "model": st.sampled_from([tier.model for tier in Settings().tiers]),
        "max_tokens": st.just(16) | st.integers(1, 64),
        "messages": st.sampled_from(SEED_QUESTIONS).map(lambda q: [{"role": "user", "content": q}])
        | CONVERSATION,
    },
    optional={
        "system": st.text(max_size=40) | st.lists(TEXT_BLOCK, max_size=2),
        "stream": st.booleans(),
        "temperature": st.floats(0, 1),
        "metadata": st.fixed_dictionaries({"user_id": st.text(max_size=10)}),
        "stop_sequences": st.lists(st.text(min_size=1, max_size=5), max_size=2),
    },
)
ODD_TURNS = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant"]) | ANY_JSON, "content": ANY_JSON}
    ),
    min_size=1,
    max_size=4,
)
ODD_VALUE = st.just(NotImplemented) | ANY_JSON | ODD_TURNS  # NotImplemented: drop the field
FIELDS = ["model", "max_tokens", "messages", "system", "stream", "temperature", "metadata"]


def perturbed(body: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """`body` with one field dropped or set to any JSON value."""
    if value is NotImplemented:
        return {k: v for k, v in body.items() if k != key}
    return {**body, key: value}


MESSAGES_BODY = WELL_FORMED | st.builds(
    perturbed, WELL_FORMED, st.sampled_from([*FIELDS, "tools", "not_a_field"]), ODD_VALUE
)
MESSAGES_HEADERS = st.fixed_dictionaries(
    {"x-semcache-key": st.sampled_from([FULL_KEY, NARROW_KEY, "not-a-client-key-at-all", ""])},
    optional={
        "x-semcache-namespace": st.sampled_from(
            ["default", HISTORY_NAMESPACE, NARROW_NAMESPACE, "Not A Slug", ""]
        ),
        "x-semcache-endpoint": st.sampled_from(["proxy", "checkout-help", "bad endpoint!"]),
        "cache-control": st.sampled_from(
            ["no-cache", "no-store", "no-cache, no-store", "max-age=0"]
        ),
        "x-api-key": st.just("caller-key"),
        "anthropic-beta": st.just("prompt-caching-2024-07-31"),
    },
)


@settings(FUZZ_SETTINGS, max_examples=2 * MAX_EXAMPLES)  # the most varied operation
@given(body=MESSAGES_BODY, headers=MESSAGES_HEADERS)
def test_messages_never_5xx(
    app: Litestar, statuses: dict[str, list[int]], body: dict[str, Any], headers: dict[str, str]
) -> None:
    """No 5xx, and answers as documented, for requests schemathesis rarely makes."""
    case = MESSAGES.Case(body=body, headers=headers, media_type="application/json")
    response = case.call(app=app)
    tally(statuses, case, response)
    validate(case, response, app, CHECKS, headers)


# ----------------------------------------------------------- states the fuzzer does not reach


class StartingUp:
    """The app while its embedding model loads: its lifespan has not opened the cache yet.

    The real server answers during that window (see `create_app`'s lifespan); here the
    lifespan messages are acknowledged without running the app's own lifespan.
    """

    def __init__(self, app: Litestar) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


@pytest.fixture(scope="module")
def starting_up(upstream: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> StartingUp:
    data_dir = tmp_path_factory.mktemp("schema-fuzz-starting") / "data"
    return StartingUp(create_app(settings_for(data_dir, upstream.url), embedder=HashingEmbedder()))


MESSAGES_REQUEST: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "How do I reset my password?"}],
}
# One valid request per operation: label -> (path parameters, body).
VALID: dict[str, tuple[dict[str, str], Any]] = {
    "POST /v1/ask": ({}, {"question": "How do I reset my password?"}),
    "POST /v1/entries": (
        {},
        {
            "question": "How do I reset my password?",
            "answer": "Settings > Security > Reset password.",
            "model": "claude-haiku-4-5",
            "usage": {"input_tokens": 1, "output_tokens": 1},
        },
    ),
    "GET /v1/entries/{entry_id}": ({"entry_id": "0123456789abcdef"}, None),
    "DELETE /v1/entries/{entry_id}": ({"entry_id": "0123456789abcdef"}, None),
    "POST /v1/feedback": ({}, {"lookup_id": "0123456789abcdef" * 2, "correct": True}),
    "POST /v1/lookup": ({}, {"question": "How do I reset my password?"}),
    "GET /v1/stats": ({}, None),
    "GET /v1/usage": ({}, None),
    "GET /admin/namespaces/{namespace}/version": ({"namespace": "default"}, None),
    "POST /admin/namespaces/{namespace}/version": ({"namespace": "default"}, {"version": 7}),
    "POST /admin/purge": ({}, None),
    "GET /healthz": ({}, None),
    "GET /readyz": ({}, None),
    "POST /v1/messages": ({}, MESSAGES_REQUEST),
}
TAKES_A_BODY = [label for label, (_, body) in VALID.items() if body is not None]


def make_case(label: str, body: Any = None) -> tuple[Case, dict[str, str] | None]:
    """The valid request of `label` (or with `body`), and the headers it needs."""
    method, path = label.split(" ", 1)
    path_parameters, valid_body = VALID[label]
    payload = valid_body if body is None else body
    extra: dict[str, Any] = {} if payload is None else {"body": payload}
    case = SCHEMA[path][method].Case(
        path_parameters=path_parameters, media_type="application/json", **extra
    )
    return case, AUTHORIZED if path.startswith("/admin/") else None


def test_every_documented_operation_has_a_valid_request() -> None:
    paths = DOCUMENT["paths"]
    assert {f"{method.upper()} {path}" for path in paths for method in paths[path]} == set(VALID)


@pytest.mark.parametrize("label", list(VALID))
def test_while_starting_answers_are_documented(starting_up: StartingUp, label: str) -> None:
    case, headers = make_case(label)
    response = case.call(app=starting_up, headers=headers)
    validate(case, response, starting_up, CONFORMANCE, headers)
    assert response.status_code == (200 if label == "GET /healthz" else 503), response.text


@pytest.mark.parametrize("label", TAKES_A_BODY)
def test_an_oversized_body_is_a_documented_413(plain: Litestar, label: str) -> None:
    case, headers = make_case(label, body={"padding": "x" * SMALL_BODY_LIMIT})
    response = case.call(app=plain, headers=headers)
    validate(case, response, plain, CHECKS, headers)
    assert response.status_code == 413, response.text


def test_version_bodies_are_documented_answers(plain: Litestar) -> None:
    """POST /admin/namespaces/{namespace}/version reads `{"version": N}` or no body (+1): a
    higher version, the same again, a bad one, a body that is not JSON, none, and blanks."""
    operation = SCHEMA["/admin/namespaces/{namespace}/version"]["POST"]
    expected: list[tuple[Any, int]] = [
        ({"version": 5}, 200),
        ({"version": 5}, 409),
        ({"version": 0}, 400),
        (b"{", 400),
        (None, 200),  # no body: 6
        (b" \n", 200),  # blank is no body: 7
    ]
    for body, status in expected:
        extra: dict[str, Any] = {} if body is None else {"body": body}
        case = operation.Case(
            path_parameters={"namespace": "fuzz-versions"}, media_type="application/json", **extra
        )
        response = case.call(app=plain, headers=AUTHORIZED)
        validate(case, response, plain, CHECKS, AUTHORIZED)
        assert response.status_code == status, (body, response.text)
    assert response.json()["catalog_version"] == 7


# ------------------------------------------------------------- bugs, as minimal reproductions


@pytest.mark.parametrize(
    "label", ["POST /v1/messages", "POST /admin/namespaces/{namespace}/version"]
)
def test_request_bodies_read_by_the_handler_are_documented(label: str) -> None:
    method, path = label.split(" ", 1)
    assert "requestBody" in DOCUMENT["paths"][path][method.lower()], f"{label} documents no body"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="no-body-400"),
        pytest.param(MESSAGES_REQUEST, id="json"),
        pytest.param({**MESSAGES_REQUEST, "stream": True}, id="stream-text/event-stream"),
    ],
)
def test_messages_answers_are_documented(plain: Litestar, body: dict[str, Any] | None) -> None:
    extra: dict[str, Any] = {} if body is None else {"body": body}
    case = MESSAGES.Case(media_type="application/json", **extra)
    response = case.call(app=plain)
    validate(case, response, plain, CHECKS)
    assert response.status_code == (400 if body is None else 200), response.text


@pytest.mark.parametrize(
    "body",
    [
        {"model": "claude-haiku-4-5"},
        {"model": "claude-haiku-4-5", "messages": MESSAGES_REQUEST["messages"]},
        {"model": "claude-haiku-4-5", "max_tokens": 16},
    ],
    ids=["model-only", "no-max_tokens", "no-messages"],
)
def test_messages_without_a_required_field_is_a_400_not_a_500(
    plain: Litestar, body: dict[str, Any]
) -> None:
    case = MESSAGES.Case(body=body, media_type="application/json")
    validate(case, case.call(app=plain), plain, [not_a_server_error])


@pytest.mark.parametrize("system", [5, True], ids=["int", "bool"])
def test_messages_with_a_scalar_system_is_not_a_500(plain: Litestar, system: object) -> None:
    body = {**MESSAGES_REQUEST, "system": system}
    case = MESSAGES.Case(body=body, media_type="application/json")
    validate(case, case.call(app=plain), plain, [not_a_server_error])


def test_messages_with_a_scalar_older_turn_is_not_a_500(plain: Litestar) -> None:
    turns: list[dict[str, Any]] = [
        {"role": "user", "content": 5},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "How do I reset my password?"},
    ]
    body: dict[str, Any] = {**MESSAGES_REQUEST, "messages": turns}
    case = MESSAGES.Case(
        body=body,
        headers={"x-semcache-namespace": HISTORY_NAMESPACE},
        media_type="application/json",
    )
    validate(case, case.call(app=plain), plain, [not_a_server_error])
