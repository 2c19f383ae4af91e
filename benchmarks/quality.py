"""Answer-quality evaluation (../shared/eval/PROTOCOL.md): every suite, through the server's
own cache code. The same as `semcache eval`.

    .venv/bin/python benchmarks/quality.py ../shared/data --out benchmarks/results [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from cache.quality.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
