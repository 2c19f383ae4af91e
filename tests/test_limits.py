"""Bodies that are too big, too deep or too long get a 4xx and change nothing.

Found by hand: JSON nested past Python's recursion limit made msgspec raise RecursionError,
which reached the client as a 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from server.app import create_app
from server.proxy import json_depth
from server.settings import Settings
from tests.fakes import HashingEmbedder

DEEP = "[" * 5_000 + "]" * 5_000
JSON = {"content-type": "application/json"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient[Any]]:
    settings = Settings(data_dir=str(tmp_path / "d"), max_messages=50, max_json_depth=16)
    app = create_app(settings, embedder=HashingEmbedder())
    with TestClient(app=app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/lookup", '{"question": ' + DEEP + "}"),
        ("/v1/lookup", '{"question": "hi", "extra": ' + DEEP + "}"),
        ("/v1/entries", '{"question": "q", "answer": "a", "model": "m", "usage": ' + DEEP + "}"),
        ("/v1/messages", '{"model": "m", "messages": ' + DEEP + "}"),
    ],
)
def test_json_nested_too_deeply_is_a_400(client: TestClient[Any], path: str, body: str) -> None:
    response = client.post(path, content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert client.get("/v1/stats").json()["entries"] == 0


def test_messages_limits(client: TestClient[Any]) -> None:
    nested: Any = "x"
    for _ in range(17):
        nested = [nested]
    too_deep = {"model": "m", "max_tokens": 5, "metadata": {"n": nested}, "messages": []}
    response = client.post("/v1/messages", content=json.dumps(too_deep), headers=JSON)
    assert response.status_code == 400 and "nested deeper than 16" in response.text
    many = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}] * 51}
    response = client.post("/v1/messages", content=json.dumps(many), headers=JSON)
    assert response.status_code == 400 and "at most 50 messages" in response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_body_size_limit(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "d"), max_body_bytes=1_000)
    with TestClient(app=create_app(settings, embedder=HashingEmbedder())) as client:
        response = client.post("/v1/lookup", json={"question": "x" * 2_000})
        assert response.status_code == 413
        assert response.headers["content-type"].startswith("application/problem+json")


def test_json_depth() -> None:
    assert [json_depth(v) for v in ("s", 1, None, [], {}, [1], {"a": [1]}, [[], [[{}]]])] == [
        0, 0, 0, 1, 1, 1, 2, 4,
    ]  # fmt: skip
