"""Linear lumping of one layer by the span of its activations on calibration data.

A partition maps each neuron onto one block; a linear lumping maps the layer's
activations onto a few of them by any linear map. Here the kept neurons are the columns
chosen by column-pivoted QR of the layer's centred activations (the interpolative
decomposition used by Chee et al., NeurIPS 2022), and every removed neuron becomes the
least-squares combination of the kept ones plus a constant, which the next layer absorbs.

The pivots come from the activations' centred Gram matrix (neurons x neurons) by
pivoted Cholesky (LAPACK ``?pstrf``), which picks the same columns as pivoted QR of the
activations themselves: ``P.T G P = U.T U`` with ``U`` the R factor of that QR. So the
rows are read once, a chunk at a time, into a matrix that does not grow with them, and
the ordering, once made, answers every eps and every width (a size search's steps).

``eps`` is the share of the activations' energy (Frobenius norm, after centring) that
the kept neurons may leave unexplained: 0 keeps the numerical rank, 1 keeps one neuron.

:func:`readout_span_order` orders by what the next layer reads instead: each pivot is
the neuron whose part outside the span of those before it explains most of the next
layer's centred pre-activations (simultaneous orthogonal matching pursuit, in Gram form:
``X.T X`` and ``X.T X W.T`` are all it reads). Pivoted QR keeps a large-variance neuron
the next layer barely reads; this keeps the neurons its least-squares refit needs.
:func:`next_layer_order` takes its neurons at pivoted QR's widths: how many a layer
keeps stays the activations' share, which neurons is the next layer's choice. (Widths
by the next layer's share instead left all-MiniLM-L6-v2's first FFN 179 of 1,536
neurons at 50% overall, and its embeddings worse: cosine 0.912 against 0.915.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = [
    "READOUT_MAX_WIDTH",
    "READOUT_SKETCH",
    "SpanOrder",
    "SpanSelection",
    "next_layer_order",
    "readout_span_order",
    "select_span",
    "span_order",
]


@dataclass(frozen=True, eq=False)
class SpanSelection:
    """``activations[:, removed] ~= activations[:, kept] @ coefficients.T + offset``."""

    kept: np.ndarray
    removed: np.ndarray
    coefficients: np.ndarray  # (removed, kept)
    offset: np.ndarray  # (removed,)

    def keeping(self, neurons: np.ndarray) -> SpanSelection:
        """The same selection with ``neurons`` (a mask) kept too, each as itself: the
        removed neurons keep their combinations of the first kept ones (a kept neuron
        added here gets no share)."""
        moved = neurons[self.removed]
        if not moved.any():
            return self
        kept = np.union1d(self.kept, self.removed[moved])
        coefficients = np.zeros((int((~moved).sum()), kept.size))
        coefficients[:, np.searchsorted(kept, self.kept)] = self.coefficients[~moved]
        return SpanSelection(kept, self.removed[~moved], coefficients, self.offset[~moved])

    def fold(self, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The next layer's ``(weight, bias)`` reading the kept neurons only."""
        removed_columns = weight[:, self.removed]
        return (
            weight[:, self.kept] + removed_columns @ self.coefficients,
            bias + removed_columns @ self.offset,
        )


@dataclass(frozen=True, eq=False)
class SpanOrder:
    """A layer's neurons in pivot order with what each prefix leaves unexplained.

    ``factor`` is the upper-triangular ``U`` of ``P.T G P = U.T U`` (rows past ``rank``
    zero), ``order`` the permutation ``P`` as indices, ``left[k - 1]`` the share of the
    centred activations' norm that the first ``k`` pivots leave unexplained."""

    mean: np.ndarray
    order: np.ndarray
    factor: np.ndarray
    left: np.ndarray

    @property
    def width(self) -> int:
        return int(self.order.size)

    def width_for(self, eps: float) -> int:
        """The fewest pivots that leave at most ``eps`` unexplained (at least one)."""
        return int(np.argmax(self.left <= eps)) + 1

    def eps_for(self, width: int) -> float:
        """The share left unexplained by the first ``width`` pivots: the largest eps at
        which :meth:`width_for` keeps ``width`` (ties between equal shares aside)."""
        return float(self.left[min(max(width, 1), self.width) - 1])

    def select(self, eps: float) -> SpanSelection:
        return self.keep(self.width_for(eps))

    def keep(self, width: int) -> SpanSelection:
        """The first ``width`` pivots, and the rest as their least-squares combinations:
        ``U[:k, :k] C = U[:k, k:]`` (the normal equations of the centred activations in
        factored form, a triangular solve)."""
        keep = min(max(int(width), 1), self.width)
        head = self.factor[:keep, :keep]
        rank = int(np.count_nonzero(np.abs(np.diag(head)) > 0))
        coefficients = np.zeros((self.width - keep, keep))
        if rank and keep < self.width:
            # pivots past the numerical rank explain nothing: they get no share
            coefficients[:, :rank] = scipy.linalg.solve_triangular(
                head[:rank, :rank], self.factor[:rank, keep:], lower=False
            ).T
        kept_pivots, removed_pivots = self.order[:keep], self.order[keep:]
        kept_sort, removed_sort = np.argsort(kept_pivots), np.argsort(removed_pivots)
        coefficients = coefficients[np.ix_(removed_sort, kept_sort)]
        kept, removed = kept_pivots[kept_sort], removed_pivots[removed_sort]
        offset = self.mean[removed] - coefficients @ self.mean[kept]
        return SpanSelection(kept, removed, coefficients, offset)


def span_order(mean: np.ndarray, gram: np.ndarray) -> SpanOrder:
    """The pivot order of a layer whose activations have column ``mean`` and centred
    Gram matrix ``gram`` (float64), by pivoted Cholesky."""
    width = gram.shape[0]
    total = float(np.trace(gram))
    if width == 1 or not total > 0:
        order = np.arange(width)
        factor = np.zeros((width, width))
        left = np.zeros(width)
        return SpanOrder(np.asarray(mean, np.float64), order, factor, left)
    # tolerance: LAPACK's default (width * machine eps * largest diagonal entry)
    factor, pivots, rank, _ = scipy.linalg.lapack.dpstrf(np.array(gram, np.float64), lower=0)
    factor = np.triu(factor)
    factor[rank:] = 0.0  # the part past the rank is not factored
    energy = np.einsum("ij,ij->i", factor, factor)
    tail = np.sqrt(np.maximum(np.cumsum(energy[::-1])[::-1], 0.0) / total)
    left = np.append(tail[1:], 0.0)  # left[k - 1]: unexplained with k kept
    return SpanOrder(np.asarray(mean, np.float64), pivots.astype(np.intp) - 1, factor, left)


def select_span(activations: np.ndarray, eps: float) -> SpanSelection:
    """The fewest neurons (in pivot order) whose span leaves at most ``eps`` of the
    centred activations' Frobenius norm unexplained; at least one is kept."""
    values = np.asarray(activations, dtype=np.float64)
    mean = values.mean(axis=0)
    centred = values - mean
    return span_order(mean, centred.T @ centred).select(eps)


# Layers wider than this keep the activations' pivot order: the greedy's steps are
# vector operations (2 s for 1,536 neurons, 14 s for 3,072, against pivoted Cholesky's
# 0.2 s and 0.7 s), so past this width it would cost more than the rest of the pass.
READOUT_MAX_WIDTH = 2048
# A next layer wider than this is read through a seeded Gaussian sketch of as many
# columns: the greedy's scores are row norms of (neurons x outputs) matrices, which a
# sketch keeps within a few percent, and each step's update stays (neurons x 512).
READOUT_SKETCH = 512


def readout_span_order(mean: np.ndarray, gram: np.ndarray, readout: np.ndarray) -> SpanOrder:
    """The pivot order of a layer (activations' column ``mean`` and centred Gram
    ``gram``) whose next layer has weight ``readout`` (outputs x neurons), chosen
    greedily to explain that layer's centred pre-activations ``Xc @ readout.T``: each
    step keeps the neuron with the largest ``|e|^2 / d`` (``e``: its residual
    cross-moment with the targets, ``d``: its residual variance), then removes its
    direction from the rest (a rank-one Cholesky step). Past the targets' span the rest
    follow by residual variance (pivoted Cholesky's rule); past the numerical rank they
    explain nothing. ``left`` is the share of the targets' energy left unexplained.
    Layers wider than :data:`READOUT_MAX_WIDTH` get :func:`span_order`."""
    gram = np.asarray(gram, dtype=np.float64)
    width = gram.shape[0]
    if width > READOUT_MAX_WIDTH:
        return span_order(mean, gram)
    readout = np.asarray(readout, dtype=np.float64).T  # neurons x outputs
    if readout.shape[1] > READOUT_SKETCH:
        sketch = np.random.default_rng(0).standard_normal((readout.shape[1], READOUT_SKETCH))
        readout = readout @ sketch / np.sqrt(READOUT_SKETCH)
    cross = gram @ readout  # neurons x outputs: the activations' moments with the targets
    total = float(np.einsum("ij,ij->", readout, cross))  # ||Xc @ readout||_F^2
    variance = np.diag(gram).copy()
    if width == 1 or not total > 0 or not variance.max() > 0:
        return span_order(mean, gram)
    tolerance = width * np.finfo(np.float64).eps * float(variance.max())
    factor = np.zeros((width, width))  # rows: the pivots' directions, by neuron
    order: list[int] = []
    explained = np.zeros(width)
    free = np.ones(width, dtype=bool)
    for step in range(width):
        candidates = free & (variance > tolerance)
        if not candidates.any():
            break  # the rest lie in the span of the pivots so far
        score = np.einsum("ij,ij->i", cross, cross) / np.maximum(variance, tolerance)
        score[~candidates] = -1.0
        pivot = int(np.argmax(score))
        if not score[pivot] > 1e-12 * total:  # targets explained: by residual variance
            pivot = int(np.argmax(np.where(candidates, variance, -1.0)))
        scale = np.sqrt(variance[pivot])
        direction = (gram[pivot] - factor[:step, pivot] @ factor[:step]) / scale
        gain = cross[pivot] / scale
        factor[step] = direction
        explained[step] = gain @ gain
        cross -= np.outer(direction, gain)
        variance -= direction * direction
        variance[pivot] = 0.0
        free[pivot] = False
        order.append(pivot)
    rank = len(order)
    pivots = np.array(order + [int(i) for i in np.flatnonzero(free)], dtype=np.intp)
    factor = np.triu(factor[:, pivots])
    factor[rank:] = 0.0
    done = np.minimum(np.cumsum(explained), total)
    left = np.sqrt(np.maximum(total - done, 0.0) / total)
    left[rank - 1 :] = 0.0  # the whole span: what is left is out of every neuron's reach
    return SpanOrder(np.asarray(mean, np.float64), pivots, factor, left)


def next_layer_order(mean: np.ndarray, gram: np.ndarray, readout: np.ndarray) -> SpanOrder:
    """:func:`readout_span_order`'s neurons at :func:`span_order`'s widths: an eps keeps
    as many neurons as the activations' share asks for, and :meth:`SpanOrder.keep`
    takes them in the next layer's order."""
    widths = span_order(mean, gram)
    if gram.shape[0] > READOUT_MAX_WIDTH:
        return widths
    return dataclasses.replace(readout_span_order(mean, gram, readout), left=widths.left)
