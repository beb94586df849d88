"""Matchers that map canonical expressions of decomposed subgraphs to activations.

Each registered activation lists the decomposed forms exporters write for it; the code
that recognises those forms is long, fiddly and only about expression shapes, so it lives
here rather than in the registry. A matcher only proposes parameters:
:func:`onnx_lump.activations.matching.match_expression` confirms every match numerically
before trusting it.
"""

from __future__ import annotations

from collections.abc import Callable

from onnx_lump.activations.expressions import X, add, constant, factors_of, mul, terms_of
from onnx_lump.activations.forms import GELU_TANH_CUBIC, GELU_TANH_SCALE, SQRT_HALF

__all__ = [
    "clip",
    "gelu_erf",
    "gelu_op",
    "gelu_tanh",
    "hard_sigmoid_clip",
    "hard_swish_decomposed",
    "mish_decomposed",
    "sigmoid_decomposed",
    "single_op",
    "softplus_scaled",
    "softplus_where",
    "softsign_decomposed",
    "swish",
]


def _close(a: float, b: float, rtol: float = 1e-3) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)


def _linear_in_x(e: tuple) -> float | None:
    """c when e is c * x (c may be 1)."""
    if e == X:
        return 1.0
    coef, factors = factors_of(e)
    return coef if factors == (X,) else None


def _affine_in_x(e: tuple) -> tuple[float, float] | None:
    """(a, b) when e is a * x + b."""
    offset, terms = terms_of(e)
    if len(terms) != 1:
        return None
    slope = _linear_in_x(terms[0])
    return None if slope is None else (slope, offset)


def _x_times(e: tuple) -> tuple[float, tuple] | None:
    """(c, g) when e is c * x * g with g one factor that is not x."""
    coef, factors = factors_of(e)
    if len(factors) != 2 or X not in factors:
        return None
    other = factors[1] if factors[0] == X else factors[0]
    return None if other == X else (coef, other)


def single_op(op: str, *names: str) -> Callable[[tuple], dict | None]:
    """The op applied to x itself, its parameters named ``names``."""

    def match(e: tuple) -> dict | None:
        if e[0] != "fn" or e[1] != op or e[3] != X:
            return None
        params = dict(e[2])
        return {name: params[name] for name in names if name in params}

    return match


def gelu_erf(e: tuple) -> dict | None:
    """0.5 * x * (1 + Erf(x / sqrt 2)), in any order and association."""
    found = _x_times(e)
    if found is None or not _close(found[0], 0.5):
        return None
    offset, terms = terms_of(found[1])
    if not _close(offset, 1.0) or len(terms) != 1 or terms[0][:2] != ("fn", "Erf"):
        return None
    slope = _linear_in_x(terms[0][3])
    return {} if slope is not None and _close(slope, SQRT_HALF) else None


def gelu_tanh(e: tuple) -> dict | None:
    """0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 x^3))), also with the argument
    factored as sqrt(2/pi) * x * (1 + 0.044715 x^2)."""
    found = _x_times(e)
    if found is None or not _close(found[0], 0.5):
        return None
    offset, terms = terms_of(found[1])
    if not _close(offset, 1.0) or len(terms) != 1 or terms[0][:2] != ("fn", "Tanh"):
        return None
    scale, factors = factors_of(terms[0][3])
    if not _close(scale, GELU_TANH_SCALE):
        return None
    if len(factors) == 1:  # x + c x^3
        inner_offset, inner = terms_of(factors[0])
        cubic = mul(X, X, X)
        if inner_offset != 0.0 or len(inner) != 2 or X not in inner:
            return None
        other = inner[1] if inner[0] == X else inner[0]
        coef, rest = factors_of(other)
        ok = rest == cubic[2] and _close(coef, GELU_TANH_CUBIC)
        return {} if ok else None
    if len(factors) == 2 and X in factors:  # x * (1 + c x^2)
        other = factors[1] if factors[0] == X else factors[0]
        inner_offset, inner = terms_of(other)
        if not _close(inner_offset, 1.0) or len(inner) != 1:
            return None
        coef, rest = factors_of(inner[0])
        return {} if rest == (X, X) and _close(coef, GELU_TANH_CUBIC) else None
    return None


def gelu_op(approximate: str) -> Callable[[tuple], dict | None]:
    def match(e: tuple) -> dict | None:
        if e[0] != "fn" or e[1] != "Gelu" or e[3] != X:
            return None
        return {} if dict(e[2]).get("approximate", "none") == approximate else None

    return match


def swish(e: tuple) -> dict | None:
    """x * Sigmoid(a x) (a = 1: SiLU); also onnxruntime's QuickGelu."""
    if e[:2] == ("fn", "QuickGelu") and e[3] == X:
        return {"alpha": dict(e[2]).get("alpha", 1.702)}
    found = _x_times(e)
    if found is None or found[0] != 1.0 or found[1][:2] != ("fn", "Sigmoid"):
        return None
    slope = _linear_in_x(found[1][3])
    return None if slope is None or slope <= 0.0 else {"alpha": slope}


def softplus_scaled(e: tuple) -> dict | None:
    """Softplus(b x) / b (PyTorch Softplus(beta))."""
    coef, factors = factors_of(e)
    if len(factors) != 1 or factors[0][:2] != ("fn", "Softplus"):
        return None
    beta = _linear_in_x(factors[0][3])
    if beta is None or beta <= 0.0 or not _close(coef * beta, 1.0, 1e-6):
        return None
    return {"beta": beta}


def softplus_where(e: tuple) -> dict | None:
    """Where(b x > t, x, Softplus(b x) / b): the PyTorch dynamo exporter's Softplus."""
    if e[0] != "where" or e[2] != X or e[1][0] != "cmp" or e[1][1] not in ("gt", "ge"):
        return None
    inner = softplus_scaled(e[3])
    scale = _linear_in_x(e[1][2])
    if inner is None or scale is None or not _close(scale, inner["beta"], 1e-6):
        return None
    return {**inner, "threshold": e[1][3]}


def hard_sigmoid_clip(e: tuple) -> dict | None:
    """Clip(a x + b, 0, 1)."""
    if e[:2] != ("fn", "Clip"):
        return None
    params = dict(e[2])
    affine = _affine_in_x(e[3])
    if affine is None or params != {"low": 0.0, "high": 1.0} or affine[0] == 0.0:
        return None
    return {"alpha": affine[0], "beta": affine[1]}


def hard_swish_decomposed(e: tuple) -> dict | None:
    """x * HardSigmoid(x; 1/6, 1/2), or x * Clip(x + 3, 0, 6) / 6."""
    coef, factors = factors_of(e)
    if len(factors) != 2 or X not in factors:
        return None
    other = factors[1] if factors[0] == X else factors[0]
    if other[:2] == ("fn", "HardSigmoid") and other[3] == X and coef == 1.0:
        params = dict(other[2])
        ok = _close(params.get("alpha", 0.2), 1 / 6) and _close(params.get("beta", 0.5), 0.5)
        return {} if ok else None
    if other[:2] == ("fn", "Clip"):
        params = dict(other[2])
        affine = _affine_in_x(other[3])
        inside = affine is not None and affine[0] == 1.0 and _close(affine[1], 3.0)
        ok = inside and params == {"low": 0.0, "high": 6.0} and _close(coef, 1 / 6)
        return {} if ok else None
    return None


def mish_decomposed(e: tuple) -> dict | None:
    """x * Tanh(Softplus(x)) (Softplus also as Log(1 + Exp(x)))."""
    found = _x_times(e)
    if found is None or found[0] != 1.0:
        return None
    return {} if found[1] == ("fn", "Tanh", (), ("fn", "Softplus", (), X)) else None


def clip(e: tuple) -> dict | None:
    """Clip(x, low, high); also Min/Max with constants and Min(Relu(x), c)."""
    if e[:2] != ("fn", "Clip") or e[3] != X:
        return None
    return dict(e[2])


def sigmoid_decomposed(e: tuple) -> dict | None:
    return {} if e == ("fn", "Sigmoid", (), X) else None


def softsign_decomposed(e: tuple) -> dict | None:
    """x / (1 + |x|)."""
    found = _x_times(e)
    target = ("pow", -1.0, add(constant(1.0), ("fn", "Abs", (), X)))
    return {} if found is not None and found == (1.0, target) else None
