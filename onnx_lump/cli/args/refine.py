"""The ``refinement`` flags: whether the reduced network is refined onto the original's
outputs, and the budget it is refined within."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from onnx_lump.cli.checks import Context, Range, Unused
from onnx_lump.data.refine import REFINE_WORK, RefineOptions
from onnx_lump.methods.registry import MethodSettings

__all__ = ["RANGES", "TITLE", "RefineArgs", "add", "to_options", "unused_by_refinement", "validate"]

TITLE = "refinement (with --calib: on by default for every structured method but exact)"
RANGES: dict[str, Range] = {
    "refine_iters": (lambda v: v >= 0, ">= 0"),
    "refine_seconds": (lambda v: v > 0, "> 0"),
}
BUDGET = ("refine_iters", "refine_seconds")


@dataclass(frozen=True)
class RefineArgs:
    """Whether to refine where the pipeline refines by default (False: --no-refine), and
    the budget: --refine-iters and --refine-seconds (the rest as the library's default)."""

    enabled: bool = True
    budget: RefineOptions = field(default_factory=RefineOptions)


def add(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--no-refine",
        action="store_true",
        help="do not refine the reduced network onto the original's outputs",
    )
    group.add_argument(
        "--refine-iters",
        type=int,
        default=None,
        metavar="N",
        help=f"at most N iterations per chain (default {RefineOptions.max_iters}, the "
        f"benchmark's, and fewer on a wide chain: at most {REFINE_WORK:.0e} multiply-adds "
        "each; an N given here holds whatever the width): the budget, counted in "
        "iterations so that results do not depend on machine load",
    )
    group.add_argument(
        "--refine-seconds",
        type=float,
        default=RefineOptions.max_seconds,
        metavar="S",
        help=f"a safety cap of S seconds of refinement for the whole model "
        f"(default {RefineOptions.max_seconds:g}); the summary says when it binds",
    )


def validate(args: argparse.Namespace) -> None:
    """No combination to check: the budget's ranges are all."""


def unused_by_refinement(args: argparse.Namespace, context: Context) -> list[Unused]:
    """The budget with --no-refine or a method that is not refined; all three without
    --calib, which refining needs."""
    if args.no_refine:
        return [(dest, "with --no-refine") for dest in BUDGET]
    if not context.spec.build(0.0, MethodSettings()).refined_by_default:
        return [(dest, f"with --method {context.method}, which is not refined") for dest in BUDGET]
    if not context.calib:
        return [(dest, "without --calib: refining needs data") for dest in (*BUDGET, "no_refine")]
    return []


def to_options(args: argparse.Namespace) -> RefineArgs:
    """The group's values (after :func:`~onnx_lump.cli.args.validate`: RefineOptions
    refuses a budget out of range with its own words)."""
    if args.refine_iters is None:
        budget = RefineOptions(max_seconds=args.refine_seconds)
    else:  # the user's count, not the library's default bound in work
        budget = RefineOptions(
            max_iters=args.refine_iters, max_seconds=args.refine_seconds, max_work=None
        )
    return RefineArgs(not args.no_refine, budget)
