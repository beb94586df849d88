"""int8 points: the original and lump+refine quantized as ``--quantize int8`` does
(onnxruntime's ``quantize_dynamic``, int8 weights per output channel, Gemm rewritten as
MatMul + Add first), sized in bytes as well as parameters."""

from __future__ import annotations

from collections.abc import Callable

import onnx

from onnx_lump.graph.io.tensordata import file_size
from onnx_lump.methods import Method
from onnx_lump.pipeline.quantize import quantized_copy
from tools.bench.common import Point
from tools.bench.methods import widths_of
from tools.bench.metrics import HAS_REFINE, Network, measure, run_compress
from tools.bench.refined import refine_budget, refine_knobs

__all__ = ["int8_points", "quantized"]


def quantized(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` quantized to int8 as the CLI's --quantize int8 does, and its file's bytes."""
    with quantized_copy(model) as (path, _):
        return onnx.load(str(path)), file_size(path)


def int8_points(
    net: Network, make: Callable[[float], Method], retained: dict[float, float], targets
) -> list[Point]:
    """``int8``: the original quantized; ``lump+int8``: lump+refine (the protocol's
    refine budget) at the epsilons keeping about each of ``targets`` (GRP%), quantized."""
    ref = net.ref
    model, size = quantized(net.model)
    widths = "-".join(str(w) for w in ref.hidden)
    points = [measure(net, "int8", 0.0, model, 100.0, True, 0.0, widths=widths, size=size)]
    budget = refine_budget(net.quick) if HAS_REFINE else False
    for eps in refine_knobs(net, make, retained, targets):
        reduced, report, seconds = run_compress(net.model, make(eps), net.calibration, budget)
        model, size = quantized(reduced)
        points.append(
            measure(
                net,
                "lump+int8",
                eps,
                model,
                100 * report.retained,
                True,
                seconds,
                widths=widths_of(report),
                size=size,
            )
        )
    return points
