"""The ``lumping`` flags: eps and the options of the lumping methods (``lump``,
``lump+linear``), and --dump-ode, the ODE encoding they lump."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_lump.methods import Reduction
from onnx_lump.methods.lumping import DEFAULT_RIDGE, DEFAULT_SIMILARITY_WITH_DATA
from onnx_lump.ode.grouping import Linkage
from onnx_lump.ode.partition import Equivalence, Similarity

__all__ = ["TITLE", "add"]

TITLE = "lumping"


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
