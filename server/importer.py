"""`semcache import FILE`: load FAQ records into a running server through its HTTP API.

Going through the API (not the data folder) keeps the server's in-memory index in step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import msgspec
from msgspec import Meta
from tqdm import tqdm


class FaqRecord(msgspec.Struct, forbid_unknown_fields=True):
    """One answer and the phrasings of the question it answers."""

    questions: Annotated[list[str], Meta(min_length=1)]
    answer: str
    model: str = "imported"
    usage: dict[str, int] = msgspec.field(
        default_factory=lambda: {"input_tokens": 0, "output_tokens": 0}
    )
    ttl_s: float | None = None


def read_records(path: Path) -> list[FaqRecord]:
    """A JSON list of records, or one record per line (JSONL)."""
    raw = path.read_bytes()
    try:
        if raw.lstrip().startswith(b"["):
            return msgspec.json.decode(raw, type=list[FaqRecord])
        return [
            msgspec.json.decode(line, type=FaqRecord) for line in raw.splitlines() if line.strip()
        ]
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ValueError(f"{path}: {exc}") from exc


def import_file(
    path: Path,
    *,
    client: httpx.Client,
    namespace: str,
    progress: bool = True,
    headers: dict[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """POST every record to /v1/entries (with `headers`: a client key); yields each server
    answer. Stops at the first error."""
    records = read_records(path)
    for record in tqdm(records, desc="import", unit="answer", disable=not progress):
        body: dict[str, Any] = {
            "question": record.questions[0],
            "aliases": record.questions[1:],
            "answer": record.answer,
            "model": record.model,
            "usage": record.usage,
            "namespace": namespace,
        }
        if record.ttl_s is not None:
            body["ttl_s"] = record.ttl_s
        response = client.post("/v1/entries", json=body, headers=headers)
        if response.status_code != 201:
            detail = response.json().get("detail", response.text)
            raise ValueError(f"record {record.questions[0]!r} refused: {detail}")
        yield response.json()
