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

onnxruntime's fused ``BiasGelu(x, b)`` and ``FastGelu(x, b)`` compute the activation of
``x + b``; the registry lists them as ``bias_ops`` (:data:`BIAS_ACTIVATION_OPS`) and the
graph reader makes ``b`` the bias of the dense layer before them.

Decomposed forms are matched on a canonical expression of the subgraph (see
:mod:`onnx_lump.activations.expressions`, :mod:`onnx_lump.activations.patterns` for the matchers and
:mod:`onnx_lump.activations.matching` for the match against this registry). The graph
reader (``chains.py``) builds the expression; this module only knows numbers.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onnx_lump.activations.forms import (
    SELU_ALPHA,
    SELU_GAMMA,
    clip_homogeneous,
    clip_symmetry,
    describe_clip,
    elu_like,
    gelu_forward,
    gelu_slope,
    gelu_tanh_parts,
    gelu_tanh_slope,
    hard_sigmoid,
    hard_sigmoid_slope,
    hard_swish_forward,
    hard_swish_slope,
    mish_parts,
    mish_slope,
    negative_slope_derivative,
    negative_slope_forward,
    sigmoid,
    softplus_forward,
    softplus_slope,
    swish_slope,
)
from onnx_lump.activations.patterns import (
    clip,
    gelu_erf,
    gelu_op,
    gelu_tanh,
    hard_sigmoid_clip,
    hard_swish_decomposed,
    mish_decomposed,
    sigmoid_decomposed,
    single_op,
    softplus_scaled,
    softplus_where,
    softsign_decomposed,
    swish,
)

__all__ = [
    "BIAS_ACTIVATION_OPS",
    "IDENTITY",
    "REGISTRY",
    "SPECS",
    "SUPPORTED_ACTIVATION_OPS",
    "Activation",
    "ActivationKind",
    "ActivationSpec",
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


@dataclass(frozen=True, init=False)
class Activation:
    """An element-wise activation and its parameters.

    ``alpha``: LeakyRelu/PRelu negative slope, Elu/Selu/Celu alpha, HardSigmoid slope,
    Swish's inner scale (``z * sigmoid(alpha z)``; 1 is SiLU). ``beta``: HardSigmoid
    offset, Softplus sharpness (``softplus(beta z) / beta``). ``gamma``: Selu scale.
    ``low``/``high``: Clip bounds. ``threshold``: Softplus returns ``z`` where
    ``beta z > threshold``. A parameter left as None takes the ONNX default of the kind.
    """

    kind: ActivationKind
    # float once constructed: __init__ takes None for "the kind's ONNX default"
    alpha: float
    beta: float
    gamma: float
    low: float
    high: float
    threshold: float

    def __init__(
        self,
        kind: ActivationKind,
        alpha: float | None = None,
        beta: float | None = None,
        gamma: float | None = None,
        low: float | None = None,
        high: float | None = None,
        threshold: float | None = None,
    ) -> None:
        object.__setattr__(self, "kind", kind)
        defaults = REGISTRY[kind].defaults
        given = {
            "alpha": alpha,
            "beta": beta,
            "gamma": gamma,
            "low": low,
            "high": high,
            "threshold": threshold,
        }
        for name, value in given.items():
            value = defaults.get(name, 0.0) if value is None else float(value)
            object.__setattr__(self, name, value)

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

    def float32(self, z: np.ndarray) -> np.ndarray:
        """sigma(z) computed and returned in float32: for the data path's layer inputs and
        statistics, which are float32 values already (numpy's float32 Tanh measured about
        20x faster than its float64 one on 1638 x 4096 values)."""
        out = self.spec.forward(np.asarray(z, dtype=np.float32), self)
        return np.asarray(out, dtype=np.float32)

    def derivative(self, z: np.ndarray) -> np.ndarray:
        """d sigma / d z, elementwise; at a kink the one-sided slope of the upper piece
        (1 at 0 for the Relu family)."""
        return self.spec.derivative(np.asarray(z, dtype=np.float64), self)

    def derivative_float32(self, z: np.ndarray) -> np.ndarray:
        """:meth:`derivative` computed and returned in float32 (refinement's float32 path:
        GELU's slope on 1,024 x 800 values 5x faster than in float64)."""
        out = self.spec.derivative(np.asarray(z, dtype=np.float32), self)
        return np.asarray(out, dtype=np.float32)

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
    # ops computing sigma(x + bias), the bias their input 1: onnxruntime's fusions of a
    # MatMul's bias Add into the activation. After a bias-free dense layer the reader takes
    # that constant as the layer's bias (rewritten where it lives); elsewhere the op is
    # sigma(x + c) and must be one value c repeated to match.
    bias_ops: tuple[str, ...] = ()


SPECS = [
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
        matchers=(single_op("Relu"),),
    ),
    ActivationSpec(
        ActivationKind.LEAKY_RELU,
        ("LeakyRelu",),
        (),
        negative_slope_forward,
        negative_slope_derivative,
        defaults={"alpha": 0.01},
        shown=("alpha",),
        always_show=True,
        homogeneous=lambda a: True,
        point_symmetry=lambda a: 0.0 if a.alpha == 1.0 else None,
        matchers=(single_op("LeakyRelu", "alpha"),),
    ),
    ActivationSpec(
        ActivationKind.PRELU,
        ("PRelu",),
        ("PRelu(x, slope) with a constant slope that is one value for every channel",),
        negative_slope_forward,
        negative_slope_derivative,
        defaults={"alpha": 0.25},
        shown=("alpha",),
        always_show=True,
        homogeneous=lambda a: True,
        point_symmetry=lambda a: 0.0 if a.alpha == 1.0 else None,
        matchers=(single_op("PRelu", "alpha"),),
    ),
    ActivationSpec(
        ActivationKind.TANH,
        ("Tanh",),
        (),
        lambda z, a: np.tanh(z),
        lambda z, a: 1.0 - np.tanh(z) ** 2,
        point_symmetry=lambda a: 0.0,
        matchers=(single_op("Tanh"),),
    ),
    ActivationSpec(
        ActivationKind.SIGMOID,
        ("Sigmoid",),
        ("1 / (1 + Exp(-x))",),
        lambda z, a: sigmoid(z),
        lambda z, a: sigmoid(z) * (1.0 - sigmoid(z)),
        point_symmetry=lambda a: 1.0,
        matchers=(sigmoid_decomposed,),
    ),
    ActivationSpec(
        ActivationKind.GELU,
        ("Gelu", "com.microsoft:Gelu"),
        ("x * 0.5 * (1 + Erf(x / sqrt 2)) (Div by sqrt 2 or Mul by 1/sqrt 2, any order)",),
        gelu_forward,
        gelu_slope,
        matchers=(gelu_op("none"), gelu_erf),
        bias_ops=("com.microsoft:BiasGelu",),
    ),
    ActivationSpec(
        ActivationKind.GELU_TANH,
        ("Gelu(approximate='tanh')", "com.microsoft:FastGelu"),
        ("x * 0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 x^3))) (x^3 as Pow or Mul)",),
        lambda z, a: 0.5 * z * (1.0 + gelu_tanh_parts(z)[0]),
        gelu_tanh_slope,
        label=lambda a: "Gelu(approximate='tanh')",
        matchers=(gelu_op("tanh"), gelu_tanh),
        bias_ops=("com.microsoft:FastGelu",),  # FastGelu(x) alone is the single op
    ),
    ActivationSpec(
        ActivationKind.SWISH,
        ("com.microsoft:QuickGelu",),
        ("x * Sigmoid(x) (SiLU)", "x * Sigmoid(a x) (Swish)"),
        lambda z, a: z * sigmoid(a.alpha * z),
        swish_slope,
        defaults={"alpha": 1.0},
        shown=("alpha",),
        label=lambda a: "SiLU" if a.alpha == 1.0 else "Swish",
        matchers=(swish,),
    ),
    ActivationSpec(
        ActivationKind.SOFTPLUS,
        ("Softplus",),
        (
            "Log(1 + Exp(x))",
            "Softplus(b x) / b",
            "Where(b x > t, x, Softplus(b x) / b) (PyTorch dynamo)",
        ),
        softplus_forward,
        softplus_slope,
        defaults={"beta": 1.0, "threshold": math.inf},
        shown=("beta", "threshold"),
        matchers=(single_op("Softplus"), softplus_scaled, softplus_where),
    ),
    ActivationSpec(
        ActivationKind.ELU,
        ("Elu",),
        (),
        lambda z, a: elu_like(z, a.alpha, 1.0),
        lambda z, a: np.where(z > 0.0, 1.0, a.alpha * np.exp(np.minimum(z, 0.0))),
        defaults={"alpha": 1.0},
        shown=("alpha",),
        matchers=(single_op("Elu", "alpha"),),
    ),
    ActivationSpec(
        ActivationKind.SELU,
        ("Selu",),
        (),
        lambda z, a: a.gamma * elu_like(z, a.alpha, 1.0),
        lambda z, a: a.gamma * np.where(z > 0.0, 1.0, a.alpha * np.exp(np.minimum(z, 0.0))),
        defaults={"alpha": SELU_ALPHA, "gamma": SELU_GAMMA},
        matchers=(single_op("Selu", "alpha", "gamma"),),
    ),
    ActivationSpec(
        ActivationKind.CELU,
        ("Celu",),
        (),
        lambda z, a: elu_like(z, a.alpha, a.alpha),
        lambda z, a: np.where(z > 0.0, 1.0, np.exp(np.minimum(z, 0.0) / a.alpha)),
        defaults={"alpha": 1.0},
        shown=("alpha",),
        matchers=(single_op("Celu", "alpha"),),
    ),
    ActivationSpec(
        ActivationKind.HARD_SIGMOID,
        ("HardSigmoid",),
        ("Clip(a x + b, 0, 1)",),
        lambda z, a: hard_sigmoid(z, a.alpha, a.beta),
        lambda z, a: hard_sigmoid_slope(z, a.alpha, a.beta),
        defaults={"alpha": 0.2, "beta": 0.5},
        shown=("alpha", "beta"),
        point_symmetry=lambda a: 1.0 if a.beta == 0.5 else None,
        matchers=(single_op("HardSigmoid", "alpha", "beta"), hard_sigmoid_clip),
    ),
    ActivationSpec(
        ActivationKind.HARD_SWISH,
        ("HardSwish",),
        ("x * HardSigmoid(x; 1/6, 1/2)", "x * Clip(x + 3, 0, 6) / 6"),
        hard_swish_forward,
        hard_swish_slope,
        matchers=(single_op("HardSwish"), hard_swish_decomposed),
    ),
    ActivationSpec(
        ActivationKind.MISH,
        ("Mish",),
        ("x * Tanh(Softplus(x))",),
        lambda z, a: z * mish_parts(z)[0],
        mish_slope,
        matchers=(single_op("Mish"), mish_decomposed),
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
        label=describe_clip,
        homogeneous=clip_homogeneous,
        point_symmetry=clip_symmetry,
        matchers=(clip,),
    ),
    ActivationSpec(
        ActivationKind.SOFTSIGN,
        ("Softsign",),
        ("x / (1 + Abs(x))",),
        lambda z, a: z / (1.0 + np.abs(z)),
        lambda z, a: 1.0 / (1.0 + np.abs(z)) ** 2,
        point_symmetry=lambda a: 0.0,
        matchers=(single_op("Softsign"), softsign_decomposed),
    ),
]

REGISTRY: dict[ActivationKind, ActivationSpec] = {spec.kind: spec for spec in SPECS}

SUPPORTED_ACTIVATION_OPS = frozenset(
    op for spec in SPECS for op in spec.ops if spec.kind is not ActivationKind.IDENTITY
)

BIAS_ACTIVATION_OPS: dict[str, ActivationKind] = {
    op: spec.kind for spec in SPECS for op in spec.bias_ops
}
"""Ops that add a bias (input 1) before the activation, e.g. ``com.microsoft:BiasGelu``: the
reader folds that bias into the dense layer before them (see ``ActivationSpec.bias_ops``)."""

IDENTITY = Activation(ActivationKind.IDENTITY)
