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

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnx_lump.activations import Activation, ActivationKind
from onnx_lump.errors import LumpError
from onnx_lump.graph.io.tensordata import release_pages
from onnx_lump.ode.canonical_rows import CanonicalRows
from onnx_lump.ode.data_grouping import group_data_rows
from onnx_lump.ode.data_similarity import DataRows, affine_lumping, read_data_rows
from onnx_lump.ode.encoding import Lumping, OdeSystem, aggregate, row_step
from onnx_lump.ode.grouping import group_rows, number_by_first_row, projection_directions
from onnx_lump.ode.numerics import matvec64, median_or_one
from onnx_lump.ode.partition import Equivalence, Partition, PartitionOptions, Similarity
from onnx_lump.ode.reduction import block_anchors, reduce_layer
from onnx_lump.types import ReducedLayer

__all__ = ["backward_lumping", "compute_partition"]

# Epsilon 0 still has to absorb rounding: rows stored in the model's dtype and rescaled
# in float64 agree only to a few units of the dtype's precision.
_ROUNDING_UNITS = 16.0


def compute_partition(system: OdeSystem, options: PartitionOptions) -> Partition:
    """The coarsest partition of the hidden variables found by the chosen equivalence."""
    if options.equivalence is Equivalence.FORWARD:
        return Partition(options, tuple(_forward(system, options)))
    lumpings, reduced = _backward(system, options)
    return Partition(options, tuple(lumpings), system, tuple(reduced))


def _backward(
    system: OdeSystem, options: PartitionOptions
) -> tuple[list[Lumping], list[ReducedLayer]]:
    """Front to back, one aggregation a layer, shared by the partition and the reduction.

    Each layer is aggregated over the reduced upstream neurons (block B is its anchor
    member f, see :func:`onnx_lump.ode.reduction.reduce_layer`), which is what the reduction
    needs; the partition's rows, over the blocks in canonical units, differ from those
    only by a factor ``scale_f`` per column and ``offset_f`` folded into the bias, and
    :func:`backward_lumping` applies both as ``units`` while it reads the rows.

    A layer memory-mapped from the model's file hands its pages back once it is done
    (:func:`onnx_lump.graph.io.tensordata.release_pages`): a chain of wide layers is read one
    layer at a time, not held whole.
    """
    lumpings, reduced = [], []
    upstream = Lumping.identity(len(system.inputs))
    units = None
    for layer in system.hidden:
        coefficients, bias = aggregate(layer, upstream, stored=True)
        lumping = backward_lumping(
            coefficients, bias, layer.activation, options, system.precision, units=units
        )
        # a float32 layer's kept rows rounded once, as the rewrite stores them: the
        # chain's reduced layers wait for the rewrite at the size they will have there
        store = np.float32 if layer.values.dtype == np.float32 else None
        kept, upstream = reduce_layer(coefficients, bias, lumping, layer.activation, store)
        lumpings.append(lumping)
        reduced.append(kept)
        anchor = block_anchors(lumping)
        column_scale, column_offset = lumping.scale[anchor], lumping.offset[anchor]
        trivial = np.all(column_scale == 1.0) and not column_offset.any()
        units = None if trivial else (column_scale, column_offset)
        del coefficients, kept
        release_pages(layer.values)
    reduced.append(ReducedLayer(*aggregate(system.layers[-1], upstream, stored=True, final=True)))
    release_pages(system.layers[-1].values)
    return lumpings, reduced


def backward_lumping(
    coefficients: np.ndarray,
    bias: np.ndarray,
    activation: Activation,
    options: PartitionOptions,
    precision: float,
    inputs: np.ndarray | None = None,
    holdout: np.ndarray | None = None,
    *,
    units: tuple[np.ndarray, np.ndarray] | None = None,
    remember: Callable[[np.ndarray, Callable[[], Any]], Any] | None = None,
) -> Lumping:
    """The backward lumping of one layer whose rows are already aggregated over upstream
    blocks. Given calibration ``inputs`` (N samples x upstream blocks) and eps > 0,
    neurons whose activation is constant on them, with a margin and on the ``holdout``
    rows too (see :func:`onnx_lump.ode.data_similarity._supported_constants`), are folded
    into the next bias; with ``options.similarity`` DATA, neurons are compared by their
    canonical pre-activations on ``inputs`` instead of by their weights.

    ``units`` (column scale, column offset), data-free only, says that the rows to
    compare are ``coefficients * scale`` with bias ``bias + coefficients @ offset``;
    they are formed a few rows at a time instead of as a second copy of the layer.

    ``remember(constant, compute)``, when given, serves the comparison on the data (its
    rows and statistics) for a layer state whose inputs do not change (a search's
    steps): at eps > 0 they depend on eps only through ``constant``, the rows within eps
    of a constant row, so steps at other eps with the same ones reuse them.
    """
    if options.similarity is not Similarity.WEIGHTS and inputs is None:
        raise LumpError(f"{options.similarity.value} similarity needs calibration inputs (--calib)")
    if units is not None and inputs is not None:
        raise ValueError("units are for data-free rows: inputs are in the units of the rows")
    column_scale = None if units is None else units[0]
    if units is not None and units[1].any():
        bias = bias + matvec64(coefficients, units[1])
    directions = projection_directions(coefficients.shape[1] + 1)
    stats = _RowStatistics.of(coefficients, column_scale, activation, directions[:-1])
    constant = stats.small(options.eps, precision)
    if options.similarity is Similarity.AFFINE and options.eps > 0:
        assert inputs is not None  # checked above: affine similarity needs inputs
        return affine_lumping(coefficients, bias, activation, inputs, constant, options, holdout)
    scale, offset = _symmetry_transform(stats, bias, activation, constant, options)
    inner = offset if activation.kind is ActivationKind.IDENTITY else 0.0
    divisor = np.where(scale != 0, scale, np.inf)  # a zero Relu row stays a zero row
    canonical = CanonicalRows(coefficients, column_scale, bias - inner, divisor)
    canonical.known_projections = (directions, stats.projections)
    rows: CanonicalRows | DataRows = canonical
    row_l1 = (stats.l1 + np.abs(bias - inner)) / np.abs(divisor)
    value = activation(bias)  # what a neuron with vanishing coefficients outputs
    data_constant = np.zeros_like(constant)
    # at eps 0 the data decides nothing (constant on the data is not constant everywhere)
    if inputs is not None and options.eps > 0:
        compare_on_data = options.similarity is Similarity.DATA
        compare = functools.partial(
            read_data_rows,
            canonical,
            inputs,
            activation,
            constant,
            options,
            holdout,
            compare_on_data,
        )
        found = compare() if remember is None else remember(constant, compare)
        data_rows, data_l1, data_constant, mean = found
        value = np.where(constant, value, scale * mean + offset)
        if compare_on_data:
            # agreement on the data is not agreement everywhere: eps 0 uses weights
            assert data_rows is not None  # kept when compared on the data
            rows, row_l1 = data_rows, data_l1
    removed = constant | data_constant
    offset = np.where(removed, value, offset)
    scale = np.where(removed, 0.0, scale)
    return _lumping_from_groups(
        rows,
        removed,
        scale,
        offset,
        precision,
        options,
        unlinked=data_constant & ~constant,
        row_l1=row_l1,
    )


@dataclass(frozen=True)
class _RowStatistics:
    """Per row of ``coefficients * column_scale``: L1 norm, squared L2 norm, the sign of
    the largest entry (each only where ``activation``'s symmetry needs it) and the
    product with ``directions``; read a few rows at a time, once (no full-size
    temporary, and no second pass over a wide layer for the grouping's projections)."""

    l1: np.ndarray
    squares: np.ndarray
    sign: np.ndarray
    projections: np.ndarray

    @classmethod
    def of(
        cls,
        coefficients: np.ndarray,
        column_scale: np.ndarray | None,
        activation: Activation,
        directions: np.ndarray,
    ) -> _RowStatistics:
        n, width = coefficients.shape
        l1, squares, sign = np.zeros(n), np.zeros(n), np.ones(n)
        projections = np.zeros((n, directions.shape[1]))
        kind = activation.kind
        need_squares = activation.is_positively_homogeneous or kind is ActivationKind.IDENTITY
        need_sign = not activation.is_positively_homogeneous
        step = row_step(width)
        for start in range(0, n if width else 0, step):
            rows = np.asarray(coefficients[start : start + step], dtype=np.float64)
            if column_scale is not None:
                rows = rows * column_scale
            part = slice(start, start + len(rows))
            magnitude = np.abs(rows)
            l1[part] = magnitude.sum(axis=1)
            if need_sign:
                largest = magnitude.argmax(axis=1)
                sign[part] = np.where(rows[np.arange(len(rows)), largest] < 0, -1.0, 1.0)
            if need_squares:
                squares[part] = np.einsum("ij,ij->i", rows, rows)
            projections[part] = rows @ directions
        return cls(l1, squares, sign, projections)

    def small(self, eps: float, precision: float) -> np.ndarray:
        """Rows within eps (L1) of zero, with the exact case allowing for rounding."""
        tolerance = _ROUNDING_UNITS * precision * (float(self.l1.max()) if self.l1.size else 0.0)
        return self.l1 <= eps + tolerance


def _forward(system: OdeSystem, options: PartitionOptions) -> list[Lumping]:
    hidden = system.hidden
    lumpings: list[Lumping] = []  # back to front
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
        lumpings.append(downstream)
    return lumpings[::-1]


def _small_rows(rows: np.ndarray, eps: float, precision: float) -> np.ndarray:
    """Rows within eps (L1) of zero, with the exact case allowing for rounding."""
    l1 = _row_l1(rows)
    tolerance = _ROUNDING_UNITS * precision * (float(l1.max()) if l1.size else 0.0)
    return l1 <= eps + tolerance


def _symmetry_transform(
    stats: _RowStatistics,
    bias: np.ndarray,
    activation: Activation,
    constant: np.ndarray,
    options: PartitionOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron (scale, offset) with a_j = scale_j * sigma(canonical row_j) + offset_j;
    ``constant`` rows are left out of the median norm."""
    n = len(bias)
    scale: np.ndarray = np.ones(n)
    offset: np.ndarray = np.zeros(n)
    kind = activation.kind
    if options.symmetries and n:
        sign = stats.sign
        if activation.is_positively_homogeneous:
            norms = np.sqrt(stats.squares + np.square(bias))
            scale = norms / median_or_one(norms[~constant])
        elif kind is ActivationKind.IDENTITY:
            norms = np.sqrt(stats.squares)
            scale = sign * norms / median_or_one(norms[~constant])
            offset = bias.copy()
        elif activation.point_symmetry is not None:
            # sigma(-z) = k - sigma(z): Tanh and other odd ones (k = 0), Sigmoid (k = 1)
            scale, offset = sign, (sign < 0) * activation.point_symmetry
    return scale, offset


def _lumping_from_groups(
    rows: np.ndarray | CanonicalRows | DataRows,
    removed: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    precision: float,
    options: PartitionOptions,
    unlinked: np.ndarray | None = None,
    row_l1: np.ndarray | None = None,
) -> Lumping:
    """Group all rows but the ``unlinked`` ones, then drop the removed ones from their
    groups; ``rows`` may be a :class:`onnx_lump.ode.grouping.RowSource` whose L1 norms are
    ``row_l1``.

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
    index = None
    if linked.all():
        candidates = rows  # wide layers: avoid a copy
    else:
        index = np.flatnonzero(linked)
        candidates = rows[index] if isinstance(rows, np.ndarray) else rows.subset(index)
    if row_l1 is None:
        assert isinstance(candidates, np.ndarray), "a row source comes with its rows' L1 norms"
        l1 = _row_l1(candidates)
    else:
        l1 = row_l1 if index is None else row_l1[index]
    eps = options.eps + _ROUNDING_UNITS * precision * float(l1.max())
    groups = np.full(len(removed), -1, dtype=np.int64)
    if isinstance(candidates, DataRows):  # long rows
        groups[linked] = group_data_rows(candidates, eps, options.linkage)
    else:
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
