"""Two methods one after the other, e.g. ``lump+linear``."""

from __future__ import annotations

from dataclasses import dataclass

from onnx_lump.methods.base import ChainProblem, Method
from onnx_lump.ode.encoding import OdeLayer, OdeSystem
from onnx_lump.types import ChainResult

__all__ = ["Sequence"]


@dataclass
class Sequence(Method):
    """Apply ``first``, then ``second`` to the chain ``first`` produced. ``first`` must
    not add shortcuts (only the last method may)."""

    first: Method
    second: Method

    def __post_init__(self) -> None:
        self.name = f"{self.first.name}+{self.second.name}"
        self.structured = self.first.structured and self.second.structured
        self.needs_data = self.first.needs_data or self.second.needs_data
        self.lossless = self.first.lossless and self.second.lossless

    def describe(self) -> str:
        return f"{self.first.describe()} + {self.second.describe()}"

    def compress(self, problem: ChainProblem) -> ChainResult:
        first = self.first.compress(problem)
        if first.shortcuts:
            raise ValueError(f"{self.first.name} adds shortcuts; it must come last")
        system = problem.system
        last = len(system.layers) - 1
        layers = tuple(
            OdeLayer(
                tuple(
                    f"y{i}" if index == last else f"h{index + 1}_{i}"
                    for i in range(new.out_features)
                ),
                new.weight,
                new.bias,
                layer.activation,
            )
            for index, (layer, new) in enumerate(zip(system.layers, first.layers, strict=True))
        )
        reduced = OdeSystem(system.name, system.inputs, layers, system.precision)
        return self.second.compress(ChainProblem(reduced, problem.calibration, problem.holdout))
