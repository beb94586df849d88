"""The ``pruning and linear folding`` flags: the options of the methods that are not
lumping (magnitude, wanda and ec pruning; linear folding)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from onnx_lump.cli.checks import Context, Range, Unused, knob_chosen
from onnx_lump.methods import Scope

__all__ = [
    "RANGES",
    "TITLE",
    "PruningArgs",
    "add",
    "to_options",
    "unused_by_method",
    "unused_in_search",
    "validate",
]

TITLE = "pruning and linear folding"
RANGES: dict[str, Range] = {
    "sparsity": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "tau": (lambda v: 0 < v <= 1, "in (0, 1]"),
}
# Which methods read each option (MethodSpec.reads), as the warning says to the others.
READ_BY = {
    "sparsity": "a pruning option",
    "scope": "magnitude and ec only",
    "tau": "linear folding only",
}


@dataclass(frozen=True)
class PruningArgs:
    """The pruning methods' sparsity (their knob) and scope (None: each method's own),
    and linear folding's tau."""

    sparsity: float = 0.5
    scope: Scope | None = None
    tau: float = 1.0


def add(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--sparsity", type=float, default=0.5, help="share of weights to zero (default 0.5)"
    )
    group.add_argument(
        "--scope",
        choices=[s.value for s in Scope],
        default=None,
        help="magnitude and ec: per layer or one global threshold "
        "(default: layer for magnitude, global for ec)",
    )
    group.add_argument(
        "--tau",
        type=float,
        default=1.0,
        help="linear: fold neurons active on at least this share of --calib inputs "
        "(default 1: lossless on that data)",
    )


def validate(args: argparse.Namespace) -> None:
    """No combination to check: the ranges are all."""


def unused_by_method(args: argparse.Namespace, context: Context) -> list[Unused]:
    """Each option with a method that does not read it."""
    why = f"with --method {context.method}"
    return [
        (dest, f"{why} ({who})") for dest, who in READ_BY.items() if dest not in context.spec.reads
    ]


def unused_in_search(args: argparse.Namespace, context: Context) -> list[Unused]:
    """--sparsity or --tau when a search or sweep chooses it."""
    return [*knob_chosen(context, "sparsity"), *knob_chosen(context, "tau")]


def to_options(args: argparse.Namespace) -> PruningArgs:
    scope = Scope(args.scope) if args.scope else None
    return PruningArgs(args.sparsity, scope, args.tau)
