"""Summarise a py-spy raw profile of the server: inclusive share of samples per function.

    py-spy record -f raw -d 12 -o exact.txt -p <semcache serve pid>   # while load runs
    .venv/bin/python benchmarks/profile_summary.py exact.txt > benchmarks/results/<name>.txt

Only samples inside the HTTP server's event loop count (stacks through uvicorn or Litestar).
"""

from __future__ import annotations

import sys
from collections import Counter


def frame(name: str) -> str:
    function, _, where = name.partition(" (")
    return f"{function} ({where.split(':')[0].rsplit('/', 1)[-1]})" if where else function


def main(path: str, top: int = 40) -> None:
    inclusive: Counter[str] = Counter()
    total = 0
    with open(path) as lines:
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            if not any("uvicorn" in f or "litestar" in f for f in frames):
                continue
            total += int(count)
            for name in {frame(f) for f in frames}:
                inclusive[name] += int(count)
    print(f"# {total} samples on the event loop; inclusive share per function")
    for name, count in inclusive.most_common(top):
        print(f"{100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
