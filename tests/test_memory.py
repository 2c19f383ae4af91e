"""The periodic purge gives memory that worker threads freed back to the system (glibc)."""

from __future__ import annotations

import threading

import pytest

from server.memory import _malloc_trim, limit_arenas, release_freed_memory


@pytest.mark.skipif(_malloc_trim() is None, reason="not glibc: there is no malloc_trim")
def test_memory_freed_in_a_worker_thread_is_given_back() -> None:
    def churn() -> None:
        # Blocks above Python's small-object limit come from malloc, in this thread's arena.
        blocks = [bytes(4096) for _ in range(20_000)]
        del blocks[::2]
        blocks.clear()

    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    assert release_freed_memory() is True


@pytest.mark.skipif(_malloc_trim() is None, reason="not glibc: there is no mallopt")
def test_the_arena_cap_is_accepted() -> None:
    assert limit_arenas(2) is True
