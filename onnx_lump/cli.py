"""Merge neurons with epsilon-equivalent dynamics in the dense chains of an ONNX model.

Reads IN, writes a smaller OUT (hidden layers narrower, everything else as it was),
runs both with onnxruntime on the same inputs and prints widths, parameters and output
errors. With --atol/--rtol it writes nothing and exits 1 when the error is larger.

examples:
  python -m onnx_lump model.onnx model.lumped.onnx --eps 0.05
  python -m onnx_lump model.onnx small.onnx --eps 0.1 --calib calib.npz --rtol 0.02
  python -m onnx_lump model.onnx small.onnx --dump-ode model.ode.txt
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from onnx_lump.api import Report, lump
from onnx_lump.equivalence import Equivalence
from onnx_lump.errors import LumpError
from onnx_lump.grouping import Linkage
from onnx_lump.modelio import check_output_path, load_model, save_model
from onnx_lump.verify import load_inputs

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m onnx_lump",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = parser.add_argument_group("models")
    models.add_argument("input", type=Path, help="ONNX model to reduce (never modified)")
    models.add_argument("output", type=Path, help="where to write the reduced model")

    method = parser.add_argument_group("equivalence")
    method.add_argument(
        "--eps",
        type=float,
        default=0.0,
        help="tolerance: L1 distance under which neurons merge (default 0: exact merges only)",
    )
    method.add_argument(
        "--equivalence",
        choices=[e.value for e in Equivalence],
        default="backward",
        help="backward: match incoming dynamics (default, exact at eps 0); "
        "forward: match outgoing coefficients (ERODE's FDE)",
    )
    method.add_argument(
        "--linkage",
        choices=[k.value for k in Linkage],
        default="single",
        help="single: connected components of the relation (ERODE); complete: all pairs within eps",
    )
    method.add_argument(
        "--no-symmetries",
        action="store_true",
        help="compare raw rows only: no scale/sign canonical forms, no proportional merges",
    )
    method.add_argument(
        "--dump-ode",
        type=Path,
        metavar="FILE",
        help="write the ODE encoding of each chain; a .ode suffix writes ERODE syntax "
        "(polynomial chains only)",
    )

    check = parser.add_argument_group("verification")
    data = check.add_mutually_exclusive_group()
    data.add_argument(
        "--calib", type=Path, metavar="FILE", help="inputs to compare on (.npz or .npy)"
    )
    data.add_argument(
        "--check",
        type=int,
        default=64,
        metavar="N",
        help="number of seeded random inputs when no --calib is given (default 64)",
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


def _run(args: argparse.Namespace) -> int:
    if args.eps < 0:
        raise LumpError(f"--eps must be >= 0, got {args.eps}")
    if args.check < 1:
        raise LumpError(f"--check must be >= 1, got {args.check}")
    check_output_path(args.output, args.input)
    for side in (args.dump_ode, args.report_json):
        if side is not None:
            check_output_path(side, args.input)
    loaded = load_model(args.input)
    inputs = load_inputs(args.calib, loaded.model) if args.calib else None
    reduced, report = lump(
        loaded.model,
        args.eps,
        equivalence=args.equivalence,
        linkage=args.linkage,
        symmetries=not args.no_symmetries,
        inputs=inputs,
        n_check=args.check,
        input_shapes=_parse_shapes(args.input_shape),
        providers=[p.strip() for p in args.providers.split(",") if p.strip()],
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
