"""Real pretrained transformer task entry point (all-MiniLM-L6-v2), kept so
``python tools/minilm_bench.py ...`` works: the code is the ``tools/minilm_bench/`` package
(see its ``__init__`` for the protocol and the methods); ``python tools/minilm_bench``
runs the same."""

from __future__ import annotations

import sys
from pathlib import Path

# The package directory tools/minilm_bench/ shadows this file for ``import minilm_bench``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from minilm_bench.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
