"""The ``models`` flags: the model read, the file written and the method that shrinks it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from onnx_lump.cli.args import search
from onnx_lump.cli.checks import Range
from onnx_lump.errors import LumpError
from onnx_lump.methods import registry

__all__ = ["METHODS", "RANGES", "TITLE", "ModelArgs", "add", "to_options", "validate"]

TITLE = "models"
METHODS = tuple(registry.METHODS)
RANGES: dict[str, Range] = {}


@dataclass(frozen=True)
class ModelArgs:
    """The model read, the file written (the table, with --sweep) and the method's name."""

    input: Path
    output: Path
    method: str = "lump"


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


def validate(args: argparse.Namespace) -> None:
    """A search or a sweep needs a method with a knob (checked before --sweep's values,
    which are the knob's)."""
    if search.is_searching(args) and args.method == "exact":
        raise LumpError("method 'exact' has no knob to sweep or search")


def to_options(args: argparse.Namespace) -> ModelArgs:
    return ModelArgs(args.input, args.output, args.method)
