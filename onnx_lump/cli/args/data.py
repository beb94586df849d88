"""The data half of the ``data and verification`` flags: the calibration rows, the share
held out of them, the error metric, the padding mask and sequential fitting."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from onnx_lump.cli.checks import Context, Range, Unused
from onnx_lump.data.calibration import AUTO_MASK_INPUT
from onnx_lump.data.holdout import DEFAULT_HOLDOUT
from onnx_lump.types import METRICS, RMSE

__all__ = ["RANGES", "TITLE", "DataArgs", "add", "to_options", "unused_by_data", "validate"]

TITLE = "data and verification"  # shared with verify.py: one section of --help
RANGES: dict[str, Range] = {
    "holdout": (lambda v: 0 < v < 1, "in (0, 1)"),
    "seed": (lambda v: v >= 0, ">= 0"),
}
SPLIT = ("holdout", "seed")


@dataclass(frozen=True)
class DataArgs:
    """The calibration file, the share held out of its rows and the split's seed, the
    error metric, the padding mask input (None: none) and sequential fitting."""

    calib: Path | None = None
    holdout: float = DEFAULT_HOLDOUT
    seed: int = 0
    metric: str = RMSE
    mask_input: str | None = AUTO_MASK_INPUT
    sequential: bool = False


def add(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--calib",
        type=Path,
        metavar="FILE",
        help="representative inputs (.npz with one array per input, .npy, or .csv)",
    )
    group.add_argument(
        "--holdout",
        type=float,
        default=DEFAULT_HOLDOUT,
        metavar="F",
        help=f"share of the --calib rows held out from every fit, to stop refinement and to "
        f"measure the reported error on (default {DEFAULT_HOLDOUT:g}; --val replaces it)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default 0)")
    group.add_argument(
        "--metric",
        choices=METRICS,
        default=RMSE,
        help="how the error printed, searched on (--max-error) and audited measures a float "
        "output: rmse, its RMSE change relative to the original's spread (default); cosine, "
        "the mean over rows (the last axis: an embedding; each real position of a token "
        "output, --mask-input's padding left out) of 1 - cosine to the original's row. "
        "Label outputs keep their share of changed rows; refinement keeps its own loss",
    )
    group.add_argument(
        "--mask-input",
        default=AUTO_MASK_INPUT,
        metavar="NAME",
        help=f"--calib input whose zeros mark padding positions, left out of every fit "
        f"(default {AUTO_MASK_INPUT} where the model has it; 'none' for none)",
    )
    group.add_argument(
        "--sequential",
        action="store_true",
        help="fit each chain on its inputs in the model whose earlier chains are already "
        "compressed, onto the original chain's outputs (corrects what they changed)",
    )


def validate(args: argparse.Namespace) -> None:
    """No combination to check: the ranges are all."""


def unused_by_data(args: argparse.Namespace, context: Context) -> list[Unused]:
    """Without --calib, what reads calibration rows (and --metric, where nothing measures
    an error); with --val, the held-out split it replaces."""
    if context.calib:
        if context.val:
            return [(dest, "with --val, which replaces the held-out share") for dest in SPLIT]
        return []
    unused = [
        ("sequential", "without --calib: nothing is fitted on data"),
        ("mask_input", "without --calib: no calibration rows to mask"),
    ]
    if not context.searching and not context.val:
        unused.append(("metric", "without --calib or --val: no error is measured"))
    unused += [(dest, "without --calib (it splits the calibration rows)") for dest in SPLIT]
    return unused


def to_options(args: argparse.Namespace) -> DataArgs:
    mask = None if args.mask_input.lower() == "none" else args.mask_input
    return DataArgs(args.calib, args.holdout, args.seed, args.metric, mask, args.sequential)
