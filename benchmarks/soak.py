"""Soak test: a bounded mixed load against the real server for a fixed time.

Starts `semcache serve` (the default ONNX embedder, an admin token, a temporary data folder) on
a free loopback port, once to export the ONNX graph and then again to be soaked (a deployed
server runs on a graph exported earlier, without torch in memory), and a fake Anthropic
Messages API (tests/fake_anthropic.py) in this process for the misses of /v1/ask. A load
process of its own (this file with --worker) seeds a few FAQ entries per namespace, then paces
N keep-alive clients to a fixed total rate (open loop: latency counts from when each request
was due) with a mix of:

    exact     lookup of a stored question, other case and punctuation (no embedding)  } repeat
    para      lookup of a paraphrase of a stored question (one embedding)              } traffic
    miss      lookup of an unrelated question (one embedding, a miss)
    write     POST /v1/entries of a new question; every 201 is recorded with its id and version
    ask       POST /v1/ask of a new question: a miss, answered by the fake upstream, stored
    get       GET /v1/entries/{id}: of a live entry (200 expected) or a gone one (404 expected)
    delete    DELETE /v1/entries/{id} of a live entry
    bump      POST /admin/namespaces/{ns}/version every --bump-every s, namespaces in turn

Every --window seconds it samples requests, errors, p50/p99 per kind, the server's resident
memory (and, through benchmarks/soak_probe loaded into the server, what malloc has in use and
holds freed), its CPU, the other processes' CPU on the machine, and /v1/stats. The load process
keeps the state the server should have (which entries are live in which catalog version) and
counts any answer that contradicts it while no bump or delete of that entry was in flight (an
exact repeat of a live entry that misses, a deleted entry that is served) as an anomaly.

At the end: every acknowledged entry is read back by id, the server is stopped with SIGTERM and
started again on the same data, and every entry is read back again: acknowledged, not deleted
and not bumped away must be present; deleted or bumped away must answer 404. The verdict line
also bounds the resident memory's growth after the warm-up: by the growth of the one table the
server fills by design (its last 100,000 hits, for /v1/feedback) plus --rss-bound-mib.

    .venv/bin/python benchmarks/soak.py --duration 600 > benchmarks/results/soak.txt
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import aiohttp
import psutil

from benchmarks.workload import (
    OBJECTS,
    UNRELATED,
    VERBS,
    exact_variant,
    free_port,
    paraphrase,
    questions,
    version_of,
)

REPO = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "soak-admin-token"
UPSTREAM_KEY = "soak-upstream-key"
NAMESPACES = ("soak-a", "soak-b", "soak-c", "soak-d")
# Shares of the paced requests; bumps come on their own schedule. exact + para = 70%.
MIX = {
    "exact": 0.35,
    "para": 0.35,
    "miss": 0.12,
    "write": 0.10,
    "ask": 0.04,
    "get": 0.02,
    "delete": 0.02,
}
KINDS = (*MIX, "bump")
CONTEXTS = [
    "on the mobile app", "from the web dashboard", "for a team account",
    "on a shared workspace", "after my trial ends", "without losing my data",
    "from a different country", "on a company laptop", "using the command line",
    "while travelling abroad", "for a second user", "in the admin console",
    "after a failed payment", "from an old account", "before the end of the month",
    "with two-factor login turned on", "on a tablet", "through the API",
    "for a closed account", "during an outage",
]  # fmt: skip
FEATURES = [
    "auto-archive", "quiet hours", "smart folders", "read receipts", "data residency",
    "session timeout", "audit trail", "guest access", "usage alerts", "offline mode",
    "single sign-on", "spending cap", "retention policy", "link previews", "dark mode",
]  # fmt: skip
FACTS = [
    "population", "average rainfall", "tallest building", "oldest museum", "area",
    "main river", "founding year", "busiest airport", "highest point", "national dish",
]  # fmt: skip
PLACES = [
    "Lisbon", "Nairobi", "Osaka", "Lima", "Oslo", "Hanoi", "Quito", "Tbilisi", "Accra",
    "Bergen", "Cusco", "Dakar", "Efes", "Fez", "Graz", "Hobart", "Izmir", "Jaipur", "Kyoto",
    "Leon", "Malmo", "Nantes", "Oaxaca", "Perth", "Recife", "Sapporo", "Tromso", "Utrecht",
]  # fmt: skip
VERSIONS = ["litestar", "uvicorn", "uvloop", "msgspec", "diskcache", "onnxruntime", "aiohttp"]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank, as loadgen.py computes it."""
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


# ---------------------------------------------------------------------------------- load worker


def proc_memory(pid: int) -> dict[str, float]:
    """RssAnon (heap: Python objects, SQLite page caches), RssFile (mapped files: libraries,
    the model, SQLite's memory-mapped database) in MiB, and the thread count (Linux)."""
    found: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                found[key] = int(value.split()[0]) / 1024
            elif key == "Threads":
                found[key] = int(value)
    return found


def last_heap_sample(path: Path | None) -> dict[str, float]:
    """The newest line benchmarks/soak_probe wrote in the server, if it runs."""
    if path is None:
        return {}
    with contextlib.suppress(OSError, ValueError, IndexError), path.open("rb") as probe:
        probe.seek(max(0, path.stat().st_size - 400))
        sample: dict[str, float] = json.loads(probe.read().splitlines()[-1])
        return sample
    return {}


def disk_mib(folder: Path) -> float:
    """The data folder's size without the exported model graph (models/, a fixed ~90 MB)."""
    total = 0
    for root, dirs, files in os.walk(folder):
        if Path(root) == folder and "models" in dirs:
            dirs.remove("models")
        for name in files:
            with contextlib.suppress(OSError):  # removed by a purge meanwhile
                total += os.stat(os.path.join(root, name)).st_size
    return total / 2**20


@dataclass(slots=True)
class Item:
    """One acknowledged entry, as the load process believes it is."""

    id: str
    ns: str
    version: int | None  # None: an /v1/ask answer stored while a bump was in flight
    question: str
    para: str
    kind: str  # seed, write, ask
    t: float  # seconds into the run when acknowledged (negative: seeding)
    state: str = "live"  # live, deleting, deleted, bumped, unknown


class Pool:
    """Items with O(1) add, remove and random choice."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.pos: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Item) -> None:
        if item.id not in self.pos:
            self.pos[item.id] = len(self.items)
            self.items.append(item)

    def remove(self, item_id: str) -> None:
        index = self.pos.pop(item_id, None)
        if index is None:
            return
        last = self.items.pop()
        if index < len(self.items):
            self.items[index] = last
            self.pos[last.id] = index

    def choice(self, rng: random.Random) -> Item | None:
        return rng.choice(self.items) if self.items else None


class Phrasings:
    """New questions (and their paraphrases) for one namespace, each used once."""

    def __init__(self, rng: random.Random, kind: str) -> None:
        if kind == "write":
            combos = [(v, o, c) for v in VERBS for o in OBJECTS for c in CONTEXTS]
        else:
            combos = [(f, c, "") for f in FEATURES for c in CONTEXTS]
        rng.shuffle(combos)
        self.kind = kind
        self.combos = combos
        self.counter = itertools.count()

    def next(self) -> tuple[str, str]:
        n = next(self.counter)
        a, b, c = self.combos[n % len(self.combos)]
        # Past the first round a suffix keeps every question (and so every id) new.
        tail = f" (case {n // len(self.combos)})" if n >= len(self.combos) else ""
        if self.kind == "write":
            return (
                f"How do I {a} my {b} {c}{tail}?",
                f"Could you tell me how to {a} my {b} {c}{tail}, please?",
            )
        return (
            f"What does the {a} setting do {b}{tail}?",
            f"Can you explain what the {a} setting does {b}{tail}?",
        )


@dataclass
class Window:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    requests: int = 0
    errors: int = 0
    expected_4xx: int = 0
    anomalies: int = 0
    not_ready: int = 0
    ready_probes: int = 0


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.base: str = config["base"]
        self.rate: float = config["rate"]
        self.clients: int = config["clients"]
        self.duration: float = config["duration"]
        self.window_s: float = config["window"]
        self.bump_every: float = config["bump_every"]
        self.seed_per_ns: int = config["seed_per_namespace"]
        self.server_pid: int = config["server_pid"]
        self.parent_pid: int = config["parent_pid"]
        self.data_dir = Path(config["data_dir"])
        self.heap_probe = Path(config["heap_probe"]) if config["heap_probe"] else None
        self.out_path = Path(config["out"])
        mix = dict(MIX)
        if not config["ask"]:
            mix["write"] += mix.pop("ask")
        self.kinds = list(mix)
        self.weights = list(mix.values())
        self.rng = random.Random(config["seed"])
        self.namespaces: list[str] = list(NAMESPACES)
        self.versions = dict.fromkeys(self.namespaces, 1)
        # Odd while a bump of the namespace is in flight; changes at its start and end.
        self.epoch = dict.fromkeys(self.namespaces, 0)
        self.live = Pool()
        self.gone: list[Item] = []
        self.items: dict[str, Item] = {}
        self.write_gen = {ns: Phrasings(self.rng, "write") for ns in self.namespaces}
        self.ask_gen = {ns: Phrasings(self.rng, "ask") for ns in self.namespaces}
        self.misses = itertools.cycle(
            [f"What is the {f} of {p}?" for f in FACTS for p in PLACES] + UNRELATED
        )
        self.window = Window()
        self.totals: dict[str, list[float]] = defaultdict(list)
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.samples: dict[str, list[str]] = defaultdict(list)  # errors, anomalies: examples
        self.bumps: list[dict[str, Any]] = []
        self.unacked_writes = 0
        self.t0 = 0.0
        self.marks = (0.0, 0.0, 0.0, 0.0)
        self.since = 0.0
        self.proc = psutil.Process(self.server_pid)
        self.parent = psutil.Process(self.parent_pid)

    # -- bookkeeping

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def note(self, what: str, text: str) -> None:
        if len(self.samples[what]) < 20:
            self.samples[what].append(f"t={self.now():.1f}s {text}")

    def finish(self, kind: str, due: float, outcome: str, detail: str = "") -> None:
        """One request done: outcome is ok, error, expected_4xx (a valid answer either way)."""
        latency = time.perf_counter() - due
        self.window.requests += 1
        self.counts[kind]["requests"] += 1
        self.counts[kind][outcome] += 1
        if outcome == "error":
            self.window.errors += 1
            self.note("errors", f"{kind}: {detail}")
            return
        if outcome == "expected_4xx":
            self.window.expected_4xx += 1
        self.window.latencies[kind].append(latency)
        self.totals[kind].append(latency)

    def anomaly(self, kind: str, text: str) -> None:
        self.window.anomalies += 1
        self.counts[kind]["anomalies"] += 1
        self.note("anomalies", f"{kind}: {text}")

    def matched(self, payload: dict[str, Any]) -> str:
        """The entry a hit served, with its question when this process stored it."""
        entry_id = payload.get("entry_id")
        item = self.items.get(entry_id) if isinstance(entry_id, str) else None
        return f"{entry_id} {item.question!r}" if item is not None else f"{entry_id}"

    def steady(self, ns: str, epoch: int) -> bool:
        """No bump of the namespace started or ended since `epoch` was read, none in flight."""
        return self.epoch[ns] == epoch and epoch % 2 == 0

    async def call(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: Any = None,
        admin: bool = False,
    ) -> tuple[int | None, Any, str]:
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"} if admin else None
        try:
            async with session.request(
                method, self.base + path, json=body, headers=headers
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, None, f"{type(exc).__name__}: {exc}"
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        return status, payload, raw[:300].decode(errors="replace")

    def acknowledge(
        self, ns: str, payload: dict[str, Any], question: str, para: str, kind: str
    ) -> Item:
        version = int(payload["catalog_version"])
        item = Item(payload["entry_id"], ns, version, question, para, kind, self.now())
        self.items[item.id] = item
        if version >= self.versions[ns]:
            self.live.add(item)
        else:  # the bump it raced with has already been seen: gone
            item.state = "bumped"
            self.gone.append(item)
        return item

    # -- request kinds

    async def do(self, session: aiohttp.ClientSession, kind: str, due: float) -> None:
        if kind in ("exact", "para", "get", "delete") and not self.live:
            kind = "miss"  # nothing stored yet: every namespace was just bumped
        await getattr(self, f"do_{kind}")(session, due)

    async def do_exact(self, session: aiohttp.ClientSession, due: float) -> None:
        await self.lookup_stored(session, due, "exact")

    async def do_para(self, session: aiohttp.ClientSession, due: float) -> None:
        await self.lookup_stored(session, due, "para")

    async def lookup_stored(self, session: aiohttp.ClientSession, due: float, kind: str) -> None:
        item = self.live.choice(self.rng)
        assert item is not None
        epoch = self.epoch[item.ns]
        if kind == "exact":
            text = exact_variant(item.question) if self.rng.random() < 0.5 else item.question
        else:
            text = item.para
        status, payload, text_out = await self.call(
            session, "POST", "/v1/lookup", {"question": text, "namespace": item.ns}
        )
        if status != 200 or not isinstance(payload, dict):
            self.finish(kind, due, "error", f"HTTP {status}: {text_out}")
            return
        self.finish(kind, due, "ok")
        judged = self.steady(item.ns, epoch) and item.state == "live"
        counts = self.counts[kind]
        if not payload.get("hit"):
            counts["misses"] += 1
            if kind == "exact" and judged:
                self.anomaly(kind, f"exact repeat of live entry {item.id} ({item.ns}) missed")
            return
        if payload.get("entry_id") == item.id:
            counts["hits_same"] += 1
        else:
            counts["hits_other"] += 1
            if judged:
                if kind == "exact":
                    self.anomaly(
                        kind, f"exact repeat of {item.id} answered by {payload.get('entry_id')}"
                    )
                else:
                    self.note("para_other", f"{text!r} -> {self.matched(payload)}")

    async def do_miss(self, session: aiohttp.ClientSession, due: float) -> None:
        ns = self.rng.choice(self.namespaces)
        question = next(self.misses)
        status, payload, text = await self.call(
            session, "POST", "/v1/lookup", {"question": question, "namespace": ns}
        )
        if status != 200 or not isinstance(payload, dict):
            self.finish("miss", due, "error", f"HTTP {status}: {text}")
            return
        self.finish("miss", due, "ok")
        if payload.get("hit"):
            self.counts["miss"]["hits_other"] += 1
            self.note("miss_hit", f"{question!r} -> {self.matched(payload)}")
        else:
            self.counts["miss"]["misses"] += 1

    async def do_write(self, session: aiohttp.ClientSession, due: float) -> None:
        ns = self.rng.choice(self.namespaces)
        question, para = self.write_gen[ns].next()
        body = {
            "question": question,
            "answer": f"Answer for {ns}: {question} Open Settings, then follow the steps.",
            "model": "claude-haiku-4-5",
            "usage": {"input_tokens": 120, "output_tokens": 60},
            "namespace": ns,
        }
        status, payload, text = await self.call(session, "POST", "/v1/entries", body)
        if status != 201 or not isinstance(payload, dict):
            self.unacked_writes += 1
            self.finish("write", due, "error", f"HTTP {status}: {text}")
            return
        self.acknowledge(ns, payload, question, para, "write")
        self.finish("write", due, "ok")

    async def do_ask(self, session: aiohttp.ClientSession, due: float) -> None:
        ns = self.rng.choice(self.namespaces)
        question, para = self.ask_gen[ns].next()
        epoch = self.epoch[ns]
        status, payload, text = await self.call(
            session, "POST", "/v1/ask", {"question": question, "namespace": ns}
        )
        if status != 200 or not isinstance(payload, dict):
            self.unacked_writes += 1
            self.finish("ask", due, "error", f"HTTP {status}: {text}")
            return
        self.finish("ask", due, "ok")
        counts = self.counts["ask"]
        if payload.get("source") != "model":
            counts["from_cache"] += 1
            self.note("ask_cached", f"{question!r} -> {self.matched(payload)}")
            return
        if not payload.get("stored") or not payload.get("entry_id"):
            counts["not_stored"] += 1
            self.note("ask_not_stored", f"{question!r}: {payload.get('reason')}")
            return
        counts["stored"] += 1
        if self.steady(ns, epoch):
            self.acknowledge(
                ns,
                {"entry_id": payload["entry_id"], "catalog_version": self.versions[ns]},
                question,
                para,
                "ask",
            )
        else:  # stored under the old or the new version: not judged
            item = Item(payload["entry_id"], ns, None, question, para, "ask", self.now())
            item.state = "unknown"
            self.items[item.id] = item

    async def do_get(self, session: aiohttp.ClientSession, due: float) -> None:
        if self.gone and self.rng.random() < 0.3:
            item = self.rng.choice(self.gone)
            expect_live = False
        else:
            picked = self.live.choice(self.rng)
            assert picked is not None
            item, expect_live = picked, True
        epoch = self.epoch[item.ns]
        status, payload, text = await self.call(session, "GET", f"/v1/entries/{item.id}")
        if status == 200 and isinstance(payload, dict):
            self.finish("get", due, "ok")
            if not expect_live and item.state in ("deleted", "bumped"):
                self.anomaly("get", f"{item.state} entry {item.id} ({item.ns}) served")
        elif status == 404:
            self.finish("get", due, "expected_4xx")
            if expect_live and self.steady(item.ns, epoch) and item.state == "live":
                self.anomaly("get", f"live entry {item.id} ({item.ns} v{item.version}): 404")
        else:
            self.finish("get", due, "error", f"HTTP {status}: {text}")

    async def do_delete(self, session: aiohttp.ClientSession, due: float) -> None:
        item = self.live.choice(self.rng)
        assert item is not None
        self.live.remove(item.id)
        item.state = "deleting"
        epoch = self.epoch[item.ns]
        status, _payload, text = await self.call(session, "DELETE", f"/v1/entries/{item.id}")
        if status == 200:
            self.finish("delete", due, "ok")
            item.state = "deleted"
            self.gone.append(item)
        elif status == 404:
            # Deletes take entries of any version; only a purge of a bumped version removes one.
            self.finish("delete", due, "expected_4xx")
            if self.steady(item.ns, epoch):
                self.anomaly("delete", f"live entry {item.id} ({item.ns}): 404")
                item.state = "unknown"
            else:
                item.state = "bumped"
                self.gone.append(item)
        else:
            item.state = "unknown"  # deleted or not: not judged
            self.finish("delete", due, "error", f"HTTP {status}: {text}")

    async def bump(self, session: aiohttp.ClientSession, ns: str) -> None:
        start = time.perf_counter()
        expected = sum(1 for item in self.live.items if item.ns == ns)
        self.epoch[ns] += 1
        status, payload, text = await self.call(
            session, "POST", f"/admin/namespaces/{ns}/version", admin=True
        )
        if status == 200 and isinstance(payload, dict):
            version = int(payload["catalog_version"])
            self.finish("bump", start, "ok")
            if version != self.versions[ns] + 1:
                self.anomaly("bump", f"{ns} went from v{self.versions[ns]} to v{version}")
        else:
            self.finish("bump", start, "error", f"HTTP {status}: {text}")
            status, payload, text = await self.call(
                session, "GET", f"/admin/namespaces/{ns}/version", admin=True
            )
            version = int(payload["catalog_version"]) if status == 200 else self.versions[ns]
        self.versions[ns] = version
        for item in [i for i in self.live.items if i.ns == ns and (i.version or 0) < version]:
            self.live.remove(item.id)
            item.state = "bumped"
            self.gone.append(item)
        self.epoch[ns] += 1
        self.bumps.append(
            {
                "t": round(self.now(), 1),
                "namespace": ns,
                "version": version,
                "invalidated": payload.get("invalidated_entries") if payload else None,
                "live_before": expected,
                "ms": round((time.perf_counter() - start) * 1e3, 2),
            }
        )

    # -- phases

    async def seed(self, session: aiohttp.ClientSession) -> float:
        """FAQ entries in every namespace, four writes at a time; returns seconds taken."""
        start = time.perf_counter()
        self.t0 = start
        jobs = [(ns, q) for ns in self.namespaces for q in questions()[: self.seed_per_ns]]
        queue = iter(jobs)

        async def writer() -> None:
            for ns, question in queue:
                body = {
                    "question": question,
                    "answer": f"Answer for {ns}: {question} Open Settings and follow the steps.",
                    "model": "claude-haiku-4-5",
                    "usage": {"input_tokens": 100, "output_tokens": 50},
                    "namespace": ns,
                }
                status, payload, text = await self.call(session, "POST", "/v1/entries", body)
                if status != 201:
                    raise RuntimeError(f"seeding failed: HTTP {status}: {text}")
                self.acknowledge(ns, payload, question, paraphrase(question), "seed")

        await asyncio.gather(*(writer() for _ in range(4)))
        return time.perf_counter() - start

    async def client(self, session: aiohttp.ClientSession, index: int, end: float) -> None:
        interval = self.clients / self.rate
        due = self.t0 + index * interval / self.clients
        while due < end:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = self.rng.choices(self.kinds, self.weights)[0]
            await self.do(session, kind, due)
            due += interval

    async def bumper(self, session: aiohttp.ClientSession, end: float) -> None:
        if self.bump_every <= 0:
            return
        for n in itertools.count(1):
            at = self.t0 + n * self.bump_every
            if at >= end:
                return
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            await self.bump(session, self.namespaces[(n - 1) % len(self.namespaces)])

    async def prober(self, session: aiohttp.ClientSession, end: float) -> None:
        """/readyz once a second: 503 means an embedding call is late (lookups fail open)."""
        while time.perf_counter() < end:
            status, _, _ = await self.call(session, "GET", "/readyz")
            self.window.ready_probes += 1
            if status != 200:
                self.window.not_ready += 1
                self.counts["readyz"]["not_ready"] += 1
            await asyncio.sleep(1.0)

    def cpu_marks(self) -> tuple[float, float, float, float]:
        """(server, this process, the orchestrator, the whole machine) CPU seconds so far."""
        server = self.proc.cpu_times()
        parent = self.parent.cpu_times()
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
        busy += getattr(machine, "steal", 0.0)
        return (
            server.user + server.system,
            time.process_time(),
            parent.user + parent.system,
            busy,
        )

    async def sample(self, session: aiohttp.ClientSession) -> None:
        """Close the current window: one JSON line on stdout."""
        status, stats, _ = await self.call(session, "GET", "/v1/stats")
        marks = self.cpu_marks()
        wall = time.perf_counter() - self.since
        window, self.window = self.window, Window()
        deltas = [b - a for a, b in zip(self.marks, marks, strict=True)]
        server_cpu, own_cpu, parent_cpu, busy = deltas
        self.marks, self.since = marks, time.perf_counter()
        memory = proc_memory(self.server_pid)
        heap = last_heap_sample(self.heap_probe)
        row: dict[str, Any] = {
            "type": "window",
            "t": round(self.now(), 1),
            "wall": round(wall, 2),
            "requests": window.requests,
            "errors": window.errors,
            "expected_4xx": window.expected_4xx,
            "anomalies": window.anomalies,
            "not_ready": window.not_ready,
            "rss_mib": round(self.proc.memory_info().rss / 2**20, 1),
            "anon_mib": round(memory.get("RssAnon", 0.0), 1),
            "file_mib": round(memory.get("RssFile", 0.0), 1),
            "threads": int(memory.get("Threads", 0)),
            "heap_inuse_mib": heap.get("inuse_mib"),
            "heap_free_mib": heap.get("free_mib"),
            # Anonymous memory malloc did not hand out: Python's object arenas, thread stacks.
            "py_mib": (
                round(memory.get("RssAnon", 0.0) - heap["malloc_mib"], 1)
                if "malloc_mib" in heap
                else None
            ),
            "server_cpu_pct": round(100 * server_cpu / wall, 1),
            "load_cpu_pct": round(100 * (own_cpu + parent_cpu) / wall, 1),
            "other_cpu_pct": round(100 * (busy - server_cpu - own_cpu - parent_cpu) / wall, 1),
            "loadavg": round(os.getloadavg()[0], 2),
            "entries": stats.get("entries") if status == 200 and stats else None,
            "expected_entries": len(self.live),
            "lookup_errors": stats.get("lookup_errors") if status == 200 and stats else None,
            "hits": stats.get("hits") if status == 200 and stats else None,
            "disk_mib": round(disk_mib(self.data_dir), 1),
        }
        every = sorted(x for values in window.latencies.values() for x in values)
        row["p50"] = statistics.median(every) * 1e3 if every else None
        row["p99"] = percentile(every, 0.99) * 1e3 if every else None
        for kind, values in window.latencies.items():
            values.sort()
            row[f"p50_{kind}"] = statistics.median(values) * 1e3
            row[f"p99_{kind}"] = percentile(values, 0.99) * 1e3
        print(json.dumps(row), flush=True)

    async def sampler(self, session: aiohttp.ClientSession, end: float) -> None:
        """Every window that ends before the run does; the last one closes after it."""
        for n in itertools.count(1):
            at = self.t0 + n * self.window_s
            if at >= end - 1e-3:
                return
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            await self.sample(session)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        load_conn = aiohttp.TCPConnector(limit=self.clients)
        control_conn = aiohttp.TCPConnector(limit=4)
        async with (
            aiohttp.ClientSession(connector=load_conn, timeout=timeout) as session,
            aiohttp.ClientSession(connector=control_conn, timeout=timeout) as control,
        ):
            seed_s = await self.seed(session)
            stats_status, stats, _ = await self.call(control, "GET", "/v1/stats")
            print(
                json.dumps(
                    {
                        "type": "seeded",
                        "entries": len(self.items),
                        "seconds": round(seed_s, 2),
                        "server_entries": stats.get("entries") if stats_status == 200 else None,
                        "rss_mib": round(self.proc.memory_info().rss / 2**20, 1),
                    }
                ),
                flush=True,
            )
            self.window = Window()
            self.t0 = time.perf_counter()
            self.marks, self.since = self.cpu_marks(), self.t0
            end = self.t0 + self.duration
            cpu_start = time.process_time()
            background = [
                asyncio.create_task(self.bumper(control, end)),
                asyncio.create_task(self.prober(control, end)),
            ]
            sampler = asyncio.create_task(self.sampler(control, end))
            await asyncio.gather(*(self.client(session, i, end) for i in range(self.clients)))
            wall = time.perf_counter() - self.t0
            await asyncio.gather(*background)
            await sampler
            await self.sample(control)  # the last window, up to the last answer
            final_versions = {}
            for ns in self.namespaces:
                status, payload, _ = await self.call(
                    control, "GET", f"/admin/namespaces/{ns}/version", admin=True
                )
                final_versions[ns] = payload["catalog_version"] if status == 200 else None
            client_cpu = time.process_time() - cpu_start
        result = {
            "wall_s": wall,
            "client_cpu_pct": 100 * client_cpu / wall,
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "latencies_ms": {k: [round(x * 1e3, 3) for x in v] for k, v in self.totals.items()},
            "samples": dict(self.samples),
            "bumps": self.bumps,
            "versions": self.versions,
            "server_versions": final_versions,
            "unacked_writes": self.unacked_writes,
            "items": [asdict(item) for item in self.items.values()],
        }
        self.out_path.write_text(json.dumps(result))
        print(json.dumps({"type": "done"}), flush=True)


def worker_main(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(Worker(config).run())


# ---------------------------------------------------------------------------------- checks


async def read_back(base: str, ids: list[str], concurrency: int = 8) -> dict[str, int | None]:
    """GET /v1/entries/{id} for each id; the status (None: no answer)."""
    found: dict[str, int | None] = {}
    queue = iter(ids)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout
    ) as session:

        async def reader() -> None:
            for entry_id in queue:
                try:
                    async with session.get(f"{base}/v1/entries/{entry_id}") as response:
                        payload = await response.json() if response.status == 200 else None
                        ok = payload is None or payload.get("entry_id") == entry_id
                        found[entry_id] = response.status if ok else -1
                except (aiohttp.ClientError, TimeoutError):
                    found[entry_id] = None

        await asyncio.gather(*(reader() for _ in range(concurrency)))
    return found


async def server_view(base: str) -> tuple[int | None, dict[str, int | None]]:
    """Live entries (/v1/stats) and the catalog version of each namespace."""
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.get(f"{base}/v1/stats") as response:
            entries = (await response.json())["entries"] if response.status == 200 else None
        versions: dict[str, int | None] = {}
        for ns in NAMESPACES:
            url = f"{base}/admin/namespaces/{ns}/version"
            async with session.get(url, headers=headers) as response:
                ok = response.status == 200
                versions[ns] = (await response.json())["catalog_version"] if ok else None
    return entries, versions


@dataclass
class Check:
    """Acknowledged entries read back by id at one moment."""

    label: str
    present: int = 0
    missing: list[str] = field(default_factory=list)
    gone_ok: int = 0
    gone_served: list[str] = field(default_factory=list)
    unknown_present: int = 0
    unknown_absent: int = 0
    unreadable: list[str] = field(default_factory=list)
    entries: int | None = None
    versions: dict[str, int | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.gone_served or self.unreadable)


def check(label: str, base: str, items: list[dict[str, Any]]) -> Check:
    statuses = asyncio.run(read_back(base, [item["id"] for item in items]))
    result = Check(label)
    result.entries, result.versions = asyncio.run(server_view(base))
    for item in items:
        status = statuses.get(item["id"])
        if status not in (200, 404):
            result.unreadable.append(f"{item['id']}: {status}")
        elif item["state"] == "live":
            if status == 200:
                result.present += 1
            else:
                result.missing.append(
                    f"{item['id']} {item['kind']} {item['ns']} v{item['version']} "
                    f"acked at t={item['t']:.1f}s: {item['question']!r}"
                )
        elif item["state"] in ("deleted", "bumped"):
            if status == 404:
                result.gone_ok += 1
            else:
                result.gone_served.append(f"{item['id']} {item['state']} {item['ns']}")
        elif status == 200:
            result.unknown_present += 1
        else:
            result.unknown_absent += 1
    return result


# ---------------------------------------------------------------------------------- report

ROW_KINDS = ("exact", "para", "miss", "write", "ask")
HEADER = (
    f"{'t_s':>5} {'req':>5} {'req/s':>6} {'err':>3} {'4xx':>4} {'anom':>4} {'p50':>6} "
    f"{'p99':>7} | {'p99 by kind: exact':>18} {'para':>7} {'miss':>7} {'write':>7} "
    f"{'ask':>7} | {'RSS':>5} {'anon':>5} {'file':>5} {'py':>4} {'inuse':>5} {'free':>5} "
    f"{'thr':>3} {'disk':>5} {'entries':>7} "
    f"{'srv%':>5} {'load%':>5} {'oth%':>5} {'load1':>5} {'nrdy':>4}"
)
LEGEND = """\
# columns: times in ms (p50, p99 over all kinds; p99 per kind), from when each request was due;
#   err = 5xx, connection errors, unexpected statuses; 4xx = expected 404s (gone entries);
#   anom = answers contradicting the known state; RSS = server resident MiB = anon + file
#   (mapped files); anon = py (Python's object arenas, stacks) + inuse (malloc: C libraries,
#   big Python objects) + free (freed, held by malloc; glibc mallinfo2 from benchmarks/
#   soak_probe in the server); thr = server threads; disk = data folder MiB but models/;
#   entries = /v1/stats live entries; srv% / load% / oth% = CPU of the server / of the load
#   and this process / of everything else on the machine (100 = one core); load1 = 1-min
#   load avg; nrdy = /readyz probes (1/s) answering 503"""


def fmt(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def window_line(row: dict[str, Any]) -> str:
    kinds = " ".join(fmt(row.get(f"p99_{k}"), 7) for k in ROW_KINDS)
    return (
        f"{row['t']:>5.0f} {row['requests']:>5} {row['requests'] / row['wall']:>6.1f} "
        f"{row['errors']:>3} {row['expected_4xx']:>4} {row['anomalies']:>4} "
        f"{fmt(row['p50'], 6, 2)} {fmt(row['p99'], 7)} | {kinds:>50} | "
        f"{row['rss_mib']:>5.0f} {row['anon_mib']:>5.0f} {row['file_mib']:>5.0f} "
        f"{fmt(row.get('py_mib'), 4, 0)} {fmt(row.get('heap_inuse_mib'), 5, 0)} "
        f"{fmt(row.get('heap_free_mib'), 5, 0)} "
        f"{row['threads']:>3} {row['disk_mib']:>5.0f} "
        f"{row['entries'] if row['entries'] is not None else '-':>7} "
        f"{row['server_cpu_pct']:>5.0f} {row['load_cpu_pct']:>5.0f} "
        f"{max(0.0, row['other_cpu_pct']):>5.0f} "
        f"{row['loadavg']:>5.2f} {row['not_ready']:>4}"
    )


def kind_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"{'kind':<7} {'requests':>8} {'errors':>6} {'4xx ok':>6} {'anom':>4} {'p50':>7} "
        f"{'p90':>7} {'p99':>7} {'max':>8}  outcome"
    ]
    for kind in KINDS:
        counts = result["counts"].get(kind)
        if not counts:
            continue
        values = sorted(result["latencies_ms"].get(kind, []))
        if values:
            times = [statistics.median(values), percentile(values, 0.9), percentile(values, 0.99)]
            shown = " ".join(f"{v:>7.2f}" for v in times) + f" {values[-1]:>8.1f}"
        else:
            shown = " ".join(f"{'-':>7}" for _ in range(3)) + f" {'-':>8}"
        outcome = ""
        if kind in ("exact", "para"):
            answered = counts.get("hits_same", 0) + counts.get("hits_other", 0)
            answered += counts.get("misses", 0)
            outcome = (
                f"hit own entry {counts.get('hits_same', 0)}/{answered}, "
                f"other entry {counts.get('hits_other', 0)}, miss {counts.get('misses', 0)}"
            )
        elif kind == "miss":
            outcome = f"missed {counts.get('misses', 0)}, hit {counts.get('hits_other', 0)}"
        elif kind == "ask":
            outcome = (
                f"stored {counts.get('stored', 0)}, from cache {counts.get('from_cache', 0)}, "
                f"not stored {counts.get('not_stored', 0)}"
            )
        elif kind in ("get", "delete"):
            outcome = f"404 {counts.get('expected_4xx', 0)}"
        lines.append(
            f"{kind:<7} {counts.get('requests', 0):>8} {counts.get('error', 0):>6} "
            f"{counts.get('expected_4xx', 0):>6} {counts.get('anomalies', 0):>4} {shown}  "
            f"{outcome}"
        )
    return lines


def slope_mib_per_min(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


def code_state() -> str:
    """Where the server's code comes from (the server process inherits this environment, so
    it imports the same), and its git state."""
    import server

    root = Path(server.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return f"{root} (a copy, not a git checkout)"

    def run(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.rstrip()  # porcelain lines start with a status column: keep it

    commit = run("rev-parse", "--short", "HEAD").strip() or "?"
    dirty = [line[3:] for line in run("status", "--porcelain").splitlines()]
    code = [p for p in dirty if p.split("/")[0] in ("server", "cache", "embeddings")]
    if not code:
        return f"{root} at {commit} (server code as committed)"
    return f"{root} at {commit} + uncommitted changes in {', '.join(code)}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def recent_hit_bytes(texts: list[str], count: int = 100_000) -> float:
    """Bytes one remembered hit takes in the server (SemanticCache._recent, kept for
    /v1/feedback, at most RECENT_HITS): built here with this run's questions, as many as the
    full table holds (a larger dict costs more per key)."""
    import tracemalloc
    import uuid
    from collections import OrderedDict

    from cache.normalize import normalize_question
    from cache.semantic import RecentHit

    normal = [normalize_question(text) for text in texts] or ["how do i reset my password"]
    tracemalloc.start()
    kept: OrderedDict[str, Any] = OrderedDict()
    for n in range(count):
        kept[uuid.uuid4().hex] = RecentHit(
            namespace=(NAMESPACES[n % len(NAMESPACES)] + " ")[:-1],
            text=(normal[n % len(normal)] + " ")[:-1],  # a string of its own, as in a lookup
            entry_id=f"{random.getrandbits(64):016x}",
            similarity=random.random(),
            match="exact",
            matched=random.random(),  # a float of its own per hit, as in a lookup
        )
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return size / count


def log_problems(text: str) -> list[str]:
    marks = ("Traceback", "ERROR", "CRITICAL", "Exception")
    return [line for line in text.splitlines() if any(mark in line for mark in marks)]


# ---------------------------------------------------------------------------------- orchestrator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=150.0, help="requests/s offered in total")
    parser.add_argument("--clients", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per table row")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds before the memory baseline (default: 120, at most a quarter of the run)",
    )
    parser.add_argument(
        "--bump-every", type=float, default=30.0, help="s between version bumps (0: none)"
    )
    parser.add_argument(
        "--seed-per-namespace", type=int, default=100, help="FAQ entries stored first"
    )
    parser.add_argument(
        "--rss-bound-mib",
        type=float,
        default=16.0,
        help="allowed RSS growth after warm-up, beyond the bounded table of recent hits",
    )
    parser.add_argument("--no-ask", action="store_true", help="no /v1/ask (no fake upstream)")
    parser.add_argument(
        "--no-heap-probe",
        action="store_true",
        help="do not load benchmarks/soak_probe (malloc in use / free) into the server",
    )
    parser.add_argument(
        "--fresh-export",
        action="store_true",
        help="soak the server start that exports the ONNX graph (torch stays loaded)",
    )
    parser.add_argument("--seed", type=int, default=6, help="random seed of the mix")
    parser.add_argument("--keep-dir", action="store_true", help="keep the data dir and logs")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SEMCACHE_X=V",
        help="a setting for the server (repeatable)",
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker_main(args.worker)
        return
    warmup = args.warmup if args.warmup is not None else min(120.0, args.duration / 4)

    # Imported here: the load process does not need the server's packages.
    from benchmarks.bench_http import Server

    started = time.perf_counter()
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    start_load = loadavg()
    print(f"# soak  {now}")
    print(f"# machine: {os.cpu_count()} cpus, {cpu_model()}, {platform.platform()}")
    print(
        f"# python {platform.python_version()}  "
        + "  ".join(f"{name} {version_of(name)}" for name in VERSIONS)
    )
    print(f"# server code: {code_state()}")
    print(f"# command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"# load avg at the start: {start_load}  nice: {os.nice(0)}")

    fake = None
    settings = {"SEMCACHE_ADMIN_TOKEN": ADMIN_TOKEN}
    if not args.no_ask:
        from tests.fake_anthropic import FakeAnthropic

        fake = FakeAnthropic().start()
        settings["SEMCACHE_ANTHROPIC_BASE_URL"] = fake.url
        settings["SEMCACHE_ANTHROPIC_API_KEY"] = UPSTREAM_KEY
    settings.update(dict(item.split("=", 1) for item in args.set))
    tmp = tempfile.mkdtemp(prefix="semcache-soak-")
    heap_path = None
    if not args.no_heap_probe:
        heap_path = Path(tmp) / "heap.jsonl"
        paths = [str(Path(__file__).resolve().parent / "soak_probe")]
        paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        settings["PYTHONPATH"] = os.pathsep.join(paths)
        settings["SOAK_HEAP_PROBE"] = str(heap_path)

    data = Path(tmp) / "data"
    export_note = "the graph exported by this server"
    if not args.fresh_export:
        # The first start on a data folder exports the ONNX graph with torch, and torch stays
        # in that process (hundreds of MiB). A deployed server runs on later starts, which load
        # the graph alone: the soak does too. --fresh-export soaks the first start instead.
        exporter = Server(data, free_port(), "warning", settings)
        boot = time.perf_counter()
        try:
            exporter.wait_ready()
            export_rss, _ = exporter.memory_mb()
        finally:
            exporter.stop()
        exporter.log_path.rename(exporter.log_path.with_name("server-export.log"))
        export_note = (
            f"the graph exported by a first start (ready in {time.perf_counter() - boot:.1f} s,"
            f" RSS {export_rss:.0f} MiB with torch loaded, then stopped)"
        )
    server = Server(data, free_port(), "info", settings)
    try:
        boot = time.perf_counter()
        ready = server.wait_ready()
        boot_s = time.perf_counter() - boot
        ready_rss, _ = server.memory_mb()
        shown = " ".join(
            f"{k}={'***' if 'TOKEN' in k or 'KEY' in k else v}" for k, v in settings.items()
        )
        print(f"# server: {shown} {shlex.join(server.command)}  (pid {server.proc.pid})")
        print(
            f"# embedder: {ready.get('embedder')} (ONNX), {export_note}; ready in {boot_s:.1f} s, "
            f"RSS {ready_rss:.0f} MiB; upstream for /v1/ask: "
            f"{'tests/fake_anthropic.py in this process' if fake else 'none'}"
        )
        print(
            f"# load: {args.clients} keep-alive clients paced to {args.rate:g} requests/s in "
            f"total (open loop, latency from when each was due), {args.duration:g} s, in a "
            f"process of its own"
        )
        mix = ", ".join(f"{k} {v:.0%}" for k, v in MIX.items())
        print(f"# mix: {mix} (exact + para = repeat traffic); namespaces {', '.join(NAMESPACES)}")
        print(
            f"# bumps: one namespace every {args.bump_every:g} s, in turn (admin route); "
            f"seeded: {args.seed_per_namespace} FAQ entries per namespace; RSS baseline: the "
            f"first row at or after {warmup:g} s"
        )

        config = {
            "base": server.base,
            "rate": args.rate,
            "clients": args.clients,
            "duration": args.duration,
            "window": args.window,
            "bump_every": args.bump_every,
            "seed_per_namespace": args.seed_per_namespace,
            "server_pid": server.proc.pid,
            "data_dir": str(data),
            "heap_probe": str(heap_path) if heap_path else None,
            "parent_pid": os.getpid(),
            "out": str(Path(tmp) / "worker-result.json"),
            "ask": fake is not None,
            "seed": args.seed,
        }
        config_path = Path(tmp) / "worker-config.json"
        config_path.write_text(json.dumps(config))
        worker_log = Path(tmp) / "worker.log"
        rows: list[dict[str, Any]] = []
        with worker_log.open("w") as err:
            worker = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(config_path)],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=REPO,
            )
            assert worker.stdout is not None
            for line in worker.stdout:
                message = json.loads(line)
                if message["type"] == "seeded":
                    seeded = message
                    print(
                        f"# seeding: {message['entries']} entries in {message['seconds']:.1f} s; "
                        f"server RSS after seeding {message['rss_mib']:.0f} MiB"
                    )
                    print(LEGEND)
                    print()
                    print(HEADER, flush=True)
                elif message["type"] == "window":
                    rows.append(message)
                    print(window_line(message), flush=True)
            code = worker.wait()
        if code != 0:
            raise RuntimeError(f"load process failed ({code}):\n{worker_log.read_text()[-3000:]}")
        result = json.loads(Path(config["out"]).read_text())
        items: list[dict[str, Any]] = result["items"]

        before = check("before the restart", server.base, items)
        rss_end = server.memory_mb()
        stop_start = time.perf_counter()
        exit_code = server.stop()
        stop_s = time.perf_counter() - stop_start
        first_log = server.log_path.read_text(errors="replace")
        server.log_path.rename(server.log_path.with_name("server-1.log"))
        clean = "semcache stopped" in first_log

        server = Server(data, free_port(), "info", settings)
        boot = time.perf_counter()
        server.wait_ready()
        restart_s = time.perf_counter() - boot
        rss_restart, _ = server.memory_mb()
        after = check("after the restart", server.base, items)
        second_code = server.stop()
        second_log = server.log_path.read_text(errors="replace")
    finally:
        if server.proc.poll() is None:
            server.stop()
        if fake is not None:
            fake.stop()

    # ------------------------------------------------------------------ summary
    print()
    print("# per kind over the whole run (times in ms, from when each request was due)")
    for line in kind_table(result):
        print(line)

    total = sum(c.get("requests", 0) for c in result["counts"].values())
    errors = sum(c.get("error", 0) for c in result["counts"].values())
    anomalies = sum(c.get("anomalies", 0) for c in result["counts"].values())
    expected_4xx = sum(c.get("expected_4xx", 0) for c in result["counts"].values())
    paced = sum(c.get("requests", 0) for k, c in result["counts"].items() if k in MIX)
    achieved = paced / result["wall_s"]
    not_ready = result["counts"].get("readyz", {}).get("not_ready", 0)
    print()
    print(
        f"# requests: {total} in {result['wall_s']:.1f} s ({achieved:.1f}/s paced of "
        f"{args.rate:g} offered); errors {errors}; expected 404s {expected_4xx}; "
        f"anomalies {anomalies}; /readyz 503s {not_ready}; load process CPU "
        f"{result['client_cpu_pct']:.0f}%"
    )
    for what in ("errors", "anomalies", "para_other", "miss_hit", "ask_cached", "ask_not_stored"):
        samples = result["samples"].get(what)
        if samples:
            print(f"# {what} (first {min(len(samples), 5)}):")
            for sample in samples[:5]:
                print(f"#   {sample}")

    bumps = result["bumps"]
    if bumps:
        ms = sorted(b["ms"] for b in bumps)
        agree = sum(1 for b in bumps if b["invalidated"] == b["live_before"])
        print(
            f"# bumps: {len(bumps)}, p50 {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms; "
            f"invalidated_entries equal to the load's own count of live entries in {agree}/"
            f"{len(bumps)} (writes in flight can differ); versions at the end "
            f"{result['versions']}"
        )

    by_state: dict[str, int] = defaultdict(int)
    by_kind: dict[str, int] = defaultdict(int)
    for item in items:
        by_state[item["state"]] += 1
        by_kind[item["kind"]] += 1
    expected_present = by_state["live"]
    expected_gone = by_state["deleted"] + by_state["bumped"]
    print(
        f"# acknowledged entries: {len(items)} ("
        + ", ".join(f"{k} {v}" for k, v in by_kind.items())
        + f"); expected present {expected_present}; expected gone {expected_gone} (deleted "
        f"{by_state['deleted']}, bumped away {by_state['bumped']}); not judged "
        f"{by_state['unknown'] + by_state['deleting']} (a delete without an answer, or an "
        f"/v1/ask stored while its namespace was being bumped); unacknowledged writes "
        f"{result['unacked_writes']}"
    )
    for c in (before, after):
        stats_match = c.entries == expected_present + c.unknown_present
        print(
            f"# read back {c.label}: present {c.present}/{expected_present}, missing "
            f"{len(c.missing)}; gone and 404 {c.gone_ok}/{expected_gone}, gone but served "
            f"{len(c.gone_served)}; not judged present {c.unknown_present}, absent "
            f"{c.unknown_absent}; unreadable {len(c.unreadable)}; /v1/stats entries {c.entries} "
            f"({'=' if stats_match else '!='} expected {expected_present + c.unknown_present})"
        )
        for sample in (c.missing + c.gone_served + c.unreadable)[:10]:
            print(f"#   {sample}")
    versions_kept = before.versions == after.versions == result["server_versions"]
    print(
        f"# catalog versions: {after.versions} after the restart "
        f"({'same as' if versions_kept else 'NOT the same as'} before)"
    )
    print(
        f"# shutdown: SIGTERM, exit code {exit_code} in {stop_s:.1f} s, lifespan shutdown "
        f"{'completed' if clean else 'NOT logged'}; restart on the same data: ready in "
        f"{restart_s:.1f} s, RSS {rss_restart:.0f} MiB (second stop: exit code {second_code})"
    )
    problems = log_problems(first_log) + log_problems(second_log)
    print(f"# server log: {len(problems)} error lines (Traceback, ERROR, CRITICAL, Exception)")
    for line in problems[:10]:
        print(f"#   {line[:200]}")

    # Memory: the first row at or after the warm-up against the last. The server remembers its
    # last RECENT_HITS hits for /v1/feedback: that table grows with every hit until it is full,
    # by design, so its growth (estimated from /v1/stats hits) is shown and allowed apart.
    steady = [row for row in rows if row["t"] >= warmup - 1e-6 and row["wall"] > 1.0]
    rss_ok = False
    leak_ok: bool | None = None
    bound = f"recent-hit table + {args.rss_bound_mib:g} MiB"
    if len(steady) >= 2:
        from cache.semantic import RECENT_HITS

        first, last = steady[0], steady[-1]
        growth = last["rss_mib"] - first["rss_mib"]
        slope = slope_mib_per_min([(row["t"], row["rss_mib"]) for row in steady])
        per_hit = recent_hit_bytes([item["question"] for item in items[:2000]])
        held = [min(row["hits"] or 0, RECENT_HITS) for row in (first, last)]
        table = (held[1] - held[0]) * per_hit / 2**20
        net = growth - table
        rss_ok = net <= args.rss_bound_mib
        peak = max(row["rss_mib"] for row in rows)
        full_at = None
        if last["hits"] and last["hits"] > 0:
            full_at = RECENT_HITS / (last["hits"] / last["t"])
        print(
            f"# server RSS: {seeded['rss_mib']:.0f} MiB after seeding, {first['rss_mib']:.0f} MiB "
            f"at t={first['t']:.0f} s (after warm-up), {last['rss_mib']:.0f} MiB at "
            f"t={last['t']:.0f} s, peak {peak:.0f} MiB, {rss_end[0]:.0f} MiB at the end; "
            f"growth {growth:+.1f} MiB, trend after warm-up {fmt(slope, 0, 2).strip()} MiB/min; "
            f"live entries {first['entries']} -> {last['entries']}, data folder "
            f"{first['disk_mib']:.0f} -> {last['disk_mib']:.0f} MiB"
        )
        print(
            f"#   of which the recent-hit table (the last {RECENT_HITS:,} hits, kept for "
            f"/v1/feedback; {per_hit:.0f} B each, measured with this run's questions): "
            f"{held[0]:,} -> {held[1]:,} hits = {table:+.1f} MiB"
            + (
                f", full ({RECENT_HITS * per_hit / 2**20:.0f} MiB) after ~{full_at:.0f} s at "
                "this hit rate"
                if full_at
                else ""
            )
            + f"; growth beyond it {net:+.1f} MiB (bound {args.rss_bound_mib:g})"
        )
        if first.get("py_mib") is not None and last.get("py_mib") is not None:
            py = last["py_mib"] - first["py_mib"]
            inuse = last["heap_inuse_mib"] - first["heap_inuse_mib"]
            free = last["heap_free_mib"] - first["heap_free_mib"]
            live = py + inuse - table
            leak_ok = live <= args.rss_bound_mib
            print(
                f"#   by kind: Python objects (anon outside malloc) {py:+.1f} MiB, malloc in use "
                f"{inuse:+.1f}, malloc freed but held {free:+.1f} (glibc mallinfo2, "
                f"benchmarks/soak_probe), file-backed {last['file_mib'] - first['file_mib']:+.1f}"
            )
            print(
                f"#   live memory (Python objects + malloc in use) beyond the recent-hit table: "
                f"{live:+.1f} MiB (bound {args.rss_bound_mib:g}); the freed-but-held part is "
                "RSS that no object uses (fragmentation), which malloc_trim(0) would give back"
            )
    else:
        print("# server RSS: run too short for a baseline after the warm-up")
    other = [max(0.0, row["other_cpu_pct"]) for row in rows]
    shared = bool(other) and statistics.median(other) > 20
    print(
        f"# machine: load avg {start_load} at the start, {loadavg()} at the end; CPU of other "
        f"processes median {statistics.median(other) if other else 0:.0f}%, max "
        f"{max(other) if other else 0:.0f}% of one core: "
        + ("the run SHARED the machine (latencies noisy)" if shared else "machine mostly ours")
    )
    checks = {
        "errors == 0": errors == 0,
        "anomalies == 0": anomalies == 0,
        **({} if leak_ok is None else {f"live memory growth <= {bound}": leak_ok}),
        f"RSS growth after warm-up <= {bound}": rss_ok,
        "acknowledged entries all present after restart": not after.missing
        and not before.missing
        and not after.unreadable,
        "deleted / bumped entries stay gone": not after.gone_served and not before.gone_served,
        "clean SIGTERM shutdown": clean and versions_kept,
    }
    failed = [name for name, ok in checks.items() if not ok]
    print(
        "# verdict: "
        + ("PASS" if not failed else "FAIL")
        + " ("
        + "; ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks.items())
        + ")"
    )
    print(f"# total time {time.perf_counter() - started:.0f} s")
    if args.keep_dir:
        print(f"# data, logs and the load's result kept in {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if not failed else 1)


if __name__ == "__main__":
    main()
