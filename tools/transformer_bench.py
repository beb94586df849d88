"""Transformer task entry point, kept so ``python tools/transformer_bench.py ...`` works:
the code is the ``tools/transformer_bench/`` package (see its ``__init__`` for the task and
the methods); ``python tools/transformer_bench`` runs the same."""

from __future__ import annotations

import sys
from pathlib import Path

# The package directory tools/transformer_bench/ shadows this file for
# ``import transformer_bench``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformer_bench.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
