"""Closed-form compensation: refit a dense layer so its pre-activations on calibration
inputs match the original network's, by regularised least squares (one solve a layer)."""

from __future__ import annotations

import numpy as np
import scipy.linalg

from onnx_lump.reduction import ReducedLayer

__all__ = ["refit_layer", "residual"]


def refit_layer(inputs: np.ndarray, targets: np.ndarray, ridge: float) -> ReducedLayer:
    """Weights and bias minimising ``|inputs @ W.T + b - targets|^2 + lam |W|^2``.

    ``lam`` is ``ridge`` times the mean squared input, so ``ridge`` does not depend on
    the scale of the activations; the bias is not penalised.
    """
    n, k = inputs.shape
    design = np.column_stack([inputs, np.ones(n)])
    gram = design.T @ design
    penalty = ridge * float(np.mean(np.diag(gram)[:k])) if k else 0.0
    gram[np.arange(k), np.arange(k)] += max(penalty, 1e-12)
    try:
        theta = scipy.linalg.solve(gram, design.T @ targets, assume_a="pos")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        theta = np.linalg.lstsq(design, targets, rcond=None)[0]
    return ReducedLayer(np.ascontiguousarray(theta[:k].T), theta[k].copy())


def residual(layer: ReducedLayer, inputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean squared error of the layer's pre-activations against ``targets``."""
    return float(np.mean((inputs @ layer.weight.T + layer.bias - targets) ** 2))
