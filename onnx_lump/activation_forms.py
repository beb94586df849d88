"""Numpy forwards, derivatives and symmetry rules behind the activation registry.

These are kept apart from :mod:`onnx_lump.activations` so the registry table reads as a
table; the functions are private to it (hence the empty ``__all__``) and read an
activation's parameters through the :class:`Parameters` protocol
(:class:`~onnx_lump.activations.Activation` is one), so this module does not import the
registry.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from scipy import special

__all__: list[str] = []


class Parameters(Protocol):
    """The parameters of an activation the forms read (ONNX defaults filled in)."""

    @property
    def alpha(self) -> float | None: ...

    @property
    def beta(self) -> float | None: ...

    @property
    def low(self) -> float | None: ...

    @property
    def high(self) -> float | None: ...

    @property
    def threshold(self) -> float | None: ...

_SQRT_HALF = math.sqrt(0.5)
_GELU_TANH_SCALE = math.sqrt(2.0 / math.pi)
_GELU_TANH_CUBIC = 0.044715
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_GAMMA = 1.0507009873554804934193349852946


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return special.expit(z)


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _hard_sigmoid(z: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(alpha * z + beta, 0.0, 1.0)


def _hard_sigmoid_slope(z: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    inner = alpha * z + beta
    return np.where((inner >= 0.0) & (inner <= 1.0), alpha, 0.0)


def _gelu_tanh_parts(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.tanh(_GELU_TANH_SCALE * (z + _GELU_TANH_CUBIC * z**3))
    return t, _GELU_TANH_SCALE * (1.0 + 3.0 * _GELU_TANH_CUBIC * z**2)


def _elu_like(z: np.ndarray, alpha: float, inner: float) -> np.ndarray:
    """alpha (exp(z / inner) - 1) below zero, z above (Elu: inner 1, Celu: inner alpha)."""
    return np.where(z > 0.0, z, alpha * np.expm1(np.minimum(z, 0.0) / inner))


def _mish_parts(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.tanh(_softplus(z)), _sigmoid(z)


def _softplus_forward(z: np.ndarray, a: Parameters) -> np.ndarray:
    scaled = a.beta * z
    return np.where(scaled > a.threshold, z, _softplus(scaled) / a.beta)


def _softplus_slope(z: np.ndarray, a: Parameters) -> np.ndarray:
    scaled = a.beta * z
    return np.where(scaled > a.threshold, 1.0, _sigmoid(scaled))


def _gelu_slope(z: np.ndarray, a: Parameters) -> np.ndarray:
    return 0.5 * (1.0 + special.erf(z * _SQRT_HALF)) + z * np.exp(-0.5 * z * z) / math.sqrt(
        2.0 * math.pi
    )


def _gelu_tanh_slope(z: np.ndarray, a: Parameters) -> np.ndarray:
    t, inner = _gelu_tanh_parts(z)
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * inner


def _swish_slope(z: np.ndarray, a: Parameters) -> np.ndarray:
    s = _sigmoid(a.alpha * z)
    return s + a.alpha * z * s * (1.0 - s)


def _mish_slope(z: np.ndarray, a: Parameters) -> np.ndarray:
    t, s = _mish_parts(z)
    return t + z * (1.0 - t * t) * s


def _hard_swish_forward(z: np.ndarray, a: Parameters) -> np.ndarray:
    return z * _hard_sigmoid(z, 1.0 / 6.0, 0.5)


def _hard_swish_slope(z: np.ndarray, a: Parameters) -> np.ndarray:
    return _hard_sigmoid(z, 1.0 / 6.0, 0.5) + z * _hard_sigmoid_slope(z, 1.0 / 6.0, 0.5)


def _negative_slope_forward(z: np.ndarray, a: Parameters) -> np.ndarray:
    return np.where(z >= 0.0, z, a.alpha * z)


def _negative_slope_derivative(z: np.ndarray, a: Parameters) -> np.ndarray:
    return np.where(z >= 0.0, 1.0, a.alpha)


def _clip_homogeneous(a: Parameters) -> bool:
    # Clip(-inf, 0) is homogeneous too, but code that reads the flag (the linear
    # method) takes it for a Relu-like shape: claim only the Relu case.
    return a.low == 0.0 and a.high == math.inf


def _clip_symmetry(a: Parameters) -> float | None:
    return 0.0 if a.low == -a.high else None


def _describe_clip(a: Parameters) -> str:
    return "Relu6" if (a.low, a.high) == (0.0, 6.0) else "Clip"
