"""Durability of `semcache serve` across a crash (SIGKILL) and a graceful stop (SIGTERM).

What is promised (README, "Storage and durability"; `server/app.py`; uvicorn's shutdown):

- A write acknowledged with 201 survives a crash of the process. After a restart on the same
  data directory it is served: by id (`GET /v1/entries/{id}`), by an exact lookup of its
  question and by a semantic lookup of a rewording, and `/v1/stats` counts it.
- A write the crash cut off may or may not be stored, but all of it or none of it: a question
  and its aliases are one transaction. Either way, the restarted server works.
- A saved vector index that lags the store (entries written after its last save) is caught
  up from the store at start-up, without re-embedding.
- SIGTERM drains: every request the server had accepted completes with a 2xx, requests sent
  after the signal are answered or refused (never answered with an error), the process exits
  cleanly within a timeout, and the index is saved at shutdown, complete: the next start
  reuses it as it is.

How it is tested: real `semcache serve` processes on free loopback ports (the ONNX graph of
the session fixture, `SEMCACHE_FLUSH_INTERVAL_S=3600` so that no periodic save happens), real
HTTP through httpx from several client threads, no mocks. The crash test first writes a few
seed entries and stops the server with SIGTERM, so that an index file exists; a second server
then takes concurrent writes and is SIGKILLed once about half of them were acknowledged and
while at least one more was on the wire, so the index file lags the store at the kill; a third
server on the same data directory must serve every acknowledged entry. The SIGTERM test sends
the signal while slow writes (a question with many aliases) are in flight on fresh
connections. Each request's send time is taken from httpcore's trace hook, so a request whose
body was on the wire well before the signal (`ACCEPTED_GRACE_S`) counts as accepted and must
get a 201; requests sent later may also be refused. No assertion depends on how fast the
machine is; timeouts are generous.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from embeddings.onnx_embedder import OnnxEmbedder
from tests.fake_anthropic import FakeAnthropic, Scripted
from tests.server_process import ServerProcess

NAMESPACE = "crash"
# No periodic save of the index during a test: only the SIGTERM path writes it, so a crash
# surely leaves an index file that lags the store.
SERVER_ENV = {"SEMCACHE_FLUSH_INTERVAL_S": "3600"}
CLEAN_EXITS = (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful shutdown
# The rewordings below score at least 0.97 against their own question, and lead every other
# answer's phrasings by at least 0.15 (measured once with all-MiniLM-L6-v2; embeddings are
# deterministic), so a low threshold cannot hit the wrong entry and the margin rule passes.
REWORDED_THRESHOLD = 0.5
# A request whose body was sent this long before SIGTERM has surely been read by the server's
# event loop, so it was accepted. Requests sent closer to the signal can race with the closing
# of the listening socket and be reset before the server ever saw them.
ACCEPTED_GRACE_S = 0.5
WAIT_S = 120.0  # upper bound for anything the tests wait for; never reached when all is well

# Distinct things, so that questions about different things never compete for a lookup. All
# lowercase, without numbers, dates or opposite actions, so that no guard vetoes a rewording.
TOPICS = (
    "a cast iron skillet, a leather sofa, a wool sweater, a mountain bike, a vinyl record,"
    " an espresso machine, a fish tank, a charcoal grill, a yoga mat, a canvas tent,"
    " a digital piano, a pair of running shoes, a glass shower door, a ceramic teapot,"
    " a telescope, a kayak, a hardwood floor, a baby stroller, a laptop keyboard,"
    " a bird feeder, a swimming pool filter, a silver necklace, a car windshield,"
    " a sewing machine, a rice cooker, a beehive, a pair of ski goggles, a marble countertop,"
    " a hamster cage, a violin bow, a suede jacket, a garden hose, a motorcycle helmet,"
    " a chess set, a paint brush, a camping stove, a surfboard, a wedding dress,"
    " a bathroom mirror, a lawn mower, a pair of reading glasses, a bamboo cutting board,"
    " a tennis racket, a wine decanter, a snow shovel, a dog collar, a fountain pen,"
    " a sleeping bag, a wooden rocking chair, a copper kettle, a drone camera,"
    " a pair of hiking boots, a cashmere scarf, a ping pong table, a pressure cooker,"
    " a terracotta planter, a saxophone, a crystal vase, a skateboard, a down comforter"
).split(", ")
TEMPLATES = (
    "How do I clean {}?",
    "What is the best way to store {}?",
    "Where can I buy {}?",
    "How long does {} usually last?",
    "Can I repair {} myself?",
    "What should I check before renting {}?",
)
SEED_TEMPLATE = "Is {} safe to keep around small children?"


@dataclass(frozen=True)
class Write:
    """One POST /v1/entries: a question, its aliases and the answer they share."""

    question: str
    answer: str
    aliases: tuple[str, ...] = ()

    def body(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "aliases": list(self.aliases),
            "answer": self.answer,
            "namespace": NAMESPACE,
            "model": "claude-haiku-4-5",
            "usage": {"input_tokens": 100, "output_tokens": 20},
        }

    @property
    def phrasings(self) -> tuple[str, ...]:
        return (self.question, *self.aliases)


def short_aliases(question: str) -> tuple[str, ...]:
    stem = question.rstrip("?")
    return (f"{stem}, step by step?", f"quick question: {stem.lower()}?")


def crash_plan(writer: int) -> list[Write]:
    """Writer `writer`'s writes: one template over every topic, every third one with aliases."""
    template = TEMPLATES[writer]
    writes = []
    for i, topic in enumerate(TOPICS):
        question = template.format(topic)
        aliases = short_aliases(question) if i % 3 == 0 else ()
        writes.append(Write(question, f"Answer {writer}-{i}: about {topic}.", aliases))
    return writes


def seed_plan() -> list[Write]:
    return [
        Write(SEED_TEMPLATE.format(topic), f"Seed answer {i}: about {topic}.")
        for i, topic in enumerate(TOPICS[:8])
    ]


def drain_plan(writer: int, count: int, aliases: int) -> list[Write]:
    """Slow writes: every phrasing is embedded, so many aliases keep a request busy."""
    writes = []
    for i, topic in enumerate(TOPICS[:count]):
        question = TEMPLATES[writer].format(topic)
        variants = tuple(f"{question.rstrip('?')} (variant {n})?" for n in range(aliases))
        writes.append(Write(question, f"Drain answer {writer}-{i}: about {topic}.", variants))
    return writes


def reworded(question: str) -> str:
    """A small rewording: another normal form, so the lookup must go through the index."""
    return question.rstrip("?") + " please?"


@dataclass
class Outcome:
    """What happened to one write, as the client saw it."""

    write: Write
    sent_at: float | None = None  # monotonic time its body was on the wire (httpcore trace)
    answered_at: float | None = None
    status: int | None = None
    created: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ids(self) -> list[str]:
        assert self.created is not None
        return [self.created["entry_id"], *self.created["alias_entry_ids"]]


@dataclass
class Traffic:
    """Every write of every client thread, under one condition the test thread can wait on."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    outcomes: list[Outcome] = field(default_factory=list)
    thread_errors: list[BaseException] = field(default_factory=list)

    def acknowledged(self) -> list[Outcome]:
        with self.cond:
            return [o for o in self.outcomes if o.status == 201]

    def unacknowledged(self) -> list[Outcome]:
        with self.cond:
            return [o for o in self.outcomes if o.status != 201]

    def on_the_wire(self, sent_before: float = float("inf")) -> list[Outcome]:
        """Writes sent (before `sent_before`) and not answered yet. Call with `cond` held."""
        return [
            o
            for o in self.outcomes
            if o.sent_at is not None and o.sent_at < sent_before and o.answered_at is None
        ]

    def wait_for(self, predicate: Callable[[], bool]) -> bool:
        """Wait (with `cond` held) until `predicate` holds; False on a timeout or a failed
        client thread. Polled too, since a predicate on elapsed time changes without notice."""
        deadline = time.monotonic() + WAIT_S
        while not self.thread_errors and time.monotonic() < deadline:
            if predicate():
                return True
            self.cond.wait(0.02)
        return False

    def send(self, client: httpx.Client, write: Write) -> Outcome:
        outcome = Outcome(write)
        with self.cond:
            self.outcomes.append(outcome)

        def trace(event: str, info: Mapping[str, Any]) -> None:
            if event == "http11.send_request_body.complete":
                with self.cond:
                    outcome.sent_at = time.monotonic()
                    self.cond.notify_all()

        try:
            response = client.post("/v1/entries", json=write.body(), extensions={"trace": trace})
        except httpx.TransportError as exc:
            with self.cond:
                outcome.answered_at = time.monotonic()
                outcome.error = f"{type(exc).__name__}: {exc}"
                self.cond.notify_all()
            return outcome
        with self.cond:
            outcome.answered_at = time.monotonic()
            outcome.status = response.status_code
            if response.status_code == 201:
                outcome.created = response.json()
            else:
                outcome.error = response.text
            self.cond.notify_all()
        return outcome

    def run_writer(self, base: str, writes: list[Write], *, fresh_connections: bool) -> None:
        """Send `writes` in order until one is not acknowledged (the server went away)."""
        # Without keep-alive, every request opens its own connection, so "refused" and
        # "accepted" are per request, not a matter of which pooled connection it reused.
        limits = httpx.Limits(max_keepalive_connections=0 if fresh_connections else 1)
        try:
            with httpx.Client(base_url=base, timeout=WAIT_S, limits=limits) as client:
                for write in writes:
                    if self.send(client, write).status != 201:
                        return
        except BaseException as exc:  # reported by the test thread, not lost in this one
            with self.cond:
                self.thread_errors.append(exc)
                self.cond.notify_all()


def start_writers(
    traffic: Traffic, base: str, plans: list[list[Write]], *, fresh: bool
) -> list[threading.Thread]:
    threads = [
        threading.Thread(
            target=traffic.run_writer, args=(base, plan), kwargs={"fresh_connections": fresh}
        )
        for plan in plans
    ]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread], traffic: Traffic) -> None:
    for thread in threads:
        thread.join(WAIT_S)
        assert not thread.is_alive(), "a client thread hung"
    assert not traffic.thread_errors, traffic.thread_errors


@pytest.fixture
def start_server(
    tmp_path: Path, onnx_embedder: OnnxEmbedder
) -> Iterator[Callable[[], ServerProcess]]:
    """Start servers on tmp_path/data; whatever a test leaves running is stopped at the end."""
    started: list[ServerProcess] = []
    graph_dir = onnx_embedder.graph_path.parent

    def start() -> ServerProcess:
        server = ServerProcess(tmp_path / "data", graph_dir, env=SERVER_ENV)
        started.append(server)
        return server

    yield start
    for server in started:
        server.ensure_stopped()


def check_served(client: httpx.Client, outcome: Outcome, *, every_alias: bool = True) -> None:
    """An acknowledged write is served by id, by exact lookup and by a reworded lookup."""
    write = outcome.write
    ids = outcome.ids
    checked = list(zip(write.phrasings, ids, strict=True))
    if not every_alias:
        checked = [checked[0], checked[-1]]
    for phrasing, entry_id in checked:
        got = client.get(f"/v1/entries/{entry_id}")
        assert got.status_code == 200, (phrasing, got.text)
        entry = got.json()
        assert (entry["question"], entry["answer"]) == (phrasing, write.answer)
        exact = client.post("/v1/lookup", json={"question": phrasing, "namespace": NAMESPACE})
        assert exact.json()["hit"] is True, (phrasing, exact.text)
        assert (exact.json()["match"], exact.json()["entry_id"]) == ("exact", entry_id)
    # Only the vector index can find a rewording: this fails if the index misses the entry.
    semantic = client.post(
        "/v1/lookup",
        json={
            "question": reworded(write.question),
            "namespace": NAMESPACE,
            "threshold": REWORDED_THRESHOLD,
        },
    ).json()
    assert semantic["hit"] is True, (write.question, semantic)
    assert semantic["match"] == "semantic" and semantic["entry_id"] in ids, (write, semantic)


def stored_whole_or_not_at_all(client: httpx.Client, write: Write) -> int:
    """How many entries of an unacknowledged write are stored: all of its phrasings or none."""
    found = []
    for phrasing in write.phrasings:
        result = client.post("/v1/lookup", json={"question": phrasing, "namespace": NAMESPACE})
        assert result.status_code == 200, result.text
        body = result.json()
        found.append(body["hit"])
        if body["hit"]:
            assert (body["match"], body["answer"]) == ("exact", write.answer), body
    assert all(found) or not any(found), f"a write was stored in part: {write} {found}"
    return len(found) if all(found) else 0


def namespace_entries(client: httpx.Client) -> int:
    stats = client.get("/v1/stats").json()
    entries: int = stats["namespaces"][NAMESPACE]["entries"]
    assert stats["entries"] == entries  # the tests write to one namespace only
    return entries


def test_acknowledged_writes_survive_sigkill(start_server: Callable[[], ServerProcess]) -> None:
    # 1. Seed entries and a clean stop: an index file that knows only the seeds.
    first = start_server()
    seeds = Traffic()
    with httpx.Client(base_url=first.base, timeout=WAIT_S) as client:
        for write in seed_plan():
            assert seeds.send(client, write).status == 201, seeds.outcomes[-1]
    assert first.terminate() in CLEAN_EXITS
    index_file = first.data_dir / "index" / f"{NAMESPACE}@1.faiss"
    assert index_file.exists(), first.log_text()
    seeded_index = index_file.read_bytes()

    # 2. Concurrent writes, and SIGKILL once half are acknowledged and one is on the wire.
    second = start_server()
    traffic = Traffic()
    plans = [crash_plan(writer) for writer in range(4)]
    planned = sum(len(plan) for plan in plans)
    threads = start_writers(traffic, second.base, plans, fresh=False)
    try:
        with traffic.cond:
            ready = traffic.wait_for(
                lambda: (
                    sum(o.status == 201 for o in traffic.outcomes) >= planned // 2
                    and len(traffic.on_the_wire()) >= 1
                )
            )
            # Killed with the lock held: no answer can be recorded between the check and
            # the kill, so what is "on the wire" now was really unanswered at the crash.
            in_flight_at_kill = len(traffic.on_the_wire())
            second.kill()
    finally:
        second.kill()
        join_all(threads, traffic)
    assert ready and in_flight_at_kill >= 1, (traffic.thread_errors, second.log_text())
    acknowledged = traffic.acknowledged()
    unacknowledged = traffic.unacknowledged()
    assert planned // 2 <= len(acknowledged) < planned  # the crash came mid-stream
    assert all(o.error is not None and o.status is None for o in unacknowledged), [
        (o.status, o.error) for o in unacknowledged
    ]  # the writers saw the server vanish, never a refusal
    # The crash left the index file as the seeds saved it: the restart has to catch up.
    assert index_file.read_bytes() == seeded_index

    # 3. A restart on the same data directory serves every acknowledged write.
    third = start_server()
    with httpx.Client(base_url=third.base, timeout=WAIT_S) as client:
        for outcome in [*seeds.outcomes, *acknowledged]:
            check_served(client, outcome)
        maybe_stored = sum(stored_whole_or_not_at_all(client, o.write) for o in unacknowledged)
        acknowledged_entries = sum(len(o.ids) for o in [*seeds.outcomes, *acknowledged])
        assert namespace_entries(client) == acknowledged_entries + maybe_stored

        # And it goes on working: a new write is stored and found.
        after = Traffic()
        extra = Write("How do I fold a paper airplane?", "Fold it in half, then the wings.")
        assert after.send(client, extra).status == 201, after.outcomes[-1]
        check_served(client, after.outcomes[0])
    log = third.log_text()
    # The lagging file was reused and caught up, not thrown away and rebuilt.
    assert f"index {NAMESPACE}@1.faiss patched" in log, log
    assert third.terminate() in CLEAN_EXITS
    assert "Traceback" not in third.log_text()


def test_sigterm_drains_requests_in_flight(start_server: Callable[[], ServerProcess]) -> None:
    server = start_server()
    traffic = Traffic()
    # Six writes of 51 phrasings each keep the server busy for a second or two after the
    # signal: well inside the graceful limit (SEMCACHE_SHUTDOWN_TIMEOUT_S, 30 s), past which
    # uvicorn cancels accepted requests.
    plans = [drain_plan(writer, count=12, aliases=50) for writer in range(len(TEMPLATES))]
    threads = start_writers(traffic, server.base, plans, fresh=True)
    try:
        with traffic.cond:
            # Signal only once writes that the server has surely read are still being served.
            planned = sum(len(plan) for plan in plans)
            ready = (
                traffic.wait_for(
                    lambda: (
                        len(traffic.on_the_wire(time.monotonic() - ACCEPTED_GRACE_S)) >= 2
                        or len(traffic.outcomes) >= planned
                    )  # all served: nothing left to drain
                )
                and len(traffic.outcomes) < planned
            )
            signalled_at = time.monotonic()
            signalled_wall = time.time()
            server.proc.send_signal(signal.SIGTERM)
        exit_status = server.proc.wait(timeout=WAIT_S)
    finally:
        server.ensure_stopped()
        join_all(threads, traffic)
    assert not traffic.thread_errors, traffic.thread_errors
    if not ready:
        # A fast, idle machine served every write before two had been in flight for
        # ACCEPTED_GRACE_S: there was nothing to drain, so nothing about draining was shown.
        pytest.skip("every write was served before the signal could catch two in flight")
    log = server.log_text()
    assert exit_status in CLEAN_EXITS, log
    assert "semcache stopped" in log and "Traceback" not in log, log

    accepted = [
        o for o in traffic.outcomes if o.sent_at and o.sent_at < signalled_at - ACCEPTED_GRACE_S
    ]
    drained = [o for o in accepted if o.answered_at and o.answered_at > signalled_at]
    assert len(drained) >= 2  # the signal did come while accepted writes were being served
    for outcome in accepted:
        assert outcome.status == 201, (outcome.status, outcome.error, log)
    # Later requests: answered, or refused by a closed port; never answered with an error.
    late = [o for o in traffic.outcomes if all(o is not a for a in accepted)]
    assert all(o.status in (201, None) for o in late), [(o.status, o.error) for o in late]

    # The index was written at shutdown (no periodic save ran), after the signal.
    index_file = server.data_dir / "index" / f"{NAMESPACE}@1.faiss"
    assert index_file.exists()
    assert index_file.stat().st_mtime >= signalled_wall

    again = start_server()
    with httpx.Client(base_url=again.base, timeout=WAIT_S) as client:
        acknowledged = traffic.acknowledged()
        for outcome in acknowledged:
            check_served(client, outcome, every_alias=False)
        maybe_stored = sum(
            stored_whole_or_not_at_all(client, o.write) for o in traffic.unacknowledged()
        )
        assert namespace_entries(client) == sum(len(o.ids) for o in acknowledged) + maybe_stored
    restart_log = again.log_text()
    # The file saved at shutdown held every write: reused as it was, neither patched nor rebuilt.
    assert "patched" not in restart_log and "rebuilding" not in restart_log, restart_log
    assert again.terminate() in CLEAN_EXITS


def test_sigterm_waits_for_a_slow_upstream_answer_and_keeps_it(
    tmp_path: Path, onnx_embedder: OnnxEmbedder
) -> None:
    """The deterministic twin of the test above: the request in flight is a /v1/ask miss
    whose model answer takes seconds, so the signal surely arrives while it is served."""
    question = "what is the warranty on a refurbished laptop"
    graph_dir = onnx_embedder.graph_path.parent
    with FakeAnthropic() as fake:
        fake.script(Scripted(text="Twelve months.", delay_s=3.0))
        env = {
            **SERVER_ENV,
            "ANTHROPIC_API_KEY": "sk-ant-test",
            "SEMCACHE_ANTHROPIC_BASE_URL": fake.url,
            "SEMCACHE_UPSTREAM_MAX_RETRIES": "0",
        }
        server = ServerProcess(tmp_path / "data", graph_dir, env=env)
        answers: list[httpx.Response] = []
        errors: list[BaseException] = []

        def ask() -> None:
            try:
                with httpx.Client(base_url=server.base, timeout=WAIT_S) as client:
                    answers.append(client.post("/v1/ask", json={"question": question}))
            except BaseException as exc:
                errors.append(exc)

        asker = threading.Thread(target=ask)
        try:
            asker.start()
            deadline = time.monotonic() + WAIT_S
            while fake.pending() and time.monotonic() < deadline:  # the call reached the model
                time.sleep(0.01)
            assert fake.pending() == 0, server.log_text()
            server.proc.send_signal(signal.SIGTERM)
            exit_status = server.proc.wait(timeout=WAIT_S)
        finally:
            asker.join(timeout=WAIT_S)
            server.ensure_stopped()
    log = server.log_text()
    assert not errors, errors
    assert exit_status in CLEAN_EXITS, log
    assert len(answers) == 1 and answers[0].status_code == 200, log
    assert answers[0].json()["answer"] == "Twelve months." and answers[0].json()["stored"]

    again = ServerProcess(tmp_path / "data", graph_dir, env=SERVER_ENV)
    try:
        with httpx.Client(base_url=again.base, timeout=WAIT_S) as client:
            found = client.post("/v1/lookup", json={"question": question}).json()
            assert found["hit"] is True and found["answer"] == "Twelve months."
        assert "patched" not in again.log_text() and "rebuilding" not in again.log_text()
    finally:
        again.ensure_stopped()
