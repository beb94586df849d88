"""Input checks of the command line that need the model or serve every flag group. The
pre-flight checks (onnx.checker, an opset or IR version newer than onnxruntime's, finite
weights, --dump-ode syntax, input shapes) run before any work, then print the option
warnings and the one note saying how the random check fills dynamic dimensions and
integer inputs. Shared by the groups of :mod:`onnx_lump.cli.args`: the methods' knobs,
range checks, and the :class:`Context` their no-effect rules read. Each group checks its
own ranges and combinations and says which of its options would have no effect."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import onnx

from onnx_lump.cli.console import print_line
from onnx_lump.data.calibration import MAX_RANDOM_BYTES, random_inputs_bytes, random_inputs_note
from onnx_lump.errors import LumpError
from onnx_lump.graph.read.chains import scan_graph
from onnx_lump.graph.write.importer import import_graph
from onnx_lump.methods.registry import (
    EPS,
    METHODS,
    ONE_MINUS_TAU,
    SPARSITY,
    MethodSpec,
)
from onnx_lump.pipeline.quantize import check_quantizable
from onnx_lump.runtime import check_versions

__all__ = [
    "KNOBS",
    "KNOB_OPTIONS",
    "KNOB_RANGES",
    "LUMPING_METHODS",
    "ONLY_THE_TABLE",
    "PRUNING_METHODS",
    "Context",
    "Range",
    "Unused",
    "check_ranges",
    "flag",
    "knob_chosen",
    "parse_shapes",
    "preflight",
]

# The knob each method trades size for accuracy with (larger = smaller), and its limit.
KNOBS = {name: (spec.knob or "", spec.knob_limit) for name, spec in METHODS.items()}

# A numeric option's range: (test, what the test says).
Range = tuple[Callable[[float], bool], str]
# The range of each method's knob, for --sweep values (1 - tau for linear).
KNOB_RANGES: dict[str, Range] = {
    EPS: (lambda v: v >= 0, ">= 0"),
    SPARSITY: (lambda v: 0 <= v < 1, "in [0, 1)"),
    ONE_MINUS_TAU: (lambda v: 0 <= v < 1, "in [0, 1)"),
}
# The option that holds each knob's value when no search sets it.
KNOB_OPTIONS = {EPS: "eps", SPARSITY: "sparsity", ONE_MINUS_TAU: "tau"}
LUMPING_METHODS = tuple(name for name, spec in METHODS.items() if spec.is_lumping)
PRUNING_METHODS = tuple(name for name, spec in METHODS.items() if spec.is_pruning)

# An option that would have no effect: (its dest, why), worded to follow
# "--flag has no effect ".
Unused = tuple[str, str]
ONLY_THE_TABLE = "with --sweep, which writes only the table"


def flag(dest: str) -> str:
    """The flag of an argparse dest: ``max_error`` -> ``--max-error``."""
    return "--" + dest.replace("_", "-")


def check_ranges(args: argparse.Namespace, ranges: Mapping[str, Range]) -> None:
    """Refuse a numeric option outside its range, or not finite; None is "not given"."""
    for dest, (test, wanted) in ranges.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if not math.isfinite(value):
            raise LumpError(f"{flag(dest)} must be a finite number, got {value}")
        if not test(value):
            raise LumpError(f"{flag(dest)} must be {wanted}, got {value:g}")


@dataclass(frozen=True)
class Context:
    """What the no-effect rules of every group read about the run as a whole: the method
    (and its registry row), whether --calib and --val are given, and whether it searches
    (--target-params, --max-error or --sweep) or sweeps."""

    method: str
    spec: MethodSpec
    calib: bool
    val: bool
    searching: bool
    sweep: bool


def knob_chosen(context: Context, dest: str) -> list[Unused]:
    """``dest`` as unused when it holds the method's knob and a search or sweep chooses it."""
    knob = context.spec.knob
    if context.searching and knob is not None and KNOB_OPTIONS[knob] == dest:
        return [(dest, f"with a search or sweep, which chooses {knob}")]
    return []


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
    _check_chains(args, model)
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


def _check_chains(args: argparse.Namespace, model: onnx.ModelProto) -> None:
    """Every chain's layers have a width and finite weights, and --dump-ode's ERODE
    syntax (a .ode suffix) can write its activations."""
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
