"""The ``models`` flags: the model read, the file written and the method that shrinks it."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_lump.methods import registry

__all__ = ["METHODS", "TITLE", "add"]

TITLE = "models"
METHODS = tuple(registry.METHODS)


def add(group: argparse._ActionsContainer) -> None:
    group.add_argument("input", type=Path, help="ONNX model to reduce (never modified)")
    group.add_argument(
        "output", type=Path, help="where to write the reduced model (the table, with --sweep)"
    )
    group.add_argument(
        "--method",
        choices=METHODS,
        default="lump",
        help=", ".join(f"{name} (default)" if name == "lump" else name for name in METHODS),
    )
