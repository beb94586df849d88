"""Benchmark entry point, kept so ``python tools/bench.py ...`` works: the code is the
``tools/bench/`` package (see its ``__init__`` for the protocol); ``python tools/bench``
runs the same."""

from __future__ import annotations

import sys
from pathlib import Path

# The package directory tools/bench/ shadows this file for ``import bench``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.__main__ import main

if __name__ == "__main__":
    main()
