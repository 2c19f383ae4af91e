"""Concurrent embedding requests share one model call, and nobody waits on a stuck model.

A model call costs about the same for one short text as for a few dozen, and only one runs
at a time. So while one call runs, requests that arrive queue up, and the next call takes
them all. Nothing waits on a timer: a request that finds the model idle runs at once.

Model calls run on one worker thread of their own, so that every caller only waits, and a
waiter can give up: when the running call has taken far longer than it should (a hung
runtime, a starved machine), its waiters raise `EmbeddingTimeout` and new requests fail at
once, until the model answers again. The cache turns that into a miss (fail open).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from .base import Embedder, Matrix, TokenEmbedder


class EmbeddingTimeout(RuntimeError):
    """The model has not answered within its deadline; the caller should fail open."""


class _Job:
    __slots__ = ("done", "error", "result", "texts", "tokens", "wants_tokens")

    def __init__(self, texts: list[str], wants_tokens: bool = False) -> None:
        self.texts = texts
        self.wants_tokens = wants_tokens
        self.done = False
        self.result: Matrix | None = None
        self.tokens: list[Matrix] | None = None
        self.error: BaseException | None = None


class BatchingEmbedder:
    """Wraps an Embedder; thread-safe.

    `deadline_s` bounds how long a model call may run per `max_batch` texts it embeds (a
    call of 256 texts gets four times as long as a lookup's); None waits for ever, as a
    bare embedder would.
    """

    def __init__(
        self,
        inner: Embedder,
        *,
        max_batch: int = 64,
        deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._max_batch = max_batch
        self._deadline_s = deadline_s
        self._now = clock
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._worker: threading.Thread | None = None
        self._closed = False
        self._running_since: float | None = None
        self._running_budget = 0.0
        self.calls = 0
        """Model calls made, for tests and metrics."""
        self.timeouts = 0
        """Requests that gave up on a model that did not answer in time."""

    @property
    def dim(self) -> int:
        return self._inner.dim

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def deadline_s(self) -> float | None:
        return self._deadline_s

    def stalled_for(self) -> float | None:
        """Seconds the running model call has been running past its deadline, or None."""
        with self._cond:
            return self._overdue()

    def _overdue(self) -> float | None:
        if self._running_since is None or self._deadline_s is None:
            return None
        late = self._now() - self._running_since - self._running_budget
        return late if late > 0 else None

    def _until_overdue(self) -> float | None:
        if self._deadline_s is None:
            return None
        if self._running_since is None:
            return self._deadline_s
        left = self._running_since + self._running_budget - self._now()
        return max(left, 0.0) + 0.001

    @property
    def has_tokens(self) -> bool:
        """Whether `embed_with_tokens` can return word pieces (the wrapped model can)."""
        return isinstance(self._inner, TokenEmbedder)

    def embed(self, texts: Sequence[str]) -> Matrix:
        result = self._wait(_Job(list(texts))).result
        assert result is not None
        return result

    def embed_with_tokens(self, texts: Sequence[str]) -> tuple[Matrix, list[Matrix]]:
        """`embed`, with each text's word pieces (`TokenEmbedder`), sharing model calls with
        concurrent `embed` calls. Raises TypeError when the wrapped model has none."""
        if not self.has_tokens:
            raise TypeError(f"{type(self._inner).__name__} gives no word-piece vectors")
        job = self._wait(_Job(list(texts), wants_tokens=True))
        assert job.result is not None and job.tokens is not None
        return job.result, job.tokens

    def _wait(self, job: _Job) -> _Job:
        if not job.texts:
            job.result = np.zeros((0, self.dim), dtype=np.float32)
            job.tokens = []
            return job
        with self._cond:
            if self._closed:
                raise RuntimeError("the embedder is closed")
            if self._overdue() is not None:
                self.timeouts += 1
                raise EmbeddingTimeout("the embedding model is not answering")
            self._queue.append(job)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="semcache-embed", daemon=True
                )
                self._worker.start()
            self._cond.notify_all()
            while not job.done:
                # Woken by every finished call; the timed wait notices a call that never ends.
                self._cond.wait(timeout=self._until_overdue())
                if not job.done and self._overdue() is not None:
                    if job in self._queue:
                        self._queue.remove(job)
                    self.timeouts += 1
                    raise EmbeddingTimeout(
                        f"the embedding model has not answered in {self._deadline_s} s"
                    )
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job

    def close(self) -> None:
        """Stop the worker thread once the queue is empty (it is a daemon either way)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    self._worker = None
                    return
                batch: list[_Job] = []
                size = 0
                while self._queue and (
                    not batch or size + len(self._queue[0].texts) <= self._max_batch
                ):
                    taken = self._queue.pop(0)
                    batch.append(taken)
                    size += len(taken.texts)
                if self._deadline_s is not None:
                    self._running_budget = self._deadline_s * max(1.0, size / self._max_batch)
                self._running_since = self._now()
            texts = [text for job in batch for text in job.texts]
            tokens: list[Matrix] | None = None
            try:
                # Word pieces come out of the same model call; one caller wanting them is
                # enough to ask for them for the whole batch.
                if any(job.wants_tokens for job in batch) and isinstance(
                    self._inner, TokenEmbedder
                ):
                    vectors, tokens = self._inner.embed_with_tokens(texts)
                else:
                    vectors = self._inner.embed(texts)
            except BaseException as exc:  # every caller of the batch sees the failure
                for job in batch:
                    job.error = exc
            else:
                start = 0
                for job in batch:
                    end = start + len(job.texts)
                    job.result = vectors[start:end]
                    if tokens is not None:
                        job.tokens = tokens[start:end]
                    start = end
            with self._cond:
                self._running_since = None
                self.calls += 1
                for job in batch:
                    job.done = True
                self._cond.notify_all()
