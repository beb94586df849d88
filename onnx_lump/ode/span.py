"""Linear lumping of one layer by the span of its activations on calibration data.

A partition maps each neuron onto one block; a linear lumping maps the layer's
activations onto a few of them by any linear map. Here the kept neurons are the columns
chosen by column-pivoted QR of the layer's centred activations (the interpolative
decomposition used by Chee et al., NeurIPS 2022), and every removed neuron becomes the
least-squares combination of the kept ones plus a constant, which the next layer absorbs.

``eps`` is the share of the activations' energy (Frobenius norm, after centring) that
the kept neurons may leave unexplained: 0 keeps the numerical rank, 1 keeps one neuron.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = ["SpanSelection", "select_span"]


@dataclass(frozen=True, eq=False)
class SpanSelection:
    """``activations[:, removed] ~= activations[:, kept] @ coefficients.T + offset``."""

    kept: np.ndarray
    removed: np.ndarray
    coefficients: np.ndarray  # (removed, kept)
    offset: np.ndarray  # (removed,)

    def fold(self, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The next layer's ``(weight, bias)`` reading the kept neurons only."""
        removed_columns = weight[:, self.removed]
        return (
            weight[:, self.kept] + removed_columns @ self.coefficients,
            bias + removed_columns @ self.offset,
        )


def select_span(activations: np.ndarray, eps: float) -> SpanSelection:
    """The fewest neurons (in pivot order) whose span leaves at most ``eps`` of the
    centred activations' Frobenius norm unexplained; at least one is kept."""
    width = activations.shape[1]
    mean = activations.mean(axis=0)
    centred = activations - mean
    total = float(np.linalg.norm(centred))
    if total == 0.0 or width == 1:
        keep = 1
        order = np.arange(width)
    else:
        r, order = scipy.linalg.qr(centred, mode="r", pivoting=True)
        r = r[: min(r.shape)]  # mode "r" pads R with zero rows when samples > neurons
        rows = np.zeros(width)
        rows[: r.shape[0]] = np.einsum("ij,ij->i", r, r)
        # ||R[k:, k:]||_F^2 is the energy left after the first k pivots
        tail = np.sqrt(np.maximum(np.cumsum(rows[::-1])[::-1], 0.0)) / total
        left = np.append(tail[1:], 0.0)  # left[k - 1]: unexplained with k kept
        keep = int(np.argmax(left <= eps)) + 1
    kept, removed = np.sort(order[:keep]), np.sort(order[keep:])
    if removed.size == 0:
        return SpanSelection(kept, removed, np.zeros((0, keep)), np.zeros(0))
    basis = centred[:, kept]
    coefficients = np.linalg.lstsq(basis, centred[:, removed], rcond=None)[0].T
    offset = mean[removed] - coefficients @ mean[kept]
    return SpanSelection(kept, removed, coefficients, offset)
