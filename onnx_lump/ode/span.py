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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = ["SpanOrder", "SpanSelection", "select_span", "span_order"]


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
