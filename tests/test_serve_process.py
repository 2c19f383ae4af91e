"""`semcache serve` as a real process on a loopback port: the README's curl examples, a restart."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embeddings.onnx_embedder import OnnxEmbedder
from tests.server_process import ADMIN_TOKEN, ServerProcess


@pytest.fixture
def server(tmp_path: Path, onnx_embedder: OnnxEmbedder) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "data", onnx_embedder.graph_path.parent)
    yield srv
    srv.ensure_stopped()


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


def test_readme_flow_and_restart(server: ServerProcess, onnx_embedder: OnnxEmbedder) -> None:
    with httpx.Client(base_url=server.base, timeout=30) as client:
        entry_id = check_first_run(client)

    # SIGTERM: a clean exit that persists the index and counters
    # uvicorn re-raises SIGTERM after its graceful shutdown, so -SIGTERM is a clean exit too
    assert server.terminate() in (0, -signal.SIGTERM)
    log = server.log_text()
    assert "semcache stopped" in log
    assert ADMIN_TOKEN not in log
    # JSON lines by default: every line parses, and each request has one line with its id.
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    lookups = [r for r in records if r.get("route") == "/v1/lookup"]
    assert [r["outcome"] for r in lookups] == ["semantic", "miss"]
    assert all(r["request_id"] and r["latency_ms"] > 0 and r["status"] == 200 for r in lookups)
    assert lookups[0]["similarity"] > 0.86 and lookups[0]["namespace"] == "support"
    # It ran the default ONNX backend on the graph exported before, without a new export.
    assert "ONNX backend unavailable" not in log and "min cosine" not in log
    index_file = server.data_dir / "index" / "support@1.faiss"
    assert index_file.exists()

    again = ServerProcess(server.data_dir, onnx_embedder.graph_path.parent)
    try:
        with httpx.Client(base_url=again.base, timeout=30) as client:
            check_after_restart(client, entry_id)
    finally:
        assert again.terminate() in (0, -signal.SIGTERM)


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
