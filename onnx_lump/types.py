"""The objects the stages hand each other, at the bottom of the package so that a stage
imports the types it reads, not the stage that made them: ``ReducedLayer`` (stage 4's
new weights, read by refinement and the graph rewrite), ``Shortcut`` and ``ChainResult``
(what a compression method returns), ``SweepPoint`` (one step of a knob search or sweep)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ChainResult", "ReducedLayer", "Shortcut", "SweepPoint"]


@dataclass(frozen=True, eq=False)
class ReducedLayer:
    """New parameters of one dense layer: ``output = input @ weight.T + bias``."""

    weight: np.ndarray
    bias: np.ndarray

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


@dataclass(frozen=True, eq=False)
class Shortcut:
    """A linear skip connection: ``input of layer source @ weight.T`` is added to the
    output of dense layer ``target`` (before its activation)."""

    source: int
    target: int
    weight: np.ndarray


@dataclass(eq=False)
class ChainResult:
    """New parameters for every dense layer of a chain, plus any shortcuts to add."""

    layers: list[ReducedLayer]
    shortcuts: list[Shortcut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the method chose not to do, and why


@dataclass(frozen=True)
class SweepPoint:
    knob: float
    params_before: int
    params_after: int
    retained: float
    error: float  # NaN where not measured (the steps of a size search)
    seconds: float

    def summary(self) -> str:
        """``12.3% kept, error 4.56%`` (the error only where it was measured)."""
        kept = f"{100 * self.retained:.1f}% kept"
        return kept if np.isnan(self.error) else f"{kept}, error {100 * self.error:.3g}%"
