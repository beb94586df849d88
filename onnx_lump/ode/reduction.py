"""Stage 4: the reduced network of a partition.

Each block keeps one neuron whose incoming row and bias are the mean of the block's
canonical rows, and whose outgoing column is the sum of the block's columns with each
member's scale folded in; constant neurons and sign-flip offsets move into the next
bias. When every block holds equal canonical rows (epsilon 0) the reduction is exact.

The kept neuron is expressed in the units of the block's first member, so a neuron that
merges with nothing keeps its original weights bit for bit.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from onnx_lump.activations import Activation, ActivationKind
from onnx_lump.ode.encoding import Lumping, OdeSystem, aggregate, row_step
from onnx_lump.ode.partition import Partition
from onnx_lump.types import ReducedLayer

__all__ = [
    "block_anchors",
    "reduce_layer",
    "reduce_system",
]


def reduce_system(system: OdeSystem, partition: Partition) -> list[ReducedLayer]:
    """New weights for every layer of ``system`` (hidden layers narrowed, outputs kept)."""
    if partition.reduced is not None and partition.system is system:
        return list(partition.reduced)  # built with the partition, from the same aggregation
    reduced = []
    upstream = Lumping.identity(len(system.inputs))
    for layer, lumping in zip(system.hidden, partition.lumpings, strict=True):
        coefficients, bias = aggregate(layer, upstream, stored=True)
        kept, upstream = reduce_layer(coefficients, bias, lumping, layer.activation)
        reduced.append(kept)
    coefficients, bias = aggregate(system.layers[-1], upstream, stored=True)
    reduced.append(ReducedLayer(coefficients, bias))
    return reduced


def reduce_layer(
    coefficients: np.ndarray,
    bias: np.ndarray,
    lumping: Lumping,
    activation: Activation,
    dtype: npt.DTypeLike | None = None,
) -> tuple[ReducedLayer, Lumping]:
    """One neuron per block, and how the layer's original neurons are expressed through
    the kept ones (the lumping the next layer must be aggregated with).

    The kept neuron's row is the block mean of the canonical rows, expressed in the
    units of the block's first member; when the lumping names a representative per
    block, the kept neuron is that member, unchanged. A block of one keeps its neuron's
    row as it is, and only the rows of blocks with several members are read twice.

    The kept rows are in ``dtype`` (default: the coefficients'), each rounded once from
    its float64 sum: a float32 model's layer aggregated in float64 is reduced straight
    into the float32 it will be stored as, with no float64 copy of the result.
    """
    if lumping.n_blocks == lumping.size:  # nothing merged or removed: keep the layer as is
        if dtype is not None and coefficients.dtype != dtype:
            coefficients = coefficients.astype(dtype)
        return ReducedLayer(coefficients, bias), Lumping.identity(lumping.size)
    anchor = block_anchors(lumping)
    # In the coefficients' dtype: a float32 layer's merged rows are averaged in float64 and
    # rounded once, which is what storing them in the model does.
    stored = coefficients.dtype if dtype is None else np.dtype(dtype)
    weight = np.empty((lumping.n_blocks, coefficients.shape[1]), dtype=stored)
    kept_bias = np.empty(lumping.n_blocks)
    if lumping.representative is not None:
        alone = np.ones(lumping.n_blocks, dtype=bool)
    else:
        kept = np.flatnonzero(lumping.block >= 0)
        counts = np.bincount(lumping.block[kept], minlength=lumping.n_blocks)
        alone = counts == 1
        shared = np.flatnonzero(~alone)
        if shared.size:
            kept_bias[shared] = _anchored_means(
                coefficients, bias, lumping, activation, anchor, counts, shared, weight
            )
    weight[alone] = coefficients[anchor[alone]]
    kept_bias[alone] = bias[anchor[alone]]
    return ReducedLayer(weight, kept_bias), _rebase(lumping, anchor)


def block_anchors(lumping: Lumping) -> np.ndarray:
    """The member of each block that the reduced neuron is expressed in: the
    representative if the lumping names one, else the block's first member."""
    if lumping.representative is not None:
        return np.asarray(lumping.representative, dtype=np.int64)
    kept = np.flatnonzero(lumping.block >= 0)
    _, first = np.unique(lumping.block[kept], return_index=True)
    return kept[first]


def _anchored_means(
    coefficients: np.ndarray,
    bias: np.ndarray,
    lumping: Lumping,
    activation: Activation,
    anchor: np.ndarray,
    counts: np.ndarray,
    shared: np.ndarray,
    weight: np.ndarray,
) -> np.ndarray:
    """Rows (written into ``weight``) and biases (returned) of the blocks ``shared`` (two
    members or more): the mean of the members' canonical rows ``[w_j, b_j - inner_j] /
    s_j`` times the anchor's scale s_f, one sparse product over the members' rows (inner
    is the identity's offset, which comes back on the kept bias). For a float32 layer the
    product runs over bands of columns, each read in float64, so the layer is never
    copied whole into float64."""
    position = np.full(lumping.n_blocks, -1, dtype=np.int64)
    position[shared] = np.arange(shared.size)
    members = np.flatnonzero((lumping.block >= 0) & (position[np.maximum(lumping.block, 0)] >= 0))
    blocks = lumping.block[members]
    factor = lumping.scale[anchor[blocks]] / (counts[blocks] * lumping.scale[members])
    averaging = sp.csr_matrix(
        (factor, (position[blocks], members)), shape=(shared.size, lumping.size)
    )
    identity = activation.kind is ActivationKind.IDENTITY
    inner = lumping.offset if identity else 0.0
    if coefficients.dtype == np.float64 and weight.dtype == np.float64:
        weight[shared] = averaging @ coefficients
    else:  # bands of columns: no full-size float64 temporary
        over_members = averaging[:, members]
        step = row_step(members.size)
        for start in range(0, coefficients.shape[1], step):
            band = coefficients[members, start : start + step].astype(np.float64, copy=False)
            weight[shared, start : start + step] = over_members @ band
    means = averaging @ (bias - inner)
    if identity:
        means += lumping.offset[anchor[shared]]
    return means


def _rebase(lumping: Lumping, first: np.ndarray) -> Lumping:
    """Re-express every member through its block's anchor f:
    a_j = (s_j / s_f) a_f + c_j - s_j c_f / s_f."""
    scale_f, offset_f = lumping.scale[first], lumping.offset[first]
    kept = lumping.block >= 0
    ratio = np.zeros(lumping.size)
    ratio[kept] = lumping.scale[kept] / scale_f[lumping.block[kept]]
    offset = lumping.offset.copy()
    offset[kept] -= ratio[kept] * offset_f[lumping.block[kept]]
    return Lumping(lumping.block, ratio, offset, lumping.n_blocks)
