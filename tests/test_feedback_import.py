"""Feedback on hits, aliases, and `semcache import` of FAQ records."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from embeddings import SentenceTransformerEmbedder
from server import Settings, create_app
from server.access import HEADER as KEY_HEADER
from server.importer import import_file, read_records
from tests.fakes import HashingEmbedder

USAGE = {"input_tokens": 100, "output_tokens": 50}


@pytest.fixture
def client(
    tmp_path: Path, real_embedder: SentenceTransformerEmbedder
) -> Iterator[TestClient[Litestar]]:
    app = create_app(Settings(data_dir=str(tmp_path / "data")), embedder=real_embedder)
    with TestClient(app) as test_client:
        yield test_client


def store(
    client: TestClient[Litestar], question: str, answer: str, **extra: object
) -> dict[str, object]:
    body = {"question": question, "answer": answer, "model": "claude-haiku-4-5", "usage": USAGE}
    response = client.post("/v1/entries", json={**body, **extra})
    assert response.status_code == 201, response.text
    result: dict[str, object] = response.json()
    return result


def test_wrong_hit_is_never_repeated_and_tightens_the_entry(client: TestClient[Litestar]) -> None:
    store(client, "How do I reset my password?", "Use the reset link.")
    hit = client.post("/v1/lookup", json={"question": "how can I reset my password"}).json()
    assert hit["hit"] is True
    report = client.post("/v1/feedback", json={"lookup_id": hit["lookup_id"], "correct": False})
    assert report.status_code == 200, report.text
    floor = report.json()["min_similarity"]
    assert floor == pytest.approx(min(1.0, hit["similarity"] + 0.01), abs=1e-6)
    again = client.post("/v1/lookup", json={"question": "how can I reset my password"}).json()
    assert again["hit"] is False  # never repeated for that query
    # the entry still serves its own question exactly, but needs more similarity otherwise
    assert client.post("/v1/lookup", json={"question": "How do I reset my password"}).json()["hit"]
    entry = client.get(f"/v1/entries/{hit['entry_id']}").json()
    assert entry["hit_count"] >= 2
    stats = client.get("/v1/stats").json()
    assert (stats["reported_wrong"], stats["reported_correct"]) == (1, 0)
    assert stats["measured_false_hit_rate"] == 1.0


def test_feedback_counts_correct_hits_once(client: TestClient[Litestar]) -> None:
    store(client, "What are your opening hours?", "9 to 5.")
    first = client.post("/v1/lookup", json={"question": "what are your opening hours"}).json()
    body = {"lookup_id": first["lookup_id"], "correct": True}
    assert client.post("/v1/feedback", json=body).status_code == 200
    assert client.post("/v1/feedback", json=body).status_code == 404  # one report per hit
    miss = client.post("/v1/lookup", json={"question": "Where do you ship?"}).json()
    report = client.post("/v1/feedback", json={"lookup_id": miss["lookup_id"], "correct": True})
    assert report.status_code == 404
    bad = client.post("/v1/feedback", json={"lookup_id": "nope", "correct": "yes"})
    assert bad.status_code == 400
    stats = client.get("/v1/stats").json()
    assert (stats["reported_correct"], stats["reported_wrong"]) == (1, 0)
    assert stats["measured_false_hit_rate"] == 0.0


def test_aliases_store_every_phrasing_or_none(client: TestClient[Litestar]) -> None:
    created = store(
        client, "How do I close my account?", "Settings > Close account.",
        aliases=["I want to delete my account", "cancel my membership"],
    )  # fmt: skip
    assert len(created["alias_entry_ids"]) == 2  # type: ignore[arg-type]
    hit = client.post("/v1/lookup", json={"question": "cancel my membership"}).json()
    assert hit["match"] == "exact" and hit["answer"] == "Settings > Close account."
    bad = client.post(
        "/v1/entries",
        json={"question": "Another?", "answer": "A", "model": "m", "usage": USAGE,
              "aliases": ["fine", "  ?? "]},
    )  # fmt: skip
    assert bad.status_code == 400
    assert client.get("/v1/stats").json()["entries"] == 3  # nothing of the bad request stored


def test_import_faq_records(client: TestClient[Litestar], tmp_path: Path) -> None:
    records = [
        {"questions": ["What are your business hours?", "When are you open?"], "answer": "9-5."},
        {"questions": ["Do you ship abroad?"], "answer": "Yes, to the EU.",
         "model": "claude-haiku-4-5", "usage": {"input_tokens": 20, "output_tokens": 10}},
    ]  # fmt: skip
    path = tmp_path / "faq.json"
    path.write_text(json.dumps(records))
    created = list(import_file(path, client=client, namespace="shop", progress=False))
    assert len(created) == 2 and len(created[0]["alias_entry_ids"]) == 1
    hit = client.post(
        "/v1/lookup", json={"question": "when are you open", "namespace": "shop"}
    ).json()
    assert hit["hit"] and hit["answer"] == "9-5."
    jsonl = tmp_path / "faq.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records))
    assert [r.answer for r in read_records(jsonl)] == ["9-5.", "Yes, to the EU."]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"questions": [], "answer": "x"}]')
    with pytest.raises(ValueError, match=r"broken\.json"):
        read_records(broken)


def test_an_exact_hit_reported_wrong_is_not_served_again(client: TestClient[Litestar]) -> None:
    store(client, "Do you ship to Norway?", "No.")
    hit = client.post("/v1/lookup", json={"question": "do you ship to norway"}).json()
    assert hit["match"] == "exact"
    client.post("/v1/feedback", json={"lookup_id": hit["lookup_id"], "correct": False})
    assert (
        client.post("/v1/lookup", json={"question": "Do you ship to Norway"}).json()["hit"] is False
    )
    # a corrected answer stored for the same question is served again
    store(client, "Do you ship to Norway?", "Yes, since May.")
    again = client.post("/v1/lookup", json={"question": "do you ship to norway"}).json()
    assert again["hit"] is True and again["answer"] == "Yes, since May."


def test_import_sends_the_client_key(tmp_path: Path, embedder: HashingEmbedder) -> None:
    key = "import-key-0123456789"
    settings = Settings(data_dir=str(tmp_path / "d"), client_keys={key: ["shop"]})
    path = tmp_path / "faq.json"
    path.write_text(json.dumps([{"questions": ["Do you ship abroad?"], "answer": "Yes."}]))
    with TestClient(create_app(settings, embedder=embedder)) as keyed:
        with pytest.raises(ValueError, match="refused"):
            list(import_file(path, client=keyed, namespace="shop", progress=False))
        created = list(
            import_file(
                path, client=keyed, namespace="shop", progress=False, headers={KEY_HEADER: key}
            )
        )
        assert len(created) == 1
        stats = keyed.get("/v1/stats", headers={KEY_HEADER: key})
        assert stats.status_code == 403  # a key for one namespace is not a key for all
