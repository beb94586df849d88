"""The methods that refine onto the original's outputs on the calibration inputs:
``lump+refine``, ``distill`` (random start at exactly lump+refine's widths, the same
budget) and ``onnxsim`` (the peer's structured pruning stack, public API only)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnx

from onnx_lump.methods import Method
from tools.bench.common import Point, log, onnxsim_stack
from tools.bench.methods import widths_of
from tools.bench.metrics import Network, measure, run_compress
from tools.bench.networks import dense_params

__all__ = [
    "DONE_DRMSE",
    "ONNXSIM_LEARNING_RATE",
    "ONNXSIM_STEPS",
    "onnxsim_points",
    "refine_budget",
    "refine_knobs",
    "refined_points",
    "same_sizes",
]

# onnxsim's block distillation: its default 1,000 full-batch Adam steps with its linear
# decay. Its default rate (1e-4) is documented as "a starting point rather than a
# recommendation" and left the loss far from converged; of 1e-4, 1e-3, 3e-3, 1e-2, 3e-2
# and 1e-1, tried on five networks at sparsity 0.5 or 0.8, 3e-2 gave the lowest
# calibration loss on all (1e-1 diverged on one), so it gets 3e-2, fixed for all networks.
ONNXSIM_STEPS = 1000
ONNXSIM_LEARNING_RATE = 3e-2
# That rate, chosen at high sparsity, is too coarse near the original: at the larger sizes
# the peer is also run at 1e-3 and both points count (the better one wins).
ONNXSIM_SLOW_LEARNING_RATE = 1e-3
QUICK_ONNXSIM_STEPS = 100
QUICK_REFINE_ITERS = 15


def refine_budget(quick: bool):
    """The protocol's refine budget, the same for lump+refine and distill: the command
    line's (RefineOptions' defaults: its iteration budget, the wall-time cap as a safety
    net, early stop on the held-out rows, the jitter strengths), no progress bar; a tiny
    one for the quick run."""
    from onnx_lump.data.refine import RefineOptions

    if quick:
        return RefineOptions(max_iters=QUICK_REFINE_ITERS, progress=False)
    return RefineOptions(progress=False)


def refine_knobs(
    net: Network,
    make: Callable[[float], Method],
    retained: dict[float, float],
    targets,
    steps: int = 3,
) -> list[float]:
    """Epsilons whose unrefined lumping keeps about each target share (GRP%): the closest
    epsilon of the sweep, bisected a few more (cheap, unrefined) times where it is off
    by more than a fifth. ``retained`` (epsilon -> share) is extended in place."""

    def closest(goal: float) -> float:
        return min(retained, key=lambda e: abs(np.log(max(retained[e], 1e-6) / goal)))

    chosen: list[float] = []
    for target in targets:
        goal = target / 100.0
        for _ in range(steps):
            eps = closest(goal)
            if abs(retained[eps] / goal - 1.0) <= 0.2:
                break
            above = [e for e in retained if retained[e] > goal]
            below = [e for e in retained if retained[e] <= goal]
            if not above or not below:
                break
            low, high = max(above), min(below)
            if high <= low:  # not monotone here: keep what the sweep has
                break
            middle = 0.5 * (low + high)
            retained[middle] = run_compress(net.model, make(middle), net.calibration)[1].retained
        eps = closest(goal)
        # Each size once; nothing merged leaves nothing to refine.
        if retained[eps] < 1.0 and all(retained[eps] != retained[e] for e in chosen):
            chosen.append(eps)
    return sorted(chosen, key=lambda e: retained[e])


def _refine_seconds(report) -> float:
    return float(sum(stats.seconds for stats in (getattr(report, "refine", None) or [])))


# A point within dRMSE 1% ends a method's sweep: every larger size could only repeat a
# headline (smallest size within 1% and within 5%) already found. Sizes go smallest first.
DONE_DRMSE = 1.0


def refined_points(
    net: Network, make: Callable[[float], Method], knobs: list[float], retained: dict
) -> list[Point]:
    """lump+refine at each epsilon, smallest size first, until its first point within
    dRMSE 1%; distill at exactly the widths lumping reached at each of those sizes (it
    stops earlier if it gets within 1% first). Distill is not run at sizes lump+refine
    did not need: where it has no point within a limit, all that is known is that it
    needs more than lump+refine's largest size (the summary says so)."""
    from onnx_lump.methods import RandomInit

    budget = refine_budget(net.quick)
    points: list[Point] = []
    distill_done = False
    for eps in sorted(knobs, key=lambda e: retained[e]):
        reduced, report, seconds = run_compress(net.model, make(eps), net.calibration, budget)
        points.append(_refined(net, "lump+refine", eps, reduced, report, seconds))
        lumped = points[-1]
        if not distill_done:
            start = RandomInit(widths=[int(w) for w in lumped.widths.split("-")], seed=0)
            reduced, report, seconds = run_compress(net.model, start, net.calibration, budget)
            points.append(_refined(net, "distill", eps, reduced, report, seconds))
            distill_done = points[-1].drmse <= DONE_DRMSE
            if points[-1].widths != lumped.widths:
                raise RuntimeError(f"distill widths {points[-1].widths} != {lumped.widths}")
        if lumped.drmse <= DONE_DRMSE:
            break
    return points


def same_sizes(points: list[Point]) -> list[Point]:
    """Drop distill points at sizes where lump+refine was not run (sweeps cached before
    distill stopped with lump+refine)."""
    ran = {(p.task, p.network, p.knob) for p in points if p.method == "lump+refine"}
    return [p for p in points if p.method != "distill" or (p.task, p.network, p.knob) in ran]


def _refined(net: Network, label: str, eps: float, reduced, report, seconds: float) -> Point:
    return measure(
        net,
        label,
        eps,
        reduced,
        100 * report.retained,
        report.structured,
        seconds,
        refine_seconds=_refine_seconds(report),
        widths=widths_of(report),
        holdout=report.holdout_error,
    )


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _hidden_widths(model: onnx.ModelProto) -> str:
    """Output widths of the dense layers but the last, from their weight shapes."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    widths = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in weights:
            continue
        shape = weights[node.input[1]]
        trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        widths.append(shape[0] if node.op_type == "Gemm" and trans_b else shape[-1])
    return "-".join(str(w) for w in widths[:-1])


def onnxsim_points(
    net: Network, sparsities, learning_rate: float = ONNXSIM_LEARNING_RATE
) -> list[Point]:
    """onnxsim's post-training structured stack at each channel sparsity, the highest
    first, until a point is within dRMSE 1% (as for lump+refine): Wanda channel
    removal, closed-form ridge refit of the surviving layers, then Adam distillation of
    the whole chain (first dense layer's input to the graph output) onto the original's
    output, all on the same calibration inputs."""
    onnxsim = onnxsim_stack()
    if onnxsim is None:
        return []
    feeds = [net.calibration]
    block_in = next(n.input[0] for n in net.model.graph.node if n.op_type in ("MatMul", "Gemm"))
    block_out = net.model.graph.output[0].name
    steps = QUICK_ONNXSIM_STEPS if net.quick else ONNXSIM_STEPS
    points = []
    for sparsity in sorted(sparsities, reverse=True):  # smallest size first
        if points and points[-1].drmse <= DONE_DRMSE:
            break
        started = time.perf_counter()
        try:
            pruned = onnxsim.apply_structured_wanda_pruning(
                _copy(net.model), calibration_data=feeds, sparsity=float(sparsity)
            )
            fitted = time.perf_counter()
            ridge = onnxsim.apply_pruning_finetune(_copy(net.model), pruned, calibration_data=feeds)
            tuned = onnxsim.apply_block_finetune(
                _copy(net.model),
                ridge,
                block_in,
                block_out,
                calibration_data=feeds,
                num_iterations=steps,
                learning_rate=learning_rate,
            )
        except Exception as exc:  # the peer's failure is a result to report, not a crash
            log(f"  onnxsim failed at sparsity {sparsity}: {type(exc).__name__}: {exc}")
            continue
        finished = time.perf_counter()
        grp = 100 * dense_params(tuned) / net.ref.params
        points.append(
            measure(
                net,
                "onnxsim",
                sparsity,
                tuned,
                grp,
                True,
                finished - started,
                refine_seconds=finished - fitted,
                widths=_hidden_widths(tuned),
            )
        )
    return points
