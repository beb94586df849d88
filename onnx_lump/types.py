"""The objects the stages hand each other, at the bottom of the package so that a stage
imports the types it reads, not the stage that made them: ``ReducedLayer`` (stage 4's
new weights, read by refinement and the graph rewrite), ``Shortcut`` and ``ChainResult``
(what a compression method returns), ``SweepPoint`` (one step of a knob search or sweep),
and the error measures every stage names (``METRICS``, :func:`format_error`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "COSINE",
    "METRICS",
    "RMSE",
    "ChainResult",
    "ReducedLayer",
    "Shortcut",
    "SweepPoint",
    "format_error",
]

# The error measures of a float output (--metric): the RMSE of the output change relative
# to the spread of the original's outputs, or the mean cosine distance (1 - cosine) of
# the output rows (the last axis: an embedding vector) to the original's.
RMSE = "rmse"
COSINE = "cosine"
METRICS = (RMSE, COSINE)


def format_error(value: float, metric: str = RMSE) -> str:
    """An error as printed: ``4.23%`` (relative RMSE) or ``1-cos 0.0123 (cosine 0.9877)``
    (cosine distance, so that the number is not read as an RMSE)."""
    if metric == COSINE:
        return f"1-cos {value:.3g} (cosine {1.0 - value:.4g})"
    return f"{100 * value:.3g}%"


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
    """New parameters for every dense layer of a chain, plus any shortcuts to add; for a
    gated FFN (``layers`` its up and down projections) also the gate's, whose rows pair
    with the up rows."""

    layers: list[ReducedLayer]
    shortcuts: list[Shortcut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the method chose not to do, and why
    gate: ReducedLayer | None = None


@dataclass(frozen=True)
class SweepPoint:
    knob: float
    params_before: int
    params_after: int
    retained: float
    error: float  # NaN where not measured (the steps of a size search)
    seconds: float

    def summary(self, metric: str = RMSE) -> str:
        """``12.3% kept, error 4.56%`` (the error only where it was measured, in
        ``metric``'s words: :func:`format_error`)."""
        kept = f"{100 * self.retained:.1f}% kept"
        if np.isnan(self.error):
            return kept
        return f"{kept}, {'' if metric == COSINE else 'error '}{format_error(self.error, metric)}"
