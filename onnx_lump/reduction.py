"""Stage 4: the reduced network of a partition.

Each block keeps one neuron whose incoming row and bias are the mean of the block's
canonical rows, and whose outgoing column is the sum of the block's columns with each
member's scale folded in; constant neurons and sign-flip offsets move into the next
bias. When every block holds equal canonical rows (epsilon 0) the reduction is exact.

The kept neuron is expressed in the units of the block's first member, so a neuron that
merges with nothing keeps its original weights bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from onnx_lump.activations import Activation, ActivationKind
from onnx_lump.equivalence import Partition
from onnx_lump.ode import Lumping, OdeSystem, aggregate, canonical_rows

__all__ = ["ReducedLayer", "reduce_layer", "reduce_system"]


@dataclass(frozen=True, eq=False)
class ReducedLayer:
    """New parameters of one dense layer: ``output = input @ weight.T + bias``."""

    weight: np.ndarray
    bias: np.ndarray

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


def reduce_system(system: OdeSystem, partition: Partition) -> list[ReducedLayer]:
    """New weights for every layer of ``system`` (hidden layers narrowed, outputs kept)."""
    reduced = []
    upstream = Lumping.identity(len(system.inputs))
    for layer, lumping in zip(system.hidden, partition.lumpings, strict=True):
        coefficients, bias = aggregate(layer, upstream)
        kept, upstream = reduce_layer(coefficients, bias, lumping, layer.activation)
        reduced.append(kept)
    coefficients, bias = aggregate(system.layers[-1], upstream)
    reduced.append(ReducedLayer(coefficients, bias))
    return reduced


def reduce_layer(
    coefficients: np.ndarray, bias: np.ndarray, lumping: Lumping, activation: Activation
) -> tuple[ReducedLayer, Lumping]:
    """One neuron per block, and how the layer's original neurons are expressed through
    the kept ones (the lumping the next layer must be aggregated with).

    The kept neuron's row is the block mean of the canonical rows, expressed in the
    units of the block's first member; when the lumping names a representative per
    block, the kept neuron is that member, unchanged.
    """
    if lumping.n_blocks == lumping.size:  # nothing merged or removed: keep the layer as is
        return ReducedLayer(coefficients, bias), Lumping.identity(lumping.size)
    rows = canonical_rows(coefficients, bias, lumping, activation)
    if lumping.representative is not None:
        anchor, block_rows = lumping.representative, rows[lumping.representative]
    else:
        anchor = np.array([members[0] for members in lumping.members()], dtype=np.int64)
        block_rows = _block_means(rows, lumping)
    kept_rows, rebased = _rebase(block_rows, lumping, activation, anchor)
    return ReducedLayer(kept_rows[:, :-1], kept_rows[:, -1]), rebased


def _block_means(rows: np.ndarray, lumping: Lumping) -> np.ndarray:
    kept = np.flatnonzero(lumping.block >= 0)
    blocks = lumping.block[kept]
    counts = np.bincount(blocks, minlength=lumping.n_blocks).astype(np.float64)
    averaging = sp.csr_matrix(
        (1.0 / counts[blocks], (blocks, kept)), shape=(lumping.n_blocks, lumping.size)
    )
    return np.asarray(averaging @ rows)


def _rebase(
    means: np.ndarray, lumping: Lumping, activation: Activation, first: np.ndarray
) -> tuple[np.ndarray, Lumping]:
    """Turn canonical block rows into rows in the units of each block's anchor member f,
    and re-express every member through that neuron: a_j = (s_j / s_f) a_f + c_j - s_j c_f / s_f."""
    scale_f, offset_f = lumping.scale[first], lumping.offset[first]
    rows = means * scale_f[:, None]
    if activation.kind is ActivationKind.IDENTITY:
        rows[:, -1] += offset_f  # the identity's offset is its own bias
    kept = lumping.block >= 0
    ratio = np.zeros(lumping.size)
    ratio[kept] = lumping.scale[kept] / scale_f[lumping.block[kept]]
    offset = lumping.offset.copy()
    offset[kept] -= ratio[kept] * offset_f[lumping.block[kept]]
    return rows, Lumping(lumping.block, ratio, offset, lumping.n_blocks)
