"""The command line's argparse parser: the flag groups with their defaults and help, usage
errors as one ``error:`` line (exit 2), and which options the user actually gave."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onnx_lump._version import __version__
from onnx_lump.cli.console import print_line
from onnx_lump.data.calibration import AUTO_MASK_INPUT
from onnx_lump.data.holdout import DEFAULT_HOLDOUT
from onnx_lump.data.refine import RefineOptions
from onnx_lump.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_NOT_MET,
    EXIT_OK,
    EXIT_SIGNAL_BASE,
)
from onnx_lump.methods import Reduction, Scope, registry
from onnx_lump.methods.lumping import DEFAULT_RIDGE, DEFAULT_SIMILARITY_WITH_DATA
from onnx_lump.ode.grouping import Linkage
from onnx_lump.ode.partition import Equivalence, Similarity
from onnx_lump.pipeline.quantize import QUANTIZE_SCHEMES
from onnx_lump.search.sweeps import plot_path
from onnx_lump.types import METRICS, RMSE

__all__ = [
    "EXIT_CODES",
    "METHODS",
    "explicit_options",
    "make_parser",
    "program_name",
]

METHODS = tuple(registry.METHODS)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line on stderr (exit 2), like every other error."""

    def error(self, message: str):
        print_line(f"error: {message} (see '{self.prog} --help')")
        raise SystemExit(EXIT_BAD_INPUT)


MODULE_PROG = "python -m onnx_lump"
SCRIPT_PROG = "onnx-lump"  # the console script (pyproject's [project.scripts])

EXIT_CODES = f"""exit codes:
  {EXIT_OK}      written (the model, or the table with --sweep)
  {EXIT_NOT_MET}      a target (--target-params, --max-error) or a tolerance (--atol, --rtol) not
         met: nothing written (no model, --report-json or --dump-ode)
  {EXIT_BAD_INPUT}      bad input (an option, the model, the data, an output path): one error: line
  {EXIT_INTERNAL}      internal error, a bug: one line asking for a report (the traceback with -v)
  {EXIT_SIGNAL_BASE}+N  stopped by signal N (130 SIGINT, 143 SIGTERM), staging files removed; 141
         (SIGPIPE) quietly when the reader of stdout goes early (| head)
stdout carries the result, stderr one line per message (error: ..., warning: ...)."""


def program_name(argv0: str | None = None) -> str:
    """How the user ran the command: ``onnx-lump`` for the console script (``onnx-lump``,
    ``onnx-lump.exe``, ``onnx-lump-script.py``), else ``python -m onnx_lump``."""
    if argv0 is None:
        argv0 = sys.argv[0] if sys.argv else ""
    return SCRIPT_PROG if Path(argv0).name.lower().startswith(SCRIPT_PROG) else MODULE_PROG


def make_parser(doc: str) -> argparse.ArgumentParser:
    """The parser, flag group by flag group; ``doc``'s first paragraph is the
    description and the rest the epilog, followed by the exit codes. Usage and examples
    name the command as it was run (:func:`program_name`)."""
    prog = program_name()
    epilog = doc.split("\n\n", 1)[1].rstrip("\n") + "\n\n" + EXIT_CODES
    parser = _Parser(
        prog=prog,
        description=doc.split("\n\n")[0],
        epilog=epilog.replace(MODULE_PROG, prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"onnx_lump {__version__}")
    models = parser.add_argument_group("models")
    models.add_argument("input", type=Path, help="ONNX model to reduce (never modified)")
    models.add_argument(
        "output", type=Path, help="where to write the reduced model (the table, with --sweep)"
    )
    models.add_argument(
        "--method",
        choices=METHODS,
        default="lump",
        help=", ".join(f"{name} (default)" if name == "lump" else name for name in METHODS),
    )

    lumping = parser.add_argument_group("lumping")
    lumping.add_argument(
        "--eps",
        type=float,
        default=0.0,
        help="tolerance: with partitions the L1 distance under which neurons merge; with a "
        "span reduction (the default with --calib) the share 0..1 of activation energy left "
        "out (default 0: exact merges only)",
    )
    lumping.add_argument(
        "--equivalence",
        choices=[e.value for e in Equivalence],
        default="backward",
        help="backward: match incoming dynamics (default, exact at eps 0); "
        "forward: match outgoing coefficients (ERODE's FDE)",
    )
    lumping.add_argument(
        "--linkage",
        choices=[k.value for k in Linkage],
        default="single",
        help="single: connected components of the relation (ERODE); complete: all pairs within eps",
    )
    lumping.add_argument(
        "--similarity",
        choices=[s.value for s in Similarity],
        default=None,
        help="compare neurons by weights, by pre-activations on --calib data, or by their "
        "activations up to an affine map (default: weights; with --calib: "
        f"{DEFAULT_SIMILARITY_WITH_DATA.value})",
    )
    lumping.add_argument(
        "--no-symmetries",
        action="store_true",
        help="compare raw rows only: no scale/sign canonical forms, no proportional merges",
    )
    lumping.add_argument(
        "--no-refit",
        action="store_true",
        help="with --calib, do not refit the next layer after each merge",
    )
    lumping.add_argument(
        "--ridge",
        type=float,
        default=DEFAULT_RIDGE,
        help="ridge strength of the refit, relative to the mean squared activation "
        "(default: chosen per layer by the error on the held-out calibration rows)",
    )
    lumping.add_argument(
        "--force-refit",
        action="store_true",
        help="refit a layer even from fewer fitting rows than it has inputs",
    )
    lumping.add_argument(
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
    lumping.add_argument(
        "--dump-ode",
        type=Path,
        metavar="FILE",
        help="write the ODE encoding of each chain; a .ode suffix writes ERODE syntax "
        "(polynomial chains only; with the model: not when nothing is written)",
    )

    refinement = parser.add_argument_group(
        "refinement (with --calib: on by default for every structured method but exact)"
    )
    refinement.add_argument(
        "--no-refine",
        action="store_true",
        help="do not refine the reduced network onto the original's outputs",
    )
    refinement.add_argument(
        "--refine-iters",
        type=int,
        default=RefineOptions.max_iters,
        metavar="N",
        help=f"at most N iterations per chain (default {RefineOptions.max_iters}, the "
        "benchmark's): the budget, counted in iterations so that results do not depend "
        "on machine load",
    )
    refinement.add_argument(
        "--refine-seconds",
        type=float,
        default=RefineOptions.max_seconds,
        metavar="S",
        help=f"a safety cap of S seconds of refinement for the whole model "
        f"(default {RefineOptions.max_seconds:g}); the summary says when it binds",
    )

    others = parser.add_argument_group("pruning and linear folding")
    others.add_argument(
        "--sparsity", type=float, default=0.5, help="share of weights to zero (default 0.5)"
    )
    others.add_argument(
        "--scope",
        choices=[s.value for s in Scope],
        default=None,
        help="magnitude and ec: per layer or one global threshold "
        "(default: layer for magnitude, global for ec)",
    )
    others.add_argument(
        "--tau",
        type=float,
        default=1.0,
        help="linear: fold neurons active on at least this share of --calib inputs "
        "(default 1: lossless on that data)",
    )

    auto = parser.add_argument_group("automatic choice of the knob (eps, sparsity or 1-tau)")
    auto.add_argument(
        "--target-params",
        type=float,
        metavar="F",
        help="keep at most the fraction F of the chains' parameters",
    )
    auto.add_argument(
        "--max-error",
        type=float,
        metavar="E",
        help="largest error of the outputs allowed, in --metric's units: relative RMSE "
        "(0.01 = 1%%), or with --metric cosine the mean 1 - cosine (0.01 = cosine 0.99)",
    )
    auto.add_argument(
        "--time-limit",
        type=float,
        metavar="S",
        help="stop the search after about S seconds of the run at the best point reached "
        "(says so; the final refinement gets what is left, at least a short pass): the "
        "model is still written and verified, or exit 1 if no point met the target",
    )
    auto.add_argument(
        "--val",
        type=Path,
        metavar="FILE",
        help="measure the error on these inputs (.npz may hold 'target') instead of --calib",
    )
    auto.add_argument(
        "--sweep",
        metavar="SPEC",
        help="list 'a,b,c' or range 'start:stop:step' of knob values: writes the size/error "
        "table to OUT (.csv or .json) instead of a model",
    )
    auto.add_argument(
        "--plot",
        type=plot_path,
        metavar="FILE.png",
        help="with --sweep, also draw the size/error curve to this picture (needs matplotlib)",
    )

    check = parser.add_argument_group("data and verification")
    check.add_argument(
        "--calib",
        type=Path,
        metavar="FILE",
        help="representative inputs (.npz with one array per input, .npy, or .csv)",
    )
    check.add_argument(
        "--holdout",
        type=float,
        default=DEFAULT_HOLDOUT,
        metavar="F",
        help=f"share of the --calib rows held out from every fit, to stop refinement and to "
        f"measure the reported error on (default {DEFAULT_HOLDOUT:g}; --val replaces it)",
    )
    check.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default 0)")
    check.add_argument(
        "--metric",
        choices=METRICS,
        default=RMSE,
        help="how the error printed, searched on (--max-error) and audited measures a float "
        "output: rmse, its RMSE change relative to the original's spread (default); cosine, "
        "the mean over rows (the last axis: an embedding; each real position of a token "
        "output, --mask-input's padding left out) of 1 - cosine to the original's row. "
        "Label outputs keep their share of changed rows; refinement keeps its own loss",
    )
    check.add_argument(
        "--mask-input",
        default=AUTO_MASK_INPUT,
        metavar="NAME",
        help=f"--calib input whose zeros mark padding positions, left out of every fit "
        f"(default {AUTO_MASK_INPUT} where the model has it; 'none' for none)",
    )
    check.add_argument(
        "--sequential",
        action="store_true",
        help="fit each chain on its inputs in the model whose earlier chains are already "
        "compressed, onto the original chain's outputs (corrects what they changed)",
    )
    check.add_argument(
        "--check",
        type=int,
        default=64,
        metavar="N",
        help="number of seeded random inputs to verify on when no --calib is given (default 64)",
    )
    check.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:D0,D1,...",
        help="shape of an input with dynamic dimensions for random inputs (repeatable; "
        "by default the batch is --check N, other dynamic dimensions 8, or the width of the "
        "layer that reads them)",
    )
    check.add_argument(
        "--providers",
        default="cpu",
        help="comma-separated onnxruntime execution providers, e.g. cpu or cuda (default cpu)",
    )
    check.add_argument(
        "--no-verify",
        action="store_true",
        help="write the model without running both models in onnxruntime to compare them",
    )
    check.add_argument(
        "--atol", type=float, help="fail and write nothing if max abs error exceeds this"
    )
    check.add_argument(
        "--rtol", type=float, help="fail and write nothing if max rel error exceeds this"
    )

    quantization = parser.add_argument_group("quantization")
    quantization.add_argument(
        "--quantize",
        choices=QUANTIZE_SCHEMES,
        default=None,
        help="int8: quantize the written model with onnxruntime's quantize_dynamic (int8 "
        "weights per output channel; Gemm rewritten as MatMul + Add first, which it "
        "quantizes); the file written, verified and measured, and every step of a "
        "--max-error search, is the quantized one",
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--report-json",
        type=Path,
        metavar="FILE",
        help="also write the report as JSON (with the model: not when nothing is written)",
    )
    verbosity = out.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only the final line")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log each stage")
    return parser


def explicit_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests the user gave on the command line, defaults aside: parse again with
    every default suppressed, so that only given options land in the namespace."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given))
