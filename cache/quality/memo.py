"""A memoising embedder: each text is embedded once, in batches, and kept on disk.

The evaluation opens many caches over the same texts (one per fold, threshold and order).
`MemoEmbedder` sits between them and the real model: `prime` embeds a suite's key texts in
batches (with a progress bar) before the suite runs, so the cache's own one-text `embed`
calls are dictionary reads. What was primed is saved as an ``.npy`` matrix and a ``.json``
list of its texts, named by the embedder and a hash of the texts, so a re-run loads them.

Vectors come from the wrapped embedder unchanged: batched and one-at-a-time encodings of a
text agree to float rounding, far below any threshold step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from embeddings import Embedder, Matrix, TokenEmbedder

PRIME_BATCH = 256


def default_memo_dir() -> Path:
    """$SEMCACHE_EVAL_CACHE, else ~/.cache/semcache-eval."""
    env = os.environ.get("SEMCACHE_EVAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "semcache-eval"


class MemoEmbedder:
    """An `Embedder` that remembers every vector it returned; same `name` and `dim`."""

    def __init__(self, base: Embedder, directory: Path | None = None) -> None:
        self._base = base
        self._dir = directory
        self._rows: dict[str, int] = {}
        self._chunks: list[Matrix] = []
        self._matrix: Matrix = np.zeros((0, base.dim), dtype=np.float32)
        self._lock = threading.Lock()
        self._pieces: dict[str, Matrix] = {}
        self.misses = 0
        """Texts embedded one call at a time because nobody primed them."""

    @property
    def dim(self) -> int:
        return self._base.dim

    @property
    def name(self) -> str:
        return self._base.name

    def __len__(self) -> int:
        return len(self._rows)

    def _add(self, texts: Sequence[str], vectors: Matrix) -> None:
        for text, vector in zip(texts, vectors, strict=True):
            if text not in self._rows:
                self._rows[text] = len(self._rows)
                self._chunks.append(vector.reshape(1, -1))

    def _consolidate(self) -> None:
        if self._chunks:
            self._matrix = np.vstack([self._matrix, *self._chunks]).astype(np.float32)
            self._chunks = []

    def embed(self, texts: Sequence[str]) -> Matrix:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._rows))
            if missing:
                self.misses += len(missing)
                self._add(missing, self._base.embed(missing))
            self._consolidate()
            rows = [self._rows[t] for t in texts]
            return np.ascontiguousarray(self._matrix[rows], dtype=np.float32)

    @property
    def has_tokens(self) -> bool:
        return isinstance(self._base, TokenEmbedder) and bool(
            getattr(self._base, "has_tokens", True)
        )

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[Matrix, list[Matrix]]:
        """Vectors from the memo, word pieces from the model once per text (kept in memory,
        as float16: the evaluation reads them a few times each)."""
        base = self._base
        if not isinstance(base, TokenEmbedder):
            raise TypeError(f"{type(base).__name__} gives no word-piece vectors")
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._pieces))
        for start in range(0, len(missing), PRIME_BATCH):
            chunk = missing[start : start + PRIME_BATCH]
            _, pieces = base.embed_with_tokens(chunk)
            with self._lock:
                for text, own in zip(chunk, pieces, strict=True):
                    self._pieces[text] = own.astype(np.float16)
        vectors = self.embed(texts)
        with self._lock:
            return vectors, [self._pieces[t].astype(np.float32) for t in texts]

    def _file_stem(self, texts: Sequence[str]) -> Path | None:
        if self._dir is None:
            return None
        digest = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:20]
        model = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.name}-{self.dim}")
        return self._dir / model / digest

    def prime(self, texts: Iterable[str], *, label: str = "", progress: bool = True) -> int:
        """Embed every text not yet known, in batches; returns how many were embedded.

        With a directory, the vectors of exactly this set of texts are loaded from, or saved
        to, ``<dir>/<model>/<hash>.npy`` and ``.json``.
        """
        unique = sorted(set(texts))
        stem = self._file_stem(unique)
        if stem is not None and self._load(stem, unique):
            return 0
        todo = [t for t in unique if t not in self._rows]
        if todo:
            bar = _progress(len(todo), label or "embedding", progress)
            for start in range(0, len(todo), PRIME_BATCH):
                batch = todo[start : start + PRIME_BATCH]
                vectors = self._base.embed(batch)
                with self._lock:
                    self._add(batch, vectors)
                bar.update(len(batch))
            bar.close()
        if stem is not None and unique:
            self._save(stem, unique)
        return len(todo)

    def _load(self, stem: Path, texts: list[str]) -> bool:
        vectors_path, texts_path = stem.with_suffix(".npy"), stem.with_suffix(".json")
        if not (vectors_path.is_file() and texts_path.is_file()):
            return False
        try:
            saved = json.loads(texts_path.read_text(encoding="utf-8"))
            matrix = np.load(vectors_path)
        except (OSError, ValueError):
            return False
        if saved != texts or matrix.shape != (len(texts), self.dim):
            return False  # a hash collision or a torn write: embed again
        with self._lock:
            self._add(texts, np.asarray(matrix, dtype=np.float32))
        return True

    def _save(self, stem: Path, texts: list[str]) -> None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        matrix = self.embed(texts)
        # Written to temporary names, then renamed: a crash never leaves a torn pair behind.
        tmp_npy, tmp_json = stem.with_suffix(".tmp.npy"), stem.with_suffix(".tmp.json")
        np.save(tmp_npy, matrix)
        tmp_json.write_text(json.dumps(texts), encoding="utf-8")
        os.replace(tmp_npy, stem.with_suffix(".npy"))
        os.replace(tmp_json, stem.with_suffix(".json"))


class _Bar:
    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm  # imported lazily: only interactive runs draw a bar

            self._bar = tqdm(total=total, desc=label, unit="text", leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _progress(total: int, label: str, enabled: bool) -> _Bar:
    return _Bar(total, label, enabled)
