"""The project's tools: the benchmarks, the fixture and demo generators, the timings.

A package, run from the project root as ``python -m tools.<name>`` (for example
``python -m tools.bench --quick``): its modules import each other as ``tools.<name>`` and
import onnx_lump normally, which ``-m`` finds in the checkout (the current folder comes
first on the path). A child Python process that imports either gets :func:`child_env`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ROOT", "child_env"]

ROOT = Path(__file__).resolve().parent.parent  # the checkout: onnx_lump/ and tools/


def child_env(root: Path = ROOT) -> dict[str, str]:
    """The environment for a child Python process that imports ``tools`` or onnx_lump from
    ``root``: this process's, with ``root`` first on ``PYTHONPATH``."""
    paths = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
