"""Durable storage of entries, their vectors, catalog versions and counters, in diskcache.

diskcache (SQLite in WAL mode) commits each write before it returns, so a write that returned
survives a crash of the process. Keys are short strings; values are msgpack bytes, which
diskcache stores raw instead of pickling.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import msgspec
import numpy as np

from .entry import Entry, format_entry_id

_ENTRY = "e:"
_VECTOR = "v:"
_VERSION = "ns:"
_STATS = "stats"
_EMBEDDER = "meta:embedder"
_NEGATIVE = "neg:"
_PIECES = "p:"
Pieces = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
"""A phrasing's word pieces: int8 rows and one float32 scale per row."""

_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(Entry)


def group_tag(namespace: str, version: int) -> str:
    """The diskcache tag shared by every record of one (namespace, catalog version)."""
    return f"{namespace}@{version}"


def _pieces_tag(namespace: str, version: int) -> str:
    # A tag of their own: evicting a group still counts its entries by their two records.
    return group_tag(namespace, version) + "#pieces"


def _encode_pieces(pieces: Pieces) -> bytes:
    rows, scales = pieces
    head = np.asarray(rows.shape, dtype=np.uint32).tobytes()
    return head + np.asarray(scales, dtype=np.float32).tobytes() + rows.astype(np.int8).tobytes()


def _decode_pieces(raw: bytes) -> Pieces | None:
    if len(raw) < 8:
        return None
    n, dim = (int(x) for x in np.frombuffer(raw[:8], dtype=np.uint32))
    if len(raw) != 8 + 4 * n + n * dim:
        return None
    scales = np.frombuffer(raw[8 : 8 + 4 * n], dtype=np.float32).reshape(n, 1)
    rows = np.frombuffer(raw[8 + 4 * n :], dtype=np.int8).reshape(n, dim)
    return rows, scales


class EntryStore:
    """A thin typed layer over one diskcache.Cache directory."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        # eviction_policy="none": diskcache's default evicts the least recently stored items
        # past 1 GB, which would silently drop acknowledged entries.
        # sqlite_cache_size: diskcache opens one SQLite connection per thread, each with its
        # own page cache (32 MiB by default); the server's dozens of worker threads grew RSS
        # by it under load (benchmarks/results/soak.txt). 4 MiB each; the mapped file and the
        # OS page cache still serve repeated reads.
        self._db = diskcache.Cache(
            str(directory),
            eviction_policy="none",
            tag_index=True,
            statistics=False,
            sqlite_cache_size=2**10,
        )

    def close(self) -> None:
        self._db.close()

    # entries -------------------------------------------------------------------------------

    def put_entry(self, entry: Entry, int_id: int, vector: np.ndarray[Any, Any]) -> None:
        """Store an entry and its vector in one transaction; once this returns, it is durable."""
        self.put_entries([(entry, int_id, vector)])

    def put_entries(
        self,
        rows: list[tuple[Entry, int, np.ndarray[Any, Any]]],
        pieces: list[Pieces] | None = None,
    ) -> None:
        """Store many entries and their vectors (and word pieces) in one transaction: all
        durable, or none."""
        with self._db.transact():
            for row, (entry, int_id, vector) in enumerate(rows):
                tag = group_tag(entry.namespace, entry.catalog_version)
                key = format_entry_id(int_id)
                self._db.set(_VECTOR + key, np.asarray(vector, dtype=np.float32).tobytes(), tag=tag)
                self._db.set(_ENTRY + key, _encoder.encode(entry), tag=tag)
                if pieces is not None:
                    self._set_pieces(entry, int_id, pieces[row])

    def put_pieces(self, rows: list[tuple[Entry, int, Pieces]]) -> None:
        """Add word pieces to entries already stored (their vectors and records unchanged)."""
        with self._db.transact():
            for entry, int_id, pieces in rows:
                self._set_pieces(entry, int_id, pieces)

    def _set_pieces(self, entry: Entry, int_id: int, pieces: Pieces) -> None:
        self._db.set(
            _PIECES + format_entry_id(int_id),
            _encode_pieces(pieces),
            tag=_pieces_tag(entry.namespace, entry.catalog_version),
        )

    def get_pieces(self, int_id: int) -> Pieces | None:
        raw = self._db.get(_PIECES + format_entry_id(int_id))
        return None if raw is None else _decode_pieces(raw)

    def update_entry(self, entry: Entry, int_id: int) -> None:
        """Rewrite an existing entry's record (hit counters); its vector is unchanged."""
        tag = group_tag(entry.namespace, entry.catalog_version)
        self._db.set(_ENTRY + format_entry_id(int_id), _encoder.encode(entry), tag=tag)

    def get_entry(self, int_id: int) -> Entry | None:
        raw = self._db.get(_ENTRY + format_entry_id(int_id))
        return None if raw is None else _entry_decoder.decode(raw)

    def get_vector(self, int_id: int, dim: int) -> np.ndarray[Any, Any] | None:
        raw = self._db.get(_VECTOR + format_entry_id(int_id))
        if raw is None or len(raw) != dim * 4:
            return None
        return np.frombuffer(raw, dtype=np.float32)

    def delete_entry(self, int_id: int) -> bool:
        key = format_entry_id(int_id)
        with self._db.transact():
            existed: bool = self._db.delete(_ENTRY + key)
            self._db.delete(_VECTOR + key)
            self._db.delete(_PIECES + key)
        return existed

    def _scan(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Every (key, value) whose string key starts with `prefix`, in key order.

        One range query over diskcache's table, values decoded by diskcache's own `Disk`:
        a million entries load in seconds, where a `get` per key takes about a minute.
        `tests/test_large_groups.py` checks this against diskcache's public API.
        """
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self._db._sql(
            "SELECT key, mode, filename, value FROM Cache"
            " WHERE key >= ? AND key < ? AND raw = 1 ORDER BY key",
            (prefix, end),
        )
        fetch = self._db._disk.fetch
        for key, mode, filename, value in rows:
            if isinstance(key, str):
                yield key, fetch(mode, filename, value, False)

    def iter_entries(self) -> Iterator[tuple[int, Entry]]:
        """Every stored entry with its int id, in id order."""
        for key, raw in self._scan(_ENTRY):
            yield int(key[len(_ENTRY) :], 16), _entry_decoder.decode(raw)

    def evict_group(self, namespace: str, version: int) -> int:
        """Delete every record of one (namespace, version); returns how many entries went."""
        removed: int = self._db.evict(group_tag(namespace, version))
        self._db.evict(_pieces_tag(namespace, version))
        return removed // 2  # each entry is two records: the entry and its vector

    # namespaces and counters ---------------------------------------------------------------

    def versions(self) -> dict[str, int]:
        return {
            key[len(_VERSION) :]: value
            for key, value in self._scan(_VERSION)
            if isinstance(value, int)
        }

    def set_version(self, namespace: str, version: int) -> None:
        self._db.set(_VERSION + namespace, version)

    def load_stats(self) -> dict[str, dict[str, float]]:
        raw = self._db.get(_STATS)
        if raw is None:
            return {}
        return msgspec.msgpack.decode(raw, type=dict[str, dict[str, float]])

    def save_stats(self, stats: dict[str, dict[str, float]]) -> None:
        self._db.set(_STATS, _encoder.encode(stats))

    def add_negative(self, pair: int) -> None:
        """Remember that one entry was a wrong answer to one question (see `negatives`)."""
        self._db.set(f"{_NEGATIVE}{pair:016x}", 1)

    def negatives(self) -> set[int]:
        return {int(key[len(_NEGATIVE) :], 16) for key, _ in self._scan(_NEGATIVE)}

    def embedder_id(self) -> str | None:
        value = self._db.get(_EMBEDDER)
        return value if isinstance(value, str) else None

    def set_embedder_id(self, value: str) -> None:
        self._db.set(_EMBEDDER, value)
