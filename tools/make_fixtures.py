"""Fixture generator entry point, kept so ``python tools/make_fixtures.py ...`` works: the
code is the ``tools/make_fixtures/`` package (see its ``__init__`` for the fixtures and the
manifest); ``python tools/make_fixtures`` runs the same."""

from __future__ import annotations

import sys
from pathlib import Path

# The package directory tools/make_fixtures/ shadows this file for ``import make_fixtures``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_fixtures.__main__ import main

if __name__ == "__main__":
    main()
