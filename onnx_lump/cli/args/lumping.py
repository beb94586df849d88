"""The ``lumping`` flags: eps and the options of the lumping methods (``lump``,
``lump+linear``), and --dump-ode, the ODE encoding they lump."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from onnx_lump.cli.checks import ONLY_THE_TABLE, Context, Range, Unused, knob_chosen
from onnx_lump.errors import LumpError
from onnx_lump.methods import Reduction
from onnx_lump.methods.lumping import DEFAULT_RIDGE, DEFAULT_SIMILARITY_WITH_DATA, LumpOptions
from onnx_lump.methods.registry import METHODS
from onnx_lump.ode.grouping import Linkage
from onnx_lump.ode.partition import Equivalence, Similarity

__all__ = [
    "RANGES",
    "TITLE",
    "LumpingArgs",
    "add",
    "check_eps",
    "to_options",
    "unused_by_method",
    "unused_by_sweep",
    "unused_in_search",
    "validate",
]

TITLE = "lumping"
RANGES: dict[str, Range] = {
    "eps": (lambda v: v >= 0, ">= 0"),
    "ridge": (lambda v: v >= 0, ">= 0"),
}
# The options only a lumping method reads, and those only its refit on --calib data reads.
LUMPING_ONLY = ("eps", "equivalence", "linkage", "similarity", "no_symmetries", "reduction")
REFIT_ONLY = ("no_refit", "ridge", "force_refit")


@dataclass(frozen=True)
class LumpingArgs:
    """eps (the knob, where no search chooses it), every other lumping option as the
    library takes them, and where to dump the ODE encoding."""

    eps: float = 0.0
    options: LumpOptions = field(default_factory=LumpOptions)
    dump_ode: Path | None = None


def add(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--eps",
        type=float,
        default=0.0,
        help="tolerance: with partitions the L1 distance under which neurons merge; with a "
        "span reduction (the default with --calib) the share 0..1 of activation energy left "
        "out (default 0: exact merges only)",
    )
    group.add_argument(
        "--equivalence",
        choices=[e.value for e in Equivalence],
        default="backward",
        help="backward: match incoming dynamics (default, exact at eps 0); "
        "forward: match outgoing coefficients (ERODE's FDE)",
    )
    group.add_argument(
        "--linkage",
        choices=[k.value for k in Linkage],
        default="single",
        help="single: connected components of the relation (ERODE); complete: all pairs within eps",
    )
    group.add_argument(
        "--similarity",
        choices=[s.value for s in Similarity],
        default=None,
        help="compare neurons by weights, by pre-activations on --calib data, or by their "
        "activations up to an affine map (default: weights; with --calib: "
        f"{DEFAULT_SIMILARITY_WITH_DATA.value})",
    )
    group.add_argument(
        "--no-symmetries",
        action="store_true",
        help="compare raw rows only: no scale/sign canonical forms, no proportional merges",
    )
    group.add_argument(
        "--no-refit",
        action="store_true",
        help="with --calib, do not refit the next layer after each merge",
    )
    group.add_argument(
        "--ridge",
        type=float,
        default=DEFAULT_RIDGE,
        help="ridge strength of the refit, relative to the mean squared activation "
        "(default: chosen per layer by the error on the held-out calibration rows)",
    )
    group.add_argument(
        "--force-refit",
        action="store_true",
        help="refit a layer even from fewer fitting rows than it has inputs",
    )
    group.add_argument(
        "--reduction",
        choices=[r.value for r in Reduction],
        default=None,
        help="partition: one neuron per block of equivalent neurons (the default without "
        "--calib or with --similarity); span: with --calib, keep the neurons chosen by pivoted "
        "QR of the activations and fold the rest in as linear combinations (eps = share of "
        "activation energy left out, 0..1; the default with --calib); span-next: as many "
        "neurons as span keeps, chosen to explain the next layer's inputs; span-uniform: span "
        "keeping the same share of every layer's neurons (eps = the share left out)",
    )
    group.add_argument(
        "--dump-ode",
        type=Path,
        metavar="FILE",
        help="write the ODE encoding of each chain; a .ode suffix writes ERODE syntax "
        "(polynomial chains only; with the model: not when nothing is written)",
    )


def validate(args: argparse.Namespace) -> None:
    """A similarity other than weights needs --calib, and --eps must be a value the
    lumping takes (a sweep's values are checked with the sweep, see search.py)."""
    if args.similarity not in (None, Similarity.WEIGHTS.value) and args.calib is None:
        raise LumpError(f"--similarity {args.similarity} needs --calib")
    if args.sweep is None:
        check_eps(args, "--eps", [args.eps])


def check_eps(args: argparse.Namespace, given_as: str, knobs: list[float]) -> None:
    """Every eps in ``knobs`` is one the lumping takes (:class:`Lump` refuses a span share
    over 1; with --calib span is the default), checked before any work, not after a
    sweep's first points; ``given_as`` names where they came from in the error."""
    if not METHODS[args.method].is_lumping:
        return
    options = LumpOptions(similarity=args.similarity, reduction=args.reduction)
    for knob in knobs:
        try:
            options.method(knob, with_data=args.calib is not None)
        except LumpError as exc:
            raise LumpError(f"{given_as} {knob:g}: {exc}") from None


def unused_by_method(args: argparse.Namespace, context: Context) -> list[Unused]:
    """Every lumping option with another method; the refit's without --calib, and a span
    reduction's, which reads the activations."""
    if not context.spec.is_lumping:
        why = f"with --method {context.method} (a lumping option)"
        return [(dest, why) for dest in (*LUMPING_ONLY, *REFIT_ONLY)]
    if context.calib:
        return []
    unused = [(dest, "without --calib: the refit needs data") for dest in REFIT_ONLY]
    if args.reduction not in (None, "partition"):
        unused.append(("reduction", "without --calib: span reads the activations"))
    return unused


def unused_in_search(args: argparse.Namespace, context: Context) -> list[Unused]:
    """--eps when a search or sweep chooses it."""
    return knob_chosen(context, "eps")


def unused_by_sweep(args: argparse.Namespace, context: Context) -> list[Unused]:
    """--dump-ode with --sweep, which writes no model."""
    return [("dump_ode", ONLY_THE_TABLE)] if context.sweep else []


def to_options(args: argparse.Namespace) -> LumpingArgs:
    options = LumpOptions(
        equivalence=args.equivalence,
        linkage=args.linkage,
        symmetries=not args.no_symmetries,
        similarity=args.similarity,
        refit=not args.no_refit,
        ridge=args.ridge,
        reduction=args.reduction,
        force_refit=args.force_refit,
    )
    return LumpingArgs(args.eps, options, args.dump_ode)
