"""Client keys bind callers to namespaces; an open admin API is never exposed off loopback.

A key for namespace A gets 403 on namespace B on every route that reads or writes B, and the
refused request changes nothing; a missing or unknown key gets 401. Keys never appear in
error bodies or in the settings' repr.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from cache import InvalidInput
from server.app import create_app
from server.cli import is_loopback, main
from server.settings import Settings
from tests.fakes import HashingEmbedder

KEY_A = "key-for-alpha-0123456789"
KEY_ALL = "key-for-everything-987654"
KEYS = {KEY_A: ["alpha"], KEY_ALL: ["*"]}
USAGE = {"input_tokens": 10, "output_tokens": 5}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient[Any]]:
    settings = Settings(data_dir=str(tmp_path / "d"), client_keys=KEYS)
    app = create_app(settings, embedder=HashingEmbedder())
    with TestClient(app=app, raise_server_exceptions=False) as test_client:
        yield test_client


def entry(namespace: str, question: str = "how do i reset my password") -> dict[str, Any]:
    return {
        "question": question,
        "answer": "Use the reset link.",
        "model": "claude-haiku-4-5",
        "usage": USAGE,
        "namespace": namespace,
    }


def as_key(key: str | None) -> dict[str, str]:
    return {} if key is None else {"x-semcache-key": key}


def test_a_key_reaches_its_namespaces_only(client: TestClient[Any]) -> None:
    beta = client.post("/v1/entries", json=entry("beta"), headers=as_key(KEY_ALL))
    assert beta.status_code == 201
    beta_id = beta.json()["entry_id"]
    alpha = client.post("/v1/entries", json=entry("alpha"), headers=as_key(KEY_A))
    assert alpha.status_code == 201

    refused = [
        client.post("/v1/entries", json=entry("beta", "new q"), headers=as_key(KEY_A)),
        client.post(
            "/v1/lookup",
            json={"question": "how do i reset my password", "namespace": "beta"},
            headers=as_key(KEY_A),
        ),
        client.post("/v1/ask", json={"question": "hi", "namespace": "beta"}, headers=as_key(KEY_A)),
        client.get(f"/v1/entries/{beta_id}", headers=as_key(KEY_A)),
        client.delete(f"/v1/entries/{beta_id}", headers=as_key(KEY_A)),
        client.get("/v1/stats", headers=as_key(KEY_A)),
        client.get("/v1/usage", headers=as_key(KEY_A)),
        client.post(
            "/v1/messages",
            json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []},
            headers={**as_key(KEY_A), "x-semcache-namespace": "beta"},
        ),
    ]
    for response in refused:
        assert response.status_code == 403, response.text
        assert KEY_A not in response.text
    # nothing changed: beta's entry is still there, its question was not stored again
    still = client.get(f"/v1/entries/{beta_id}", headers=as_key(KEY_ALL))
    assert still.status_code == 200
    stats = client.get("/v1/stats", headers=as_key(KEY_ALL)).json()
    assert (
        stats["namespaces"]["beta"]["entries"] == 1 and stats["namespaces"]["beta"]["lookups"] == 0
    )

    hit = client.post(
        "/v1/lookup",
        json={"question": "how do i reset my password", "namespace": "alpha"},
        headers=as_key(KEY_A),
    ).json()
    assert hit["hit"] is True
    beta_hit = client.post(
        "/v1/lookup",
        json={"question": "how do i reset my password", "namespace": "beta"},
        headers=as_key(KEY_ALL),
    ).json()
    wrong_feedback = client.post(
        "/v1/feedback",
        json={"lookup_id": beta_hit["lookup_id"], "correct": False},
        headers=as_key(KEY_A),
    )
    assert wrong_feedback.status_code == 403
    own_feedback = client.post(
        "/v1/feedback", json={"lookup_id": hit["lookup_id"], "correct": True}, headers=as_key(KEY_A)
    )
    assert own_feedback.status_code == 200


@pytest.mark.parametrize("key", [None, "", "not-a-configured-key-at-all"])
def test_a_missing_or_unknown_key_is_unauthorized(client: TestClient[Any], key: str | None) -> None:
    response = client.post("/v1/entries", json=entry("alpha"), headers=as_key(key))
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "x-semcache-key" in response.headers["www-authenticate"]
    proxied = client.post(
        "/v1/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []},
        headers=as_key(key),
    )
    assert proxied.status_code == 401
    assert proxied.json()["error"]["type"] == "authentication_error"
    stats = client.get("/v1/stats", headers=as_key(KEY_ALL)).json()
    assert stats["entries"] == 0


def test_no_keys_configured_means_no_key_needed(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=str(tmp_path / "d")), embedder=HashingEmbedder())
    with TestClient(app=app) as open_client:
        assert open_client.post("/v1/entries", json=entry("beta")).status_code == 201
        assert open_client.get("/v1/stats").status_code == 200


def test_client_keys_are_validated_and_never_shown() -> None:
    settings = Settings.load(environ={"SEMCACHE_CLIENT_KEYS": f'{{"{KEY_A}": ["alpha"]}}'})
    assert settings.client_keys == {KEY_A: ["alpha"]}
    assert KEY_A not in repr(settings) and "alpha" in repr(settings)
    with pytest.raises(InvalidInput, match="16 characters"):
        Settings(client_keys={"short": ["alpha"]})
    with pytest.raises(InvalidInput, match="invalid namespace"):
        Settings(client_keys={KEY_A: ["Not A Namespace"]})


def test_serve_refuses_an_open_admin_api_off_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        code = main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")])
    assert code == 2
    assert "SEMCACHE_ADMIN_TOKEN" in capsys.readouterr().err
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "localhost")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "10.0.0.5", "::", "example.org")] == [False] * 4
