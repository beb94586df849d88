"""The ``pruning and linear folding`` flags: the options of the methods that are not
lumping (magnitude, wanda and ec pruning; linear folding)."""

from __future__ import annotations

import argparse

from onnx_lump.methods import Scope

__all__ = ["TITLE", "add"]

TITLE = "pruning and linear folding"


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
