"""`semcache serve` as a real process on a loopback port: the README's curl examples, a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embeddings.onnx_embedder import OnnxEmbedder

ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def semcache_command() -> list[str]:
    script = Path(sys.executable).with_name("semcache")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server"]


class Server:
    def __init__(self, data_dir: Path, graph_dir: Path) -> None:
        self.data_dir = data_dir
        self.graph_dir = graph_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}.log"
        # The default (ONNX) backend, on the graph the session fixture exported once.
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "SEMCACHE_ADMIN_TOKEN": ADMIN_TOKEN,
            "SEMCACHE_GRAPH_DIR": str(graph_dir),
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    *semcache_command(),
                    "serve",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(data_dir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.proc.kill()
        raise AssertionError(f"server not ready in time:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


@pytest.fixture
def server(tmp_path: Path, onnx_embedder: OnnxEmbedder) -> Iterator[Server]:
    srv = Server(tmp_path / "data", onnx_embedder.graph_path.parent)
    yield srv
    srv.stop()


def check_first_run(client: httpx.Client) -> str:
    assert client.get("/healthz").json() == {"status": "ok"}
    created = client.post(
        "/v1/entries",
        json={
            "question": "How do I reset my password?",
            "answer": "Open Settings > Security and choose Reset password.",
            "namespace": "support",
            "model": "claude-haiku-4-5",
            "usage": {"input_tokens": 120, "output_tokens": 40},
        },
    )
    assert created.status_code == 201, created.text
    entry_id = created.json()["entry_id"]

    hit = client.post(
        "/v1/lookup", json={"question": "how can I reset my password", "namespace": "support"}
    ).json()
    assert hit["hit"] is True and hit["match"] == "semantic" and hit["entry_id"] == entry_id
    miss = client.post(
        "/v1/lookup", json={"question": "What are your business hours?", "namespace": "support"}
    ).json()
    assert miss["hit"] is False

    assert client.get(f"/v1/entries/{entry_id}").json()["hit_count"] == 1
    no_token = client.post("/admin/namespaces/support/version")
    assert no_token.status_code == 401
    assert no_token.headers["content-type"].startswith("application/problem+json")
    assert ADMIN_TOKEN not in no_token.text
    stats = client.get("/v1/stats").json()
    assert stats["namespaces"]["support"]["hits"] == 1 and stats["misses"] == 1

    return str(entry_id)


def test_readme_flow_and_restart(server: Server) -> None:
    with httpx.Client(base_url=server.base, timeout=30) as client:
        entry_id = check_first_run(client)

    # SIGTERM: a clean exit that persists the index and counters
    # uvicorn re-raises SIGTERM after its graceful shutdown, so -SIGTERM is a clean exit too
    assert server.stop() in (0, -signal.SIGTERM)
    log = server.log.read_text()
    assert "semcache stopped" in log
    assert ADMIN_TOKEN not in log
    # It ran the default ONNX backend on the graph exported before, without a new export.
    assert "ONNX backend unavailable" not in log and "min cosine" not in log
    assert "POST /v1/lookup" not in log  # no access log by default (SEMCACHE_ACCESS_LOG)
    index_file = server.data_dir / "index" / "support@1.faiss"
    assert index_file.exists()

    again = Server(server.data_dir, server.graph_dir)
    try:
        with httpx.Client(base_url=again.base, timeout=30) as client:
            check_after_restart(client, entry_id)
    finally:
        assert again.stop() in (0, -signal.SIGTERM)


def check_after_restart(client: httpx.Client, entry_id: str) -> None:
    hit = client.post(
        "/v1/lookup", json={"question": "how can I reset my password", "namespace": "support"}
    ).json()
    assert hit["hit"] is True and hit["entry_id"] == entry_id
    stats = client.get("/v1/stats").json()
    assert stats["namespaces"]["support"]["lookups"] == 3  # 2 before the restart, 1 after
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    bumped = client.post("/admin/namespaces/support/version", headers=auth).json()
    assert bumped == {"namespace": "support", "catalog_version": 2, "invalidated_entries": 1}
    after = client.post(
        "/v1/lookup", json={"question": "How do I reset my password?", "namespace": "support"}
    ).json()
    assert after["hit"] is False
