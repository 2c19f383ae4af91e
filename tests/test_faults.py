"""Faults injected under the real server: an embedder that hangs or raises, and a full disk.

What is promised: a lookup never waits on a model call longer than `embed_deadline_s`; past it
the lookup is a miss (fail open), counted as a lookup error, and /readyz answers 503 until the
model answers again. A data directory that cannot grow makes writes fail soft (a 503 that
stored nothing, counted as a write error) while lookups go on working, and every write that
was acknowledged is still served after the disk recovers and the server restarts.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from embeddings import BatchingEmbedder, EmbeddingTimeout, Matrix
from server.app import create_app
from server.settings import Settings
from tests.fake_anthropic import FakeAnthropic
from tests.fakes import HashingEmbedder
from tests.server_process import ServerProcess

DEADLINE_S = 0.3
USAGE = {"input_tokens": 10, "output_tokens": 5}


class HangingEmbedder(HashingEmbedder):
    """Blocks every call while `hang` is set, until `release()`: a runtime that stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = False
        self.stuck = threading.Event()
        self._gate = threading.Event()

    def embed(self, texts: Sequence[str]) -> Matrix:
        if self.hang:
            self.stuck.set()
            self._gate.wait()
        return super().embed(texts)

    def release(self) -> None:
        self.hang = False
        self._gate.set()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def hanging() -> Iterator[HangingEmbedder]:
    inner = HangingEmbedder()
    yield inner
    inner.release()  # never leave the model thread blocked past the test


# the deadline itself ----------------------------------------------------------------------------


def test_waiters_give_up_on_a_hung_call_and_later_calls_fail_at_once(
    hanging: HangingEmbedder,
) -> None:
    batching = BatchingEmbedder(hanging, deadline_s=DEADLINE_S)
    assert batching.embed(["warm"]).shape == (1, hanging.dim)
    hanging.hang = True
    errors: list[BaseException] = []

    def call() -> None:
        try:
            batching.embed(["a question"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a caller waited past the deadline"
    assert len(errors) == 4 and all(isinstance(e, EmbeddingTimeout) for e in errors)
    assert batching.stalled_for() is not None
    with pytest.raises(EmbeddingTimeout):  # no queueing behind a call known to be stuck
        batching.embed(["another"])
    assert batching.timeouts == 5
    hanging.release()
    wait_until(lambda: batching.stalled_for() is None)  # the late call returns
    assert batching.embed(["after"]).shape == (1, hanging.dim)


def test_a_large_call_gets_a_deadline_in_proportion(hanging: HangingEmbedder) -> None:
    clock = [0.0]
    batching = BatchingEmbedder(hanging, deadline_s=1.0, max_batch=64, clock=lambda: clock[0])
    hanging.hang = True
    errors: list[BaseException] = []

    def bulk() -> None:
        try:
            batching.embed([f"text {i}" for i in range(256)])  # four times a lookup's budget
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=bulk)
    writer.start()
    assert hanging.stuck.wait(10)
    clock[0] = 3.0  # late for a lookup, not for 256 texts
    assert batching.stalled_for() is None
    clock[0] = 4.5
    assert batching.stalled_for() == pytest.approx(0.5)
    writer.join(timeout=10)
    assert len(errors) == 1 and isinstance(errors[0], EmbeddingTimeout)


def test_without_a_deadline_a_slow_call_is_waited_for() -> None:
    inner = HangingEmbedder()
    batching = BatchingEmbedder(inner)
    inner.hang = True
    result: list[Matrix] = []
    thread = threading.Thread(target=lambda: result.append(batching.embed(["slow"])))
    thread.start()
    assert inner.stuck.wait(10)
    assert batching.stalled_for() is None
    inner.release()
    thread.join(timeout=10)
    assert len(result) == 1


# the server with a hung model -------------------------------------------------------------------


@contextlib.contextmanager
def serve(tmp_path: Path, embedder: HashingEmbedder, **settings: object) -> Iterator[TestClient]:  # type: ignore[type-arg]
    app: Litestar = create_app(
        Settings(data_dir=str(tmp_path / "data"), **settings),  # type: ignore[arg-type]
        embedder=embedder,
    )
    with TestClient(app=app, raise_server_exceptions=False) as client:
        yield client


def test_lookups_fail_open_while_the_model_hangs_and_readyz_tells(
    tmp_path: Path, hanging: HangingEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with (
        FakeAnthropic() as fake,
        serve(
            tmp_path,
            hanging,
            embed_deadline_s=DEADLINE_S,
            anthropic_api_key="server-key",
            anthropic_base_url=fake.url,
            upstream_max_retries=0,
        ) as client,
    ):
        stored = client.post(
            "/v1/entries",
            json={
                "question": "how do I reset my password",
                "answer": "Use Settings.",
                "model": "claude-haiku-4-5",
                "usage": USAGE,
            },
        )
        assert stored.status_code == 201
        paraphrase = {"question": "how do I reset my password please"}
        assert client.post("/v1/lookup", json=paraphrase).json()["hit"] is True
        assert client.get("/readyz").status_code == 200

        hanging.hang = True
        missed = client.post("/v1/lookup", json=paraphrase)
        assert missed.status_code == 200 and missed.json()["hit"] is False
        assert hanging.stuck.is_set()  # the miss came from a hung call, not from the index
        # A repeat needs no embedding: it is still a hit.
        repeat = client.post("/v1/lookup", json={"question": "How do I reset my password?"})
        assert repeat.json()["hit"] is True and repeat.json()["match"] == "exact"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["content-type"].startswith("application/problem+json")
        assert "past its deadline" in ready.json()["detail"]
        # /v1/ask still answers: the lookup is a miss, the model answers, the write fails soft.
        asked = client.post("/v1/ask", json={"question": "what is the refund policy"})
        assert asked.status_code == 200, asked.text
        assert asked.json()["source"] == "model" and asked.json()["stored"] is False
        stats = client.get("/v1/stats").json()
        assert stats["lookup_errors"] >= 2 and stats["write_errors"] >= 1

        hanging.release()
        wait_until(lambda: client.get("/readyz").status_code == 200)  # once the call returns
        assert client.post("/v1/lookup", json=paraphrase).json()["hit"] is True


def test_an_embedder_that_raises_is_a_miss_and_a_503_on_write(tmp_path: Path) -> None:
    broken = HashingEmbedder()
    with serve(tmp_path, broken) as client:
        question = {
            "question": "how do I close my account",
            "answer": "A.",
            "model": "m",
            "usage": USAGE,
        }
        assert client.post("/v1/entries", json=question).status_code == 201
        broken.fail = True
        missed = client.post("/v1/lookup", json={"question": "how can I close my account"})
        assert missed.status_code == 200 and missed.json()["hit"] is False
        write = client.post("/v1/entries", json={**question, "question": "another one"})
        assert write.status_code == 503
        assert write.headers["content-type"].startswith("application/problem+json")
        stats = client.get("/v1/stats").json()
        assert stats["lookup_errors"] == 1 and stats["write_errors"] == 1
        assert stats["entries"] == 1


# a full disk, in a real server process ----------------------------------------------------------


def test_a_full_disk_fails_writes_soft_and_loses_nothing_acknowledged(
    tmp_path: Path, graph_dir: Path
) -> None:
    """RLIMIT_FSIZE on the running server: no file of its may grow, as on a full disk (root
    ignores permission bits, so a read-only directory cannot be simulated the same way)."""
    data = tmp_path / "data"
    headers = {"authorization": "Bearer test-admin-token"}
    acknowledged: dict[str, str] = {}
    refused: list[str] = []
    big = "x" * 60_000  # pages SQLite must append: the store file and its WAL have to grow

    def write(client: httpx.Client, i: int) -> int:
        question = f"question number {i} about topic {i * 7919 % 1000}"
        response = client.post(
            "/v1/entries",
            json={
                "question": question,
                "answer": f"answer {i} {big}",
                "model": "m",
                "usage": USAGE,
            },
        )
        assert response.status_code in (201, 503), response.text
        if response.status_code == 201:
            acknowledged[response.json()["entry_id"]] = question
        else:
            assert response.headers["content-type"].startswith("application/problem+json")
            refused.append(question)
        return response.status_code

    server = ServerProcess(data, graph_dir)
    try:
        with httpx.Client(base_url=server.base, timeout=30) as client:
            for i in range(5):
                assert write(client, i) == 201
            _, hard = resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (0, hard))
            try:
                codes = [write(client, i) for i in range(5, 45)]
                assert 503 in codes, "the file-size limit never made a write fail"
                # Lookups go on: exact repeats and paraphrases of what was stored before.
                for question in list(acknowledged.values())[:5]:
                    found = client.post("/v1/lookup", json={"question": question}).json()
                    assert found["hit"] is True
                assert client.get("/readyz").status_code == 200
                stats = client.get("/v1/stats").json()
                assert stats["write_errors"] == len(refused)
                assert client.post("/admin/purge", headers=headers).status_code in (200, 503)
            finally:
                resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
            assert write(client, 1000) == 201  # the disk has room again: writes work again
        # uvicorn re-raises SIGTERM after its graceful shutdown: -SIGTERM is a clean exit too
        assert server.terminate() in (0, -signal.SIGTERM)
        assert "semcache stopped" in server.log_text()
    finally:
        server.ensure_stopped()

    server = ServerProcess(data, graph_dir)
    try:
        with httpx.Client(base_url=server.base, timeout=30) as client:
            for entry_id in acknowledged:
                assert client.get(f"/v1/entries/{entry_id}").status_code == 200, entry_id
            assert client.get("/v1/stats").json()["entries"] == len(acknowledged)
            for question in refused:
                found = client.post("/v1/lookup", json={"question": question}).json()
                assert found["hit"] is False or found["match"] != "exact"
    finally:
        server.ensure_stopped()
