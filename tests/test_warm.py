"""`semcache warm`: questions answered ahead of users, through the real server and the real SDK
against the fake model API (Messages and Message Batches), and its ledger rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from cache import InvalidInput, PriceTable, Usage
from cache.ledger import Ledger
from cache.warm import custom_id, parse_custom_id, question_key
from embeddings import SentenceTransformerEmbedder
from server import Settings, create_app
from server.cli import _parser, main
from server.upstream import AnthropicModelClient
from server.warm import read_questions, run, warm_batched, warm_now
from tests.fake_anthropic import FakeAnthropic, Scripted, count_tokens, default_answer

HAIKU, SONNET = "claude-haiku-5-5", "claude-sonnet-5-5"
SHORT_SYSTEM = "Answer in 2-3 sentences. Be direct."
PRICES = PriceTable.load()
QUESTIONS = [
    "How do I reset my password?",
    "What are your opening hours?",
    "Do you ship to Norway?",
]


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(batch_polls=2) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, fake: FakeAnthropic) -> Settings:
    return Settings(
        data_dir=str(tmp_path / "data"),
        anthropic_base_url=fake.url,
        anthropic_api_key="server-key",
        upstream_max_retries=0,
        # Embedding deadlines are for live traffic; on a loaded test machine one would make a
        # store fail at random.
        embed_deadline_s=600.0,
    )


@pytest.fixture
def client(
    settings: Settings, real_embedder: SentenceTransformerEmbedder
) -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app(settings, embedder=real_embedder)) as test_client:
        yield test_client


def cost(model: str, question: str) -> float:
    usage = Usage(
        input_tokens=count_tokens(SHORT_SYSTEM) + count_tokens(question),
        output_tokens=count_tokens(default_answer(question)),
    )
    price = PRICES.cost(model, usage)
    assert price is not None
    return price


def ledger_rows(
    client: TestClient[Litestar], columns: str = "source, kind"
) -> list[tuple[Any, ...]]:
    ledger: Ledger = client.app.state.cache.ledger
    return [tuple(row) for row in ledger.query(f"SELECT {columns} FROM ledger ORDER BY id")]


def lookup(client: TestClient[Litestar], question: str, **extra: Any) -> dict[str, Any]:
    response = client.post("/v1/lookup", json={"question": question, "namespace": "shop"}, **extra)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def cli(settings: Settings, client: TestClient[Litestar], file: Path, *flags: str) -> int:
    args = _parser().parse_args(["warm", str(file), "--namespace", "shop", *flags])
    return run(settings, args, client=client)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# Answering now, through /v1/ask -----------------------------------------------------------


def test_warm_stores_each_answer_under_the_current_version_and_ledgers_it_as_warm(
    client: TestClient[Litestar], fake: FakeAnthropic
) -> None:
    report = warm_now(QUESTIONS, client=client, namespace="shop", concurrency=1, progress=False)
    assert (report.cached, report.answered, report.failed) == (0, 3, 0)
    assert fake.calls(HAIKU) == 3
    assert report.spent_usd == pytest.approx(sum(cost(HAIKU, q) for q in QUESTIONS))
    # warm-up counts no lookup, and no hit: the hit rate is the users' alone
    assert client.get("/v1/stats").json()["lookups"] == 0
    assert ledger_rows(client) == [("warm", "call")] * 3
    # later lookups by users hit, under the current version, with nothing paid again
    hit = lookup(client, "how can I reset my password")
    assert hit["hit"] is True and hit["catalog_version"] == 1
    assert hit["answer"] == default_answer(QUESTIONS[0])
    assert [lookup(client, q)["match"] for q in QUESTIONS[1:]] == ["exact", "exact"]
    assert ledger_rows(client)[3:] == [("lookup", "hit")] * 3
    assert fake.calls() == 3


def test_questions_already_answered_are_not_paid_again(
    client: TestClient[Litestar], fake: FakeAnthropic
) -> None:
    warm_now(QUESTIONS[:2], client=client, namespace="shop", concurrency=1, progress=False)
    again = ["I forgot my password, how do I reset it?", *QUESTIONS]
    report = warm_now(again, client=client, namespace="shop", concurrency=2, progress=False)
    assert (report.cached, report.answered, report.failed) == (3, 1, 0)
    assert report.spent_usd == pytest.approx(cost(HAIKU, QUESTIONS[2]))
    assert fake.calls() == 3  # two, then only the new one
    assert ledger_rows(client) == [("warm", "call")] * 3  # no hit rows: nothing was saved
    assert client.get("/v1/stats").json()["lookups"] == 0


def test_a_version_bump_then_warm_answers_again(
    client: TestClient[Litestar], fake: FakeAnthropic
) -> None:
    warm_now(QUESTIONS, client=client, namespace="shop", concurrency=1, progress=False)
    bumped = client.post("/admin/namespaces/shop/version")
    assert bumped.json()["catalog_version"] == 2
    assert lookup(client, QUESTIONS[0])["hit"] is False
    report = warm_now(QUESTIONS, client=client, namespace="shop", concurrency=1, progress=False)
    assert (report.cached, report.answered) == (0, 3)
    assert fake.calls() == 6
    found = lookup(client, QUESTIONS[1])
    assert found["hit"] is True and found["catalog_version"] == 2


def test_one_failure_does_not_stop_the_run_and_the_exit_status_says_so(
    settings: Settings,
    client: TestClient[Litestar],
    fake: FakeAnthropic,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.script(Scripted(status=400), model=HAIKU)  # not escalated: it fails that question
    path = write(tmp_path, "questions.txt", "\n".join(QUESTIONS) + "\n")
    assert cli(settings, client, path, "--concurrency", "1", "--no-progress") == 1
    out, err = capsys.readouterr()
    assert "0 already cached, 2 answered, 1 failed" in out
    assert QUESTIONS[0] in err and "400" in err
    assert lookup(client, QUESTIONS[0])["hit"] is False
    assert lookup(client, QUESTIONS[2])["hit"] is True
    # the failed call is ledgered too, as warm-up
    assert ("warm", "error 400") in ledger_rows(client, "source, stop_reason")
    # everything answered now: exit status 0, and the progress bar on a non-tty is harmless
    assert cli(settings, client, path) == 0
    out, err = capsys.readouterr()
    assert "2 already cached, 1 answered, 0 failed" in out
    assert "warm: 100%" in err  # tqdm drew its bar on stderr, which is not a terminal here


def test_escalation_applies_to_warm_up(client: TestClient[Litestar], fake: FakeAnthropic) -> None:
    fake.script(Scripted(stop_reason="max_tokens"), model=HAIKU)
    report = warm_now(QUESTIONS[:1], client=client, namespace="shop", progress=False)
    assert report.answered == 1
    rows = ledger_rows(client, "source, model, stop_reason, reason")
    assert rows == [
        ("warm", HAIKU, "max_tokens", "default (cheapest tier)"),
        ("warm", SONNET, "end_turn", "escalated: haiku stopped at max_tokens (400)"),
    ]


def test_warm_lookups_count_nothing_and_a_bad_header_is_refused(
    client: TestClient[Litestar],
) -> None:
    warm_now(QUESTIONS[:1], client=client, namespace="shop", progress=False)
    warm = {"headers": {"x-semcache-warm": "true"}}
    hit = lookup(client, "how can I reset my password", **warm)
    assert hit["hit"] is True and hit["match"] == "semantic" and hit["saved_tokens"] == 0
    assert lookup(client, "Where is my parcel?", **warm)["hit"] is False
    stats = client.get("/v1/stats").json()
    assert (stats["lookups"], stats["hits"], stats["saved_usd"]) == (0, 0, 0.0)
    # a warm-up hit's lookup_id takes no feedback: it was not served to anyone
    feedback = client.post("/v1/feedback", json={"lookup_id": hit["lookup_id"], "correct": True})
    assert feedback.status_code == 404
    bad = client.post(
        "/v1/lookup", json={"question": "Anything?"}, headers={"x-semcache-warm": "maybe"}
    )
    assert bad.status_code == 400 and "x-semcache-warm" in bad.json()["detail"]
    assert (
        lookup(client, "Where is my parcel?", headers={"x-semcache-warm": "false"})["hit"] is False
    )
    assert client.get("/v1/stats").json()["lookups"] == 1  # "false" is an ordinary lookup


# Bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", "\n  \n", "no questions"),
        ("numbers.json", '["How?", 42]', "numbers.json"),
        ("unknown.json", '[{"question": "How?", "answer": "So."}]', "answer"),
        ("broken.jsonl", '"How do I pay?"\n{"question": \n', "broken.jsonl:2"),
        ("blank.jsonl", '"Fine?"\n{"question": "  ?? "}\n', "blank.jsonl:2"),
        ("long.txt", "Fine?\n" + "x" * 2001 + "\n", "long.txt:2"),
        ("latin1.txt", "Où est ma commande ?\n".encode("latin-1"), "not UTF-8"),
        ("missing.txt", None, "missing.txt"),
    ],
)
def test_bad_input_exits_2_and_changes_nothing(
    settings: Settings,
    client: TestClient[Litestar],
    fake: FakeAnthropic,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str | bytes | None,
    message: str,
) -> None:
    path = tmp_path / name if content is None else write(tmp_path, name, content)
    for flags in ((), ("--batch",)):
        assert cli(settings, client, path, "--no-progress", *flags) == 2
        assert message in capsys.readouterr().err
    assert fake.calls() == 0 and fake.batches == {}
    assert client.get("/v1/stats").json()["entries"] == 0
    assert ledger_rows(client) == []


def test_bad_options_exit_2(
    settings: Settings, client: TestClient[Litestar], fake: FakeAnthropic, tmp_path: Path
) -> None:
    path = write(tmp_path, "q.txt", "How?\n")
    assert cli(settings, client, path, "--concurrency", "0") == 2
    assert cli(settings, client, path, "--batch", "--tier", "gpt") == 2
    args = _parser().parse_args(["warm", str(path), "--namespace", "Not A Slug"])
    assert run(settings, args, client=client) == 2
    assert fake.calls() == 0 and fake.batches == {}


def test_read_questions_formats_and_repeats(tmp_path: Path) -> None:
    text = write(tmp_path, "q.txt", "How do I pay?\n\n  How do I pay  \nhow do i pay?\nWhere?\n")
    assert read_questions(text, max_chars=100) == (["How do I pay?", "Where?"], 2)
    listed = write(tmp_path, "q.json", json.dumps(["How?", {"question": "Where?"}]))
    assert read_questions(listed, max_chars=100) == (["How?", "Where?"], 0)
    lines = write(tmp_path, "q.jsonl", '"How?"\n\n{"question": "Where?"}\n')
    assert read_questions(lines, max_chars=100) == (["How?", "Where?"], 0)
    with pytest.raises(ValueError, match=r"q2\.json"):
        read_questions(write(tmp_path, "q2.json", '{"question": 1}'), max_chars=100)


def test_unreachable_server_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "q.txt", "How?\n")
    flags = ["--url", "http://127.0.0.1:9", "--key", "k" * 16, "--tier", "sonnet"]
    flags += ["--endpoint", "faq", "--concurrency", "2", "--batch", "--resume", "msgbatch_x"]
    flags += ["--poll-interval-s", "1", "--data-dir", str(tmp_path), "--no-progress"]
    # every flag reaches the command through main(), none is taken for a setting
    assert main(["warm", str(path), *flags]) == 2
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


# Answering later, through the Message Batches API -----------------------------------------


def test_batch_end_to_end_with_escalation_and_an_errored_request(
    settings: Settings,
    client: TestClient[Litestar],
    fake: FakeAnthropic,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    already = "What is your refund policy?"
    warm_now([already], client=client, namespace="shop", progress=False)
    questions = [already, *QUESTIONS, "Can I pay by invoice?"]
    fake.script(
        Scripted(),  # reset password: answered on haiku
        Scripted(stop_reason="max_tokens"),  # opening hours: cut off, asked again on sonnet
        Scripted(status=400),  # Norway: errored, not escalated
        Scripted(status=529),  # invoice: overloaded, asked again on sonnet
        model=HAIKU,
    )
    path = write(tmp_path, "questions.txt", "\n".join(questions))
    assert cli(settings, client, path, "--batch", "--poll-interval-s", "0") == 1
    out, err = capsys.readouterr()
    assert "1 already cached, 3 answered, 1 failed" in out
    assert "invalid_request_error" in err and QUESTIONS[2] in err
    batches = list(fake.batches.items())
    assert len(batches) == 2
    first, second = batches[0][1], batches[1][1]
    assert [r["params"]["messages"][0]["content"] for r in first] == questions[1:]
    assert {r["params"]["model"] for r in first} == {HAIKU}
    assert first[0]["params"]["system"] == SHORT_SYSTEM
    assert first[0]["params"]["max_tokens"] == 400
    assert [r["params"]["messages"][0]["content"] for r in second] == [QUESTIONS[1], questions[4]]
    assert {r["params"]["model"] for r in second} == {SONNET}
    assert fake.calls() == 1  # only the warm-up of `already`: the rest went by batch
    for question in (QUESTIONS[0], QUESTIONS[1], questions[4]):
        found = lookup(client, question)
        assert found["hit"] is True and found["answer"] == default_answer(question)
    assert lookup(client, QUESTIONS[2])["hit"] is False
    # every call of both batches is ledgered as warm-up, at half price
    rows = [
        row
        for row in ledger_rows(client, "source, model, stop_reason, cost_usd, reason")
        if "; batch " in str(row[4])  # the server's own rows are flushed at other times
    ]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("warm", HAIKU, "end_turn"),
        ("warm", HAIKU, "max_tokens"),
        ("warm", HAIKU, "error invalid_request_error"),
        ("warm", HAIKU, "error overloaded_error"),
        ("warm", SONNET, "end_turn"),
        ("warm", SONNET, "end_turn"),
    ]
    assert rows[0][3] == pytest.approx(cost(HAIKU, QUESTIONS[0]) / 2)
    assert rows[4][3] == pytest.approx(cost(SONNET, QUESTIONS[1]) / 2)
    assert rows[2][3] is None
    assert rows[0][4] == f"default (cheapest tier); batch {batches[0][0]}"
    assert rows[4][4].startswith("escalated: haiku stopped at max_tokens (400); batch ")
    assert rows[5][4].startswith("escalated: haiku failed (error overloaded_error); batch ")
    # the stored entry costs what a live call would: that is what its hits save
    entry = client.get(f"/v1/entries/{lookup(client, QUESTIONS[0])['entry_id']}").json()
    assert entry["cost_usd"] == pytest.approx(cost(HAIKU, QUESTIONS[0]))


def test_batch_resume_after_an_interruption_ledgers_once(
    settings: Settings,
    client: TestClient[Litestar],
    fake: FakeAnthropic,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Interrupted(Exception):
        pass

    def stop(batch_id: str) -> None:
        raise Interrupted(batch_id)

    async def interrupted_run() -> str:
        ledger = Ledger(Path(settings.data_dir) / "ledger.sqlite3")
        model_client = AnthropicModelClient(api_key="server-key", base_url=fake.url)
        try:
            await warm_batched(
                QUESTIONS, client=client, batch_client=model_client, ledger=ledger,
                settings=settings, namespace="shop", poll_interval_s=0, progress=False,
                on_batch=stop,
            )  # fmt: skip
        except Interrupted as exc:
            return str(exc)
        finally:
            await model_client.aclose()
            ledger.close()
        raise AssertionError("the run was not interrupted")

    batch_id = asyncio.run(interrupted_run())
    assert lookup(client, QUESTIONS[0])["hit"] is False  # nothing stored yet
    path = write(tmp_path, "q.txt", "\n".join(QUESTIONS))
    assert cli(settings, client, path, "--resume", batch_id, "--poll-interval-s", "0") == 0
    assert "0 already cached, 3 answered, 0 failed" in capsys.readouterr().out
    assert all(lookup(client, q)["hit"] for q in QUESTIONS)
    assert len(fake.batches) == 1  # resumed, not asked again
    warm_rows = [r for r in ledger_rows(client) if r[0] == "warm"]
    assert len(warm_rows) == 3
    # resumed again (say the first resume died while storing): stored again, ledgered once
    assert cli(settings, client, path, "--resume", batch_id, "--no-progress") == 0
    assert "spent $0.000000" in capsys.readouterr().out
    assert len([r for r in ledger_rows(client) if r[0] == "warm"]) == 3
    # a file the batch was not made from: nothing stored, and said so
    other = write(tmp_path, "other.txt", "Something else entirely?\n")
    assert cli(settings, client, other, "--resume", batch_id, "--no-progress") == 1
    assert "not a question of this file" in capsys.readouterr().err


def test_batch_answers_are_not_stored_if_the_catalog_moved_meanwhile(
    settings: Settings, client: TestClient[Litestar], fake: FakeAnthropic
) -> None:
    def bump(_batch_id: str) -> None:
        assert client.post("/admin/namespaces/shop/version").status_code == 200

    async def go() -> Any:
        ledger = Ledger(Path(settings.data_dir) / "ledger.sqlite3")
        model_client = AnthropicModelClient(api_key="server-key", base_url=fake.url)
        try:
            return await warm_batched(
                QUESTIONS[:2], client=client, batch_client=model_client, ledger=ledger,
                settings=settings, namespace="shop", poll_interval_s=0, progress=False,
                on_batch=bump,
            )  # fmt: skip
        finally:
            await model_client.aclose()
            ledger.close()

    report = asyncio.run(go())
    assert (report.answered, report.failed) == (0, 2)
    assert "moved from catalog version 1 to 2" in report.failures[0].reason
    assert client.get("/v1/stats").json()["entries"] == 0
    assert len([r for r in ledger_rows(client) if r[0] == "warm"]) == 2  # paid all the same


def test_batch_needs_the_servers_ledger_and_a_key(
    settings: Settings,
    client: TestClient[Litestar],
    fake: FakeAnthropic,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, "q.txt", "How?\n")
    elsewhere = Settings(data_dir=str(tmp_path / "elsewhere"), anthropic_base_url=fake.url)
    assert cli(elsewhere, client, path, "--batch") == 2
    assert "no ledger at" in capsys.readouterr().err
    client.get("/v1/usage")  # the server has written its ledger file by now
    keyless = Settings(data_dir=settings.data_dir, anthropic_base_url=fake.url)
    assert cli(keyless, client, path, "--batch") == 2
    assert "no upstream API key" in capsys.readouterr().err
    assert fake.batches == {}


def test_batch_prices_are_half_and_a_table_can_say_otherwise(tmp_path: Path) -> None:
    usage = Usage(input_tokens=1000, output_tokens=500, cache_read_input_tokens=200)
    full = PRICES.cost(HAIKU, usage)
    assert full is not None and PRICES.cost(HAIKU, usage, batch=True) == pytest.approx(full / 2)
    model = '[models."m"]\ninput = 1.0\noutput = 2.0\ncache_write = 3.0\ncache_read = 4.0\n'
    model += 'date = "2026-01-01"\nsource = "https://example.com"\n'
    table = write(tmp_path, "p.toml", "batch_multiplier = 0.25\n" + model)
    loaded = PriceTable.load(table)
    assert loaded.cost("m", Usage(input_tokens=1_000_000), batch=True) == pytest.approx(0.25)
    assert PriceTable.load(write(tmp_path, "old.toml", model)).batch_multiplier == 0.5
    with pytest.raises(InvalidInput, match="batch_multiplier"):
        PriceTable.load(write(tmp_path, "bad.toml", "batch_multiplier = 0\n" + model))


def test_custom_ids_find_their_question_again() -> None:
    key = question_key("shop", "How do I pay?")
    assert key == question_key("shop", "  how do I PAY ")  # by normal form
    assert key != question_key("other", "How do I pay?")
    made = custom_id(2, 17, key)
    assert len(made) <= 64 and parse_custom_id(made) == (2, 17, key)
    assert parse_custom_id("my-own-id") is None


# The fake's Message Batches API, through the SDK ------------------------------------------


def test_fake_batches_speak_the_wire_format(fake: FakeAnthropic) -> None:
    fake.script(Scripted(status=529), Scripted(batch_outcome="expired"), model=HAIKU)
    params = {"model": HAIKU, "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    with anthropic.Anthropic(base_url=fake.url, api_key="k", max_retries=0) as sdk:
        batch = sdk.messages.batches.create(
            requests=[
                {"custom_id": "a", "params": params},  # type: ignore[typeddict-item]
                {"custom_id": "b", "params": params},  # type: ignore[typeddict-item]
                {"custom_id": "c", "params": {**params, "max_tokens": 0}},  # type: ignore[typeddict-item]
                {"custom_id": "d", "params": params},  # type: ignore[typeddict-item]
            ]
        )
        assert batch.processing_status == "in_progress" and batch.results_url is None
        assert batch.request_counts.processing == 4
        polls = [sdk.messages.batches.retrieve(batch.id) for _ in range(3)]
        assert [p.processing_status for p in polls] == ["in_progress", "in_progress", "ended"]
        ended = polls[-1]
        assert ended.results_url == f"{fake.url}/v1/messages/batches/{batch.id}/results"
        assert ended.ended_at is not None and ended.request_counts.processing == 0
        counts = ended.request_counts
        assert (counts.succeeded, counts.errored, counts.expired) == (1, 2, 1)
        results = {line.custom_id: line.result for line in sdk.messages.batches.results(batch.id)}
    assert results["a"].type == "errored" and results["a"].error.error.type == "overloaded_error"
    assert results["b"].type == "expired"
    assert results["c"].type == "errored"
    assert results["c"].error.error.type == "invalid_request_error"
    assert results["d"].type == "succeeded"
    message = results["d"].message
    assert message.content[0].type == "text" and message.content[0].text == default_answer("Hi")
    assert message.usage.service_tier == "batch"
    assert fake.calls() == 0 and list(fake.batches) == [batch.id]


def test_fake_batches_refuse_what_the_api_refuses(fake: FakeAnthropic) -> None:
    params = {"model": HAIKU, "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    url = f"{fake.url}/v1/messages/batches"
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    twice = {"requests": [{"custom_id": "a", "params": params}] * 2}
    assert httpx.post(url, json=twice, headers=headers).status_code == 400
    bad_id = {"requests": [{"custom_id": "a b", "params": params}]}
    assert httpx.post(url, json=bad_id, headers=headers).status_code == 400
    assert httpx.post(url, json={"requests": []}, headers=headers).status_code == 400
    missing = httpx.get(f"{url}/msgbatch_nope", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert httpx.get(url + "/x", headers={"anthropic-version": "1"}).status_code == 401
    made = httpx.post(
        url, json={"requests": [{"custom_id": "a", "params": params}]}, headers=headers
    )
    early = httpx.get(f"{url}/{made.json()['id']}/results", headers=headers)
    assert early.status_code == 400  # no results before the batch ends
    assert fake.batches[made.json()["id"]][0]["custom_id"] == "a"
