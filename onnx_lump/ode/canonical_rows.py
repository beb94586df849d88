"""A layer's canonical rows, read lazily (stage 3, :mod:`onnx_lump.ode.equivalence`;
the data-driven similarity reads them too, :mod:`onnx_lump.ode.data_similarity`)."""

from __future__ import annotations

import numpy as np

from onnx_lump.ode.numerics import matmul64

__all__ = ["CanonicalRows"]


class CanonicalRows:
    """The rows ``[coefficients * column_scale, bias] / divisor`` as a
    :class:`onnx_lump.ode.grouping.RowSource`: formed only for the neurons the grouping
    cannot separate by projections, so a wide layer is never copied whole."""

    def __init__(
        self,
        coefficients: np.ndarray,
        column_scale: np.ndarray | None,
        bias: np.ndarray,
        divisor: np.ndarray,
    ) -> None:
        self.coefficients, self.column_scale = coefficients, column_scale
        self.bias, self.divisor = bias, divisor
        self.shape = (coefficients.shape[0], coefficients.shape[1] + 1)
        # (directions, coefficients * column_scale @ directions[:-1]) read in an earlier pass
        self.known_projections: tuple[np.ndarray, np.ndarray] | None = None

    def take(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), self.shape[1]))
        chosen = self.coefficients[indices]
        if self.column_scale is None:
            out[:, :-1] = chosen
        else:
            np.multiply(chosen, self.column_scale, out=out[:, :-1])
        out[:, -1] = self.bias[indices]
        out /= self.divisor[indices, None]
        return out

    def subset(self, index: np.ndarray) -> CanonicalRows:
        rows = CanonicalRows(
            self.coefficients[index], self.column_scale, self.bias[index], self.divisor[index]
        )
        if self.known_projections is not None:
            directions, products = self.known_projections
            rows.known_projections = (directions, products[index])
        return rows

    def pre_activations(self, samples: np.ndarray) -> np.ndarray:
        """(samples x rows) canonical pre-activations, in float64."""
        weights = self.coefficients
        if self.column_scale is not None:
            weights = weights * self.column_scale
        pre = np.asarray(samples, dtype=np.float64) @ weights.T
        pre += self.bias
        pre /= self.divisor
        return pre

    def project(self, directions: np.ndarray) -> np.ndarray:
        known = self.known_projections
        if known is not None and np.array_equal(known[0], directions):
            product = known[1].copy()
        else:
            weights = directions[:-1]
            if self.column_scale is not None:
                weights = weights * self.column_scale[:, None]
            product = matmul64(self.coefficients, weights)
        product += self.bias[:, None] * directions[-1]
        product /= self.divisor[:, None]
        return product
