"""The MiniLM task's old command line, ``python tools/minilm_bench.py ...``, kept for one
release: it runs ``python -m tools.minilm_bench ...``, the ``tools/minilm_bench/`` package
(see its ``__init__`` for the protocol and the methods). Run that from the project root
instead."""

from __future__ import annotations

import sys
from pathlib import Path

# The project root replaces tools/ as the path's first entry, as under -m from the root.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from tools.minilm_bench.__main__ import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
