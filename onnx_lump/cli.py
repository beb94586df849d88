"""Shrink the dense chains of an ONNX model: merge neurons with epsilon-equivalent dynamics
(or prune, or fold linear neurons), then check the result with onnxruntime.

Reads IN, writes a smaller OUT (everything outside the dense chains as it was), runs both
on the same inputs and prints widths, parameters and output errors. With --atol/--rtol,
or a --target-params/--max-error target that cannot be met, it writes nothing and exits 1.
With --calib, lumping refits each next layer on the calibration inputs.

examples:
  python -m onnx_lump model.onnx model.lumped.onnx --eps 0.05
  python -m onnx_lump model.onnx small.onnx --calib train.npz --max-error 0.01
  python -m onnx_lump model.onnx small.onnx --calib train.npz --target-params 0.3
  python -m onnx_lump model.onnx table.csv --calib train.npz --sweep 0:2:0.1
  python -m onnx_lump model.onnx pruned.onnx --method wanda --sparsity 0.5 --calib train.npz
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from onnx_lump.api import Report, compress
from onnx_lump.calibration import load_inputs
from onnx_lump.equivalence import Equivalence, PartitionOptions, Similarity
from onnx_lump.errors import LumpError
from onnx_lump.grouping import Linkage
from onnx_lump.methods import (
    EliminationCompensation,
    Exact,
    LinearFolding,
    Lump,
    Magnitude,
    Method,
    Scope,
    Sequence,
    Wanda,
)
from onnx_lump.methods.lumping import DEFAULT_RIDGE, DEFAULT_SIMILARITY_WITH_DATA
from onnx_lump.modelio import check_output_path, load_model, save_model
from onnx_lump.search import Evaluator, bisect, parse_knobs, sweep, write_table

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m onnx_lump",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        help=f"ridge strength of the refit, relative to the mean squared activation "
        f"(default {DEFAULT_RIDGE:g})",
    )
    lumping.add_argument(
        "--dump-ode",
        type=Path,
        metavar="FILE",
        help="write the ODE encoding of each chain; a .ode suffix writes ERODE syntax "
        "(polynomial chains only)",
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

    check = parser.add_argument_group("data and verification")
    check.add_argument(
        "--calib",
        type=Path,
        metavar="FILE",
        help="representative inputs (.npz with one array per input, .npy, or .csv)",
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
        help="shape of an input with dynamic dimensions for random inputs (repeatable)",
    )
    check.add_argument(
        "--providers",
        default="cpu",
        help="comma-separated onnxruntime execution providers, e.g. cpu or cuda (default cpu)",
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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="[%(levelname)s] %(name)s: %(message)s",
    )
    try:
        return _run(args)
    except LumpError as exc:
        print(f"FAILED | {exc}", file=sys.stderr)
        return 2


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
        lump = Lump(options, refit=not args.no_refit, ridge=args.ridge)
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


def _validate(args: argparse.Namespace) -> None:
    if args.eps < 0:
        raise LumpError(f"--eps must be >= 0, got {args.eps}")
    if args.check < 1:
        raise LumpError(f"--check must be >= 1, got {args.check}")
    if not 0.0 <= args.sparsity < 1.0:
        raise LumpError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if not 0.0 < args.tau <= 1.0:
        raise LumpError(f"--tau must be in (0, 1], got {args.tau}")
    if args.ridge < 0:
        raise LumpError(f"--ridge must be >= 0, got {args.ridge}")
    if args.target_params is not None and not 0.0 < args.target_params <= 1.0:
        raise LumpError(f"--target-params must be in (0, 1], got {args.target_params}")
    if args.max_error is not None and args.max_error < 0:
        raise LumpError(f"--max-error must be >= 0, got {args.max_error}")
    searching = args.sweep or args.target_params is not None or args.max_error is not None
    if searching and args.method == "exact":
        raise LumpError("method 'exact' has no knob to sweep or search")
    if args.similarity not in (None, Similarity.WEIGHTS.value) and args.calib is None:
        raise LumpError(f"--similarity {args.similarity} needs --calib")
    if args.sweep:
        parse_knobs(args.sweep)
    if args.sweep and args.output.suffix.lower() not in (".csv", ".json"):
        raise LumpError(
            f"with --sweep, OUT is the table: give a .csv or .json path, not '{args.output}'"
        )


def _initial_knob(args: argparse.Namespace) -> float:
    if args.method in ("lump", "lump+linear"):
        return args.eps
    if args.method == "linear":
        return 1.0 - args.tau
    return args.sparsity


def _run(args: argparse.Namespace) -> int:
    _validate(args)
    check_output_path(args.output, args.input)
    for side in (args.dump_ode, args.report_json):
        if side is not None:
            check_output_path(side, args.input)
    loaded = load_model(args.input)
    calibration = load_inputs(args.calib, loaded.model) if args.calib else None
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    knob_name, limit = _KNOBS.get(args.method, ("", None))

    if args.sweep or args.target_params is not None or args.max_error is not None:
        evaluate = _evaluator(args, loaded.model, calibration, providers)
        if args.sweep:
            points = sweep(evaluate, parse_knobs(args.sweep))
            write_table(points, args.output, knob_name)
            print(f"PASSED | {len(points)} points of {args.method} | wrote {args.output}")
            return 0
        _, _, point, met = bisect(evaluate, limit, args.target_params, args.max_error)
        knob, target_line = point.knob, _target_line(knob_name, point, met, args)
        if not args.quiet:
            print(target_line)
        if not met:
            print(f"FAILED | {target_line} | nothing written")
            return 1
    else:
        knob = _initial_knob(args)

    reduced, report = compress(
        loaded.model,
        build_method(args.method, knob, args),
        calibration=calibration,
        n_check=args.check,
        input_shapes=_parse_shapes(args.input_shape),
        providers=providers,
        atol=args.atol,
        rtol=args.rtol,
    )
    if not args.quiet:
        print(report.summary())
    if args.dump_ode is not None:
        _write_text(args.dump_ode, _ode_dump(report, erode=args.dump_ode.suffix == ".ode"))
    if args.report_json is not None:
        _write_text(args.report_json, report.to_json() + "\n")
    verdict = _headline(report)
    if not report.verification:
        print(f"FAILED | {verdict} | tolerance exceeded, nothing written")
        return 1
    save_model(reduced, args.output, external_data=loaded.external_data)
    print(f"PASSED | {verdict} | wrote {args.output}")
    return 0


def _evaluator(args, model, calibration, providers) -> Evaluator:
    method = build_method(args.method, 0.0, args)
    if method.needs_data and calibration is None:
        raise LumpError(f"method '{args.method}' needs calibration inputs (--calib)")
    targets = None
    if args.val is not None:
        evaluation, targets = load_inputs(args.val, model, with_targets=True)
    elif calibration is not None:
        evaluation = calibration
    else:
        raise LumpError(
            "choosing the knob needs data to measure the error on: give --calib or --val"
        )
    return Evaluator(
        model,
        lambda knob: build_method(args.method, knob, args),
        calibration,
        evaluation,
        targets,
        providers,
    )


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


def _headline(report: Report) -> str:
    parts = [
        f"params {report.params_before} -> {report.params_after} "
        f"({100 * report.retained:.1f}% kept)"
    ]
    v = report.verification
    if v is not None:
        parts.append(f"max abs err {v.max_abs:.3g}, max rel err {v.max_rel:.3g}")
    return " | ".join(parts)
