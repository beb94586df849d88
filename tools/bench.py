"""The benchmark's old command line, ``python tools/bench.py ...``, kept for one release:
it runs ``python -m tools.bench ...``, the ``tools/bench/`` package (see its ``__init__``
for the protocol). Run that from the project root instead."""

from __future__ import annotations

import sys
from pathlib import Path

# The project root replaces tools/ as the path's first entry, as under -m from the root.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from tools.bench.__main__ import main  # noqa: E402

if __name__ == "__main__":
    main()
