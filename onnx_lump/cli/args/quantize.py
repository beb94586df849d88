"""The ``quantization`` flag: --quantize, the scheme the written file is quantized with."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from onnx_lump.cli.checks import Range
from onnx_lump.pipeline.quantize import QUANTIZE_SCHEMES

__all__ = ["RANGES", "TITLE", "QuantizeArgs", "add", "to_options", "validate"]

TITLE = "quantization"
RANGES: dict[str, Range] = {}


@dataclass(frozen=True)
class QuantizeArgs:
    """The scheme the written file is quantized with (None: not quantized)."""

    scheme: str | None = None


def add(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--quantize",
        choices=QUANTIZE_SCHEMES,
        default=None,
        help="int8: quantize the written model with onnxruntime's quantize_dynamic (int8 "
        "weights per output channel; Gemm rewritten as MatMul + Add first, which it "
        "quantizes); the file written, verified and measured, and every step of a "
        "--max-error search, is the quantized one",
    )


def validate(args: argparse.Namespace) -> None:
    """No combination to check."""


def to_options(args: argparse.Namespace) -> QuantizeArgs:
    return QuantizeArgs(args.quantize)
