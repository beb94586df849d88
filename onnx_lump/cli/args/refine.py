"""The ``refinement`` flags: whether the reduced network is refined onto the original's
outputs, and the budget it is refined within."""

from __future__ import annotations

import argparse

from onnx_lump.data.refine import RefineOptions

__all__ = ["TITLE", "add"]

TITLE = "refinement (with --calib: on by default for every structured method but exact)"


def add(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--no-refine",
        action="store_true",
        help="do not refine the reduced network onto the original's outputs",
    )
    group.add_argument(
        "--refine-iters",
        type=int,
        default=RefineOptions.max_iters,
        metavar="N",
        help=f"at most N iterations per chain (default {RefineOptions.max_iters}, the "
        "benchmark's): the budget, counted in iterations so that results do not depend "
        "on machine load",
    )
    group.add_argument(
        "--refine-seconds",
        type=float,
        default=RefineOptions.max_seconds,
        metavar="S",
        help=f"a safety cap of S seconds of refinement for the whole model "
        f"(default {RefineOptions.max_seconds:g}); the summary says when it binds",
    )
