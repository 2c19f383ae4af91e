"""Heap probe for benchmarks/soak.py, loaded into the server it starts (and into nothing else).

benchmarks/soak.py puts this folder on the server's PYTHONPATH with SOAK_HEAP_PROBE=<file>;
Python imports `sitecustomize` at start-up, and in the `semcache` process this starts one
daemon thread that appends, every SOAK_HEAP_PROBE_EVERY seconds, one JSON line of glibc's
mallinfo2(): what malloc got from the system, what of it is in use (C libraries: SQLite page
caches, ONNX Runtime buffers, numpy arrays, Python objects over 512 bytes) and what it holds
freed (fragmentation: resident, used by nothing, returned by malloc_trim). Python's small
objects live in its own arenas, mapped outside malloc: the rest of the process's anonymous
memory. The probe only reads; it never trims or frees anything.
"""

from __future__ import annotations

import os
import sys

_TARGET = os.environ.get("SOAK_HEAP_PROBE")


def _start(path: str) -> None:
    import ctypes
    import json
    import threading
    import time

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost",
            )
        ]  # fmt: skip

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):  # not glibc >= 2.33: no probe
        return
    mallinfo2.restype = MallInfo2
    every = float(os.environ.get("SOAK_HEAP_PROBE_EVERY", "5"))

    def run() -> None:
        with open(path, "a", encoding="utf-8") as out:
            while True:
                info = mallinfo2()
                row = {
                    "ts": time.time(),
                    # Blocks live in the heaps (arena = uordblks + fordblks), big ones in maps
                    # of their own (hblkhd), given back to the system when freed.
                    "malloc_mib": round((info.arena + info.hblkhd) / 2**20, 2),
                    "inuse_mib": round((info.uordblks + info.hblkhd) / 2**20, 2),
                    "free_mib": round(info.fordblks / 2**20, 2),
                }
                out.write(json.dumps(row) + "\n")
                out.flush()
                time.sleep(every)

    threading.Thread(target=run, name="soak-heap-probe", daemon=True).start()


if _TARGET and sys.argv and os.path.basename(sys.argv[0]) == "semcache":
    _start(_TARGET)
