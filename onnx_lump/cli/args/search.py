"""The ``automatic choice of the knob`` flags: the targets a search chooses the knob
for, its time limit and validation rows, and --sweep with its --plot."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from onnx_lump.cli.args import lumping
from onnx_lump.cli.checks import KNOB_RANGES, KNOBS, ONLY_THE_TABLE, Context, Range, Unused
from onnx_lump.errors import LumpError
from onnx_lump.search.sweeps import parse_knobs, plot_path

__all__ = [
    "RANGES",
    "TITLE",
    "SearchArgs",
    "add",
    "is_searching",
    "to_options",
    "unused_by_data",
    "unused_by_sweep",
    "validate",
]

TITLE = "automatic choice of the knob (eps, sparsity or 1-tau)"
RANGES: dict[str, Range] = {
    "max_error": (lambda v: v >= 0, ">= 0"),
    "target_params": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "time_limit": (lambda v: v > 0, "> 0"),
}


@dataclass(frozen=True)
class SearchArgs:
    """What the knob is chosen for: a parameter share (``target_params``) or an error
    budget (``max_error``), within ``time_limit`` seconds, measured on ``val`` rows where
    given; or a ``sweep`` of knob values, drawn to ``plot``."""

    target_params: float | None = None
    max_error: float | None = None
    time_limit: float | None = None
    val: Path | None = None
    sweep: str | None = None
    plot: Path | None = None

    @property
    def searching(self) -> bool:
        """A target to search for, or a sweep: the run, not the user, sets the knob."""
        return (
            self.sweep is not None or self.target_params is not None or self.max_error is not None
        )


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


def is_searching(args: argparse.Namespace) -> bool:
    """A target to search for (--target-params, --max-error) or a --sweep: the run, not
    the user, chooses the knob."""
    return to_options(args).searching


def validate(args: argparse.Namespace) -> None:
    """--sweep lists valid values of the method's knob, each one the lumping takes, and
    OUT is a table."""
    if args.sweep is None:
        return
    knobs = parse_knobs(args.sweep)
    if not knobs:
        raise LumpError(
            f"--sweep '{args.sweep}' lists no values; give 'a,b,c' or 'start:stop:step'"
        )
    knob_name = KNOBS[args.method][0]
    test, wanted = KNOB_RANGES[knob_name]
    for knob in knobs:
        if not math.isfinite(knob) or not test(knob):
            raise LumpError(f"--sweep value {knob:g} is not a valid {knob_name} ({wanted})")
    if args.output.suffix.lower() not in (".csv", ".json"):
        raise LumpError(
            f"with --sweep, OUT is the table: give a .csv or .json path, not '{args.output}'"
        )
    lumping.check_eps(args, "--sweep value", knobs)


def unused_by_sweep(args: argparse.Namespace, context: Context) -> list[Unused]:
    """The targets with --sweep, which writes only the table; --plot without it."""
    if context.sweep:
        return [(dest, ONLY_THE_TABLE) for dest in ("target_params", "max_error")]
    return [("plot", "without --sweep (it draws the sweep's curve)")]


def unused_by_data(args: argparse.Namespace, context: Context) -> list[Unused]:
    """--val without --calib or a search: nothing is held out or chosen on it."""
    if context.calib or context.searching:
        return []
    return [("val", "without --calib or a search")]


def to_options(args: argparse.Namespace) -> SearchArgs:
    return SearchArgs(
        args.target_params, args.max_error, args.time_limit, args.val, args.sweep, args.plot
    )
