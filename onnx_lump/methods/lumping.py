"""Neuron lumping by epsilon differential equivalence, data-free or with compensation."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from onnx_lump.calibration import forward_chain
from onnx_lump.compensation import refit_layer, residual
from onnx_lump.equivalence import (
    Equivalence,
    PartitionOptions,
    Similarity,
    backward_lumping,
    compute_partition,
)
from onnx_lump.methods.base import ChainProblem, ChainResult, Method
from onnx_lump.ode import Lumping, aggregate
from onnx_lump.reduction import ReducedLayer, reduce_layer, reduce_system
from onnx_lump.span import select_span

__all__ = ["DEFAULT_RIDGE", "DEFAULT_SIMILARITY_WITH_DATA", "Exact", "Lump", "Reduction"]

# Which similarity lumping uses when calibration data is given, chosen on the benchmark:
# over its 32 networks, data similarity kept 64.5% of the parameters on average at
# dRMSE <= 5% against 69.6% (weights) and 73.5% (affine) (tools/results/summary.md).
DEFAULT_SIMILARITY_WITH_DATA = Similarity.DATA
DEFAULT_RIDGE = None  # chosen per layer by the held-out rows (compensation.RIDGE_GRID)


class Reduction(enum.Enum):
    """How a layer's neurons are replaced once eps is chosen."""

    PARTITION = "partition"  # blocks of equivalent neurons, one neuron a block
    SPAN = "span"  # kept neurons by pivoted QR of the activations, the rest a linear map


@dataclass
class Lump(Method):
    """Merge epsilon-equivalent neurons; with calibration data, refit each next layer.

    Data-aware mode goes front to back: partition layer l (on its current rows, or on
    its pre-activations with data similarity), keep one neuron a block, compute the
    kept neurons' activations on the calibration inputs, then refit layer l + 1 by
    ridge regression onto the original network's pre-activations of layer l + 1. With
    held-out rows, the ridge strength is the one that predicts them best, a refit is
    kept only where it lowers that layer's held-out residual, and the whole result only
    where it lowers the held-out output error against the same merge without refits; so
    eps = 0 stays exact. A layer with fewer fitting rows than inputs is not refit
    (unless ``force_refit``): its refit would interpolate the rows, not the function.

    With ``reduction`` SPAN and eps > 0, the kept neurons are chosen by the span of the
    layer's activations instead (see :mod:`onnx_lump.span`); eps is then the share of
    their energy left unexplained.
    """

    options: PartitionOptions = field(default_factory=PartitionOptions)
    refit: bool = True
    ridge: float | None = DEFAULT_RIDGE
    reduction: Reduction = Reduction.PARTITION
    force_refit: bool = False
    name: str = "lump"

    def describe(self) -> str:
        o = self.options
        parts = [f"eps={o.eps:g}", o.equivalence.value, o.linkage.value]
        if self.reduction is Reduction.SPAN:
            parts = [f"eps={o.eps:g}", "span reduction"]
        elif o.similarity.value != "weights":
            parts.append(f"{o.similarity.value} similarity")
        if not o.symmetries:
            parts.append("no symmetries")
        return f"lump ({', '.join(parts)})"

    def compress(self, problem: ChainProblem) -> ChainResult:
        if problem.calibration is None:
            partition = compute_partition(problem.system, self.options)
            return ChainResult(reduce_system(problem.system, partition))
        fit = _Rows(problem, problem.calibration)
        held = _Rows(problem, problem.holdout) if problem.holdout is not None else None
        forward = None
        if self.options.equivalence is Equivalence.FORWARD:
            forward = compute_partition(problem.system, self.options).lumpings
        merged, _ = self._with_data(problem, fit, held, forward, refit=False)
        if not self.refit:
            return ChainResult(merged)
        refitted, notes = self._with_data(problem, fit, held, forward, refit=True)
        judge = held if held is not None else fit
        best = min(refitted, merged, key=lambda ls: _output_error(problem, ls, judge))
        return ChainResult(best, notes=notes)

    def _with_data(
        self,
        problem: ChainProblem,
        fit: _Rows,
        held: _Rows | None,
        forward: tuple[Lumping, ...] | None,
        refit: bool,
    ) -> tuple[list[ReducedLayer], list[str]]:
        system, options = problem.system, self.options
        inputs = fit.inputs
        held_inputs = None if held is None else held.inputs
        weight, bias = problem.weights[0]
        reduced, notes = [], []
        span = self.reduction is Reduction.SPAN and options.eps > 0
        for index, layer in enumerate(system.hidden):
            if span:
                selection = select_span(layer.activation(inputs @ weight.T + bias), options.eps)
                kept = ReducedLayer(weight[selection.kept], bias[selection.kept])
            else:
                if forward is None:
                    lumping = backward_lumping(
                        weight,
                        bias,
                        layer.activation,
                        options,
                        system.precision,
                        inputs,
                        held_inputs,
                    )
                else:
                    lumping = _with_data_constants(forward[index], weight, bias, layer, inputs)
                kept, rebased = reduce_layer(weight, bias, lumping, layer.activation)
            reduced.append(kept)
            inputs = layer.activation(inputs @ kept.weight.T + kept.bias)
            if held_inputs is not None:
                held_inputs = layer.activation(held_inputs @ kept.weight.T + kept.bias)
            following = system.layers[index + 1]
            if span:
                weight, bias = selection.fold(following.coefficients, following.bias)
            else:
                weight, bias = aggregate(following, rebased)
            if not refit:
                continue
            if inputs.shape[0] <= inputs.shape[1] and not self.force_refit:
                notes.append(
                    f"layer {index + 1} not refit: {inputs.shape[0]} fitting rows for "
                    f"{inputs.shape[1]} inputs (give more --calib rows, or --force-refit)"
                )
                continue
            target = fit.targets[index + 1]
            fitted, _ = refit_layer(
                inputs,
                target,
                self.ridge,
                held_inputs,
                None if held is None else held.targets[index + 1],
            )
            judge_inputs, judge_target = (
                (inputs, target) if held is None else (held_inputs, held.targets[index + 1])
            )
            naive = ReducedLayer(weight, bias)
            if residual(fitted, judge_inputs, judge_target) < residual(
                naive, judge_inputs, judge_target
            ):
                weight, bias = fitted.weight, fitted.bias
        reduced.append(ReducedLayer(weight, bias))
        return reduced, notes


class _Rows:
    """Inputs of a chain on some rows, the original chain's output on them, and every
    layer's original pre-activations (the refit targets)."""

    def __init__(self, problem: ChainProblem, inputs: np.ndarray) -> None:
        values = forward_chain(problem.weights, problem.system, inputs)
        self.inputs = inputs
        self.output = values[-1]
        self.targets = [x @ w.T + b for x, (w, b) in zip(values, problem.weights, strict=False)]


def _with_data_constants(lumping: Lumping, weight, bias, layer, inputs) -> Lumping:
    """A forward lumping whose removed neurons are replaced by their mean activation on
    the calibration data (exact for constant neurons, the best constant otherwise)."""
    removed = lumping.block < 0
    if not removed.any():
        return lumping
    mean = layer.activation(inputs @ weight.T + bias).mean(axis=0)
    return Lumping(
        lumping.block, lumping.scale, np.where(removed, mean, lumping.offset), lumping.n_blocks
    )


def _output_error(problem: ChainProblem, layers: list[ReducedLayer], rows: _Rows) -> float:
    weights = [(layer.weight, layer.bias) for layer in layers]
    output = forward_chain(weights, problem.system, rows.inputs)[-1]
    return float(np.mean((output - rows.output) ** 2))


@dataclass
class Exact(Method):
    """The exact, data-free lumping of Ressi et al.: eps = 0 backward equivalence, where
    Relu/LeakyRelu neurons with positively proportional rows (over earlier layers'
    blocks) merge with the scale folded into the outgoing weights. Lossless."""

    name: str = "exact"
    lossless: bool = True

    def compress(self, problem: ChainProblem) -> ChainResult:
        return Lump(PartitionOptions(eps=0.0)).compress(ChainProblem(problem.system))
