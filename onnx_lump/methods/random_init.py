"""Random weights at given widths: the ``distill`` ablation.

Refinement started from these weights instead of from a lumped network tells what
lumping's structure adds to refinement at exactly the same widths and budget. On its own
(without refinement) the network computes nothing useful.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from onnx_lump.errors import LumpError
from onnx_lump.methods.base import ChainProblem, Method
from onnx_lump.types import ChainResult, ReducedLayer

__all__ = ["RandomInit"]


@dataclass
class RandomInit(Method):
    """Hidden layers of ``widths`` (one per hidden layer of the chain) with He-scaled
    normal weights (variance 2 / fan-in for positively homogeneous activations, 1 / fan-in
    otherwise) and zero biases; the output layer likewise."""

    widths: Sequence[int] = field(default_factory=list)
    seed: int = 0
    name: str = "distill"
    needs_data: bool = True

    def describe(self) -> str:
        return f"random init (widths={list(self.widths)}, seed={self.seed})"

    def compress(self, problem: ChainProblem) -> ChainResult:
        system = problem.system
        if len(self.widths) != len(system.hidden):
            raise LumpError(
                f"random init got {len(self.widths)} widths for a chain with "
                f"{len(system.hidden)} hidden layers"
            )
        if any(int(w) < 1 for w in self.widths):
            raise LumpError(f"random init widths must be >= 1, got {list(self.widths)}")
        rng = np.random.default_rng(self.seed)
        fan_in, layers = len(system.inputs), []
        outs = [int(w) for w in self.widths] + [system.layers[-1].size]
        for layer, fan_out in zip(system.layers, outs, strict=True):
            gain = 2.0 if layer.activation.is_positively_homogeneous else 1.0
            weight = rng.standard_normal((fan_out, fan_in)) * np.sqrt(gain / fan_in)
            layers.append(ReducedLayer(weight, np.zeros(fan_out)))
            fan_in = fan_out
        return ChainResult(layers)
