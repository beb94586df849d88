"""Element-wise activations that may sit between two dense layers of a chain.

One registry, :data:`REGISTRY`, holds every supported activation: the ONNX forms that
produce it (the single op and the decomposed subgraphs exporters write), a numpy forward
and derivative, and the exact symmetries it admits. Merging identical rows is exact for
any element-wise activation; the symmetries add more exact merges:

* ``is_positively_homogeneous``: ``sigma(c z) = c sigma(z)`` for ``c > 0`` (proportional
  rows merge);
* ``point_symmetry``: a constant ``k`` with ``sigma(-z) = k - sigma(z)``, so rows of
  opposite sign merge; ``k = 0`` is an odd activation (``is_odd``), ``k = 1`` the
  Sigmoid flip.

Decomposed forms are matched on a canonical expression of the subgraph (see
:class:`Expr` helpers below): products and sums are flattened and their constants folded,
``Div``/``Sub``/``Neg``/``Pow``/``Sqrt``/``Reciprocal`` are rewritten as products, sums and
powers, so the operand order, the association of products and ``Div(x, sqrt 2)`` versus
``Mul(x, 1/sqrt 2)`` do not matter. The graph reader (``chains.py``) builds the
expression; this module only knows numbers.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
from scipy import special

__all__ = [
    "IDENTITY",
    "REGISTRY",
    "SUPPORTED_ACTIVATION_OPS",
    "Activation",
    "ActivationKind",
    "ActivationSpec",
    "X",
    "add",
    "constant",
    "evaluate",
    "fn",
    "hint_for_ops",
    "match_expression",
    "mul",
    "power",
    "render",
]


class ActivationKind(enum.Enum):
    IDENTITY = "Identity"
    RELU = "Relu"
    LEAKY_RELU = "LeakyRelu"
    PRELU = "PRelu"
    TANH = "Tanh"
    SIGMOID = "Sigmoid"
    GELU = "Gelu"
    GELU_TANH = "GeluTanh"
    SWISH = "Swish"
    SOFTPLUS = "Softplus"
    ELU = "Elu"
    SELU = "Selu"
    CELU = "Celu"
    HARD_SIGMOID = "HardSigmoid"
    HARD_SWISH = "HardSwish"
    MISH = "Mish"
    CLIP = "Clip"
    SOFTSIGN = "Softsign"


_SQRT_HALF = math.sqrt(0.5)
_GELU_TANH_SCALE = math.sqrt(2.0 / math.pi)
_GELU_TANH_CUBIC = 0.044715
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_GAMMA = 1.0507009873554804934193349852946


@dataclass(frozen=True)
class Activation:
    """An element-wise activation and its parameters.

    ``alpha``: LeakyRelu/PRelu negative slope, Elu/Selu/Celu alpha, HardSigmoid slope,
    Swish's inner scale (``z * sigmoid(alpha z)``; 1 is SiLU). ``beta``: HardSigmoid
    offset, Softplus sharpness (``softplus(beta z) / beta``). ``gamma``: Selu scale.
    ``low``/``high``: Clip bounds. ``threshold``: Softplus returns ``z`` where
    ``beta z > threshold``. A parameter left as None takes the ONNX default of the kind.
    """

    kind: ActivationKind
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    low: float | None = None
    high: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        defaults = REGISTRY[self.kind].defaults
        for item in fields(self)[1:]:
            value = getattr(self, item.name)
            value = defaults.get(item.name, 0.0) if value is None else float(value)
            object.__setattr__(self, item.name, value)

    @property
    def spec(self) -> ActivationSpec:
        return REGISTRY[self.kind]

    @property
    def name(self) -> str:
        return self.kind.value

    @property
    def is_positively_homogeneous(self) -> bool:
        """sigma(c z) = c sigma(z) for c > 0: proportional rows lump exactly."""
        return self.spec.homogeneous(self)

    @property
    def point_symmetry(self) -> float | None:
        """k with sigma(-z) = k - sigma(z) for all z, or None."""
        return self.spec.point_symmetry(self)

    @property
    def is_odd(self) -> bool:
        """sigma(-z) = -sigma(z): rows of opposite sign lump exactly."""
        return self.point_symmetry == 0.0

    @property
    def is_polynomial(self) -> bool:
        return self.kind is ActivationKind.IDENTITY

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return self.spec.forward(np.asarray(z, dtype=np.float64), self)

    def derivative(self, z: np.ndarray) -> np.ndarray:
        """d sigma / d z, elementwise; at a kink the one-sided slope of the upper piece
        (1 at 0 for the Relu family)."""
        return self.spec.derivative(np.asarray(z, dtype=np.float64), self)

    def describe(self) -> str:
        shown = [
            f"{name}={getattr(self, name):g}"
            for name in self.spec.shown
            if getattr(self, name) != self.spec.defaults.get(name, 0.0) or self.spec.always_show
        ]
        label = self.spec.label(self) if self.spec.label else self.name
        return f"{label}({', '.join(shown)})" if shown else label


@dataclass(frozen=True)
class ActivationSpec:
    """One registry entry: where the activation comes from and how it computes."""

    kind: ActivationKind
    ops: tuple[str, ...]  # single ONNX ops producing it ("com.microsoft:Gelu" for a domain)
    patterns: tuple[str, ...]  # the decomposed forms recognised, for notes and docs
    forward: Callable[[np.ndarray, Activation], np.ndarray]
    derivative: Callable[[np.ndarray, Activation], np.ndarray]
    defaults: dict[str, float] = field(default_factory=dict)
    shown: tuple[str, ...] = ()  # parameters describe() prints
    always_show: bool = False
    label: Callable[[Activation], str] | None = None
    homogeneous: Callable[[Activation], bool] = lambda act: False
    point_symmetry: Callable[[Activation], float | None] = lambda act: None
    # expression -> parameters, for the decomposed forms (and the single ops' own nodes)
    matchers: tuple[Callable[[tuple], dict | None], ...] = ()


# -- numpy forms ---------------------------------------------------------------------


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


def _softplus_forward(z: np.ndarray, a: Activation) -> np.ndarray:
    scaled = a.beta * z
    return np.where(scaled > a.threshold, z, _softplus(scaled) / a.beta)


def _softplus_slope(z: np.ndarray, a: Activation) -> np.ndarray:
    scaled = a.beta * z
    return np.where(scaled > a.threshold, 1.0, _sigmoid(scaled))


def _gelu_slope(z: np.ndarray, a: Activation) -> np.ndarray:
    return 0.5 * (1.0 + special.erf(z * _SQRT_HALF)) + z * np.exp(-0.5 * z * z) / math.sqrt(
        2.0 * math.pi
    )


def _gelu_tanh_slope(z: np.ndarray, a: Activation) -> np.ndarray:
    t, inner = _gelu_tanh_parts(z)
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * inner


def _swish_slope(z: np.ndarray, a: Activation) -> np.ndarray:
    s = _sigmoid(a.alpha * z)
    return s + a.alpha * z * s * (1.0 - s)


def _mish_slope(z: np.ndarray, a: Activation) -> np.ndarray:
    t, s = _mish_parts(z)
    return t + z * (1.0 - t * t) * s


def _hard_swish_forward(z: np.ndarray, a: Activation) -> np.ndarray:
    return z * _hard_sigmoid(z, 1.0 / 6.0, 0.5)


def _hard_swish_slope(z: np.ndarray, a: Activation) -> np.ndarray:
    return _hard_sigmoid(z, 1.0 / 6.0, 0.5) + z * _hard_sigmoid_slope(z, 1.0 / 6.0, 0.5)


def _negative_slope_forward(z: np.ndarray, a: Activation) -> np.ndarray:
    return np.where(z >= 0.0, z, a.alpha * z)


def _negative_slope_derivative(z: np.ndarray, a: Activation) -> np.ndarray:
    return np.where(z >= 0.0, 1.0, a.alpha)


# -- canonical expressions -------------------------------------------------------------
#
# ("x",)                         the pre-activation
# ("const", v)                   a scalar
# ("mul", coef, factors)         coef * prod(factors), factors sorted, never a const
# ("add", offset, terms)         offset + sum(terms), terms sorted, never a const
# ("pow", exponent, base)        base ** exponent (non-integer or negative exponents)
# ("fn", op, params, arg)        a unary op with its float/str parameters
# ("cmp", op, arg, value)        arg > value ("gt"), >= ("ge"), < ("lt"), <= ("le")
# ("where", cond, a, b)

X = ("x",)


def constant(value: float) -> tuple:
    return ("const", float(value))


def _is_const(e: tuple) -> bool:
    return e[0] == "const"


def _sort_key(e: tuple) -> str:
    return repr(e)


def mul(*args: tuple) -> tuple:
    coef, factors = 1.0, []
    for a in args:
        if a[0] == "const":
            coef *= a[1]
        elif a[0] == "mul":
            coef *= a[1]
            factors.extend(a[2])
        else:
            factors.append(a)
    if coef == 0.0 or not factors:
        return constant(coef)
    if coef == 1.0 and len(factors) == 1:
        return factors[0]
    return ("mul", coef, tuple(sorted(factors, key=_sort_key)))


def add(*args: tuple) -> tuple:
    offset, terms = 0.0, []
    for a in args:
        if a[0] == "const":
            offset += a[1]
        elif a[0] == "add":
            offset += a[1]
            terms.extend(a[2])
        else:
            terms.append(a)
    if not terms:
        return constant(offset)
    if offset == 0.0 and len(terms) == 1:
        return terms[0]
    return ("add", offset, tuple(sorted(terms, key=_sort_key)))


def power(base: tuple, exponent: float) -> tuple:
    if _is_const(base):
        return constant(base[1] ** exponent)
    if exponent == 1.0:
        return base
    if exponent in (2.0, 3.0, 4.0):
        return mul(*([base] * int(exponent)))
    if exponent == -1.0:
        # 1 / (1 + exp(-e)) is Sigmoid(e); 1 / (1 + |x|) stays a power.
        offset, terms = _terms(base)
        if offset == 1.0 and len(terms) == 1 and terms[0][:2] == ("fn", "Exp"):
            return fn("Sigmoid", mul(constant(-1.0), terms[0][3]))
    return ("pow", float(exponent), base)


def fn(op: str, arg: tuple, **params) -> tuple:
    if op == "Log":
        # log(1 + exp(e)) is Softplus(e): the ONNX function body of Softplus.
        offset, terms = _terms(arg)
        if offset == 1.0 and len(terms) == 1 and terms[0][:2] == ("fn", "Exp"):
            return fn("Softplus", terms[0][3])
    if op == "Relu":
        return ("fn", "Relu", (), arg)
    if op == "Clip":
        low, high = params.get("low", -math.inf), params.get("high", math.inf)
        if arg[:2] == ("fn", "Relu"):
            low, arg = max(low, 0.0), arg[3]
        elif arg[:2] == ("fn", "Clip"):
            inner = dict(arg[2])
            low, high = max(low, inner["low"]), min(high, inner["high"])
            arg = arg[3]
        low = min(low, high)  # Min(Max(x, a), b) with a > b is the constant b
        if low == -math.inf and high == math.inf:
            return arg
        if low == 0.0 and high == math.inf:
            return ("fn", "Relu", (), arg)
        params = {"low": low, "high": high}
    return ("fn", op, tuple(sorted(params.items())), arg)


def _factors(e: tuple) -> tuple[float, tuple]:
    if e[0] == "mul":
        return e[1], e[2]
    return 1.0, (e,)


def _terms(e: tuple) -> tuple[float, tuple]:
    if e[0] == "add":
        return e[1], e[2]
    return 0.0, (e,)


def _close(a: float, b: float, rtol: float = 1e-3) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)


def _linear_in_x(e: tuple) -> float | None:
    """c when e is c * x (c may be 1)."""
    if e == X:
        return 1.0
    coef, factors = _factors(e)
    return coef if factors == (X,) else None


def _affine_in_x(e: tuple) -> tuple[float, float] | None:
    """(a, b) when e is a * x + b."""
    offset, terms = _terms(e)
    if len(terms) != 1:
        return None
    slope = _linear_in_x(terms[0])
    return None if slope is None else (slope, offset)


def _x_times(e: tuple) -> tuple[float, tuple] | None:
    """(c, g) when e is c * x * g with g one factor that is not x."""
    coef, factors = _factors(e)
    if len(factors) != 2 or X not in factors:
        return None
    other = factors[1] if factors[0] == X else factors[0]
    return None if other == X else (coef, other)


def _single_op(op: str, *names: str) -> Callable[[tuple], dict | None]:
    """The op applied to x itself, its parameters named ``names``."""

    def match(e: tuple) -> dict | None:
        if e[0] != "fn" or e[1] != op or e[3] != X:
            return None
        params = dict(e[2])
        return {name: params[name] for name in names if name in params}

    return match


def _gelu_erf(e: tuple) -> dict | None:
    """0.5 * x * (1 + Erf(x / sqrt 2)), in any order and association."""
    found = _x_times(e)
    if found is None or not _close(found[0], 0.5):
        return None
    offset, terms = _terms(found[1])
    if not _close(offset, 1.0) or len(terms) != 1 or terms[0][:2] != ("fn", "Erf"):
        return None
    slope = _linear_in_x(terms[0][3])
    return {} if slope is not None and _close(slope, _SQRT_HALF) else None


def _gelu_tanh(e: tuple) -> dict | None:
    """0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 x^3))), also with the argument
    factored as sqrt(2/pi) * x * (1 + 0.044715 x^2)."""
    found = _x_times(e)
    if found is None or not _close(found[0], 0.5):
        return None
    offset, terms = _terms(found[1])
    if not _close(offset, 1.0) or len(terms) != 1 or terms[0][:2] != ("fn", "Tanh"):
        return None
    scale, factors = _factors(terms[0][3])
    if not _close(scale, _GELU_TANH_SCALE):
        return None
    if len(factors) == 1:  # x + c x^3
        inner_offset, inner = _terms(factors[0])
        cubic = mul(X, X, X)
        if inner_offset != 0.0 or len(inner) != 2 or X not in inner:
            return None
        other = inner[1] if inner[0] == X else inner[0]
        coef, rest = _factors(other)
        ok = rest == cubic[2] and _close(coef, _GELU_TANH_CUBIC)
        return {} if ok else None
    if len(factors) == 2 and X in factors:  # x * (1 + c x^2)
        other = factors[1] if factors[0] == X else factors[0]
        inner_offset, inner = _terms(other)
        if not _close(inner_offset, 1.0) or len(inner) != 1:
            return None
        coef, rest = _factors(inner[0])
        return {} if rest == (X, X) and _close(coef, _GELU_TANH_CUBIC) else None
    return None


def _gelu_op(approximate: str) -> Callable[[tuple], dict | None]:
    def match(e: tuple) -> dict | None:
        if e[0] != "fn" or e[1] != "Gelu" or e[3] != X:
            return None
        return {} if dict(e[2]).get("approximate", "none") == approximate else None

    return match


def _swish(e: tuple) -> dict | None:
    """x * Sigmoid(a x) (a = 1: SiLU); also onnxruntime's QuickGelu."""
    if e[:2] == ("fn", "QuickGelu") and e[3] == X:
        return {"alpha": dict(e[2]).get("alpha", 1.702)}
    found = _x_times(e)
    if found is None or found[0] != 1.0 or found[1][:2] != ("fn", "Sigmoid"):
        return None
    slope = _linear_in_x(found[1][3])
    return None if slope is None or slope <= 0.0 else {"alpha": slope}


def _softplus_scaled(e: tuple) -> dict | None:
    """Softplus(b x) / b (PyTorch Softplus(beta))."""
    coef, factors = _factors(e)
    if len(factors) != 1 or factors[0][:2] != ("fn", "Softplus"):
        return None
    beta = _linear_in_x(factors[0][3])
    if beta is None or beta <= 0.0 or not _close(coef * beta, 1.0, 1e-6):
        return None
    return {"beta": beta}


def _softplus_where(e: tuple) -> dict | None:
    """Where(b x > t, x, Softplus(b x) / b): the PyTorch dynamo exporter's Softplus."""
    if e[0] != "where" or e[2] != X or e[1][0] != "cmp" or e[1][1] not in ("gt", "ge"):
        return None
    inner = _softplus_scaled(e[3])
    scale = _linear_in_x(e[1][2])
    if inner is None or scale is None or not _close(scale, inner["beta"], 1e-6):
        return None
    return {**inner, "threshold": e[1][3]}


def _hard_sigmoid_clip(e: tuple) -> dict | None:
    """Clip(a x + b, 0, 1)."""
    if e[:2] != ("fn", "Clip"):
        return None
    params = dict(e[2])
    affine = _affine_in_x(e[3])
    if affine is None or params != {"low": 0.0, "high": 1.0} or affine[0] == 0.0:
        return None
    return {"alpha": affine[0], "beta": affine[1]}


def _hard_swish_decomposed(e: tuple) -> dict | None:
    """x * HardSigmoid(x; 1/6, 1/2), or x * Clip(x + 3, 0, 6) / 6."""
    coef, factors = _factors(e)
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


def _mish_decomposed(e: tuple) -> dict | None:
    """x * Tanh(Softplus(x)) (Softplus also as Log(1 + Exp(x)))."""
    found = _x_times(e)
    if found is None or found[0] != 1.0:
        return None
    return {} if found[1] == ("fn", "Tanh", (), ("fn", "Softplus", (), X)) else None


def _clip(e: tuple) -> dict | None:
    """Clip(x, low, high); also Min/Max with constants and Min(Relu(x), c)."""
    if e[:2] != ("fn", "Clip") or e[3] != X:
        return None
    return dict(e[2])


def _sigmoid_decomposed(e: tuple) -> dict | None:
    return {} if e == ("fn", "Sigmoid", (), X) else None


def _softsign_decomposed(e: tuple) -> dict | None:
    """x / (1 + |x|)."""
    found = _x_times(e)
    target = ("pow", -1.0, add(constant(1.0), ("fn", "Abs", (), X)))
    return {} if found is not None and found == (1.0, target) else None


def _clip_homogeneous(a: Activation) -> bool:
    # Clip(-inf, 0) is homogeneous too, but code that reads the flag (the linear
    # method) takes it for a Relu-like shape: claim only the Relu case.
    return a.low == 0.0 and a.high == math.inf


def _clip_symmetry(a: Activation) -> float | None:
    return 0.0 if a.low == -a.high else None


def _describe_clip(a: Activation) -> str:
    return "Relu6" if (a.low, a.high) == (0.0, 6.0) else "Clip"


_SPECS = [
    ActivationSpec(
        ActivationKind.IDENTITY,
        ("Identity",),
        (),
        lambda z, a: z,
        lambda z, a: np.ones_like(z),
        homogeneous=lambda a: False,  # handled as the polynomial case by the encoder
        point_symmetry=lambda a: 0.0,
    ),
    ActivationSpec(
        ActivationKind.RELU,
        ("Relu",),
        ("Max(x, 0)", "Clip(x, 0, inf)"),
        lambda z, a: np.maximum(z, 0.0),
        lambda z, a: (z >= 0.0).astype(np.float64),
        homogeneous=lambda a: True,
        matchers=(_single_op("Relu"),),
    ),
    ActivationSpec(
        ActivationKind.LEAKY_RELU,
        ("LeakyRelu",),
        (),
        _negative_slope_forward,
        _negative_slope_derivative,
        defaults={"alpha": 0.01},
        shown=("alpha",),
        always_show=True,
        homogeneous=lambda a: True,
        point_symmetry=lambda a: 0.0 if a.alpha == 1.0 else None,
        matchers=(_single_op("LeakyRelu", "alpha"),),
    ),
    ActivationSpec(
        ActivationKind.PRELU,
        ("PRelu",),
        ("PRelu(x, slope) with a constant slope that is one value for every channel",),
        _negative_slope_forward,
        _negative_slope_derivative,
        defaults={"alpha": 0.25},
        shown=("alpha",),
        always_show=True,
        homogeneous=lambda a: True,
        point_symmetry=lambda a: 0.0 if a.alpha == 1.0 else None,
        matchers=(_single_op("PRelu", "alpha"),),
    ),
    ActivationSpec(
        ActivationKind.TANH,
        ("Tanh",),
        (),
        lambda z, a: np.tanh(z),
        lambda z, a: 1.0 - np.tanh(z) ** 2,
        point_symmetry=lambda a: 0.0,
        matchers=(_single_op("Tanh"),),
    ),
    ActivationSpec(
        ActivationKind.SIGMOID,
        ("Sigmoid",),
        ("1 / (1 + Exp(-x))",),
        lambda z, a: _sigmoid(z),
        lambda z, a: _sigmoid(z) * (1.0 - _sigmoid(z)),
        point_symmetry=lambda a: 1.0,
        matchers=(_sigmoid_decomposed,),
    ),
    ActivationSpec(
        ActivationKind.GELU,
        ("Gelu", "com.microsoft:Gelu"),
        ("x * 0.5 * (1 + Erf(x / sqrt 2)) (Div by sqrt 2 or Mul by 1/sqrt 2, any order)",),
        lambda z, a: 0.5 * z * (1.0 + special.erf(z * _SQRT_HALF)),
        _gelu_slope,
        matchers=(_gelu_op("none"), _gelu_erf),
    ),
    ActivationSpec(
        ActivationKind.GELU_TANH,
        ("Gelu(approximate='tanh')", "com.microsoft:FastGelu"),
        ("x * 0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 x^3))) (x^3 as Pow or Mul)",),
        lambda z, a: 0.5 * z * (1.0 + _gelu_tanh_parts(z)[0]),
        _gelu_tanh_slope,
        label=lambda a: "Gelu(approximate='tanh')",
        matchers=(_gelu_op("tanh"), _gelu_tanh),
    ),
    ActivationSpec(
        ActivationKind.SWISH,
        ("com.microsoft:QuickGelu",),
        ("x * Sigmoid(x) (SiLU)", "x * Sigmoid(a x) (Swish)"),
        lambda z, a: z * _sigmoid(a.alpha * z),
        _swish_slope,
        defaults={"alpha": 1.0},
        shown=("alpha",),
        label=lambda a: "SiLU" if a.alpha == 1.0 else "Swish",
        matchers=(_swish,),
    ),
    ActivationSpec(
        ActivationKind.SOFTPLUS,
        ("Softplus",),
        (
            "Log(1 + Exp(x))",
            "Softplus(b x) / b",
            "Where(b x > t, x, Softplus(b x) / b) (PyTorch dynamo)",
        ),
        _softplus_forward,
        _softplus_slope,
        defaults={"beta": 1.0, "threshold": math.inf},
        shown=("beta", "threshold"),
        matchers=(_single_op("Softplus"), _softplus_scaled, _softplus_where),
    ),
    ActivationSpec(
        ActivationKind.ELU,
        ("Elu",),
        (),
        lambda z, a: _elu_like(z, a.alpha, 1.0),
        lambda z, a: np.where(z > 0.0, 1.0, a.alpha * np.exp(np.minimum(z, 0.0))),
        defaults={"alpha": 1.0},
        shown=("alpha",),
        matchers=(_single_op("Elu", "alpha"),),
    ),
    ActivationSpec(
        ActivationKind.SELU,
        ("Selu",),
        (),
        lambda z, a: a.gamma * _elu_like(z, a.alpha, 1.0),
        lambda z, a: a.gamma * np.where(z > 0.0, 1.0, a.alpha * np.exp(np.minimum(z, 0.0))),
        defaults={"alpha": _SELU_ALPHA, "gamma": _SELU_GAMMA},
        matchers=(_single_op("Selu", "alpha", "gamma"),),
    ),
    ActivationSpec(
        ActivationKind.CELU,
        ("Celu",),
        (),
        lambda z, a: _elu_like(z, a.alpha, a.alpha),
        lambda z, a: np.where(z > 0.0, 1.0, np.exp(np.minimum(z, 0.0) / a.alpha)),
        defaults={"alpha": 1.0},
        shown=("alpha",),
        matchers=(_single_op("Celu", "alpha"),),
    ),
    ActivationSpec(
        ActivationKind.HARD_SIGMOID,
        ("HardSigmoid",),
        ("Clip(a x + b, 0, 1)",),
        lambda z, a: _hard_sigmoid(z, a.alpha, a.beta),
        lambda z, a: _hard_sigmoid_slope(z, a.alpha, a.beta),
        defaults={"alpha": 0.2, "beta": 0.5},
        shown=("alpha", "beta"),
        point_symmetry=lambda a: 1.0 if a.beta == 0.5 else None,
        matchers=(_single_op("HardSigmoid", "alpha", "beta"), _hard_sigmoid_clip),
    ),
    ActivationSpec(
        ActivationKind.HARD_SWISH,
        ("HardSwish",),
        ("x * HardSigmoid(x; 1/6, 1/2)", "x * Clip(x + 3, 0, 6) / 6"),
        _hard_swish_forward,
        _hard_swish_slope,
        matchers=(_single_op("HardSwish"), _hard_swish_decomposed),
    ),
    ActivationSpec(
        ActivationKind.MISH,
        ("Mish",),
        ("x * Tanh(Softplus(x))",),
        lambda z, a: z * _mish_parts(z)[0],
        _mish_slope,
        matchers=(_single_op("Mish"), _mish_decomposed),
    ),
    ActivationSpec(
        ActivationKind.CLIP,
        ("Clip",),
        ("Clip(x, low, high) with constant bounds", "Min(Max(x, low), high)", "Min(Relu(x), c)"),
        lambda z, a: np.clip(z, a.low, a.high),
        lambda z, a: ((z >= a.low) & (z <= a.high)).astype(np.float64),
        defaults={"low": -math.inf, "high": math.inf},
        shown=("low", "high"),
        always_show=True,
        label=_describe_clip,
        homogeneous=_clip_homogeneous,
        point_symmetry=_clip_symmetry,
        matchers=(_clip,),
    ),
    ActivationSpec(
        ActivationKind.SOFTSIGN,
        ("Softsign",),
        ("x / (1 + Abs(x))",),
        lambda z, a: z / (1.0 + np.abs(z)),
        lambda z, a: 1.0 / (1.0 + np.abs(z)) ** 2,
        point_symmetry=lambda a: 0.0,
        matchers=(_single_op("Softsign"), _softsign_decomposed),
    ),
]

REGISTRY: dict[ActivationKind, ActivationSpec] = {spec.kind: spec for spec in _SPECS}

SUPPORTED_ACTIVATION_OPS = frozenset(
    op for spec in _SPECS for op in spec.ops if spec.kind is not ActivationKind.IDENTITY
)

IDENTITY = Activation(ActivationKind.IDENTITY)


def match_expression(expr: tuple) -> Activation | None:
    """The registered activation that ``expr`` (a canonical expression in x) computes.

    A match is confirmed numerically against the registered forward, so a matcher can
    never hand the encoder a function other than the one the graph computes.
    """
    if expr == X:
        return IDENTITY
    for spec in _SPECS:
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


def render(expr: tuple) -> str:
    """A short human-readable form of a canonical expression, for notes."""
    head = expr[0]
    if head == "x":
        return "x"
    if head == "const":
        return f"{expr[1]:.6g}"
    if head == "mul":
        parts = [render(f) for f in expr[2]]
        if expr[1] != 1.0:
            parts.insert(0, f"{expr[1]:.6g}")
        return " * ".join(p if " + " not in p else f"({p})" for p in parts)
    if head == "add":
        parts = [render(t) for t in expr[2]]
        if expr[1] != 0.0:
            parts.append(f"{expr[1]:.6g}")
        return " + ".join(parts)
    if head == "pow":
        return f"({render(expr[2])})^{expr[1]:g}"
    if head == "cmp":
        symbol = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}[expr[1]]
        return f"{render(expr[2])} {symbol} {expr[3]:.6g}"
    if head == "where":
        return f"Where({render(expr[1])}, {render(expr[2])}, {render(expr[3])})"
    params = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in expr[2])
    return f"{expr[1]}({render(expr[3])}{', ' + params if params else ''})"


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
