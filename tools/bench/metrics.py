"""Measuring a compressed model: size, test error, fidelity; and the compress call."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_lump import compress
from onnx_lump.methods import Method
from tools.bench.common import Point, Reference, fidelity
from tools.bench.networks import predict
from tools.benchdata import Dataset

__all__ = [
    "HAS_REFINE",
    "Network",
    "best_grp",
    "fidelity",
    "fmt",
    "measure",
    "run_compress",
]

HAS_REFINE = "refine" in inspect.signature(compress).parameters


@dataclass(frozen=True, eq=False)
class Network:
    """Everything a method's sweep needs about one reference network."""

    ref: Reference
    data: Dataset
    model: onnx.ModelProto
    calibration: dict[str, np.ndarray]
    test_outputs: np.ndarray  # the original's outputs on the test inputs (onnxruntime)
    quick: bool


def run_compress(model: onnx.ModelProto, method: Method, calibration, refine=False):
    """``compress`` without verification; ``refine`` is False (off: the method as it was
    before refinement existed, since auto would refine whenever calibration is given) or
    RefineOptions. Returns (reduced model, report, seconds)."""
    kwargs = {}
    if HAS_REFINE:
        kwargs["refine"] = refine
    elif refine is not False:
        raise RuntimeError("this onnx_lump has no refine stage (compress(refine=...))")
    started = time.perf_counter()
    reduced, report = compress(model, method, calibration=calibration, verify=False, **kwargs)
    return reduced, report, time.perf_counter() - started


def measure(
    net: Network,
    label: str,
    knob: float,
    model: onnx.ModelProto,
    grp: float,
    structured: bool,
    seconds: float,
    *,
    refine_seconds: float = 0.0,
    widths: str = "",
    holdout: float | None = None,
    size: int | None = None,
) -> Point:
    """The sweep point of a compressed model: its size (parameters, and ``size`` bytes,
    by default those of the serialized model), and its error on the test split, both run
    in onnxruntime from the serialized model."""
    outputs = predict(model, net.data.x_test)
    test = float(np.sqrt(np.mean((outputs - net.data.y_test) ** 2)))
    ref = net.ref
    return Point(
        ref.task,
        ref.network,
        label,
        float(knob),
        float(grp),
        test,
        100 * (test - ref.test_rmse) / ref.test_rmse,
        bool(structured),
        float(seconds),
        fidelity(outputs, net.test_outputs),
        float(refine_seconds),
        widths,
        None if holdout is None else float(holdout),
        int(model.ByteSize() if size is None else size),
    )


def best_grp(points: list[Point], limit: float) -> float | None:
    within = [p.grp for p in points if p.drmse <= limit]
    return min(within) if within else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
