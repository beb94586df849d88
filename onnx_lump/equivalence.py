"""Stage 3: epsilon differential equivalences on the ODE encoding, as partitions.

``backward`` (front to back): two neurons of a layer are related when their right-hand
sides match within epsilon once the upstream variables are replaced by their blocks,
that is when the L1 distance between their rows ``[coefficients aggregated over each
upstream block, bias]`` is at most epsilon.

``forward`` (back to front, ERODE's forward equivalence): two neurons are related when
their outgoing coefficients, aggregated over each downstream block, match within epsilon,
so the block sums obey a closed ODE. This is exact at epsilon 0 only for linear layers.

With ``symmetries`` (the default), rows are first brought to a canonical form so that
exactly redundant neurons coincide: positive multiples for Relu/LeakyRelu (Ressi et al.'s
exact lumping: the scale moves to the outgoing weights), negations for Tanh (a = -a') and
Sigmoid (a = 1 - a'), proportional rows for the identity; rows whose coefficients vanish
are constants folded into the next bias. For Relu/LeakyRelu and the identity every row is
rescaled to the layer's median norm, so epsilon keeps the units of the weights.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from onnx_lump.activations import Activation, ActivationKind
from onnx_lump.errors import LumpError
from onnx_lump.grouping import Linkage, group_rows, number_by_first_row
from onnx_lump.ode import Lumping, OdeSystem, aggregate, canonical_rows

__all__ = ["Equivalence", "Partition", "PartitionOptions", "compute_partition"]

# Epsilon 0 still has to absorb rounding: rows stored in the model's dtype and rescaled
# in float64 agree only to a few units of the dtype's precision.
_ROUNDING_UNITS = 16.0


class Equivalence(enum.Enum):
    BACKWARD = "backward"
    FORWARD = "forward"


@dataclass(frozen=True)
class PartitionOptions:
    eps: float = 0.0
    equivalence: Equivalence = Equivalence.BACKWARD
    linkage: Linkage = Linkage.SINGLE
    symmetries: bool = True

    def __post_init__(self) -> None:
        if not np.isfinite(self.eps) or self.eps < 0:
            raise LumpError(f"epsilon must be a finite number >= 0, got {self.eps}")


@dataclass(frozen=True, eq=False)
class Partition:
    """One :class:`Lumping` per hidden layer of an ODE system."""

    options: PartitionOptions
    lumpings: tuple[Lumping, ...]

    @property
    def widths(self) -> list[int]:
        return [lumping.n_blocks for lumping in self.lumpings]


def compute_partition(system: OdeSystem, options: PartitionOptions) -> Partition:
    """The coarsest partition of the hidden variables found by the chosen equivalence."""
    if options.equivalence is Equivalence.BACKWARD:
        lumpings = _backward(system, options)
    else:
        lumpings = _forward(system, options)
    return Partition(options, tuple(lumpings))


def _backward(system: OdeSystem, options: PartitionOptions) -> list[Lumping]:
    lumpings = []
    upstream = Lumping.identity(len(system.inputs))
    for layer in system.hidden:
        coefficients, bias = aggregate(layer, upstream)
        constant = _small_rows(coefficients, options.eps, system.precision)
        scale, offset = _symmetry_transform(coefficients, bias, layer.activation, constant, options)
        every_row = Lumping(np.zeros(layer.size, dtype=np.int64), scale, offset, 1)
        rows = canonical_rows(coefficients, bias, every_row, layer.activation)
        scale = np.where(constant, 0.0, scale)
        offset = np.where(constant, layer.activation(bias), offset)
        upstream = _lumping_from_groups(rows, constant, scale, offset, system.precision, options)
        lumpings.append(upstream)
    return lumpings


def _forward(system: OdeSystem, options: PartitionOptions) -> list[Lumping]:
    hidden = system.hidden
    lumpings: list[Lumping] = [None] * len(hidden)  # type: ignore[list-item]
    downstream = Lumping.identity(system.layers[-1].size)
    for index in reversed(range(len(hidden))):
        layer, outgoing = hidden[index], system.layers[index + 1].coefficients
        membership = _membership(downstream)
        columns = np.asarray((membership @ outgoing).T)  # (n, downstream blocks)
        dead = _small_rows(columns, options.eps, system.precision)
        constant = _small_rows(layer.coefficients, options.eps, system.precision)
        scale = np.ones(layer.size)
        offset = np.where(constant & ~dead, layer.activation(layer.bias), 0.0)
        downstream = _lumping_from_groups(
            columns, constant | dead, scale, offset, system.precision, options
        )
        lumpings[index] = downstream
    return lumpings


def _small_rows(rows: np.ndarray, eps: float, precision: float) -> np.ndarray:
    """Rows within eps (L1) of zero, with the exact case allowing for rounding."""
    l1 = np.abs(rows).sum(axis=1)
    tolerance = _ROUNDING_UNITS * precision * (float(l1.max()) if l1.size else 0.0)
    return l1 <= eps + tolerance


def _symmetry_transform(
    coefficients: np.ndarray,
    bias: np.ndarray,
    activation: Activation,
    constant: np.ndarray,
    options: PartitionOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron (scale, offset) with a_j = scale_j * sigma(canonical row_j) + offset_j;
    ``constant`` rows are left out of the median norm."""
    n = coefficients.shape[0]
    scale, offset = np.ones(n), np.zeros(n)
    kind = activation.kind
    if options.symmetries and n:
        largest = np.abs(coefficients).argmax(axis=1)
        sign = np.where(coefficients[np.arange(n), largest] < 0, -1.0, 1.0)
        if activation.is_positively_homogeneous:
            norms = np.linalg.norm(np.column_stack([coefficients, bias]), axis=1)
            scale = norms / _median_or_one(norms[~constant])
        elif kind is ActivationKind.IDENTITY:
            norms = np.linalg.norm(coefficients, axis=1)
            scale = sign * norms / _median_or_one(norms[~constant])
            offset = bias.copy()
        elif kind is ActivationKind.TANH:
            scale = sign
        elif kind is ActivationKind.SIGMOID:
            scale, offset = sign, (sign < 0).astype(np.float64)
    return scale, offset


def _median_or_one(values: np.ndarray) -> float:
    median = float(np.median(values)) if values.size else 0.0
    return median if median > 0 else 1.0


def _lumping_from_groups(
    rows: np.ndarray,
    removed: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    precision: float,
    options: PartitionOptions,
) -> Lumping:
    """Group all rows, then drop the removed (constant or dead) ones from their groups.

    Removed rows still take part in the linkage, so that a larger epsilon, which removes
    more rows, never splits a group that a smaller one formed.
    """
    if removed.all():
        # A layer of width 0 is not a valid graph; keep one neuron as it is.
        removed, scale, offset = removed.copy(), scale.copy(), offset.copy()
        removed[0], scale[0], offset[0] = False, 1.0, 0.0
    l1 = np.abs(rows).sum(axis=1)
    eps = options.eps + _ROUNDING_UNITS * precision * float(l1.max())
    groups = group_rows(rows, eps, options.linkage)
    kept = np.flatnonzero(~removed)
    block = np.full(len(removed), -1, dtype=np.int64)
    block[kept] = number_by_first_row(groups[kept])
    return Lumping(block, np.where(removed, 0.0, scale), offset, int(block.max()) + 1)


def _membership(lumping: Lumping) -> np.ndarray:
    """(n_blocks x size) 0/1 matrix of block membership."""
    matrix = np.zeros((lumping.n_blocks, lumping.size))
    kept = np.flatnonzero(lumping.block >= 0)
    matrix[lumping.block[kept], kept] = 1.0
    return matrix
