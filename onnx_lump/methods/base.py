"""The one interface every compression method implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from onnx_lump.data.cache import ChainCache
from onnx_lump.ode.encoding import OdeSystem
from onnx_lump.types import ChainResult

__all__ = ["ChainProblem", "Method"]


@dataclass(frozen=True, eq=False)
class ChainProblem:
    """A chain to compress: its ODE encoding and, when given, its input on the fitting
    share of the calibration data and on the held-out share (samples x input features,
    float64). Methods fit on ``calibration`` only; ``holdout`` may choose between fits
    (a ridge strength) or confirm what the fitting rows suggest (a constant neuron).

    ``original_calibration`` / ``original_holdout`` are the chain's inputs in the original
    model on the same rows where they differ from ``calibration`` / ``holdout`` (sequential
    calibration: the chains before this one are compressed already). The original chain's
    outputs, which every fit aims at, are computed from them."""

    system: OdeSystem
    calibration: np.ndarray | None = None
    holdout: np.ndarray | None = None
    # knob-independent results kept across the calls of one search (onnx_lump.data.cache)
    cache: ChainCache | None = field(default=None, repr=False)
    original_calibration: np.ndarray | None = field(default=None, repr=False)
    original_holdout: np.ndarray | None = field(default=None, repr=False)

    @property
    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(layer.coefficients, layer.bias) for layer in self.system.layers]


class Method(abc.ABC):
    """A compression method; ``structured`` methods make layers narrower, the others
    only zero weights (the dense graph keeps its size). ``lossless`` methods promise the
    same function on every input, so nothing is ever refined after them."""

    name: str = "method"
    structured: bool = True
    needs_data: bool = False
    lossless: bool = False

    @abc.abstractmethod
    def compress(self, problem: ChainProblem) -> ChainResult:
        """Compress one chain."""

    @property
    def refined_by_default(self) -> bool:
        """Whether refinement follows when calibration inputs are given and nothing says
        otherwise: after structured methods that do not promise losslessness."""
        return self.structured and not self.lossless

    def knob_hint(
        self, problem: ChainProblem, width_share: float, slack: float = 0.0
    ) -> float | None:
        """A knob at which the chain's first hidden layer keeps about ``width_share`` of
        its neurons (or down to ``slack`` of it fewer: a rough hint, cheaper), where a
        size search may start; None (the default) when the method has no cheaper way to
        tell than compressing."""
        return None

    def probe(self) -> Method | None:
        """A cheaper method whose layers, at the same knob, keep about as many neurons as
        this one's, for a size search to learn from before a full step; None (the
        default) when there is none."""
        return None

    def describe(self) -> str:
        return self.name
