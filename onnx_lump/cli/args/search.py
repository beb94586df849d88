"""The ``automatic choice of the knob`` flags: the targets a search chooses the knob
for, its time limit and validation rows, and --sweep with its --plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_lump.search.sweeps import plot_path

__all__ = ["TITLE", "add"]

TITLE = "automatic choice of the knob (eps, sparsity or 1-tau)"


def add(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--target-params",
        type=float,
        metavar="F",
        help="keep at most the fraction F of the chains' parameters",
    )
    group.add_argument(
        "--max-error",
        type=float,
        metavar="E",
        help="largest error of the outputs allowed, in --metric's units: relative RMSE "
        "(0.01 = 1%%), or with --metric cosine the mean 1 - cosine (0.01 = cosine 0.99)",
    )
    group.add_argument(
        "--time-limit",
        type=float,
        metavar="S",
        help="stop the search after about S seconds of the run at the best point reached "
        "(says so; the final refinement gets what is left, at least a short pass): the "
        "model is still written and verified, or exit 1 if no point met the target",
    )
    group.add_argument(
        "--val",
        type=Path,
        metavar="FILE",
        help="measure the error on these inputs (.npz may hold 'target') instead of --calib",
    )
    group.add_argument(
        "--sweep",
        metavar="SPEC",
        help="list 'a,b,c' or range 'start:stop:step' of knob values: writes the size/error "
        "table to OUT (.csv or .json) instead of a model",
    )
    group.add_argument(
        "--plot",
        type=plot_path,
        metavar="FILE.png",
        help="with --sweep, also draw the size/error curve to this picture (needs matplotlib)",
    )
