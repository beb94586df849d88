"""Element-wise activations that may sit between two dense layers of a chain."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

__all__ = ["SUPPORTED_ACTIVATION_OPS", "Activation", "ActivationKind"]


class ActivationKind(enum.Enum):
    IDENTITY = "Identity"
    RELU = "Relu"
    LEAKY_RELU = "LeakyRelu"
    TANH = "Tanh"
    SIGMOID = "Sigmoid"


SUPPORTED_ACTIVATION_OPS = frozenset(k.value for k in ActivationKind) - {"Identity"}


@dataclass(frozen=True)
class Activation:
    """An activation tag of the ODE encoding; `alpha` is LeakyRelu's negative slope."""

    kind: ActivationKind
    alpha: float = 0.0

    @property
    def is_positively_homogeneous(self) -> bool:
        """sigma(c z) = c sigma(z) for c > 0: proportional rows lump exactly."""
        return self.kind in (ActivationKind.RELU, ActivationKind.LEAKY_RELU)

    @property
    def is_polynomial(self) -> bool:
        return self.kind is ActivationKind.IDENTITY

    @property
    def name(self) -> str:
        return self.kind.value

    def __call__(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if self.kind is ActivationKind.RELU:
            return np.maximum(z, 0.0)
        if self.kind is ActivationKind.LEAKY_RELU:
            return np.where(z >= 0.0, z, self.alpha * z)
        if self.kind is ActivationKind.TANH:
            return np.tanh(z)
        if self.kind is ActivationKind.SIGMOID:
            return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
        return z

    def derivative(self, z: np.ndarray) -> np.ndarray:
        """d sigma / d z, elementwise (the subgradient 1 at 0 for the Relu family)."""
        z = np.asarray(z, dtype=np.float64)
        if self.kind is ActivationKind.RELU:
            return (z >= 0.0).astype(np.float64)
        if self.kind is ActivationKind.LEAKY_RELU:
            return np.where(z >= 0.0, 1.0, self.alpha)
        if self.kind is ActivationKind.TANH:
            return 1.0 - np.tanh(z) ** 2
        if self.kind is ActivationKind.SIGMOID:
            s = self(z)
            return s * (1.0 - s)
        return np.ones_like(z)

    def describe(self) -> str:
        if self.kind is ActivationKind.LEAKY_RELU:
            return f"LeakyRelu(alpha={self.alpha:g})"
        return self.kind.value


IDENTITY = Activation(ActivationKind.IDENTITY)
