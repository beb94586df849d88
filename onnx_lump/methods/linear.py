"""Linearity-based compression: Relu-like neurons that are (almost) always active behave
linearly, so they leave the nonlinear layer and become a linear shortcut.

For hidden layer l with input x, a neuron active on at least the share ``tau`` of the
calibration inputs is treated as ``a_i = w_i . x + b_i`` (for LeakyRelu, a neuron never
active is linear too, with slope alpha). With L the set of such neurons, the next layer's
pre-activation ``V a + c`` becomes ``V[:, ~L] a[~L] + (V[:, L] W[L]) x + V[:, L] b[L] + c``:
layer l loses the rows of L, layer l + 1 loses their columns, and a shortcut
``x @ (V[:, L] W[L]).T`` is added to layer l + 1's output. Relu neurons never active are
constant 0 and are removed outright. A layer is folded only where this lowers the
parameter count, and never in two adjacent layers (the successor of a folded layer
receives the shortcut), choosing the layers that save the most. At tau = 1 the result
is exact on the calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_lump.activations import ActivationKind
from onnx_lump.data.calibration import forward_chain
from onnx_lump.errors import LumpError
from onnx_lump.methods.base import ChainProblem, Method
from onnx_lump.types import ChainResult, ReducedLayer, Shortcut

__all__ = ["LinearFolding"]

# Standard deviations of its pre-activation a neuron must stay below 0 to count as dead.
_DEAD_MARGIN = 3.0


@dataclass
class LinearFolding(Method):
    tau: float = 1.0
    name: str = "linear"
    needs_data: bool = True

    def describe(self) -> str:
        if self.tau == 1.0:
            return "linear (tau=1: lossless on the calibration inputs, not on every input)"
        return f"linear (tau={self.tau:g})"

    def compress(self, problem: ChainProblem) -> ChainResult:
        if not 0.0 < self.tau <= 1.0:
            raise LumpError(f"tau must be in (0, 1], got {self.tau}")
        system = problem.system
        layers = [ReducedLayer(w.copy(), b.copy()) for w, b in problem.weights]
        assert problem.calibration is not None, "needs_data: callers give calibration rows"
        values = forward_chain(problem.weights, system, problem.calibration)
        held = None
        if problem.holdout is not None:
            held = forward_chain(problem.weights, system, problem.holdout)
        plans = [
            self._plan(index, layers, values, held, system) for index in range(len(layers) - 1)
        ]
        shortcuts: list[Shortcut] = []
        for index in _best_non_adjacent([p.saved if p else 0 for p in plans]):
            plan = plans[index]
            assert plan is not None  # chosen for a positive gain: a plan saves parameters
            current, following = layers[index], layers[index + 1]
            columns = following.weight[:, plan.linear] * plan.slope[plan.linear]
            bias = following.bias + columns @ current.bias[plan.linear]
            keep = ~(plan.linear | plan.dead)
            layers[index] = ReducedLayer(current.weight[keep], current.bias[keep])
            layers[index + 1] = ReducedLayer(following.weight[:, keep], bias)
            if plan.linear.any():
                shortcuts.append(Shortcut(index, index + 1, columns @ current.weight[plan.linear]))
        return ChainResult(layers, shortcuts)

    def _plan(self, index, layers, values, held, system) -> _Plan | None:
        """Which neurons of hidden layer ``index`` fold, and the parameters that saves.
        A neuron counts as dead only when its pre-activation stays below 0 by
        _DEAD_MARGIN of its standard deviations on the fitting rows and on every
        held-out row: silence on a few hundred rows is not silence everywhere."""
        activation = system.layers[index].activation
        if not activation.is_positively_homogeneous:
            return None
        current, following = layers[index], layers[index + 1]
        pre = values[index] @ current.weight.T + current.bias
        active = (pre > 0).mean(axis=0)
        silent = pre.max(axis=0) + _DEAD_MARGIN * pre.std(axis=0) < 0
        if held is not None:
            silent &= (held[index] @ current.weight.T + current.bias <= 0).all(axis=0)
        slope = np.where(active >= self.tau, 1.0, 0.0)
        if activation.kind is ActivationKind.LEAKY_RELU:
            slope = np.where((active == 0.0) & silent, activation.alpha, slope)
        linear = slope > 0
        dead = (active == 0.0) & silent & (activation.kind is ActivationKind.RELU)
        if (linear | dead).all():  # keep one neuron so the layer stays a valid graph
            linear[0] = dead[0] = False
        fan_in, fan_out = current.weight.shape[1], following.weight.shape[0]
        per_neuron = fan_in + 1 + fan_out
        saved = int((linear | dead).sum()) * per_neuron - (fan_in * fan_out if linear.any() else 0)
        if int(dead.sum()) * per_neuron >= saved:  # the shortcut costs more than it saves
            linear = np.zeros_like(linear)
            saved = int(dead.sum()) * per_neuron
        return _Plan(linear, dead, slope, saved) if saved > 0 else None


@dataclass(frozen=True, eq=False)
class _Plan:
    linear: np.ndarray
    dead: np.ndarray
    slope: np.ndarray
    saved: int


def _best_non_adjacent(gains: list[int]) -> list[int]:
    """Indices with the largest total gain, no two adjacent (a folded layer's successor
    receives a shortcut and is not folded itself): dynamic programming on a path."""
    take, skip = 0, 0  # best totals with / without the previous index taken
    choices = []
    for gain in gains:
        take, skip, choice = skip + gain, max(take, skip), take > skip
        choices.append(choice)
    chosen, index, taking = [], len(gains) - 1, take > skip
    while index >= 0:
        if taking and gains[index] > 0:
            chosen.append(index)
            taking = False  # the previous one cannot be taken
        else:
            taking = choices[index]
        index -= 1
    return sorted(chosen)
