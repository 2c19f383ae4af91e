"""The vector index of one (namespace, catalog version) group, and the lock that guards it."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np


class RWLock:
    """Many readers or one writer: searches run side by side, mutations alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclasses.dataclass(frozen=True)
class IndexPolicy:
    """When a group leaves exact search, and how its approximate index is shaped.

    A flat search is exact but linear: ~0.3 ms at 10k vectors, ~7 ms at 100k, ~60 ms at 1M
    on one core here. Past `ivf_min_entries` a group moves to an inverted-file (IVF) index
    that scans `ivf_probes` of `ivf_lists` clusters (~1.5% of the vectors at the defaults) and
    still removes ids in place, so TTL expiry and deletes need no tombstones.
    benchmarks/bench_scale.py measures both.
    """

    ivf_min_entries: int = 50_000
    ivf_lists: int = 1024
    ivf_probes: int = 16
    large_save_interval_s: float = 300.0
    """A group this large is written to disk at most this often (and at shutdown): writing
    1.5 GB every few seconds would stall its writes. After a crash the saved index is
    patched from the store, so a late save costs a short catch-up, never an entry."""

    def __post_init__(self) -> None:
        if not 1 <= self.ivf_probes <= self.ivf_lists <= self.ivf_min_entries:
            raise ValueError("need 1 <= ivf_probes <= ivf_lists <= ivf_min_entries")


_TRAIN_PER_LIST = 40  # k-means wants ~39+ points per centroid; more only slows training
# faiss's type stubs leave out the direct-map enum.
_HASHTABLE: int = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]


def _flat_index(dim: int) -> Any:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _ivf_index(
    vectors: np.ndarray[Any, Any], ids: np.ndarray[Any, Any], policy: IndexPolicy
) -> Any:
    """An inner-product IVF index trained on a sample of `vectors`, holding all of them."""
    dim = vectors.shape[1]
    quantizer: Any = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, policy.ivf_lists, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True  # the index frees its quantizer: no Python reference to keep
    quantizer.this.disown()
    sample_size = min(len(vectors), policy.ivf_lists * _TRAIN_PER_LIST)
    rows = np.random.default_rng(0).choice(len(vectors), sample_size, replace=False)
    index.train(np.ascontiguousarray(vectors[np.sort(rows)], dtype=np.float32))
    # A hash table from id to (list, offset): removal and reconstruction by id stay cheap.
    index.set_direct_map_type(_HASHTABLE)
    index.nprobe = policy.ivf_probes
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return index


class GroupIndex:
    """Inner-product search over the unit vectors of one group, with each id's expiry.

    Small groups use an exact flat index; `upgrade()` moves a group past the policy's size to
    an approximate IVF index without blocking its lookups while the index trains.
    """

    def __init__(
        self, dim: int, index: Any | None = None, policy: IndexPolicy | None = None
    ) -> None:
        self.dim = dim
        self.policy = policy or IndexPolicy()
        self._index: Any = index if index is not None else _flat_index(dim)
        # While an upgrade builds its index, mutations are also recorded here for replay.
        self._journal: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]] | None
        self._journal = None
        self._upgrading = threading.Lock()
        # Per id, kept lean for million-entry groups: the answer key of every id, the expiry of
        # only those with a TTL, and per answer one id or, when it has several, their set.
        self._answers: dict[int, int] = {}  # id -> key of its answer (alike answers, one key)
        self._expiry: dict[int, float] = {}  # id -> expiry, for ids that expire
        self._members: dict[int, int | set[int]] = {}  # answer key -> its phrasings' ids
        self._aliased = 0  # answers with several phrasings: where the word-piece rule applies
        self._centroids: dict[int, np.ndarray[Any, Any]] = {}  # answer key -> unit mean vector
        self._lock = RWLock()
        self._saving = threading.Lock()
        self.dirty = False
        self.saved_at: float | None = None  # monotonic time of the last save or load

    def __len__(self) -> int:
        return len(self._answers)

    def ids(self) -> set[int]:
        with self._lock.read():
            return set(self._answers)

    @property
    def kind(self) -> str:
        """ "flat" (exact) or "ivf" (approximate, for large groups)."""
        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "flat"

    def index_ids(self) -> set[int]:
        with self._lock.read():
            return set(self._index_id_array().tolist())

    def _index_id_array(self) -> np.ndarray[Any, Any]:
        if not isinstance(self._index, faiss.IndexIVF):
            return faiss.vector_to_array(self._index.id_map)
        lists: Any = self._index.invlists
        parts = [np.zeros(0, dtype=np.int64)]
        for number in range(self._index.nlist):
            size = lists.list_size(number)
            if size:
                parts.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
        return np.concatenate(parts)

    def is_live(self, int_id: int, now: float) -> bool:
        return int_id in self._answers and self._expiry.get(int_id, math.inf) > now

    def live_count(self, now: float) -> int:
        with self._lock.read():
            expired = sum(1 for expires in self._expiry.values() if expires <= now)
            return len(self._answers) - expired

    def expired_ids(self, now: float) -> list[int]:
        with self._lock.read():
            return [i for i, expires in self._expiry.items() if expires <= now]

    def answer_key(self, int_id: int) -> int | None:
        return self._answers.get(int_id)

    def members(self, answer_key: int) -> list[int]:
        """The ids of the stored phrasings (live or not yet purged) of this answer."""
        members = self._members.get(answer_key)
        return [] if members is None else [members] if isinstance(members, int) else list(members)

    @property
    def has_aliases(self) -> bool:
        """Whether some answer here has several phrasings."""
        return self._aliased > 0

    def phrasings(self, answer_key: int) -> int:
        """How many stored phrasings (live or not yet purged) share this answer."""
        members = self._members.get(answer_key)
        return 0 if members is None else 1 if isinstance(members, int) else len(members)

    def track(self, int_id: int, expires_at: float | None, answer_key: int) -> None:
        """Track an id whose vector is already in the index (used when loading a saved index)."""
        self._set_expiry(int_id, expires_at)
        self._set_answer(int_id, answer_key)

    def _set_expiry(self, int_id: int, expires_at: float | None) -> None:
        if expires_at is None:
            self._expiry.pop(int_id, None)
        else:
            self._expiry[int_id] = expires_at

    def _set_answer(self, int_id: int, answer_key: int) -> None:
        old = self._answers.get(int_id)
        if old is not None:
            self._drop_member(old, int_id)
        self._answers[int_id] = answer_key
        members = self._members.get(answer_key)
        if members is None:
            self._members[answer_key] = int_id
        elif isinstance(members, int):
            if members != int_id:
                self._members[answer_key] = {members, int_id}
                self._aliased += 1
        else:
            members.add(int_id)
        self._centroids.pop(answer_key, None)

    def _drop_member(self, answer_key: int, int_id: int) -> None:
        members = self._members.get(answer_key)
        self._centroids.pop(answer_key, None)
        if members is None:
            return
        if isinstance(members, int):
            if members == int_id:
                del self._members[answer_key]
            return
        members.discard(int_id)
        if len(members) == 1:
            self._members[answer_key] = next(iter(members))
            self._aliased -= 1
        elif not members:
            del self._members[answer_key]
            self._aliased -= 1

    def answer_similarities(
        self, vector: np.ndarray[Any, Any], answers: list[int]
    ) -> dict[int, float]:
        """Cosine similarity of `vector` to the centroid of each answer's phrasings.

        An answer asked in several ways is recognised by what its phrasings share, which is
        steadier than the single nearest phrasing. Centroids are computed when first needed.
        """
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        out: dict[int, float] = {}
        with self._lock.read():
            for answer in answers:
                centroid = self._centroids.get(answer)
                if centroid is None:
                    members = self._members.get(answer)
                    if members is None:
                        continue
                    if isinstance(members, int):
                        # One phrasing is its own centroid: read it, do not keep a copy.
                        centroid = self._index.reconstruct(members)
                    else:
                        stacked = np.vstack([self._index.reconstruct(i) for i in members])
                        mean = stacked.mean(axis=0)
                        centroid = mean / max(float(np.linalg.norm(mean)), 1e-12)
                        self._centroids[answer] = centroid  # a race only recomputes it
                out[answer] = min(1.0, max(-1.0, float(centroid @ query)))
        return out

    def add(
        self,
        ids: list[int],
        vectors: np.ndarray[Any, Any],
        expiries: list[float | None],
        answer_keys: list[int],
    ) -> None:
        id_array = np.asarray(ids, dtype=np.int64)
        matrix = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock.write():
            # Upsert: a rewritten question replaces its old vector instead of duplicating it.
            known = [i for i in ids if i in self._answers]
            if known:
                self._index.remove_ids(np.asarray(known, dtype=np.int64))
            self._index.add_with_ids(matrix, id_array)
            if self._journal is not None:
                self._journal.append((id_array, matrix.copy()))
            for int_id, expires, answer in zip(ids, expiries, answer_keys, strict=True):
                self._set_expiry(int_id, expires)
                self._set_answer(int_id, answer)
            self.dirty = True

    def remove(self, ids: list[int]) -> int:
        with self._lock.write():
            present = [i for i in ids if i in self._answers]
            if present:
                self._index.remove_ids(np.asarray(present, dtype=np.int64))
                if self._journal is not None:
                    self._journal.append((np.asarray(present, dtype=np.int64), None))
                for int_id in present:
                    self._expiry.pop(int_id, None)
                    self._drop_member(self._answers.pop(int_id), int_id)
                self.dirty = True
            return len(present)

    def search(
        self, vector: np.ndarray[Any, Any], now: float, k: int = 16
    ) -> list[tuple[int, float]]:
        """Up to `k` nearest live ids with their cosine similarity, nearest first."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dim)
        found: list[tuple[int, float]] = []
        answers, expiry = self._answers, self._expiry
        with self._lock.read():
            total = self._index.ntotal
            width = min(k, total)
            while width:
                sims, ids = self._index.search(query, width)
                # Python numbers first: per-element numpy scalars cost a microsecond each.
                id_list: list[int] = ids[0].tolist()
                found = [
                    (i, min(1.0, max(-1.0, sim)))
                    for sim, i in zip(sims[0].tolist(), id_list, strict=True)
                    if i >= 0 and i in answers and expiry.get(i, math.inf) > now
                ]
                # Fewer than `width` results: an IVF index has no more in the clusters it probed.
                if len(found) >= k or width == total or id_list[-1] < 0:
                    break
                width = min(total, width * 4)  # expired entries took places: look further
        return found[:k]

    def upgrade(self) -> bool:
        """Move a flat group past `policy.ivf_min_entries` to an IVF index; True if it did.

        Training takes seconds at this size, so it runs on a snapshot while lookups and writes
        go on; the writes made meanwhile are replayed before the new index replaces the old.
        """
        if self.kind != "flat" or len(self) < self.policy.ivf_min_entries:
            return False
        with self._upgrading:
            with self._lock.write():
                if self.kind != "flat":
                    return False
                ids = faiss.vector_to_array(self._index.id_map).copy()
                vectors = self._index.index.reconstruct_n(0, self._index.ntotal)
                self._journal = []
            try:
                upgraded = _ivf_index(vectors, ids, self.policy)
            except BaseException:
                with self._lock.write():
                    self._journal = None
                raise
            with self._lock.write():
                for changed, added in self._journal:
                    upgraded.remove_ids(changed)
                    if added is not None:
                        upgraded.add_with_ids(added, changed)
                self._index, self._journal = upgraded, None
                self.dirty = True
        return True

    def save_due(self, now: float) -> bool:
        """Whether a flush at monotonic time `now` should write this group's index."""
        if not self.dirty:
            return False
        if len(self) < self.policy.ivf_min_entries or self.saved_at is None:
            return True
        return now - self.saved_at >= self.policy.large_save_interval_s

    def save(self, path: Path) -> None:
        """Write the index atomically: a crash leaves the old file or the new one, never half."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with self._saving:
            with self._lock.read():
                faiss.write_index(self._index, str(tmp))
                self.dirty = False
                self.saved_at = time.monotonic()
            os.replace(tmp, path)

    def patch(self, remove: list[int], ids: list[int], vectors: np.ndarray[Any, Any]) -> None:
        """Bring a loaded index up to date with the store: drop `remove`, add `ids`.

        Only the vectors change; the caller tracks every id of the store afterwards.
        """
        with self._lock.write():
            if remove:
                self._index.remove_ids(np.asarray(remove, dtype=np.int64))
            if ids:
                matrix = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), -1)
                self._index.add_with_ids(matrix, np.asarray(ids, dtype=np.int64))
            self.dirty = True

    @classmethod
    def load(cls, path: Path, dim: int, policy: IndexPolicy | None = None) -> GroupIndex:
        """Read a saved index; raises ValueError if it is unreadable or of another width."""
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ValueError(f"unreadable index {path}: {exc}") from exc
        # read_index returns the concrete class; faiss.downcast_index would return a view
        # whose owner is freed on return, so it is deliberately not used here.
        if index.d != dim or not isinstance(index, faiss.IndexIDMap2 | faiss.IndexIVFFlat):
            raise ValueError(f"index {path} is not an id-mapped index of dimension {dim}")
        if isinstance(index, faiss.IndexIVFFlat):
            if index.direct_map.type != _HASHTABLE:
                raise ValueError(f"index {path} cannot remove ids in place")
            index.nprobe = (policy or IndexPolicy()).ivf_probes
        group = cls(dim, index, policy)
        group.saved_at = time.monotonic()
        return group
