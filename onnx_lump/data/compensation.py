"""Closed-form compensation: refit a dense layer so its pre-activations on calibration
inputs match the original network's, by regularised least squares (one solve a layer).

The ridge strength is chosen by the held-out rows: of a grid of strengths, the strongest
whose refit predicts the held-out pre-activations within :data:`RIDGE_SLACK` of the best.
One eigendecomposition of the Gram matrix serves every strength of the grid.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.linalg
import threadpoolctl

from onnx_lump.types import ReducedLayer

__all__ = [
    "FALLBACK_RIDGE",
    "RIDGE_GRID",
    "RIDGE_SLACK",
    "ROW_CHUNK_ENTRIES",
    "centred_moments",
    "held_out_residuals",
    "refit_layer",
    "residual",
]

# Strengths relative to the mean squared (centred) input, so they do not depend on the
# scale of the activations.
RIDGE_GRID = tuple(float(10.0**k) for k in range(-10, 1))
# Used when there are no held-out rows to choose by: on the demo models 1e-10..1e-6
# agreed and 1e-3 over-regularised.
FALLBACK_RIDGE = 1e-6
# The strongest strength whose held-out residual is within this factor of the lowest
# (the one-standard-error rule's spirit). The lowest alone let span's refit grow the last
# layer's weights from 2.7 to 50 on the Tanh demo for a held-out gain of a few percent,
# weights that int8 then broke (49% error; 4.5% with the slack, weights 3.7).
RIDGE_SLACK = 1.1


def refit_layer(
    inputs: np.ndarray,
    targets: np.ndarray,
    ridge: float | None = None,
    holdout_inputs: np.ndarray | None = None,
    holdout_targets: np.ndarray | None = None,
) -> tuple[ReducedLayer, float]:
    """Weights and bias minimising ``|inputs @ W.T + b - targets|^2 + lam |W|^2``, and
    the relative strength used.

    ``lam`` is the relative strength times the mean squared centred input; the bias is
    not penalised. With ``ridge`` None the strength is the one of :data:`RIDGE_GRID`
    whose residual on the held-out rows is within :data:`RIDGE_SLACK` of the lowest
    (:data:`FALLBACK_RIDGE` without held-out rows).
    Rows are read a chunk at a time (float64 sums; the inputs twice when the targets
    are wider than the rows are many): no centred copy of the inputs or targets is made,
    whatever their number.
    """
    # P = V.T @ Xc.T @ Tc as (Xc V).T @ Tc or as V.T @ (Xc.T @ Tc): both take a rows x k
    # x outputs product, then rows x k x k or k x k x outputs; so with more outputs than
    # rows the rows are projected (and the cross moments never formed).
    by_rows = targets.shape[1] > inputs.shape[0]
    if by_rows:
        mean_x, _, gram, _ = _moments(inputs, None)
    else:
        mean_x, mean_t, gram, cross = centred_moments(inputs, targets)
    scale = float(np.mean(np.diag(gram))) if gram.size else 0.0
    scale = scale if scale > 0 else 1.0
    choose = ridge is None and holdout_inputs is not None and len(holdout_inputs) > 0
    strengths = RIDGE_GRID if choose else (FALLBACK_RIDGE if ridge is None else ridge,)
    try:
        with _one_blas_thread():  # divide and conquer: ~10% faster than evr, k 500-900
            values, vectors = scipy.linalg.eigh(gram, overwrite_a=True, driver="evd")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError):
        values, vectors = np.zeros(gram.shape[0]), np.eye(gram.shape[0])
    values = np.maximum(values, 0.0)
    if by_rows:
        mean_t, projected = _projected_rows(inputs, targets, mean_x, vectors)
    else:
        projected = vectors.T @ cross
    shrink = [1.0 / (values + max(s * scale, 1e-12 * scale)) for s in strengths]
    if len(strengths) > 1:
        scores = held_out_residuals(
            vectors, projected, mean_x, mean_t, shrink, holdout_inputs, holdout_targets
        )
        finite = [score for score in scores if np.isfinite(score)]
        # The grid runs weak to strong: the last strength within the slack (the weakest
        # where no score is finite, as from overflowing activations).
        bound = RIDGE_SLACK * min(finite) if finite else -np.inf
        best = max((i for i, score in enumerate(scores) if score <= bound), default=0)
    else:
        best = 0
    # Shrunk in place (not needed again) and multiplied out as W, not W.T: no full-size
    # temporary and no transposed copy.
    projected *= shrink[best][:, None]
    weight = projected.T @ vectors.T
    return ReducedLayer(weight, mean_t - weight @ mean_x), strengths[best]


def _projected_rows(inputs, targets, mean_x, vectors) -> tuple[np.ndarray, np.ndarray]:
    """``(mean_t, V.T @ Xc.T @ Tc)`` for the eigenvectors ``V``, as ``(Xc V).T @ Tc`` a
    chunk of rows at a time, so the cross moments are never formed. The targets are
    shifted by the first chunk's mean (so that the centring does not cancel); the shift's
    error times the rows' sum, zero but for rounding, is taken off."""
    n, k = inputs.shape
    step = _row_step(k + targets.shape[1])
    shift = np.asarray(targets[: min(step, n)], dtype=np.float64).mean(axis=0)
    sum_z, sum_t = np.zeros(k), np.zeros(targets.shape[1])
    projected = np.zeros((k, targets.shape[1]))
    for start in range(0, n, step):
        z = np.subtract(inputs[start : start + step], mean_x, dtype=np.float64) @ vectors
        t = np.subtract(targets[start : start + step], shift, dtype=np.float64)
        sum_z += z.sum(axis=0)
        sum_t += t.sum(axis=0)
        projected += z.T @ t
    dt = sum_t / max(n, 1)
    projected -= np.outer(sum_z, dt)
    return shift + dt, projected


def held_out_residuals(vectors, projected, mean_x, mean_t, shrink, inputs, targets):
    """The held-out residual (as :func:`residual`) of the refit at every strength, from
    one pass over the held-out rows.

    In the Gram matrix's eigenbasis a refit predicts ``Q diag(d) P`` for the centred
    targets, with ``Q`` the held-out inputs (centred by the fitting mean) times the
    eigenvectors, ``P`` the projected cross moments and ``d`` the strength's shrinkage;
    so with ``E`` the centred held-out targets its squared error is
    ``d (Q'Q o PP') d - 2 d . diag(Q'E P') + |E|^2``: matrices of the layer's width,
    formed once, instead of a product with the held-out rows per strength."""
    k = vectors.shape[0]
    qq, qe, ee = np.zeros((k, k)), np.zeros((k, projected.shape[1])), 0.0
    step = _row_step(k + targets.shape[1])
    for start in range(0, inputs.shape[0], step):
        q = np.subtract(inputs[start : start + step], mean_x, dtype=np.float64) @ vectors
        e = np.subtract(targets[start : start + step], mean_t, dtype=np.float64)
        qq += q.T @ q
        qe += q.T @ e
        ee += float(np.vdot(e, e))
    quadratic = qq * (projected @ projected.T)  # P @ P.T: numpy takes the symmetric syrk
    linear = np.einsum("ij,ij->i", qe, projected)
    size = max(targets.size, 1)
    return [(d @ quadratic @ d - 2.0 * d @ linear + ee) / size for d in shrink]


def residual(layer: ReducedLayer, inputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean squared error of the layer's pre-activations against ``targets``, a chunk
    of rows at a time."""
    total, step = 0.0, _row_step(inputs.shape[1] + targets.shape[1])
    for start in range(0, inputs.shape[0], step):
        x = np.asarray(inputs[start : start + step], dtype=np.float64)
        error = x @ layer.weight.T  # then in place: one temporary of the chunk's size
        error += layer.bias
        error -= targets[start : start + step]
        total += float(np.square(error, out=error).sum())
    return total / max(targets.size, 1)


def centred_moments(
    inputs: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(mean_x, mean_t, gram, cross)`` with ``gram = Xc.T @ Xc`` and ``cross = Xc.T @ Tc``
    for the centred inputs Xc and targets Tc, accumulated in float64 a chunk of rows at a
    time (no centred copy of either; shifted by the first chunk's means so that the
    centring does not cancel)."""
    return _moments(inputs, targets)


def centred_gram(chunks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, gram)`` of the columns of the rows that ``chunks`` hold, ``gram = Xc.T @
    Xc`` for the centred rows, accumulated in float64 a chunk at a time (shifted by the
    first chunk's mean so that the centring does not cancel): the rows need never be in
    memory at once."""
    shift: np.ndarray | None = None
    sums = gram = np.zeros(0)  # set with shift, from the first chunk
    count = 0
    for chunk in chunks:
        if shift is None:
            shift = np.asarray(chunk, dtype=np.float64).mean(axis=0)
            sums, gram = np.zeros_like(shift), np.zeros((shift.size, shift.size))
        x = np.subtract(chunk, shift, dtype=np.float64)
        sums += x.sum(axis=0)
        gram += x.T @ x
        count += x.shape[0]
    if shift is None:
        raise ValueError("no rows")
    delta = sums / count
    gram -= count * np.outer(delta, delta)
    return shift + delta, gram


def _moments(inputs, targets):
    """:func:`centred_moments`, or with ``targets`` None only ``mean_x`` and ``gram``
    (None for the others)."""
    n, k = inputs.shape
    m = 0 if targets is None else targets.shape[1]
    step = _row_step(k + m)
    first = slice(0, min(step, n))
    shift_x = np.asarray(inputs[first], dtype=np.float64).mean(axis=0)
    sum_x, gram = np.zeros(k), np.zeros((k, k))
    if targets is not None:
        shift_t = np.asarray(targets[first], dtype=np.float64).mean(axis=0)
        sum_t, cross = np.zeros(m), np.zeros((k, m))
    for start in range(0, n, step):
        x = np.subtract(inputs[start : start + step], shift_x, dtype=np.float64)
        sum_x += x.sum(axis=0)
        gram += x.T @ x
        if targets is not None:
            t = np.subtract(targets[start : start + step], shift_t, dtype=np.float64)
            sum_t += t.sum(axis=0)
            cross += x.T @ t
    dx = sum_x / max(n, 1)
    gram -= n * np.outer(dx, dx)
    if targets is None:
        return shift_x + dx, None, gram, None
    dt = sum_t / max(n, 1)
    cross -= n * np.outer(dx, dt)
    return shift_x + dx, shift_t + dt, gram, cross


# Rows of a chunk: this many entries (rows x columns) of float64 at a time.
ROW_CHUNK_ENTRIES = 1 << 22


def _row_step(width: int) -> int:
    return max(1, ROW_CHUNK_ENTRIES // max(width, 1))


def _one_blas_thread():
    """One BLAS thread for the eigendecomposition: a second thread saves a fifth to a
    third on idle cores (900 x 900: 0.09 s against 0.075 s), but on busy cores waking
    BLAS threads made a 512 x 512 one take 8 s instead of 0.14 s (and a 1400 x 1400 one
    2-10 s instead of 0.3-1.3 s, re-measured)."""
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")
