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
# A neuron whose activation varies this little, relative to the layer's median, is
# constant on the calibration data.
_DATA_CONSTANT = 1e-3


class Similarity(enum.Enum):
    WEIGHTS = "weights"  # rows of coefficients and bias
    DATA = "data"  # pre-activations on calibration inputs
    AFFINE = "affine"  # activations on calibration inputs, equal up to an affine map


class Equivalence(enum.Enum):
    BACKWARD = "backward"
    FORWARD = "forward"


@dataclass(frozen=True)
class PartitionOptions:
    eps: float = 0.0
    equivalence: Equivalence = Equivalence.BACKWARD
    linkage: Linkage = Linkage.SINGLE
    symmetries: bool = True
    similarity: Similarity = Similarity.WEIGHTS

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
        upstream = backward_lumping(coefficients, bias, layer.activation, options, system.precision)
        lumpings.append(upstream)
    return lumpings


def backward_lumping(
    coefficients: np.ndarray,
    bias: np.ndarray,
    activation: Activation,
    options: PartitionOptions,
    precision: float,
    inputs: np.ndarray | None = None,
) -> Lumping:
    """The backward lumping of one layer whose rows are already aggregated over upstream
    blocks. Given calibration ``inputs`` (N samples x upstream blocks) and eps > 0,
    neurons whose activation is constant on them are folded into the next bias; with
    ``options.similarity`` DATA, neurons are compared by their canonical pre-activations
    on ``inputs`` instead of by their weights."""
    constant = _small_rows(coefficients, options.eps, precision)
    if options.similarity is not Similarity.WEIGHTS and inputs is None:
        raise LumpError(f"{options.similarity.value} similarity needs calibration inputs (--calib)")
    if options.similarity is Similarity.AFFINE and options.eps > 0:
        return _affine_lumping(coefficients, bias, activation, inputs, constant, options)
    scale, offset = _symmetry_transform(coefficients, bias, activation, constant, options)
    every_row = Lumping(np.zeros(len(bias), dtype=np.int64), scale, offset, 1)
    rows = canonical_rows(coefficients, bias, every_row, activation)
    value = activation(bias)  # what a neuron with vanishing coefficients outputs
    data_constant = np.zeros_like(constant)
    if inputs is not None:
        data_rows, data_constant, mean = _data_rows(rows, inputs, activation, constant, options)
        value = np.where(constant, value, scale * mean + offset)
        if options.similarity is Similarity.DATA and options.eps > 0:
            rows = (
                data_rows  # agreement on the data is not agreement everywhere: eps 0 uses weights
            )
    removed = constant | data_constant
    offset = np.where(removed, value, offset)
    scale = np.where(removed, 0.0, scale)
    return _lumping_from_groups(
        rows, removed, scale, offset, precision, options, unlinked=data_constant & ~constant
    )


def _affine_lumping(
    coefficients: np.ndarray,
    bias: np.ndarray,
    activation: Activation,
    inputs: np.ndarray,
    constant: np.ndarray,
    options: PartitionOptions,
) -> Lumping:
    """Neurons whose activations on the data agree up to an affine map.

    Activations are standardised (mean 0, deviation 1) and signed along the layer's first
    principal direction, so the L1 distance of two rows is the mean absolute difference
    of the standardised signals (0 for correlation 1; about 0.11 for correlation 0.99).
    Each group keeps its medoid unchanged; every other member is replaced by the least-
    squares fit ``a_j ~ alpha_j a_rep + beta_j``, which the next layer absorbs.
    Used for eps > 0 only: agreement on the data is not agreement everywhere.
    """
    post = activation(inputs @ coefficients.T + bias)  # (N, n)
    n_samples = post.shape[0]
    mean, spread = post.mean(axis=0), post.std(axis=0)
    removed = constant | _constant_on_data(spread, constant)
    value = np.where(constant, activation(bias), mean)
    if removed.all():
        removed = removed.copy()
        removed[0] = False
    live = np.flatnonzero(~removed)
    standard = (post[:, live] - mean[live]) / np.where(spread[live] > 0, spread[live], 1.0)
    rows = (standard * _principal_signs(standard)).T / n_samples
    groups = number_by_first_row(group_rows(rows, options.eps, options.linkage))
    n_blocks = int(groups.max()) + 1
    representative = live[_medoids(rows, groups, n_blocks)]
    block = np.full(len(bias), -1, dtype=np.int64)
    block[live] = groups
    rep = representative[groups]
    centred = post[:, live] - mean[live]
    rep_centred = post[:, rep] - mean[rep]
    alpha = (centred * rep_centred).mean(axis=0) / np.maximum(spread[rep] ** 2, 1e-300)
    scale = np.zeros(len(bias))
    scale[live] = alpha
    offset = value.copy()
    offset[live] = mean[live] - alpha * mean[rep]
    scale[representative], offset[representative] = 1.0, 0.0
    return Lumping(block, scale, offset, n_blocks, representative)


def _principal_signs(standard: np.ndarray) -> np.ndarray:
    """+-1 per column: the sign of its loading on the first principal direction, so that
    anti-correlated neurons line up (a few power iterations)."""
    direction = np.ones(standard.shape[1])
    for _ in range(20):
        direction = standard.T @ (standard @ direction)
        norm = np.linalg.norm(direction)
        if norm == 0:
            break
        direction /= norm
    return np.where(direction < 0, -1.0, 1.0)


def _medoids(rows: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Index (into rows) of the member nearest to each group's mean row."""
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    means = np.zeros((n_groups, rows.shape[1]))
    np.add.at(means, groups, rows)
    means /= counts[:, None]
    distance = np.abs(rows - means[groups]).sum(axis=1)
    order = np.lexsort((distance, groups))
    return order[np.flatnonzero(np.diff(groups[order], prepend=-1))]


def _data_rows(
    rows: np.ndarray,
    inputs: np.ndarray,
    activation: Activation,
    constant: np.ndarray,
    options: PartitionOptions,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical pre-activations on the data, scaled so that the L1 distance of two rows is
    their mean absolute difference in units of the layer's typical spread; the neurons
    whose activation is constant on the data (dead Relu, saturated Tanh/Sigmoid: a
    standard deviation below 1e-3 of the layer's median; only for eps > 0); and those
    activations' means."""
    pre = rows[:, :-1] @ inputs.T + rows[:, -1:]  # (n, N): linear in the canonical row
    spread = _median_or_one(pre[~constant].std(axis=1))
    post = activation(pre)
    data_constant = _constant_on_data(post.std(axis=1), constant)
    if options.eps == 0:
        data_constant[:] = False  # constant on this data is not constant on all data
    return pre / (pre.shape[1] * spread), data_constant, post.mean(axis=1)


def _constant_on_data(variation: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """Neurons whose activation varies on the data by less than _DATA_CONSTANT times the
    layer's median variation (``constant`` rows left out of the median)."""
    return variation <= _DATA_CONSTANT * _median_or_one(variation[~constant])


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
    l1 = _row_l1(rows)
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
    unlinked: np.ndarray | None = None,
) -> Lumping:
    """Group all rows but the ``unlinked`` ones, then drop the removed ones from their
    groups.

    Rows removed for being within eps of a constant still take part in the linkage, so
    that a larger epsilon, which removes more rows, never splits a group that a smaller
    one formed. Rows ``unlinked`` (constant on the data, whatever their weights) must not
    bridge two live neurons and are left out of the grouping.
    """
    if removed.all():
        # A layer of width 0 is not a valid graph; keep one neuron as it is.
        removed, scale, offset = removed.copy(), scale.copy(), offset.copy()
        removed[0], scale[0], offset[0] = False, 1.0, 0.0
    linked = np.ones(len(removed), dtype=bool) if unlinked is None else ~unlinked
    linked |= ~removed
    candidates = rows if linked.all() else rows[linked]  # wide layers: avoid a copy
    eps = options.eps + _ROUNDING_UNITS * precision * float(_row_l1(candidates).max())
    groups = np.full(len(removed), -1, dtype=np.int64)
    groups[linked] = group_rows(candidates, eps, options.linkage)
    kept = np.flatnonzero(~removed)
    block = np.full(len(removed), -1, dtype=np.int64)
    block[kept] = number_by_first_row(groups[kept])
    return Lumping(block, np.where(removed, 0.0, scale), offset, int(block.max()) + 1)


def _row_l1(rows: np.ndarray, chunk: int = 256) -> np.ndarray:
    """L1 norm of every row, a block of rows at a time (no full-size temporary)."""
    return np.concatenate(
        [np.abs(rows[i : i + chunk]).sum(axis=1) for i in range(0, len(rows), chunk)]
        or [np.zeros(0)]
    )


def _membership(lumping: Lumping) -> np.ndarray:
    """(n_blocks x size) 0/1 matrix of block membership."""
    matrix = np.zeros((lumping.n_blocks, lumping.size))
    kept = np.flatnonzero(lumping.block >= 0)
    matrix[lumping.block[kept], kept] = 1.0
    return matrix
