"""Weight ranges before and after the pass, for quantization-friendliness.

Int8 quantization maps each weight tensor's range onto 255 levels, so a layer whose largest
|weight| grows (a merge sums outgoing weights; a refit can pick large coefficients) loses
resolution on all its other weights. These helpers compare the dense layers of the
original and the reduced model, matched by node name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_lump.chains import DenseLayer, scan_graph
from onnx_lump.rewrite import import_graph

__all__ = ["DEFAULT_GROWTH_LIMIT", "WeightRange", "weight_range_warnings", "weight_ranges"]

logger = logging.getLogger(__name__)

# A few times the range costs a few bits of an 8-bit grid; beyond that it shows in the error.
DEFAULT_GROWTH_LIMIT = 4.0


@dataclass(frozen=True)
class WeightRange:
    """Largest |weight| and |bias| of one dense layer, in the original and reduced model."""

    layer: str
    weight_before: float
    weight_after: float
    bias_before: float
    bias_after: float

    @property
    def growth(self) -> float:
        """``weight_after / weight_before`` (1 for an all-zero layer that stays zero)."""
        if self.weight_before > 0:
            return self.weight_after / self.weight_before
        return 1.0 if self.weight_after == 0 else float("inf")


def weight_ranges(original: onnx.ModelProto, reduced: onnx.ModelProto) -> list[WeightRange]:
    """Per dense layer present in both models (same node name), max |w| and |b| before and
    after, in the original's graph order."""
    after = _layers(reduced)
    ranges = []
    for name, layer in _layers(original).items():
        new = after.get(name)
        if new is None:
            continue
        ranges.append(
            WeightRange(
                name,
                _max_abs(layer.weight),
                _max_abs(new.weight),
                _max_abs(layer.bias),
                _max_abs(new.bias),
            )
        )
    return ranges


def weight_range_warnings(
    ranges: list[WeightRange], limit: float = DEFAULT_GROWTH_LIMIT
) -> list[str]:
    """One line per layer whose largest |weight| grew more than ``limit`` times."""
    return [
        f"layer '{r.layer}': max |weight| grew {r.growth:.3g}x "
        f"({r.weight_before:.3g} -> {r.weight_after:.3g}); int8 quantization of this layer "
        "will be coarser"
        for r in ranges
        if r.growth > limit
    ]


def _layers(model: onnx.ModelProto) -> dict[str, DenseLayer]:
    scan = scan_graph(import_graph(model))
    return {layer.name: layer for chain in scan.chains for layer in chain.layers}


def _max_abs(values: np.ndarray) -> float:
    return float(np.abs(values).max()) if values.size else 0.0
