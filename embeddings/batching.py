"""Concurrent embedding requests share one model call.

A model call costs about the same for one short text as for a few dozen, and only one runs
at a time. So while one call runs, requests that arrive queue up, and the next call takes
them all. Nothing waits on a timer: a request that finds the model idle runs at once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from .base import Embedder, Matrix


class _Job:
    __slots__ = ("done", "error", "result", "texts")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.done = False
        self.result: Matrix | None = None
        self.error: BaseException | None = None


class BatchingEmbedder:
    """Wraps an Embedder; thread-safe; the thread that finds the model idle leads a batch.

    The leader embeds every queued text in one call (up to `max_batch` texts), hands each
    caller its rows, and repeats until its own request is done; then another waiting thread
    takes over, so no caller serves others for long.
    """

    def __init__(self, inner: Embedder, *, max_batch: int = 64) -> None:
        self._inner = inner
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._leading = False
        self.calls = 0
        """Model calls made, for tests and metrics."""

    @property
    def dim(self) -> int:
        return self._inner.dim

    @property
    def name(self) -> str:
        return self._inner.name

    def embed(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        job = _Job(list(texts))
        with self._cond:
            self._queue.append(job)
            while self._leading and not job.done:
                self._cond.wait()
            if not job.done:
                self._leading = True
        if not job.done:
            try:
                while not job.done:
                    self._run_batch()
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _run_batch(self) -> None:
        with self._cond:
            batch: list[_Job] = []
            size = 0
            while self._queue and (
                not batch or size + len(self._queue[0].texts) <= self._max_batch
            ):
                taken = self._queue.pop(0)
                batch.append(taken)
                size += len(taken.texts)
        if not batch:
            return
        texts = [text for job in batch for text in job.texts]
        try:
            vectors = self._inner.embed(texts)
        except BaseException as exc:  # every caller of the batch sees the failure
            for job in batch:
                job.error = exc
        else:
            start = 0
            for job in batch:
                job.result = vectors[start : start + len(job.texts)]
                start += len(job.texts)
        with self._cond:
            self.calls += 1
            for job in batch:
                job.done = True
            self._cond.notify_all()
