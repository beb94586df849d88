"""Closed-form compensation: refit a dense layer so its pre-activations on calibration
inputs match the original network's, by regularised least squares (one solve a layer).

The ridge strength is chosen by the held-out rows: of a grid of strengths, the one whose
refit predicts the held-out pre-activations best. One eigendecomposition of the Gram
matrix serves every strength of the grid.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import threadpoolctl

from onnx_lump.ode.reduction import ReducedLayer

__all__ = ["FALLBACK_RIDGE", "RIDGE_GRID", "refit_layer", "residual"]

# Strengths relative to the mean squared (centred) input, so they do not depend on the
# scale of the activations.
RIDGE_GRID = tuple(float(10.0**k) for k in range(-10, 1))
# Used when there are no held-out rows to choose by: on the demo models 1e-10..1e-6
# agreed and 1e-3 over-regularised.
FALLBACK_RIDGE = 1e-6


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
    with the lowest residual on the held-out rows (:data:`FALLBACK_RIDGE` without them).
    """
    mean_x, mean_t = inputs.mean(axis=0), targets.mean(axis=0)
    centred = inputs - mean_x
    gram = centred.T @ centred
    scale = float(np.mean(np.diag(gram))) if gram.size else 0.0
    scale = scale if scale > 0 else 1.0
    choose = ridge is None and holdout_inputs is not None and len(holdout_inputs) > 0
    strengths = RIDGE_GRID if choose else (FALLBACK_RIDGE if ridge is None else ridge,)
    try:
        with _one_blas_thread():
            values, vectors = scipy.linalg.eigh(gram)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError):
        values, vectors = np.zeros(gram.shape[0]), np.eye(gram.shape[0])
    values = np.maximum(values, 0.0)
    projected = vectors.T @ (centred.T @ (targets - mean_t))
    best = None
    for strength in strengths:
        lam = max(strength * scale, 1e-12 * scale)
        weight_t = vectors @ (projected / (values + lam)[:, None])
        layer = ReducedLayer(np.ascontiguousarray(weight_t.T), mean_t - mean_x @ weight_t)
        if len(strengths) == 1:
            return layer, strength
        score = residual(layer, holdout_inputs, holdout_targets)
        if best is None or score < best[0]:
            best = (score, layer, strength)
    return best[1], best[2]


def residual(layer: ReducedLayer, inputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean squared error of the layer's pre-activations against ``targets``."""
    return float(np.mean((inputs @ layer.weight.T + layer.bias - targets) ** 2))


def _one_blas_thread():
    """One BLAS thread for the eigendecomposition: LAPACK's symmetric solvers gain
    little from a second thread at these sizes, and on busy cores waking BLAS threads
    made a 512 x 512 one take 8 s instead of 0.14 s."""
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")
