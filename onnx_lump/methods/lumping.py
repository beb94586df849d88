"""Neuron lumping by epsilon differential equivalence, data-free or with compensation."""

from __future__ import annotations

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

__all__ = ["DEFAULT_SIMILARITY_WITH_DATA", "Exact", "Lump"]

# Which similarity lumping uses when calibration data is given, chosen on the benchmark:
# over its 32 networks, data similarity kept 64.5% of the parameters on average at
# dRMSE <= 5% against 69.6% (weights) and 73.5% (affine) (tools/results/summary.md).
DEFAULT_SIMILARITY_WITH_DATA = Similarity.DATA
DEFAULT_RIDGE = 1e-6  # measured on the demo models: 1e-3 over-regularises, 1e-10..1e-6 agree


@dataclass
class Lump(Method):
    """Merge epsilon-equivalent neurons; with calibration data, refit each next layer.

    Data-aware mode goes front to back: partition layer l (on its current rows, or on
    its pre-activations with data similarity), keep one neuron a block, compute the
    kept neurons' activations on the calibration inputs, then refit layer l + 1 by
    ridge regression onto the original network's pre-activations of layer l + 1. A
    refit is kept only where it lowers that layer's residual, and the whole result only
    where it lowers the output error against the same merge without refits; so the
    refit never makes the calibration error worse, and eps = 0 stays exact.
    """

    options: PartitionOptions = field(default_factory=PartitionOptions)
    refit: bool = True
    ridge: float = DEFAULT_RIDGE
    name: str = "lump"

    def describe(self) -> str:
        o = self.options
        parts = [f"eps={o.eps:g}", o.equivalence.value, o.linkage.value]
        if o.similarity.value != "weights":
            parts.append(f"{o.similarity.value} similarity")
        if not o.symmetries:
            parts.append("no symmetries")
        return f"lump ({', '.join(parts)})"

    def compress(self, problem: ChainProblem) -> ChainResult:
        if problem.calibration is None:
            partition = compute_partition(problem.system, self.options)
            return ChainResult(reduce_system(problem.system, partition))
        original = forward_chain(problem.weights, problem.system, problem.calibration)
        # pre-activations of every layer of the original network: the refit targets
        targets = [x @ w.T + b for x, (w, b) in zip(original, problem.weights, strict=False)]
        forward = None
        if self.options.equivalence is Equivalence.FORWARD:
            forward = compute_partition(problem.system, self.options).lumpings
        merged = self._with_data(problem, targets, forward, refit=False)
        if not self.refit:
            return ChainResult(merged)
        refitted = self._with_data(problem, targets, forward, refit=True)
        return ChainResult(
            min(refitted, merged, key=lambda ls: _output_error(problem, ls, original[-1]))
        )

    def _with_data(
        self,
        problem: ChainProblem,
        targets: list[np.ndarray],
        forward: tuple[Lumping, ...] | None,
        refit: bool,
    ) -> list[ReducedLayer]:
        system, options = problem.system, self.options
        inputs = problem.calibration
        weight, bias = problem.weights[0]
        reduced = []
        for index, layer in enumerate(system.hidden):
            if forward is None:
                lumping = backward_lumping(
                    weight, bias, layer.activation, options, system.precision, inputs
                )
            else:
                lumping = _with_data_constants(forward[index], weight, bias, layer, inputs)
            kept, rebased = reduce_layer(weight, bias, lumping, layer.activation)
            reduced.append(kept)
            inputs = layer.activation(inputs @ kept.weight.T + kept.bias)
            weight, bias = aggregate(system.layers[index + 1], rebased)
            if refit:
                naive = ReducedLayer(weight, bias)
                fitted = refit_layer(inputs, targets[index + 1], self.ridge)
                if residual(fitted, inputs, targets[index + 1]) < residual(
                    naive, inputs, targets[index + 1]
                ):
                    weight, bias = fitted.weight, fitted.bias
        reduced.append(ReducedLayer(weight, bias))
        return reduced


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


def _output_error(problem: ChainProblem, layers: list[ReducedLayer], reference) -> float:
    weights = [(layer.weight, layer.bias) for layer in layers]
    output = forward_chain(weights, problem.system, problem.calibration)[-1]
    return float(np.mean((output - reference) ** 2))


@dataclass
class Exact(Method):
    """The exact, data-free lumping of Ressi et al.: eps = 0 backward equivalence, where
    Relu/LeakyRelu neurons with positively proportional rows (over earlier layers'
    blocks) merge with the scale folded into the outgoing weights. Lossless."""

    name: str = "exact"

    def compress(self, problem: ChainProblem) -> ChainResult:
        return Lump(PartitionOptions(eps=0.0)).compress(ChainProblem(problem.system))
