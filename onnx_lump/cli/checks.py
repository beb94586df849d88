"""Input checks of the command line, all before any work: option ranges and combinations,
--sweep values, warnings for options that would have no effect, and the pre-flight checks
that need the model (onnx.checker, an opset or IR version newer than onnxruntime's, finite
weights, --dump-ode syntax, input shapes), and the one note saying how the random check
fills dynamic dimensions and integer inputs."""

from __future__ import annotations

import argparse
import math

import onnx

from onnx_lump.cli.console import print_line
from onnx_lump.data.calibration import MAX_RANDOM_BYTES, random_inputs_bytes, random_inputs_note
from onnx_lump.errors import LumpError
from onnx_lump.graph.read.chains import scan_graph
from onnx_lump.graph.write.importer import import_graph
from onnx_lump.methods.lumping import LumpOptions
from onnx_lump.methods.registry import (
    EPS,
    METHODS,
    ONE_MINUS_TAU,
    SPARSITY,
    MethodSettings,
)
from onnx_lump.ode.partition import Similarity
from onnx_lump.pipeline.quantize import check_quantizable
from onnx_lump.runtime import check_versions
from onnx_lump.search.sweeps import parse_knobs

__all__ = [
    "KNOBS",
    "KNOB_OPTIONS",
    "LUMPING_METHODS",
    "PRUNING_METHODS",
    "is_searching",
    "no_effect",
    "parse_shapes",
    "preflight",
    "validate",
]

# The knob each method trades size for accuracy with (larger = smaller), and its limit.
KNOBS = {name: (spec.knob or "", spec.knob_limit) for name, spec in METHODS.items()}


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
    "time_limit": (lambda v: v > 0, "> 0"),
}
# The range of each method's knob, for --sweep values (1 - tau for linear).
_KNOB_RANGES = {
    EPS: (lambda v: v >= 0, ">= 0"),
    SPARSITY: (lambda v: 0 <= v < 1, "in [0, 1)"),
    ONE_MINUS_TAU: (lambda v: 0 <= v < 1, "in [0, 1)"),
}
# The option that holds each knob's value when no search sets it.
KNOB_OPTIONS = {EPS: "eps", SPARSITY: "sparsity", ONE_MINUS_TAU: "tau"}
LUMPING_METHODS = tuple(name for name, spec in METHODS.items() if spec.is_lumping)
PRUNING_METHODS = tuple(name for name, spec in METHODS.items() if spec.is_pruning)


# The methods' own option groups, and what the warning says of a method that ignores one.
_GROUP_WARNINGS = {
    "sparsity": "a pruning option",
    "scope": "magnitude and ec only",
    "tau": "linear folding only",
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def is_searching(args: argparse.Namespace) -> bool:
    return args.sweep is not None or args.target_params is not None or args.max_error is not None


def validate(args: argparse.Namespace) -> None:
    """Refuse bad option values and combinations before any work; warnings about options
    that have no effect are collected in ``args.option_warnings`` (printed once the
    inputs have been checked too, see :func:`preflight`)."""
    for dest, (test, wanted) in _RANGES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if not math.isfinite(value):
            raise LumpError(f"{_flag(dest)} must be a finite number, got {value}")
        if not test(value):
            raise LumpError(f"{_flag(dest)} must be {wanted}, got {value:g}")
    if is_searching(args) and args.method == "exact":
        raise LumpError("method 'exact' has no knob to sweep or search")
    if args.similarity not in (None, Similarity.WEIGHTS.value) and args.calib is None:
        raise LumpError(f"--similarity {args.similarity} needs --calib")
    if getattr(args, "no_verify", False) and (args.atol is not None or args.rtol is not None):
        raise LumpError("--atol/--rtol need the check that --no-verify skips; drop one of them")
    if not [p for p in args.providers.split(",") if p.strip()]:
        raise LumpError("--providers lists no execution provider; give e.g. cpu or cuda")
    if args.sweep is not None:
        _validate_sweep(args)
    _validate_span_share(args)
    args.option_warnings = no_effect(args)


def _validate_span_share(args: argparse.Namespace) -> None:
    """Every eps given is one the lumping takes (:class:`Lump` refuses a span share
    over 1; with --calib span is the default), checked before any work, not after a
    sweep's first points."""
    if not METHODS[args.method].is_lumping:
        return
    options = LumpOptions(similarity=args.similarity, reduction=args.reduction)
    flag, knobs = "--eps", [args.eps]
    if args.sweep is not None:
        flag, knobs = "--sweep value", parse_knobs(args.sweep)
    for knob in knobs:
        try:
            options.method(knob, with_data=args.calib is not None)
        except LumpError as exc:
            raise LumpError(f"{flag} {knob:g}: {exc}") from None


def _validate_sweep(args: argparse.Namespace) -> None:
    knobs = parse_knobs(args.sweep)
    if not knobs:
        raise LumpError(
            f"--sweep '{args.sweep}' lists no values; give 'a,b,c' or 'start:stop:step'"
        )
    knob_name = KNOBS[args.method][0]
    test, wanted = _KNOB_RANGES[knob_name]
    for knob in knobs:
        if not math.isfinite(knob) or not test(knob):
            raise LumpError(f"--sweep value {knob:g} is not a valid {knob_name} ({wanted})")
    if args.output.suffix.lower() not in (".csv", ".json"):
        raise LumpError(
            f"with --sweep, OUT is the table: give a .csv or .json path, not '{args.output}'"
        )


def no_effect(args: argparse.Namespace) -> list[str]:
    """One warning per option the user gave that this run would silently ignore."""
    given: set[str] = getattr(args, "given_options", set())
    method, calib, searching = args.method, args.calib is not None, is_searching(args)
    spec = METHODS[method]
    unused: list[tuple[str, str]] = []  # (dest, why)
    lumping_only = ("eps", "equivalence", "linkage", "similarity", "no_symmetries", "reduction")
    needs_data = ("no_refit", "ridge", "force_refit")
    for dest in (*lumping_only, *needs_data):
        if not spec.is_lumping:
            unused.append((dest, f"with --method {method} (a lumping option)"))
        elif dest in needs_data and not calib:
            unused.append((dest, "without --calib: the refit needs data"))
    if (
        spec.is_lumping
        and not calib
        and getattr(args, "reduction", None) not in (None, "partition")
    ):
        unused.append(("reduction", "without --calib: span reads the activations"))
    for group, why in _GROUP_WARNINGS.items():
        if group not in spec.reads:
            unused.append((group, f"with --method {method} ({why})"))
    if searching and spec.knob is not None:  # the search sets the knob itself
        why = f"with a search or sweep, which chooses {spec.knob}"
        unused.append((KNOB_OPTIONS[spec.knob], why))
    if args.sweep is not None:
        for dest in ("target_params", "max_error", "atol", "rtol", "no_verify"):
            unused.append((dest, "with --sweep, which writes only the table"))
        for dest in ("dump_ode", "report_json"):
            unused.append((dest, "with --sweep, which writes only the table"))
    else:
        unused.append(("plot", "without --sweep (it draws the sweep's curve)"))
    if not calib:
        unused.append(("sequential", "without --calib: nothing is fitted on data"))
        unused.append(("mask_input", "without --calib: no calibration rows to mask"))
        if not searching and args.val is None:
            unused.append(("metric", "without --calib or --val: no error is measured"))
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
    elif not spec.build(0.0, MethodSettings()).refined_by_default:
        unused += [(d, f"with --method {method}, which is not refined") for d in refine]
    elif not calib:
        unused += [(d, "without --calib: refining needs data") for d in (*refine, "no_refine")]
    seen, messages = set(), []
    for dest, why in unused:
        if dest in given and dest not in seen:
            seen.add(dest)
            messages.append(f"{_flag(dest)} has no effect {why}")
    return messages


def preflight(args: argparse.Namespace, model: onnx.ModelProto) -> None:
    """Checks that need the model, all before any work: onnx.checker, the opsets and IR
    version onnxruntime supports, the chains' weights, --dump-ode's syntax, --input-shape
    names and the size of the random check. Then prints the option warnings and the
    random check's note (unless -q), so that a refused run shows only its error."""
    try:
        onnx.checker.check_model(str(args.input))  # by path: external data and > 2 GB work
    except Exception as exc:  # onnx raises ValidationError, and others for odd files
        raise LumpError(f"'{args.input}' fails onnx.checker: {exc}") from exc
    check_versions(model.ir_version, {e.domain: e.version for e in model.opset_import})
    if getattr(args, "quantize", None):
        check_quantizable(model)  # before the pass, not after it
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
    shapes = parse_shapes(args.input_shape)
    warnings_ = list(getattr(args, "option_warnings", []))
    if getattr(args, "metric", None) == "cosine":
        warnings_ += _scalar_output_warnings(model)
    for name in sorted(set(shapes) - names):
        warnings_.append(
            f"--input-shape {name}: the model has no input '{name}' "
            f"(inputs: {', '.join(sorted(names))}); ignored"
        )
    note = None
    if args.calib is None and not getattr(args, "no_verify", False):
        needed = random_inputs_bytes(model, args.check, shapes)
        if needed > MAX_RANDOM_BYTES:
            raise LumpError(
                f"--check {args.check} would draw {needed / 2**30:.1f} GiB of random inputs "
                f"(limit {MAX_RANDOM_BYTES / 2**30:.0f} GiB); lower --check or give --calib"
            )
        note = random_inputs_note(model, args.check, shapes)
    for text in warnings_:
        print_line(f"warning: {text}")
    # What the random check chose for dynamic dimensions and integer inputs, once; with
    # -v the draw itself logs the same line.
    if note and not getattr(args, "quiet", False) and not getattr(args, "verbose", False):
        print_line(f"note: {note}")


def parse_shapes(specs: list[str]) -> dict[str, list[int]]:
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


def _scalar_output_warnings(model: onnx.ModelProto) -> list[str]:
    """--metric cosine on a float output whose rows are single numbers compares signs
    only (1 - cosine is 0 or 2): one warning per such output."""
    found = []
    for output in model.graph.output:
        tensor = output.type.tensor_type
        dims = tensor.shape.dim if tensor.HasField("shape") else []
        floating = tensor.elem_type in (
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.DOUBLE,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16,
        )
        if floating and (
            len(dims) <= 1 or (dims[-1].HasField("dim_value") and dims[-1].dim_value == 1)
        ):
            found.append(
                f"--metric cosine: output '{output.name}' has one number a row, whose cosine "
                "only compares signs; use the default --metric rmse for it"
            )
    return found
