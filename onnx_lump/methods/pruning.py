"""Unstructured pruning baselines: magnitude, Wanda and elimination-compensation.

They set weights to zero and keep every layer's shape, so the dense graph does not get
smaller; their size is counted as non-zero weights plus biases.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from onnx_lump.data.calibration import forward_chain
from onnx_lump.errors import LumpError
from onnx_lump.methods.base import ChainProblem, Method
from onnx_lump.types import ChainResult, ReducedLayer

__all__ = ["EliminationCompensation", "Magnitude", "Scope", "Wanda"]


class Scope(enum.Enum):
    LAYER = "layer"  # the same sparsity in every layer
    GLOBAL = "global"  # one threshold over all layers of a chain


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise LumpError(f"sparsity must be in [0, 1), got {sparsity}")


def _prune_lowest(scores: list[np.ndarray], sparsity: float, scope: Scope) -> list[np.ndarray]:
    """Boolean keep-masks that drop the ``sparsity`` share of lowest scores."""
    if scope is Scope.GLOBAL:
        everything = np.concatenate([s.ravel() for s in scores])
        count = int(sparsity * everything.size)
        if count == 0:
            return [np.ones_like(s, dtype=bool) for s in scores]
        threshold = np.partition(everything, count - 1)[count - 1]
        below = [s <= threshold for s in scores]
        # ties at the threshold: drop only as many as needed, in a fixed order
        excess = sum(int(b.sum()) for b in below) - count
        masks = []
        for s, b in zip(scores, below, strict=True):
            keep = ~b
            if excess > 0:
                tied = np.flatnonzero((s == threshold).ravel())[:excess]
                keep.ravel()[tied] = True
                excess -= tied.size
            masks.append(keep)
        return masks
    masks = []
    for s in scores:
        count = int(sparsity * s.size)
        keep = np.ones(s.size, dtype=bool)
        keep[np.argsort(s.ravel(), kind="stable")[:count]] = False
        masks.append(keep.reshape(s.shape))
    return masks


@dataclass
class Magnitude(Method):
    """Zero the weights of smallest magnitude."""

    sparsity: float = 0.5
    scope: Scope = Scope.LAYER
    name: str = "magnitude"
    structured: bool = False

    def describe(self) -> str:
        return f"magnitude (sparsity={self.sparsity:g}, {self.scope.value})"

    def compress(self, problem: ChainProblem) -> ChainResult:
        _check_sparsity(self.sparsity)
        weights = problem.weights
        masks = _prune_lowest([np.abs(w) for w, _ in weights], self.sparsity, self.scope)
        return ChainResult(
            [ReducedLayer(w * m, b.copy()) for (w, b), m in zip(weights, masks, strict=True)]
        )


@dataclass
class Wanda(Method):
    """Wanda: per output row, drop the weights with the lowest ``|W_ij| * ||X_j||_2``,
    where X is the layer's input on the calibration data, computed through the already
    pruned earlier layers."""

    sparsity: float = 0.5
    name: str = "wanda"
    structured: bool = False
    needs_data: bool = True

    def describe(self) -> str:
        return f"wanda (sparsity={self.sparsity:g})"

    def compress(self, problem: ChainProblem) -> ChainResult:
        _check_sparsity(self.sparsity)
        assert problem.calibration is not None, "needs_data: callers give calibration rows"
        inputs, layers = problem.calibration, []
        for index, (weight, bias) in enumerate(problem.weights):
            scores = np.abs(weight) * np.linalg.norm(inputs, axis=0)[None, :]
            count = int(self.sparsity * weight.shape[1])
            keep = np.ones_like(weight, dtype=bool)
            lowest = np.argsort(scores, axis=1, kind="stable")[:, :count]
            np.put_along_axis(keep, lowest, False, axis=1)
            layers.append(ReducedLayer(weight * keep, bias.copy()))
            activation = problem.system.layers[index].activation
            inputs = activation(inputs @ layers[-1].weight.T + bias)
        return ChainResult(layers)


@dataclass
class EliminationCompensation(Method):
    """Elimination-compensation pruning: remove weight w_ij and shift bias b_i by the
    optimal amount; the importance is the expected squared output change left after
    that shift, to first order:

        I_ij = w_ij^2 (E[G_i x_j^2] - E[G_i x_j]^2 / E[G_i]),   db_i = w_ij E[G_i x_j] / E[G_i]

    with G_i = |d outputs / d z_i|^2 per sample, from one backward pass of output
    sensitivities over the calibration data for all weights at once. The bias shifts
    of all pruned weights are applied.
    """

    sparsity: float = 0.5
    scope: Scope = Scope.GLOBAL
    name: str = "ec"
    structured: bool = False
    needs_data: bool = True

    def describe(self) -> str:
        return f"ec (sparsity={self.sparsity:g}, {self.scope.value})"

    def compress(self, problem: ChainProblem) -> ChainResult:
        _check_sparsity(self.sparsity)
        weights, system = problem.weights, problem.system
        assert problem.calibration is not None, "needs_data: callers give calibration rows"
        values = forward_chain(weights, system, problem.calibration)
        sensitivities = _output_sensitivities(weights, system, values)
        importances, shifts = [], []
        n = problem.calibration.shape[0]
        for (weight, _), x, g in zip(weights, values, sensitivities, strict=False):
            g_sum = g.sum(axis=0)  # (out,)
            gx = g.T @ x / n  # E[G_i x_j]
            gx2 = g.T @ (x * x) / n  # E[G_i x_j^2]
            mean_g = np.maximum(g_sum / n, 1e-300)[:, None]
            importances.append(weight**2 * np.maximum(gx2 - gx**2 / mean_g, 0.0))
            shifts.append(weight * gx / mean_g)
        masks = _prune_lowest(importances, self.sparsity, self.scope)
        layers = []
        for (weight, bias), keep, shift in zip(weights, masks, shifts, strict=True):
            layers.append(ReducedLayer(weight * keep, bias + (shift * ~keep).sum(axis=1)))
        return ChainResult(layers)


def _output_sensitivities(weights, system, values) -> list[np.ndarray]:
    """Per layer, G (samples x neurons): the squared norm over chain outputs of
    d output / d pre-activation, by back-propagating per-sample Jacobians."""
    jacobian = None  # (samples, outputs, neurons of the current layer)
    result = []
    for index in reversed(range(len(weights))):
        weight, bias = weights[index]
        if jacobian is None:
            n, out = values[-1].shape
            jacobian = np.broadcast_to(np.eye(out), (n, out, out))
        else:
            pre = values[index] @ weight.T + bias
            slope = system.layers[index].activation.derivative(pre)
            jacobian = (jacobian @ weights[index + 1][0]) * slope[:, None, :]
        result.append(np.einsum("soi,soi->si", jacobian, jacobian))
    return result[::-1]
