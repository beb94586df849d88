"""Small float64 helpers shared by the weight and the data similarities."""

from __future__ import annotations

import numpy as np

from onnx_lump.ode.encoding import row_step

__all__ = ["matmul64", "matvec64", "median_or_one"]


def matmul64(matrix: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``matrix @ other`` accumulated in float64 without a float64 copy of ``matrix``."""
    if matrix.dtype == np.float64:
        return matrix @ other
    out = np.empty((matrix.shape[0], other.shape[1]))
    step = row_step(matrix.shape[1])
    for start in range(0, matrix.shape[0], step):
        out[start : start + step] = matrix[start : start + step].astype(np.float64) @ other
    return out


def matvec64(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    return matmul64(matrix, vector[:, None])[:, 0]


def median_or_one(values: np.ndarray) -> float:
    median = float(np.median(values)) if values.size else 0.0
    return median if median > 0 else 1.0
