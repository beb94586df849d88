"""The verification half of the ``data and verification`` flags: how the written file is
run against the original (random inputs and their shapes, execution providers) and the
tolerances it is judged by."""

from __future__ import annotations

import argparse

__all__ = ["TITLE", "add"]

TITLE = "data and verification"  # shared with data.py: one section of --help


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
