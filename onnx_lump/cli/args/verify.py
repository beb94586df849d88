"""The verification half of the ``data and verification`` flags: how the written file is
run against the original (random inputs and their shapes, execution providers) and the
tolerances it is judged by."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from onnx_lump.cli.checks import ONLY_THE_TABLE, Context, Range, Unused, parse_shapes
from onnx_lump.errors import LumpError

__all__ = [
    "RANGES",
    "TITLE",
    "VerifyArgs",
    "add",
    "to_options",
    "unused_by_data",
    "unused_by_sweep",
    "validate",
]

TITLE = "data and verification"  # shared with data.py: one section of --help
RANGES: dict[str, Range] = {
    "atol": (lambda v: v >= 0, ">= 0"),
    "rtol": (lambda v: v >= 0, ">= 0"),
    "check": (lambda v: v >= 1, ">= 1"),
}


@dataclass(frozen=True)
class VerifyArgs:
    """How the written file is run against the original: whether at all (``verify``),
    on ``n_check`` random inputs of ``input_shapes`` where no --calib is given, on which
    onnxruntime ``providers``, and the tolerances it must meet."""

    n_check: int = 64
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    providers: tuple[str, ...] = ("cpu",)
    verify: bool = True
    atol: float | None = None
    rtol: float | None = None


def add(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--check",
        type=int,
        default=64,
        metavar="N",
        help="number of seeded random inputs to verify on when no --calib is given (default 64)",
    )
    group.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:D0,D1,...",
        help="shape of an input with dynamic dimensions for random inputs (repeatable; "
        "by default the batch is --check N, other dynamic dimensions 8, or the width of the "
        "layer that reads them)",
    )
    group.add_argument(
        "--providers",
        default="cpu",
        help="comma-separated onnxruntime execution providers, e.g. cpu or cuda (default cpu)",
    )
    group.add_argument(
        "--no-verify",
        action="store_true",
        help="write the model without running both models in onnxruntime to compare them",
    )
    group.add_argument(
        "--atol", type=float, help="fail and write nothing if max abs error exceeds this"
    )
    group.add_argument(
        "--rtol", type=float, help="fail and write nothing if max rel error exceeds this"
    )


def validate(args: argparse.Namespace) -> None:
    """The tolerances need the check; --providers lists at least one provider."""
    if args.no_verify and (args.atol is not None or args.rtol is not None):
        raise LumpError("--atol/--rtol need the check that --no-verify skips; drop one of them")
    if not [p for p in args.providers.split(",") if p.strip()]:
        raise LumpError("--providers lists no execution provider; give e.g. cpu or cuda")


def unused_by_sweep(args: argparse.Namespace, context: Context) -> list[Unused]:
    """The check and its tolerances with --sweep, which writes only the table."""
    if not context.sweep:
        return []
    return [(dest, ONLY_THE_TABLE) for dest in ("atol", "rtol", "no_verify")]


def unused_by_data(args: argparse.Namespace, context: Context) -> list[Unused]:
    """The random check's options with --calib, whose held-out rows it runs on."""
    if not context.calib:
        return []
    return [
        ("check", "with --calib: the check runs on held-out calibration rows"),
        ("input_shape", "with --calib: shapes come from the data"),
    ]


def to_options(args: argparse.Namespace) -> VerifyArgs:
    """The group's values; a malformed --input-shape raises (the command line parses
    them after the model's pre-flight checks, which refuse one first)."""
    providers = tuple(p.strip() for p in args.providers.split(",") if p.strip())
    return VerifyArgs(
        args.check,
        parse_shapes(args.input_shape),
        providers,
        not args.no_verify,
        args.atol,
        args.rtol,
    )
