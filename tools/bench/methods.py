"""The sweeps of the methods without refinement: lumping variants, exact, pruning,
linear folding, and the scratch reference."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import onnx

from onnx_lump.errors import LumpError
from onnx_lump.methods import Lump, Method
from onnx_lump.methods.lumping import (
    DEFAULT_REDUCTION_WITH_DATA,
    Reduction,
)
from onnx_lump.ode.partition import PartitionOptions, Similarity
from tools.bench.common import EPS_FRACTIONS, Point
from tools.bench.metrics import Network, measure, run_compress
from tools.bench.networks import dense_params, scratch_path

__all__ = [
    "full_merge_eps",
    "lump_sweep",
    "lumping",
    "scratch_points",
    "sweep_method",
    "widths_of",
]


def lumping(refit: bool, similarity: Similarity = Similarity.WEIGHTS) -> Callable[[float], Lump]:
    """Lumping at a knob as the command line builds it: with data similarity (calibration
    data at hand) the default reduction with data, else partitions. Every sweep and the
    latency examples rebuild a point with it, so that a knob means what it meant there."""
    with_data = similarity is Similarity.DATA
    reduction = DEFAULT_REDUCTION_WITH_DATA if with_data else Reduction.PARTITION
    return lambda eps: Lump(
        PartitionOptions(eps, similarity=similarity), refit=refit, reduction=reduction
    )


def widths_of(report) -> str:
    """Hidden widths after compression of the (first) chain, "-" joined."""
    widths = getattr(report, "widths_after", None)
    if widths:
        return "-".join(str(w) for w in widths[0])
    # Before Report carried widths: the layers' own counts, the output layer left out.
    return "-".join(str(s.width_after) for s in report.layers[:-1])


def _point(net: Network, label: str, knob: float, reduced, report, seconds: float) -> Point:
    return measure(
        net,
        label,
        knob,
        reduced,
        100 * report.retained,
        report.structured,
        seconds,
        widths=widths_of(report),
    )


def sweep_method(
    net: Network, label: str, make: Callable[[float], Method], knobs, calibration
) -> list[Point]:
    points = []
    for knob in knobs:
        reduced, report, seconds = run_compress(net.model, make(knob), calibration)
        points.append(_point(net, label, float(knob), reduced, report, seconds))
    return points


def full_merge_eps(model: onnx.ModelProto, make: Callable[[float], Method], calibration) -> float:
    """The smallest power-of-two epsilon at which (almost) everything merges."""
    eps = 0.125
    for _ in range(16):
        try:
            method = make(eps)
        except LumpError:  # past the knob's range (a span reduction's share: 1)
            return eps / 2
        _, report, _ = run_compress(model, method, calibration)
        if report.retained <= 0.05:
            return eps
        eps *= 2
    return eps


def lump_sweep(
    net: Network, label: str, make: Callable[[float], Method], calibration, budget: int
) -> tuple[list[Point], dict[float, float]]:
    """Epsilons that spread the retained share evenly: a coarse grid up to the full
    merge, then midpoints wherever two neighbours differ by more than 8 points of GRP%,
    within ``budget`` compressions. The test split is used once per kept point.

    Returns the points and the retained share (0..1) at every epsilon tried."""
    top = full_merge_eps(net.model, make, calibration)
    results: dict[float, tuple] = {}

    def run(eps: float) -> None:
        results[eps] = run_compress(net.model, make(eps), calibration)

    for fraction in EPS_FRACTIONS:
        run(top * fraction)
    while len(results) < budget:
        ordered = sorted(results)
        gaps = [
            (results[a][1].retained - results[b][1].retained, a, b)
            for a, b in itertools.pairwise(ordered)
        ]
        width, a, b = max(gaps)
        if width <= 0.08:
            break
        run(0.5 * (a + b))
    points = [_point(net, label, eps, *results[eps]) for eps in sorted(results)]
    return points, {eps: results[eps][1].retained for eps in results}


def scratch_points(net: Network, cache: Path, fractions) -> list[Point]:
    """The same architecture trained from scratch (with labels) at smaller widths: a
    reference for how small a network of this kind can be, not a compression method."""
    points = []
    for fraction in fractions:
        width = max(2, round(net.ref.hidden[0] * fraction))
        path = scratch_path(net.ref, net.data, cache, width, net.quick)
        model = onnx.load(path)
        grp = 100 * dense_params(model) / net.ref.params
        widths = "-".join([str(width)] * len(net.ref.hidden))
        points.append(measure(net, "scratch", width, model, grp, True, 0.0, widths=widths))
    return points
