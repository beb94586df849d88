"""Shrink the dense chains of an ONNX model: merge neurons with epsilon-equivalent dynamics
(or prune, or fold linear neurons), then check the result with onnxruntime.

Reads IN, writes a smaller OUT (everything outside the dense chains as it was), runs both
on the same inputs and prints widths, parameters and output errors. With --atol/--rtol,
or a --target-params/--max-error target that cannot be met, it writes nothing and exits 1.
With --calib, a seeded 20% of its rows is held out: lumping refits each next layer and
refines the reduced network on the other rows, and every error printed or searched on is
measured by onnxruntime on the held-out rows, on the written file.

examples:
  python -m onnx_lump model.onnx model.lumped.onnx --eps 0.05
  python -m onnx_lump model.onnx small.onnx --calib train.npz --max-error 0.01
  python -m onnx_lump model.onnx small.onnx --calib train.npz --target-params 0.3
  python -m onnx_lump model.onnx small.onnx --calib train.npz --eps 1 --refine-iters 3000
  python -m onnx_lump model.onnx table.csv --calib train.npz --sweep 0:2:0.1
  python -m onnx_lump model.onnx pruned.onnx --method wanda --sparsity 0.5 --calib train.npz
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import re
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx

from onnx_lump import __version__
from onnx_lump.api import Report, compress
from onnx_lump.data.calibration import (
    MAX_RANDOM_BYTES,
    load_inputs,
    random_inputs,
    random_inputs_bytes,
)
from onnx_lump.data.holdout import DEFAULT_HOLDOUT, holdout_error, split_calibration
from onnx_lump.data.refine import RefineOptions
from onnx_lump.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_NOT_MET,
    EXIT_OK,
    EXIT_SIGNAL_BASE,
    LumpError,
)
from onnx_lump.graph.chains import scan_graph
from onnx_lump.graph.inventory import comparison_table, take_inventory
from onnx_lump.graph.modelio import check_model_file, check_paths, load_model, stage_model
from onnx_lump.graph.rewrite import import_graph
from onnx_lump.methods import (
    EliminationCompensation,
    Exact,
    LinearFolding,
    Lump,
    Magnitude,
    Method,
    Reduction,
    Scope,
    Sequence,
    Wanda,
)
from onnx_lump.methods.lumping import DEFAULT_RIDGE, DEFAULT_SIMILARITY_WITH_DATA
from onnx_lump.ode.equivalence import Equivalence, PartitionOptions, Similarity
from onnx_lump.ode.grouping import Linkage
from onnx_lump.plotting import plot_path, plot_sweep
from onnx_lump.runtime import resolve_providers
from onnx_lump.search import Evaluator, bisect, parse_knobs, sweep, write_table
from onnx_lump.verify import compare_files

__all__ = ["build_parser", "main"]

METHODS = ("lump", "exact", "magnitude", "wanda", "ec", "linear", "lump+linear")
# The knob each method trades size for accuracy with (larger = smaller), and its limit.
_KNOBS = {
    "lump": ("eps", None),
    "lump+linear": ("eps", None),
    "magnitude": ("sparsity", 0.999),
    "wanda": ("sparsity", 0.999),
    "ec": ("sparsity", 0.999),
    "linear": ("1-tau", 0.999),
}


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line on stderr (exit 2), like every other error."""

    def error(self, message: str):
        _message(f"error: {message} (see '{self.prog} --help')")
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m onnx_lump",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
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
        help="lump (default), exact, magnitude, wanda, ec, linear, lump+linear",
    )

    lumping = parser.add_argument_group("lumping")
    lumping.add_argument(
        "--eps",
        type=float,
        default=0.0,
        help="tolerance: L1 distance under which neurons merge (default 0: exact merges only)",
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
        default=Reduction.PARTITION.value,
        help="partition: one neuron per block of equivalent neurons (default); span: with "
        "--calib, keep the neurons chosen by pivoted QR of the activations and fold the rest "
        "in as linear combinations (eps = share of activation energy left out, 0..1)",
    )
    lumping.add_argument(
        "--dump-ode",
        type=Path,
        metavar="FILE",
        help="write the ODE encoding of each chain; a .ode suffix writes ERODE syntax "
        "(polynomial chains only)",
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
        help=f"at most N L-BFGS iterations (default {RefineOptions.max_iters})",
    )
    refinement.add_argument(
        "--refine-seconds",
        type=float,
        default=RefineOptions.max_seconds,
        metavar="S",
        help=f"at most S seconds of refinement for the whole model "
        f"(default {RefineOptions.max_seconds:g})",
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
        help="largest relative RMSE increase of the outputs allowed (0.01 = 1%%)",
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
        help="shape of an input with dynamic dimensions for random inputs (repeatable)",
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

    out = parser.add_argument_group("output")
    out.add_argument(
        "--report-json", type=Path, metavar="FILE", help="also write the report as JSON"
    )
    verbosity = out.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only the final line")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log each stage")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` and return the exit code; never raises SystemExit.

    0: written; 1: a target or tolerance not met (nothing written); 2: bad input (options,
    model or data), one ``error:`` line on stderr; 3: internal error (a bug: one line
    asking for a report, the traceback only with -v); 128+N: stopped by signal N.
    """
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    args.given_options = _explicit_options(parser, argv)
    with _stderr_logging(args.verbose), _one_line_warnings(), _signals_raise():
        try:
            return _run(args)
        except LumpError as exc:
            _message(f"error: {exc}")
            return EXIT_BAD_INPUT
        except _Stopped as exc:
            _message(f"error: stopped by {exc.name}")
            return EXIT_SIGNAL_BASE + exc.signum
        except KeyboardInterrupt:
            _message("error: stopped by SIGINT")
            return EXIT_SIGNAL_BASE + signal.SIGINT
        except MemoryError:
            _message("error: out of memory; try fewer --calib rows or a smaller --check")
            return EXIT_BAD_INPUT
        except Exception as exc:
            if args.verbose:
                traceback.print_exc(file=sys.stderr)
            _message(
                f"error: internal error ({type(exc).__name__}: {exc}); "
                "please report it with -v output"
            )
            return EXIT_INTERNAL


def _message(text: str) -> None:
    """One line on stderr, whatever line breaks the text carries (onnx and onnxruntime
    messages often span several)."""
    print(re.sub(r"\s*\n\s*", " ", str(text).strip()), file=sys.stderr)


def _explicit_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
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


class _StderrHandler(logging.Handler):
    # Looks sys.stderr up at each record, so that redirections made after setup hold.
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _message(self.format(record))
        except Exception:  # logging must never take the command down
            self.handleError(record)


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


@contextlib.contextmanager
def _stderr_logging(verbose: bool) -> Iterator[None]:
    """The package's log records on stderr for the duration of one run: warnings as
    ``warning: ...`` lines; with -v every stage as ``[INFO] module: ...``."""
    logger = logging.getLogger("onnx_lump")
    handler = _StderrHandler(logging.INFO if verbose else logging.WARNING)
    handler.setFormatter(
        logging.Formatter("[%(levelname)s] %(name)s: %(message)s") if verbose else _LevelFormatter()
    )
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(handler.level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Python warnings (numpy's overflow, deprecations) as one ``warning:`` line each."""

    def show(message, category, filename, lineno, file=None, line=None):
        _message(f"warning: {category.__name__}: {message}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


class _Stopped(BaseException):
    """SIGTERM or SIGHUP arrived; a BaseException so that no ``except Exception`` in the
    pass swallows it, while every ``finally`` (staging folders) still runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`_Stopped` so that cleanup runs; the default
    action would end the process on the spot and leave staging files behind."""

    def stop(signum, frame):
        signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the cleanup
        raise _Stopped(signum)

    names = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    previous = {}
    try:
        for name in names:
            number = getattr(signal, name)
            previous[number] = signal.signal(number, stop)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def build_method(name: str, knob: float, args: argparse.Namespace) -> Method:
    """The method ``name`` with its knob set to ``knob`` and the rest from ``args``."""
    if name in ("lump", "lump+linear"):
        default = DEFAULT_SIMILARITY_WITH_DATA if args.calib else Similarity.WEIGHTS
        similarity = Similarity(args.similarity) if args.similarity else default
        options = PartitionOptions(
            knob,
            Equivalence(args.equivalence),
            Linkage(args.linkage),
            not args.no_symmetries,
            similarity,
        )
        lump = Lump(
            options,
            refit=not args.no_refit,
            ridge=args.ridge,
            reduction=Reduction(args.reduction),
            force_refit=args.force_refit,
        )
        return Sequence(lump, LinearFolding(args.tau)) if name == "lump+linear" else lump
    if name == "exact":
        return Exact()
    if name == "magnitude":
        return Magnitude(knob, Scope(args.scope or Scope.LAYER.value))
    if name == "wanda":
        return Wanda(knob)
    if name == "ec":
        return EliminationCompensation(knob, Scope(args.scope or Scope.GLOBAL.value))
    return LinearFolding(1.0 - knob)


# Range of every numeric option: (test, what the test says). None values are "not given".
_RANGES = {
    "eps": (lambda v: v >= 0, ">= 0"),
    "atol": (lambda v: v >= 0, ">= 0"),
    "rtol": (lambda v: v >= 0, ">= 0"),
    "max_error": (lambda v: v >= 0, ">= 0"),
    "target_params": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "ridge": (lambda v: v >= 0, ">= 0"),
    "check": (lambda v: v >= 1, ">= 1"),
    "sparsity": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "tau": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "refine_iters": (lambda v: v >= 0, ">= 0"),
    "refine_seconds": (lambda v: v > 0, "> 0"),
    "holdout": (lambda v: 0 < v < 1, "in (0, 1)"),
    "seed": (lambda v: v >= 0, ">= 0"),
}
# The range of each method's knob, for --sweep values (1 - tau for linear).
_KNOB_RANGES = {
    "eps": (lambda v: v >= 0, ">= 0"),
    "sparsity": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "1-tau": (lambda v: 0 <= v < 1, "in [0, 1)"),
}
LUMPING_METHODS = ("lump", "lump+linear")
PRUNING_METHODS = ("magnitude", "wanda", "ec")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _searching(args: argparse.Namespace) -> bool:
    return args.sweep is not None or args.target_params is not None or args.max_error is not None


def _validate(args: argparse.Namespace) -> None:
    """Refuse bad option values and combinations before any work; warnings about options
    that have no effect are collected in ``args.option_warnings`` (printed once the
    inputs have been checked too, see :func:`_preflight`)."""
    for dest, (test, wanted) in _RANGES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if not math.isfinite(value):
            raise LumpError(f"{_flag(dest)} must be a finite number, got {value}")
        if not test(value):
            raise LumpError(f"{_flag(dest)} must be {wanted}, got {value:g}")
    if _searching(args) and args.method == "exact":
        raise LumpError("method 'exact' has no knob to sweep or search")
    if args.similarity not in (None, Similarity.WEIGHTS.value) and args.calib is None:
        raise LumpError(f"--similarity {args.similarity} needs --calib")
    if getattr(args, "no_verify", False) and (args.atol is not None or args.rtol is not None):
        raise LumpError("--atol/--rtol need the check that --no-verify skips; drop one of them")
    if not [p for p in args.providers.split(",") if p.strip()]:
        raise LumpError("--providers lists no execution provider; give e.g. cpu or cuda")
    if args.sweep is not None:
        _validate_sweep(args)
    args.option_warnings = _no_effect(args)


def _validate_sweep(args: argparse.Namespace) -> None:
    knobs = parse_knobs(args.sweep)
    if not knobs:
        raise LumpError(
            f"--sweep '{args.sweep}' lists no values; give 'a,b,c' or 'start:stop:step'"
        )
    knob_name = _KNOBS[args.method][0]
    test, wanted = _KNOB_RANGES[knob_name]
    for knob in knobs:
        if not math.isfinite(knob) or not test(knob):
            raise LumpError(f"--sweep value {knob:g} is not a valid {knob_name} ({wanted})")
    if args.output.suffix.lower() not in (".csv", ".json"):
        raise LumpError(
            f"with --sweep, OUT is the table: give a .csv or .json path, not '{args.output}'"
        )


def _no_effect(args: argparse.Namespace) -> list[str]:
    """One warning per option the user gave that this run would silently ignore."""
    given = getattr(args, "given_options", set())
    method, calib, searching = args.method, args.calib is not None, _searching(args)
    knob_name = _KNOBS.get(method, ("", None))[0]
    unused: list[tuple[str, str]] = []  # (dest, why)
    lumping_only = ("eps", "equivalence", "linkage", "similarity", "no_symmetries", "reduction")
    needs_data = ("no_refit", "ridge", "force_refit")
    for dest in (*lumping_only, *needs_data):
        if method not in LUMPING_METHODS:
            unused.append((dest, f"with --method {method} (a lumping option)"))
        elif dest in needs_data and not calib:
            unused.append((dest, "without --calib: the refit needs data"))
    if method in LUMPING_METHODS and not calib and getattr(args, "reduction", None) == "span":
        unused.append(("reduction", "without --calib: span reads the activations"))
    if method not in PRUNING_METHODS:
        unused.append(("sparsity", f"with --method {method} (a pruning option)"))
    if method not in ("magnitude", "ec"):
        unused.append(("scope", f"with --method {method} (magnitude and ec only)"))
    if method not in ("linear", "lump+linear"):
        unused.append(("tau", f"with --method {method} (linear folding only)"))
    if searching:  # the search sets the knob itself
        knob_dest = {"eps": "eps", "sparsity": "sparsity", "1-tau": "tau"}.get(knob_name)
        if knob_dest and method in (LUMPING_METHODS if knob_dest == "eps" else (method,)):
            unused.append((knob_dest, f"with a search or sweep, which chooses {knob_name}"))
    if args.sweep is not None:
        for dest in ("target_params", "max_error", "atol", "rtol", "no_verify"):
            unused.append((dest, "with --sweep, which writes only the table"))
        for dest in ("dump_ode", "report_json"):
            unused.append((dest, "with --sweep, which writes only the table"))
    else:
        unused.append(("plot", "without --sweep (it draws the sweep's curve)"))
    if calib:
        unused.append(("check", "with --calib: the check runs on held-out calibration rows"))
        unused.append(("input_shape", "with --calib: shapes come from the data"))
        if args.val is not None:
            unused.append(("holdout", "with --val, which replaces the held-out share"))
            unused.append(("seed", "with --val, which replaces the held-out share"))
    else:
        for dest in ("holdout", "seed"):
            unused.append((dest, "without --calib (it splits the calibration rows)"))
        if not searching:
            unused.append(("val", "without --calib or a search"))
    refine = ("refine_iters", "refine_seconds")
    if getattr(args, "no_refine", False):
        unused += [(d, "with --no-refine") for d in refine]
    elif method in ("exact", *PRUNING_METHODS):
        unused += [(d, f"with --method {method}, which is not refined") for d in refine]
    elif not calib:
        unused += [(d, "without --calib: refining needs data") for d in (*refine, "no_refine")]
    seen, messages = set(), []
    for dest, why in unused:
        if dest in given and dest not in seen:
            seen.add(dest)
            messages.append(f"{_flag(dest)} has no effect {why}")
    return messages


def _preflight(args: argparse.Namespace, model: onnx.ModelProto) -> None:
    """Checks that need the model, all before any work: onnx.checker, the chains'
    weights, --dump-ode's syntax, --input-shape names and the size of the random check.
    Then prints the option warnings, so that a refused run shows only its error."""
    try:
        onnx.checker.check_model(str(args.input))  # by path: external data and > 2 GB work
    except Exception as exc:  # onnx raises ValidationError, and others for odd files
        raise LumpError(f"'{args.input}' fails onnx.checker: {exc}") from exc
    for index, chain in enumerate(scan_graph(import_graph(model)).chains):
        for layer in chain.layers:
            if layer.in_features == 0 or layer.out_features == 0:
                raise LumpError(
                    f"layer '{layer.name}' of chain {index} has zero width "
                    f"({layer.in_features}->{layer.out_features}); fix the model first"
                )
            if not layer.all_finite():  # one layer at a time, memory-mapped when on disk
                raise LumpError(
                    f"layer '{layer.name}' of chain {index} has NaN or infinite weights; "
                    "nothing meaningful can be merged or checked"
                )
        if args.dump_ode is not None and args.dump_ode.suffix == ".ode":
            for position, activation in enumerate(chain.activations):
                if not activation.is_polynomial:
                    raise LumpError(
                        f"--dump-ode {args.dump_ode}: ERODE syntax needs polynomial chains, "
                        f"but layer {position + 1} of chain {index} uses "
                        f"{activation.describe()}; use another suffix to dump it as text"
                    )
    names = {v.name for v in model.graph.input} - {t.name for t in model.graph.initializer}
    shapes = _parse_shapes(args.input_shape)
    warnings_ = list(getattr(args, "option_warnings", []))
    for name in sorted(set(shapes) - names):
        warnings_.append(
            f"--input-shape {name}: the model has no input '{name}' "
            f"(inputs: {', '.join(sorted(names))}); ignored"
        )
    if args.calib is None and not getattr(args, "no_verify", False):
        needed = random_inputs_bytes(model, args.check, shapes)
        if needed > MAX_RANDOM_BYTES:
            raise LumpError(
                f"--check {args.check} would draw {needed / 2**30:.1f} GiB of random inputs "
                f"(limit {MAX_RANDOM_BYTES / 2**30:.0f} GiB); lower --check or give --calib"
            )
    for text in warnings_:
        _message(f"warning: {text}")


def _initial_knob(args: argparse.Namespace) -> float:
    if args.method in ("lump", "lump+linear"):
        return args.eps
    if args.method == "linear":
        return 1.0 - args.tau
    return args.sparsity


def _run(args: argparse.Namespace) -> int:
    _validate(args)
    # Nothing written may be something read, or another output (symlinks and hard links
    # included), before any work starts.
    check_paths(
        [args.input, args.calib, args.val],
        [args.output, args.dump_ode, args.report_json, args.plot],
        models=[] if args.sweep else [args.output],
    )
    loaded = load_model(args.input)
    calibration = load_inputs(args.calib, loaded.model) if args.calib else None
    _preflight(args, loaded.model)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    knob_name, limit = _KNOBS.get(args.method, ("", None))

    validation, targets = None, None
    if args.val is not None:
        validation, targets = load_inputs(args.val, loaded.model, with_targets=True)
    verify_options = {
        "verify": False,  # the written file is verified below, not the model in memory
        "n_check": args.check,
        "input_shapes": _parse_shapes(args.input_shape),
        "atol": args.atol,
        "rtol": args.rtol,
    }
    if _searching(args):
        evaluate = _evaluator(args, loaded.model, calibration, validation, targets, providers)
        if args.sweep:
            points = sweep(evaluate, parse_knobs(args.sweep))
            write_table(points, args.output, knob_name)
            if args.plot is not None:
                plot_sweep(points, args.plot, knob_name, f"{args.method} (labels: {knob_name})")
            print(f"DONE | {len(points)} points of {args.method} | wrote {args.output}")
            return EXIT_OK
        knob, point, met = bisect(
            evaluate, _knob_limit(args, limit), args.target_params, args.max_error
        )
        target_line = _target_line(knob_name, point, met, args)
        if not args.quiet:
            print(target_line)
        if not met:
            print(f"FAILED | {target_line} | nothing written")
            return EXIT_NOT_MET
        reduced, report = evaluate.finish(knob, **verify_options)
    else:
        reduced, report = compress(
            loaded.model,
            build_method(args.method, _initial_knob(args), args),
            calibration=calibration,
            validation=validation,
            validation_targets=targets,
            holdout=args.holdout,
            seed=args.seed,
            refine=_refine_option(args),
            providers=providers,
            **verify_options,
        )
    feeds = None
    if not args.no_verify:
        feeds = _verification_feeds(args, loaded.model, calibration, validation, targets)
    # Stage beside OUT, check and run the staged file itself, and only then move it into
    # place: a file that fails is never written, and what passed is what the user gets.
    with stage_model(reduced, args.output, external_data=loaded.external_data) as staged:
        check_model_file(staged.path)
        if calibration is not None:  # the error printed is the written file's
            split = split_calibration(calibration, args.holdout, args.seed, validation, targets)
            report.holdout_error = holdout_error(
                args.input, staged.path, split, resolve_providers(providers)
            )
        if feeds is not None:
            report.verification = compare_files(
                args.input,
                staged.path,
                feeds,
                resolve_providers(providers),
                atol=args.atol,
                rtol=args.rtol,
            )
        if not args.quiet:
            print(report.summary())
        if args.dump_ode is not None:
            _write_text(args.dump_ode, _ode_dump(report, erode=args.dump_ode.suffix == ".ode"))
        if args.report_json is not None:
            _write_text(args.report_json, report.to_json() + "\n")
        verdict = _headline(report, args)
        if report.verification is not None and not report.verification:
            print(f"FAILED | {verdict} | tolerance exceeded, nothing written")
            return EXIT_NOT_MET
        staged.commit()
    if not args.quiet:
        print(_inventory_table(loaded.model, args.input, reduced, args.output))
    print(f"{_success_word(args)} | {verdict} | wrote {args.output}")
    return EXIT_OK


def _verification_feeds(args, model, calibration, validation, targets) -> dict:
    """The inputs compress would verify on: the held-out rows of --calib (or --val),
    else --check seeded random inputs."""
    if calibration is not None:
        split = split_calibration(calibration, args.holdout, args.seed, validation, targets)
        return split.holdout
    return random_inputs(model, args.check, _parse_shapes(args.input_shape))


def _refine_option(args: argparse.Namespace) -> RefineOptions | bool | None:
    """False with --no-refine; else the budget (compress turns it on where it applies)."""
    if args.no_refine:
        return False
    options = RefineOptions(
        max_iters=args.refine_iters,
        max_seconds=args.refine_seconds,
        progress=not args.quiet,
    )
    method = build_method(args.method, 0.0, args)
    if args.calib is None or not method.structured or method.lossless:
        return None  # compress's default: nothing to refine here
    return options


def _knob_limit(args: argparse.Namespace, limit: float | None) -> float | None:
    """The span reduction's eps is a share of activation energy: at most 1."""
    if args.method in LUMPING_METHODS and args.reduction == Reduction.SPAN.value:
        return 1.0
    return limit


def _evaluator(args, model, calibration, validation, targets, providers) -> Evaluator:
    method = build_method(args.method, 0.0, args)
    if method.needs_data and calibration is None:
        raise LumpError(f"method '{args.method}' needs calibration inputs (--calib)")
    return Evaluator(
        model,
        lambda knob: build_method(args.method, knob, args),
        calibration,
        validation=validation,
        validation_targets=targets,
        holdout=args.holdout,
        seed=args.seed,
        refine=_refine_option(args),
        providers=providers,
        progress=_search_progress(args),
    )


def _search_progress(args: argparse.Namespace):
    """A callback showing each search or sweep step on a tqdm bar (stderr, TTY only)."""
    if args.quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    total = len(parse_knobs(args.sweep)) if args.sweep else None
    bar = tqdm(total=total, desc="sweep" if args.sweep else "search", unit="step", leave=False)

    def show(point) -> None:
        bar.update(1)
        bar.set_postfix_str(
            f"knob {point.knob:.4g}: {100 * point.retained:.1f}% kept, "
            f"error {100 * point.error:.3g}%"
        )

    return show


def _target_line(knob_name: str, point, met: bool, args) -> str:
    wanted = []
    if args.target_params is not None:
        wanted.append(f"params <= {100 * args.target_params:g}%")
    if args.max_error is not None:
        wanted.append(f"error <= {100 * args.max_error:g}%")
    status = "met" if met else "NOT met"
    return (
        f"search: {knob_name}={point.knob:.6g} keeps {100 * point.retained:.1f}% of the "
        f"parameters at error {100 * point.error:.3g}% ({' and '.join(wanted)}: {status})"
    )


def _parse_shapes(specs: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for spec in specs:
        name, _, dims = spec.rpartition(":")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise LumpError(f"--input-shape '{spec}' is not NAME:D0,D1,... with integers") from None
        if not name or any(d < 1 for d in shapes[name]):
            raise LumpError(f"--input-shape '{spec}' needs a name and positive dimensions")
    return shapes


def _ode_dump(report: Report, erode: bool) -> str:
    return "\n".join(s.to_erode() if erode else s.to_text() for s in report.systems)


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise LumpError(f"cannot write '{path}': {exc.strerror or exc}") from exc


def _tolerance_given(args: argparse.Namespace) -> bool:
    return args.atol is not None or args.rtol is not None or args.max_error is not None


def _success_word(args: argparse.Namespace) -> str:
    """PASSED only when a tolerance was given and met; otherwise the line just says DONE
    and states the error, since nothing was judged."""
    return "PASSED" if _tolerance_given(args) else "DONE"


def _inventory_table(
    before: onnx.ModelProto, before_path: Path, after: onnx.ModelProto, after_path: Path
) -> str:
    """Op counts, stored parameters and bytes on disk, input against written output."""
    return comparison_table(take_inventory(before, before_path), take_inventory(after, after_path))


def _headline(report: Report, args: argparse.Namespace | None = None) -> str:
    """``params A -> B (x% kept)``, then the error and which inputs it was measured on."""
    parts = [
        f"params {report.params_before} -> {report.params_after} "
        f"({100 * report.retained:.1f}% kept)"
    ]
    held_out = getattr(report, "holdout_error", None)
    rows = getattr(report, "holdout_rows", 0)
    if held_out is not None:
        parts.append(f"held-out error {100 * held_out:.3g}%" + (f" on {rows} rows" if rows else ""))
    v = report.verification
    if v is not None:
        if held_out is not None and v.n_samples == rows:
            where = "the same rows"
        elif args is not None and args.calib is None:
            where = f"{v.n_samples} random inputs"
        else:
            where = f"{v.n_samples} rows"
        parts.append(f"max abs err {v.max_abs:.3g}, max rel err {v.max_rel:.3g} on {where}")
    elif args is not None and getattr(args, "no_verify", False):
        parts.append("file not run (--no-verify)")
    return " | ".join(parts)
