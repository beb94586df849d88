"""Comparing neurons by their behaviour on calibration data: the ``data`` similarity
(canonical pre-activations on the samples) and the ``affine`` one (activations equal up to
an affine map), and the neurons the data shows to be constant. Agreement on the data is not
agreement everywhere, so :mod:`onnx_lump.ode.equivalence` uses these only at eps > 0, and a
neuron counts as constant only if it stays so a margin beyond the data's range and on the
held-out rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_lump.activations import Activation
from onnx_lump.ode.canonical_rows import CanonicalRows
from onnx_lump.ode.encoding import Lumping
from onnx_lump.ode.grouping import StoredRows, group_rows, number_by_first_row
from onnx_lump.ode.numerics import median_or_one
from onnx_lump.ode.partition import PartitionOptions

__all__ = [
    "CONSTANT_MARGIN",
    "DATA_CONSTANT",
    "SAMPLE_CHUNK_ENTRIES",
    "SIMILARITY_SAMPLES",
    "DataRows",
    "Moments",
    "Support",
    "affine_lumping",
    "chunked_support",
    "medoids",
    "neuron_rows",
    "principal_signs",
    "read_data_rows",
    "sample_step",
    "similarity_samples",
    "supported_constants",
    "unsupported_constants",
]

# A neuron whose activation varies this little, relative to the layer's median, is
# constant on the calibration data.
DATA_CONSTANT = 1e-3
# How far beyond the data a constant neuron must stay constant, in standard deviations
# of its pre-activation on the data.
CONSTANT_MARGIN = 3.0


def affine_lumping(
    coefficients: np.ndarray,
    bias: np.ndarray,
    activation: Activation,
    inputs: np.ndarray,
    constant: np.ndarray,
    options: PartitionOptions,
    holdout: np.ndarray | None = None,
) -> Lumping:
    """Neurons whose activations on the data agree up to an affine map.

    Activations are standardised (mean 0, deviation 1) and signed along the layer's first
    principal direction, so the L1 distance of two rows is the mean absolute difference
    of the standardised signals (0 for correlation 1; about 0.11 for correlation 0.99).
    Each group keeps its medoid unchanged; every other member is replaced by the least-
    squares fit ``a_j ~ alpha_j a_rep + beta_j``, which the next layer absorbs.
    Used for eps > 0 only: agreement on the data is not agreement everywhere.
    """
    pre = inputs @ coefficients.T + bias  # (N, n)
    post = activation(pre)
    n_samples = post.shape[0]
    mean, spread = post.mean(axis=0), post.std(axis=0)
    held = None if holdout is None else holdout @ coefficients.T + bias
    removed = constant | supported_constants(
        Support.of(pre.T, activation), activation, constant, None if held is None else held.T
    )
    value = np.where(constant, activation(bias), mean)
    if removed.all():
        removed = removed.copy()
        removed[0] = False
    live = np.flatnonzero(~removed)
    standard = (post[:, live] - mean[live]) / np.where(spread[live] > 0, spread[live], 1.0)
    rows = (standard * principal_signs(standard)).T / n_samples
    groups = number_by_first_row(group_rows(rows, options.eps, options.linkage))
    n_blocks = int(groups.max()) + 1
    representative = live[medoids(rows, groups, n_blocks)]
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


def principal_signs(standard: np.ndarray) -> np.ndarray:
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


def medoids(rows: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Index (into rows) of the member nearest to each group's mean row."""
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    means = np.zeros((n_groups, rows.shape[1]))
    np.add.at(means, groups, rows)
    means /= counts[:, None]
    distance = np.abs(rows - means[groups]).sum(axis=1)
    order = np.lexsort((distance, groups))
    return order[np.flatnonzero(np.diff(groups[order], prepend=-1))]


# Calibration rows are read this many entries (samples x neurons) at a time: no array
# of all samples x all neurons is formed on the data path.
SAMPLE_CHUNK_ENTRIES = 1 << 21


def sample_step(width: int) -> int:
    return max(1, SAMPLE_CHUNK_ENTRIES // max(width, 1))


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per column, merged chunk by chunk
    (Chan et al.), so that a standard deviation over many rows needs no copy of them."""

    count: int = 0
    mean: np.ndarray | float = 0.0
    m2: np.ndarray | float = 0.0

    def add(self, values: np.ndarray) -> None:
        k = values.shape[0]
        if k == 0:
            return
        mean = values.mean(axis=0)
        m2 = np.square(values - mean).sum(axis=0)
        total = self.count + k
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + np.square(delta) * (self.count * k / total)
        self.mean = self.mean + delta * (k / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.m2, 0.0) / max(self.count, 1))


def read_data_rows(
    rows: CanonicalRows,
    inputs: np.ndarray,
    activation: Activation,
    constant: np.ndarray,
    options: PartitionOptions,
    holdout: np.ndarray | None = None,
    keep_rows: bool = True,
) -> tuple[DataRows | None, np.ndarray, np.ndarray, np.ndarray]:
    """Canonical pre-activations on the data, scaled so that the L1 distance of two rows is
    their mean absolute difference in units of the layer's typical spread (as a row
    source, with their L1 norms; None without ``keep_rows``); the neurons whose
    activation is constant on the data (dead Relu, saturated Tanh/Sigmoid: see
    :func:`supported_constants`; only for eps > 0); and those activations' means.

    The rows compared are formed once, as one (neurons x samples) array, over at most
    :data:`SIMILARITY_SAMPLES` samples (a seeded choice when there are more), so their
    memory is bounded whatever the number of calibration rows and the grouping reads
    them without recomputing; when they are all the samples the statistics come from
    them too, else from the samples read a chunk at a time."""
    n_samples, n = inputs.shape[0], rows.shape[0]
    chosen = similarity_samples(n_samples)
    compared = neuron_rows(rows, inputs[chosen]) if keep_rows else None
    if compared is not None and chosen.size == n_samples:
        support = Support.of(compared, activation)  # the compared rows are all the rows
    else:
        support = chunked_support(rows, inputs, activation)
    spread = median_or_one(support.pre_std[~constant])
    data_constant = supported_constants(
        support, activation, constant, None if holdout is None else (rows, holdout)
    )
    if options.eps == 0:
        data_constant[:] = False  # constant on this data is not constant on all data
    if compared is None:
        return None, np.zeros(n), data_constant, support.post_mean
    compared *= 1.0 / (chosen.size * spread)
    return DataRows(compared), np.abs(compared).sum(axis=1), data_constant, support.post_mean


def neuron_rows(rows: CanonicalRows, samples: np.ndarray) -> np.ndarray:
    """(neurons x samples) canonical pre-activations, float64, formed in that layout (one
    product, no transposed copy).

    The product is float32 (twice as fast on wide layers, the largest cost of a data-aware
    search step): the samples are float32 already (calibration inputs, and the data
    path's layer inputs), whose rounding puts errors of the same order into a float64
    product; distances at eps > 0 only are taken from these rows."""
    weights = rows.coefficients
    if rows.column_scale is not None:
        weights = weights * rows.column_scale
    product = np.asarray(weights, dtype=np.float32) @ np.asarray(samples, dtype=np.float32).T
    # widened and shifted in one pass (the float32 products are exact in float64, so the
    # sums are those of a widened copy plus the bias, bit for bit)
    out = np.add(product, rows.bias[:, None], dtype=np.float64)
    del product
    out /= rows.divisor[:, None]
    return out


def chunked_support(rows: CanonicalRows, inputs: np.ndarray, activation) -> Support:
    """:class:`Support` over all samples, read a chunk of samples at a time."""
    n = rows.shape[0]
    pre_moments, post_moments = Moments(), Moments()
    low, high = np.full(n, np.inf), np.full(n, -np.inf)
    step = sample_step(n)
    for start in range(0, inputs.shape[0], step):
        pre = rows.pre_activations(inputs[start : start + step])
        pre_moments.add(pre)
        post_moments.add(activation.float32(pre).astype(np.float64))
        np.minimum(low, pre.min(axis=0), out=low)
        np.maximum(high, pre.max(axis=0), out=high)
    post_mean = np.asarray(post_moments.mean)  # an array once a chunk is added
    return Support(pre_moments.std, post_moments.std, post_mean, low, high)


# The data similarity compares neurons on at most this many fitting rows: enough to tell
# neurons apart at the epsilons that matter (the benchmark uses up to 2,048 calibration
# rows, all of them compared), while the compared rows stay a bounded array.
SIMILARITY_SAMPLES = 4096


def similarity_samples(n_samples: int) -> np.ndarray:
    """Indices (ascending) of the fitting rows the data similarity compares neurons on."""
    if n_samples <= SIMILARITY_SAMPLES:
        return np.arange(n_samples)
    chosen = np.random.default_rng(0).choice(n_samples, SIMILARITY_SAMPLES, replace=False)
    return np.sort(chosen)


class DataRows(StoredRows):
    """The scaled canonical pre-activations (neurons x compared samples), stored: a
    distinct type so that the grouping uses its method for long rows."""

    def subset(self, index: np.ndarray) -> DataRows:
        return DataRows(self.rows[index])


@dataclass(frozen=True)
class Support:
    """Per-neuron statistics of the pre-activations (deviation, range) and activations
    (deviation, mean) on the fitting rows."""

    pre_std: np.ndarray
    post_std: np.ndarray
    post_mean: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of(cls, pre: np.ndarray, activation: Activation) -> Support:
        """From pre-activations as (neurons x rows); the activations in float32 (their
        moments accumulate in float64)."""
        post = activation.float32(pre)
        _, pre_std = _row_moments(pre)
        post_mean, post_std = _row_moments(post)
        return cls(pre_std, post_std, post_mean, pre.min(1), pre.max(1))


def _row_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each row from its sum and sum of squares: two
    passes and no temporary of the array's size (the compared rows are thousands of
    neurons x samples). The variance loses about 1e-16 (mean / std)^2 of itself, which
    matters only for rows far below the constant-neuron tolerance, where it still is."""
    n = max(values.shape[1], 1)
    mean = values.sum(axis=1, dtype=np.float64) / n
    square_mean = np.einsum("ij,ij->i", values, values, dtype=np.float64) / n
    return mean, np.sqrt(np.maximum(square_mean - mean * mean, 0.0))


def unsupported_constants(
    weight: np.ndarray,
    bias: np.ndarray,
    activation: Activation,
    inputs: np.ndarray,
    holdout: np.ndarray | None,
) -> np.ndarray:
    """Neurons of the layer ``(weight, bias)`` that are constant on the fitting rows
    ``inputs`` but not shown constant beyond them (:func:`supported_constants`): a span
    of the activations would fold them in as their mean; they must be kept instead. The
    rows are read a chunk at a time (token data has tens of thousands)."""
    rows = CanonicalRows(weight, None, bias, np.ones(len(bias)))
    support = chunked_support(rows, inputs, activation)
    constant = ~np.any(weight != 0, axis=1)
    tolerance = DATA_CONSTANT * median_or_one(support.post_std[~constant])
    quiet = (support.post_std <= tolerance) & ~constant
    if not quiet.any():
        return quiet
    held = None if holdout is None else (rows, holdout)
    return quiet & ~supported_constants(support, activation, constant, held)


def supported_constants(
    support: Support,
    activation,
    constant: np.ndarray,
    holdout: tuple[CanonicalRows, np.ndarray] | np.ndarray | None,
) -> np.ndarray:
    """Neurons the data shows to be constant, given their statistics on the fitting rows
    and, when given, their pre-activations on the held-out rows (neurons x rows, or the
    canonical rows and the held-out inputs, read a chunk at a time).

    Varying by less than DATA_CONSTANT times the layer's median variation on the
    fitting rows is not enough: a neuron off on a few hundred rows may fire on rare
    inputs. Its activation must also stay within that tolerance of its mean at the ends
    of its pre-activation range widened by CONSTANT_MARGIN standard deviations, and on
    every held-out row."""
    variation = support.post_std
    tolerance = DATA_CONSTANT * median_or_one(variation[~constant])
    mean, deviation = support.post_mean, support.pre_std
    supported = variation <= tolerance
    widened = (
        support.low - CONSTANT_MARGIN * deviation,
        support.high + CONSTANT_MARGIN * deviation,
    )
    for end in widened:
        supported &= np.abs(activation(end) - mean) <= tolerance
    if isinstance(holdout, np.ndarray):
        if holdout.shape[1]:
            supported &= (np.abs(activation(holdout) - mean[:, None]) <= tolerance).all(axis=1)
    elif holdout is not None and supported.any():
        # only the neurons still in question are read on the held-out rows
        rows, held = holdout
        candidates = np.flatnonzero(supported)
        rows = rows.subset(candidates)
        step = sample_step(candidates.size)
        for start in range(0, held.shape[0], step):
            pre = rows.pre_activations(held[start : start + step])
            stays = (np.abs(activation(pre) - mean[candidates]) <= tolerance).all(axis=0)
            supported[candidates[~stays]] = False
    return supported
