"""Which registered activation a canonical expression computes, and what to suggest when
none does.

:func:`match_expression` runs the registry's matchers (:mod:`onnx_lump.activations.patterns`)
and confirms every proposal by :func:`evaluate`-ing the expression against the registered
forward on a fixed probe; :func:`hint_for_ops` names the registered forms nearest to a
subgraph that matched nothing. Kept apart from :mod:`onnx_lump.activations.registry` so the
registry stays a table of numbers; this module builds on it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import special

from onnx_lump.activations.expressions import X
from onnx_lump.activations.registry import (
    IDENTITY,
    REGISTRY,
    SPECS,
    SUPPORTED_ACTIVATION_OPS,
    Activation,
    ActivationKind,
)

__all__ = ["evaluate", "hint_for_ops", "match_expression"]


def match_expression(expr: tuple) -> Activation | None:
    """The registered activation that ``expr`` (a canonical expression in x) computes.

    A match is confirmed numerically against the registered forward, so a matcher can
    never hand the encoder a function other than the one the graph computes.
    """
    if expr == X:
        return IDENTITY
    for spec in SPECS:
        for matcher in spec.matchers:
            params = matcher(expr)
            if params is None:
                continue
            activation = Activation(spec.kind, **params)
            if _agrees(expr, activation):
                return activation
    return None


_PROBE = np.concatenate([np.linspace(-8.0, 8.0, 161), [-30.0, -15.0, 15.0, 30.0]])


def _agrees(expr: tuple, activation: Activation) -> bool:
    with np.errstate(all="ignore"):
        expected = activation(_PROBE)
        actual = evaluate(expr, _PROBE)
    scale = max(1.0, float(np.abs(expected).max()))
    return bool(np.all(np.abs(actual - expected) <= 1e-3 * scale))


def evaluate(expr: tuple, z: np.ndarray) -> np.ndarray:
    """The value of a canonical expression at ``z`` (float64)."""
    z = np.asarray(z, dtype=np.float64)
    head = expr[0]
    if head == "x":
        return z
    if head == "const":
        return np.full_like(z, expr[1])
    if head == "mul":
        out = np.full_like(z, expr[1])
        for factor in expr[2]:
            out = out * evaluate(factor, z)
        return out
    if head == "add":
        out = np.full_like(z, expr[1])
        for term in expr[2]:
            out = out + evaluate(term, z)
        return out
    if head == "pow":
        return np.power(evaluate(expr[2], z), expr[1])
    if head == "cmp":
        value = evaluate(expr[2], z)
        return {
            "gt": value > expr[3],
            "ge": value >= expr[3],
            "lt": value < expr[3],
            "le": value <= expr[3],
        }[expr[1]].astype(np.float64)
    if head == "where":
        return np.where(evaluate(expr[1], z) > 0.5, evaluate(expr[2], z), evaluate(expr[3], z))
    op, params, arg = expr[1], dict(expr[2]), evaluate(expr[3], z)
    if op in _ELEMENTARY:
        return _ELEMENTARY[op](arg)
    if op == "Gelu":
        kind = ActivationKind.GELU_TANH if params.get("approximate") == "tanh" else None
        return Activation(kind or ActivationKind.GELU)(arg)
    kind = _KIND_BY_OP[op]
    return Activation(kind, **{k: v for k, v in params.items() if not isinstance(v, str)})(arg)


_ELEMENTARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Erf": special.erf,
    "Exp": np.exp,
    "Log": np.log,
    "Abs": np.abs,
}

_KIND_BY_OP = {
    "Relu": ActivationKind.RELU,
    "LeakyRelu": ActivationKind.LEAKY_RELU,
    "PRelu": ActivationKind.PRELU,
    "Tanh": ActivationKind.TANH,
    "Sigmoid": ActivationKind.SIGMOID,
    "Softplus": ActivationKind.SOFTPLUS,
    "Elu": ActivationKind.ELU,
    "Selu": ActivationKind.SELU,
    "Celu": ActivationKind.CELU,
    "HardSigmoid": ActivationKind.HARD_SIGMOID,
    "HardSwish": ActivationKind.HARD_SWISH,
    "Mish": ActivationKind.MISH,
    "Clip": ActivationKind.CLIP,
    "Softsign": ActivationKind.SOFTSIGN,
    "QuickGelu": ActivationKind.SWISH,
}


# Ops the decomposed patterns use, and the single ops, mapped to the activations a
# subgraph containing them may have been meant to be.
_HINT_OPS: dict[str, tuple[ActivationKind, ...]] = {
    "Erf": (ActivationKind.GELU,),
    "Tanh": (ActivationKind.GELU_TANH, ActivationKind.MISH),
    "Pow": (ActivationKind.GELU_TANH,),
    "Sigmoid": (ActivationKind.SWISH,),
    "Softplus": (ActivationKind.SOFTPLUS, ActivationKind.MISH),
    "Exp": (ActivationKind.SOFTPLUS, ActivationKind.SIGMOID),
    "Log": (ActivationKind.SOFTPLUS,),
    "Where": (ActivationKind.SOFTPLUS,),
    "Greater": (ActivationKind.SOFTPLUS,),
    "HardSigmoid": (ActivationKind.HARD_SWISH,),
    "Clip": (ActivationKind.CLIP, ActivationKind.HARD_SIGMOID, ActivationKind.HARD_SWISH),
    "Min": (ActivationKind.CLIP,),
    "Max": (ActivationKind.CLIP,),
    "Abs": (ActivationKind.SOFTSIGN,),
    "PRelu": (ActivationKind.PRELU,),
}


def hint_for_ops(ops: set[str] | frozenset[str]) -> str:
    """Which registered patterns a subgraph made of ``ops`` comes closest to."""
    kinds = []
    for op in sorted(ops):
        for kind in _HINT_OPS.get(op, ()):
            if kind not in kinds:
                kinds.append(kind)
    if not kinds:
        singles = sorted(SUPPORTED_ACTIVATION_OPS)
        return "a registered activation op (" + ", ".join(singles) + ") or decomposed form"
    parts = []
    for kind in kinds:
        spec = REGISTRY[kind]
        forms = [*spec.patterns] or [spec.ops[0]]
        parts.append(f"{kind.value}: " + " or ".join(forms))
    return "; ".join(parts)
