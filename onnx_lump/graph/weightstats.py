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

from onnx_lump.graph.io.tensordata import release_pages
from onnx_lump.graph.read.chains import scan_graph
from onnx_lump.graph.read.dense import DenseChain, DenseLayer
from onnx_lump.graph.write.importer import import_graph
from onnx_lump.types import ReducedLayer

__all__ = [
    "DEFAULT_GROWTH_LIMIT",
    "WeightRange",
    "chain_maxima",
    "chain_weight_ranges",
    "weight_range_warnings",
    "weight_ranges",
]

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
                name, _weight_max(layer), _weight_max(new), _max_abs(layer.bias), _max_abs(new.bias)
            )
        )
    return ranges


def chain_maxima(chain: DenseChain) -> list[tuple[float, float]]:
    """Largest |weight| and |bias| of each layer of a chain as stored (the "before" of
    :func:`chain_weight_ranges`, which a search computes once)."""
    return [(_before_max(layer), _max_abs(layer.bias)) for layer in chain.layers]


def chain_weight_ranges(
    chain: DenseChain,
    reduced: list[ReducedLayer],
    before: list[tuple[float, float]] | None = None,
) -> list[WeightRange]:
    """What :func:`weight_ranges` reports for the layers of one chain, from the chain's
    own arrays: ``reduced`` as the rewrite will store them (cast to the model's dtype,
    Gemm's ``alpha``/``beta`` factored out and back in), so no model is read again. Call
    before the chain is rewritten; ``before`` is :func:`chain_maxima`, if known."""
    ranges = []
    before = chain_maxima(chain) if before is None else before
    for layer, new, (before_w, before_b) in zip(chain.layers, reduced, before, strict=True):
        if layer.holds(new.weight, new.bias):  # the rewrite leaves the layer as it is
            ranges.append(WeightRange(layer.name, before_w, before_w, before_b, before_b))
            continue
        gemm = layer.node.op == "Gemm"
        alpha = layer.alpha if gemm else 1.0
        beta = layer.beta if gemm else 1.0
        if gemm and beta == 0.0 and new.bias.any():
            beta = 1.0  # the rewrite turns C on to carry the new bias
        # Dividing by |alpha|, rounding to the stored dtype and multiplying back are all
        # monotone in |w| and odd, so the largest stored |w| is that of the largest |w|:
        # no copy of the layer is needed.
        weight = _stored(np.float64(_max_abs(new.weight)) / abs(alpha), layer.dtype)
        if alpha != 1.0:
            weight = weight * abs(alpha)
        bias = _stored(new.bias / beta if beta != 0.0 else new.bias, layer.dtype) * beta
        ranges.append(WeightRange(layer.name, before_w, _max_abs(weight), before_b, _max_abs(bias)))
    return ranges


def _stored(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` as they read back after being stored as ``dtype``."""
    return np.asarray(values).astype(dtype).astype(np.float64)


def _before_max(layer: DenseLayer) -> float:
    """Largest |weight| of a layer, read from the stored values where they are the weight
    as is (:meth:`DenseLayer.stored_weight`): no float64 copy of the layer for one number."""
    stored = layer.stored_weight()
    value = _max_abs(stored)
    release_pages(stored)  # a wide layer mapped from its file is not kept resident
    return value


def _weight_max(layer: DenseLayer) -> float:
    """Largest |weight| of a layer, whose weight is then released."""
    value = _before_max(layer)
    layer.release()
    return value


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
    """``max |values|`` (NaN if any is NaN) without an absolute-value copy of the array."""
    values = np.asarray(values)
    if not values.size:
        return 0.0
    return float(np.maximum(values.max(), -values.min()))
