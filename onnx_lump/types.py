"""The objects the stages hand each other, at the bottom of the package so that a stage
imports the types it reads, not the stage that made them: ``ReducedLayer`` (stage 4's
new weights, read by refinement and the graph rewrite), ``Shortcut`` and ``ChainResult``
(what a compression method returns)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ChainResult", "ReducedLayer", "Shortcut"]


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
