"""Hypothesis strategies: ONNX dense chains, built with ``onnx.helper``, whose redundancy is
planted and known.

A drawn :class:`ChainSpec` is plain data, so the falsifying example Hypothesis prints is
short and complete; :func:`build` turns it into a model, deterministically. What varies:

* depth (hidden layers) 1-5, hidden widths 1-64, input and output widths;
* the activation of each hidden layer: identity (no node) and every entry of
  :data:`ACTIVATIONS` (single ops as the pass's registry names them, and decomposed
  patterns) that the pass's graph reader recognises in a two-layer probe chain and that
  onnxruntime runs in the dtype; a new activation is one line in :data:`ACTIVATIONS`;
* each dense layer's form: Gemm (transB 0/1, alpha, beta, bias C as ``(H,)``/``(1, H)`` or
  none) or MatMul (+ Add with the bias on either side, or no bias), on rank-2 or rank-3
  data (batch x seq x features, seq fixed or symbolic);
* float16, float32 or float64; weights and biases as initializers or ``Constant`` nodes;
  ``value_info`` for the hidden tensors or not;
* planted redundancy per hidden layer: ``distinct`` neurons with their own dynamics plus
  copies of them: duplicates (any activation), positive multiples (positively homogeneous
  activations: Relu, LeakyRelu, ...), negations (point-symmetric ones, sigma(-z) =
  k - sigma(z): Tanh, Sigmoid, ...), multiples with any bias (identity), and zero rows
  (constant neurons, folded into the next bias). Which symmetries an activation has is
  read from the pass's ``Activation`` (what it claims to merge exactly), with this
  module's table as the fallback.

The planted widths are the exact answer at eps 0 only if no two distinct neurons are
merged by accident. The pass merges rows within ``16 * dtype eps * (largest row L1)`` of
each other (its rounding allowance), which in float16 is about 2% of a row: random rows
into a narrow layer collide. So :func:`build` mirrors the pass's canonical forms
(written from their definitions, not its code) and redraws a layer until every two
distinct neurons, and every live neuron and a constant one, are :data:`MARGIN` times that
allowance apart; if a layer is too narrow for that many distinct neurons, some become
duplicates instead (``Built.expected`` says what was planted in the end).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from scipy.special import erf

__all__ = [
    "ACTIVATIONS",
    "DTYPES",
    "IDENTITY",
    "ActivationOp",
    "Built",
    "ChainSpec",
    "DenseForm",
    "HiddenSpec",
    "build",
    "chain_specs",
    "drawn_activations",
    "reader_reads",
    "supported_activation_ops",
    "usable_activations",
]

DTYPES = ("float16", "float32", "float64")
# The pass's allowance for rounding at eps 0 (onnx_lump.ode.equivalence._ROUNDING_UNITS), in
# units of the dtype's eps; distinct neurons are kept MARGIN allowances apart.
ROUNDING_UNITS = 16.0
MARGIN = 4.0
# The copies the pass merges, per symmetry family of the activation ("none": duplicates
# and zero rows only).
SCALED_KIND = {"homogeneous": "proportional", "point": "flip", "linear": "affine"}
_POW2_POSITIVE = (0.5, 2.0, 4.0)
_POW2_ANY = (-2.0, -1.0, -0.5, 0.5, 2.0, 4.0)
_MS = "com.microsoft"
# A model's opset is the highest its activations need (ACTIVATIONS' opset values).
OPSETS = (17, 18, 20)


class _Nodes:
    """Collects the nodes of one activation; constants become Constant nodes."""

    def __init__(self, prefix: str, dtype: np.dtype) -> None:
        self.prefix, self.dtype, self.nodes = prefix, np.dtype(dtype), []
        self.domains: set[str] = set()

    def add(self, op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        domain, _, op = op.rpartition(":")
        output = output or f"{self.prefix}_{len(self.nodes)}"
        name = f"{self.prefix}_{op}{len(self.nodes)}"
        self.nodes.append(
            helper.make_node(op, inputs, [output], name=name, domain=domain or None, **attrs)
        )
        if domain:
            self.domains.add(domain)
        return output

    def const(self, value: float) -> str:
        tensor = numpy_helper.from_array(np.asarray(value, dtype=self.dtype))
        return self.add("Constant", [], value=tensor)


Emit = Callable[[_Nodes, str, str, dict], None]


def _single(op: str, inputs: tuple[str, ...] = ()) -> Emit:
    """One ``op`` node; attributes named in ``inputs`` become constant inputs instead."""

    def emit(b: _Nodes, x: str, out: str, attrs: dict) -> None:
        extra = [b.const(attrs[name]) for name in inputs]
        b.add(op, [x, *extra], out, **{k: v for k, v in attrs.items() if k not in inputs})

    return emit


@dataclass(frozen=True, eq=False)
class ActivationOp:
    """An activation the generator can write.

    ``key``: the op as the pass's registry names it (``SUPPORTED_ACTIVATION_OPS``) or a
    pattern's label; ``kind``: the ``ActivationKind`` value the reader should find;
    ``fn(z, **attrs)``: its float64 value (for the constant a zero row folds into the next
    bias; None: no zero rows); ``attrs``: the choices for each parameter, by ONNX name (the
    first is used to probe; None leaves the parameter out, so ``fn``'s defaults are ONNX's);
    ``params``: attrs -> ``Activation`` fields; ``symmetry``: "homogeneous", "odd",
    "sigmoid" or "none", used when the pass's Activation does not say.
    """

    key: str
    kind: str
    fn: Callable[..., np.ndarray] | None
    emit: Emit
    attrs: dict[str, tuple] = field(default_factory=dict)
    opset: int = 17
    symmetry: str = "none"
    params: Callable[[dict], dict] = dict


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def _elu(z, alpha):
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0)))


def _gelu_tanh(z):
    return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))


def _emit_silu(b: _Nodes, x: str, out: str, attrs: dict) -> None:
    b.add("Mul", [x, b.add("Sigmoid", [x])], out)


def _emit_gelu_erf(b: _Nodes, x: str, out: str, attrs: dict) -> None:
    inner = b.add("Erf", [b.add("Div", [x, b.const(math.sqrt(2.0))])])
    half_x = b.add("Mul", [x, b.const(0.5)])
    b.add("Mul", [half_x, b.add("Add", [inner, b.const(1.0)])], out)


def _emit_logistic(b: _Nodes, x: str, out: str, attrs: dict) -> None:
    exp = b.add("Exp", [b.add("Neg", [x])])
    b.add("Div", [b.const(1.0), b.add("Add", [b.const(1.0), exp])], out)


def _emit_softsign(b: _Nodes, x: str, out: str, attrs: dict) -> None:
    b.add("Div", [x, b.add("Add", [b.const(1.0), b.add("Abs", [x])])], out)


def _emit_mish(b: _Nodes, x: str, out: str, attrs: dict) -> None:
    b.add("Mul", [x, b.add("Tanh", [b.add("Softplus", [x])])], out)


def _emit_relu6(b: _Nodes, x: str, out: str, attrs: dict) -> None:
    b.add("Min", [b.add("Relu", [x]), b.const(6.0)], out)


_LEAKY = (None, 0.1, 0.3, 0.5)
_ELU = (None, 0.5, 2.0)
_CLIP = ((0.0, 6.0), (-1.0, 1.0), (-2.0, 3.0))
_HOMOGENEOUS = "homogeneous"


def _relu(z):
    return np.maximum(z, 0.0)


def _leaky(z, alpha=0.01):
    return np.where(z >= 0, z, alpha * z)


def _gelu(z):
    return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))


def _quick_gelu(z, alpha=1.702):
    return z * _sigmoid(alpha * z)


def _softplus(z):
    return np.logaddexp(0.0, z)


def _selu(z):
    return 1.0507009873554805 * _elu(z, 1.6732632423543772)


def _celu(z, alpha=1.0):
    return np.maximum(z, 0.0) + np.minimum(0.0, alpha * np.expm1(np.minimum(z, 0.0) / alpha))


def _hard_sigmoid(z, alpha=0.2, beta=0.5):
    return np.clip(alpha * z + beta, 0.0, 1.0)


def _hard_swish(z):
    return z * np.clip(z / 6.0 + 0.5, 0.0, 1.0)


def _mish(z):
    return z * np.tanh(np.logaddexp(0.0, z))


def _softsign(z):
    return z / (1.0 + np.abs(z))


def _emit_gelu_tanh(b: _Nodes, x: str, out: str, attrs: dict) -> None:
    b.add("Gelu", [x], out, approximate="tanh")


def _emit_clip(b: _Nodes, x: str, out: str, attrs: dict) -> None:
    low, high = attrs["bounds"]
    b.add("Clip", [x, b.const(low), b.const(high)], out)


def _clip_params(attrs: dict) -> dict:
    low, high = attrs.get("bounds", (0.0, 6.0))
    return {"low": low, "high": high}


IDENTITY = ActivationOp("identity", "Identity", lambda z: z, lambda *a: None)
# Every activation the generator knows, one entry each. An entry is drawn when the pass's
# reader recognises it (reader_reads) and onnxruntime runs it in the drawn dtype.
_ENTRIES = [
    ActivationOp("Relu", "Relu", _relu, _single("Relu"), symmetry=_HOMOGENEOUS),
    ActivationOp(
        "LeakyRelu", "LeakyRelu", _leaky, _single("LeakyRelu"), {"alpha": _LEAKY}, 17, _HOMOGENEOUS
    ),
    ActivationOp(
        "PRelu",
        "PRelu",
        lambda z, slope: _leaky(z, slope),
        _single("PRelu", ("slope",)),
        {"slope": (0.25, 0.1)},
        symmetry=_HOMOGENEOUS,
        params=lambda a: {"alpha": a["slope"]},
    ),
    ActivationOp("Tanh", "Tanh", np.tanh, _single("Tanh"), symmetry="odd"),
    ActivationOp("Sigmoid", "Sigmoid", _sigmoid, _single("Sigmoid"), symmetry="sigmoid"),
    ActivationOp("Gelu", "Gelu", _gelu, _single("Gelu"), opset=20),
    ActivationOp("Gelu(approximate='tanh')", "GeluTanh", _gelu_tanh, _emit_gelu_tanh, opset=20),
    ActivationOp(f"{_MS}:Gelu", "Gelu", _gelu, _single(f"{_MS}:Gelu")),
    ActivationOp(f"{_MS}:FastGelu", "GeluTanh", _gelu_tanh, _single(f"{_MS}:FastGelu")),
    ActivationOp(
        f"{_MS}:QuickGelu",
        "Swish",
        _quick_gelu,
        _single(f"{_MS}:QuickGelu"),
        {"alpha": (None, 1.0)},
    ),
    ActivationOp("Softplus", "Softplus", _softplus, _single("Softplus")),
    ActivationOp(
        "Elu", "Elu", lambda z, alpha=1.0: _elu(z, alpha), _single("Elu"), {"alpha": _ELU}
    ),
    ActivationOp("Selu", "Selu", _selu, _single("Selu")),
    ActivationOp("Celu", "Celu", _celu, _single("Celu"), {"alpha": _ELU}),
    ActivationOp(
        "HardSigmoid",
        "HardSigmoid",
        _hard_sigmoid,
        _single("HardSigmoid"),
        {"alpha": (None, 0.5), "beta": (None, 0.3)},
    ),
    ActivationOp("HardSwish", "HardSwish", _hard_swish, _single("HardSwish")),
    ActivationOp("Mish", "Mish", _mish, _single("Mish"), opset=18),
    ActivationOp(
        "Clip",
        "Clip",
        lambda z, bounds: np.clip(z, *bounds),
        _emit_clip,
        {"bounds": _CLIP},
        params=_clip_params,
    ),
    ActivationOp("Softsign", "Softsign", _softsign, _single("Softsign")),
    # decomposed forms exporters write
    ActivationOp("x*Sigmoid(x)", "Swish", lambda z: z * _sigmoid(z), _emit_silu),
    ActivationOp("0.5x(1+Erf(x/sqrt2))", "Gelu", _gelu, _emit_gelu_erf),
    ActivationOp("1/(1+Exp(-x))", "Sigmoid", _sigmoid, _emit_logistic, symmetry="sigmoid"),
    ActivationOp("x/(1+Abs(x))", "Softsign", _softsign, _emit_softsign),
    ActivationOp("x*Tanh(Softplus(x))", "Mish", _mish, _emit_mish),
    ActivationOp(
        "Min(Relu(x),6)", "Clip", lambda z: np.clip(z, 0.0, 6.0), _emit_relu6, params=_clip_params
    ),
]
ACTIVATIONS: dict[str, ActivationOp] = {a.key: a for a in _ENTRIES}


def supported_activation_ops() -> frozenset[str]:
    """The activation ops the pass's registry lists today."""
    from onnx_lump.activations import SUPPORTED_ACTIVATION_OPS

    return frozenset(SUPPORTED_ACTIVATION_OPS)


def activation_op(key: str) -> ActivationOp:
    """The entry for ``key``; an op the registry lists but :data:`ACTIVATIONS` does not is
    written as one node with its default attributes, merged as duplicates only."""
    if key == "identity":
        return IDENTITY
    return ACTIVATIONS.get(key) or ActivationOp(key, "", None, _single(key))


def symmetry(act: ActivationOp, attrs: dict) -> tuple[str, float]:
    """(family, k): which copies of a neuron the pass claims to merge exactly, read from
    its ``Activation``; k is the point symmetry's constant, sigma(-z) = k - sigma(z)."""
    if act is IDENTITY:
        return "linear", 0.0
    fallback = {"homogeneous": ("homogeneous", 0.0), "odd": ("point", 0.0)}
    fallback["sigmoid"] = ("point", 1.0)
    from onnx_lump.activations import Activation, ActivationKind

    try:
        activation = Activation(ActivationKind(act.kind), **act.params(attrs))
    except (TypeError, ValueError, KeyError):
        return fallback.get(act.symmetry, ("none", 0.0))
    if activation.is_positively_homogeneous:
        return "homogeneous", 0.0
    if not hasattr(activation, "point_symmetry"):  # a registry without that notion
        return fallback.get(act.symmetry, ("none", 0.0))
    k = activation.point_symmetry
    return ("none", 0.0) if k is None else ("point", float(k))


def _model(nodes: list, inputs: list, outputs: list, inits: list, opset: int, domains):
    graph = helper.make_graph(nodes, "generated_chain", inputs, outputs, inits)
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8 if opset <= 17 else 9 if opset <= 20 else 10
    return model


def _probe(act: ActivationOp, dtype: str, opset: int | None = None) -> onnx.ModelProto:
    """x (2 x 3) -> Gemm -> activation -> Gemm, with default attributes."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 4)).astype(dtype), "W0"),
        numpy_helper.from_array(rng.standard_normal((4, 2)).astype(dtype), "W1"),
    ]
    b = _Nodes("act", np.dtype(dtype))
    b.nodes.append(helper.make_node("Gemm", ["x", "W0"], ["h"], name="gemm0"))
    attrs = {k: choices[0] for k, choices in act.attrs.items() if choices[0] is not None}
    act.emit(b, "h", "a", attrs)
    b.nodes.append(helper.make_node("Gemm", ["a", "W1"], ["y"], name="gemm1"))
    return _model(
        b.nodes,
        [helper.make_tensor_value_info("x", elem, [2, 3])],
        [helper.make_tensor_value_info("y", elem, [2, 2])],
        inits,
        opset or max(17, act.opset),
        b.domains,
    )


@functools.cache
def reader_reads(key: str) -> bool:
    """Whether the pass's reader finds a chain through this activation, as its kind."""
    from onnx_lump.graph.read.chains import scan_graph

    act = activation_op(key)
    try:
        chains = scan_graph(gs.import_onnx(_probe(act, "float32"))).chains
    except Exception:  # a reader that trips over the probe does not read it
        return False
    if len(chains) != 1 or len(chains[0].activations) != 1:
        return False
    return not act.kind or chains[0].activations[0].kind.value == act.kind


@functools.cache
def runs_in_onnxruntime(key: str, dtype: str) -> bool:
    """Whether onnxruntime's CPU provider runs the probe chain in this dtype, at every
    opset a generated model may have (function ops such as Mish expand differently)."""
    act = activation_op(key)
    try:
        for opset in sorted({max(act.opset, o) for o in OPSETS}):
            model = _probe(act, dtype, opset).SerializeToString()
            session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
            session.run(None, {"x": np.zeros((2, 3), dtype=dtype)})
    except Exception:  # NOT_IMPLEMENTED, an opset it does not know, an invalid pattern
        return False
    return True


@functools.cache
def usable_activations(dtype: str) -> tuple[str, ...]:
    """Keys of the activations drawn in ``dtype``: the identity, and every entry (and every
    op the registry lists) that the reader reads and onnxruntime runs in that dtype."""
    keys = sorted(set(ACTIVATIONS) | supported_activation_ops())
    return ("identity", *(k for k in keys if reader_reads(k) and runs_in_onnxruntime(k, dtype)))


def drawn_activations() -> set[str]:
    """The keys drawn in at least one dtype."""
    return {key for dtype in DTYPES for key in usable_activations(dtype)} - {"identity"}


# -- the drawn description -------------------------------------------------------------


@dataclass(frozen=True)
class HiddenSpec:
    """One hidden layer: ``distinct`` neurons plus planted copies of them; the width is
    the sum. ``scaled`` copies are the family's symmetric copies (:data:`SCALED_KIND`)."""

    activation: str
    attrs: tuple[tuple[str, object], ...]
    distinct: int
    duplicate: int = 0
    scaled: int = 0
    zero: int = 0

    @property
    def width(self) -> int:
        return self.distinct + self.duplicate + self.scaled + self.zero


@dataclass(frozen=True)
class DenseForm:
    """How one dense layer is written. ``bias``: "none", "right" (Gemm's C, or Add(x, b))
    or "left" (Add(b, x), as PyTorch exports it); ``bias_shape``: "vector" (H,), "row"
    (1, H) or "row3" (1, 1, H)."""

    op: str = "Gemm"
    trans_b: bool = True
    alpha: float = 1.0
    beta: float = 1.0
    bias: str = "right"
    bias_shape: str = "vector"
    weight_constant: bool = False
    bias_constant: bool = False


@dataclass(frozen=True)
class ChainSpec:
    dtype: str
    rank: int
    seq: int | None  # rank 3: fixed sequence length, or None for a symbolic one
    in_features: int
    out_features: int
    hidden: tuple[HiddenSpec, ...]
    forms: tuple[DenseForm, ...]  # one per dense layer: len(hidden) + 1
    value_info: bool
    seed: int

    @property
    def planted_widths(self) -> list[int]:
        return [h.width for h in self.hidden]


@st.composite
def hidden_specs(draw, dtype: str, max_width: int = 64) -> HiddenSpec:
    act = activation_op(draw(st.sampled_from(usable_activations(dtype))))
    attrs = {}
    for key, choices in act.attrs.items():
        value = draw(st.sampled_from(choices))
        if value is not None:
            attrs[key] = value
    family, _ = symmetry(act, attrs)
    width = draw(st.integers(1, max_width))
    distinct = draw(st.integers(1, width))
    rest = width - distinct
    # Without a float64 value for the activation, the constant a zero row folds into the
    # next bias is unknown here, and the next layer cannot be checked: no zero rows.
    zero = draw(st.integers(0, rest)) if act.fn is not None else 0
    rest -= zero
    scaled = draw(st.integers(0, rest)) if family in SCALED_KIND else 0
    return HiddenSpec(act.key, tuple(sorted(attrs.items())), distinct, rest - scaled, scaled, zero)


@st.composite
def dense_forms(draw, rank: int) -> DenseForm:
    constant = st.booleans()
    if rank == 2 and draw(st.booleans()):
        return DenseForm(
            "Gemm",
            trans_b=draw(st.booleans()),
            alpha=draw(st.sampled_from([1.0, 0.5, 2.0, 1.7, -1.3])),
            beta=draw(st.sampled_from([1.0, 0.5, 2.0, 0.0])),
            bias=draw(st.sampled_from(["right", "none"])),
            bias_shape=draw(st.sampled_from(["vector", "row"])),
            weight_constant=draw(constant),
            bias_constant=draw(constant),
        )
    shapes = ["vector", "row", "row3"] if rank == 3 else ["vector", "row"]
    return DenseForm(
        "MatMul",
        trans_b=False,
        bias=draw(st.sampled_from(["right", "left", "none"])),
        bias_shape=draw(st.sampled_from(shapes)),
        weight_constant=draw(constant),
        bias_constant=draw(constant),
    )


@st.composite
def chain_specs(
    draw,
    dtypes: tuple[str, ...] = DTYPES,
    max_depth: int = 5,
    max_width: int = 64,
    max_in: int = 16,
    max_out: int = 8,
) -> ChainSpec:
    dtype = draw(st.sampled_from(dtypes))
    rank = draw(st.sampled_from([2, 3]))
    seq = draw(st.sampled_from([3, None])) if rank == 3 else None
    depth = draw(st.integers(1, max_depth))
    in_features = draw(st.integers(1, max_in))
    out_features = draw(st.integers(1, max_out))
    hidden = tuple(draw(hidden_specs(dtype, max_width)) for _ in range(depth))
    forms = tuple(draw(dense_forms(rank)) for _ in range(depth + 1))
    return ChainSpec(
        dtype,
        rank,
        seq,
        in_features,
        out_features,
        hidden,
        forms,
        value_info=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


# -- realising a spec ----------------------------------------------------------------------


@dataclass
class Built:
    """A model made from a spec: ``expected`` are the hidden widths after an exact pass."""

    spec: ChainSpec
    model: onnx.ModelProto
    expected: list[int]
    planted: list[int]
    layers: list[_Layer] = field(repr=False, default_factory=list)

    def feeds(self, batch: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        lead = [batch] if self.spec.rank == 2 else [batch, self.spec.seq or 4]
        x = 2.0 * rng.standard_normal([*lead, self.spec.in_features])
        return {"x": x.astype(self.spec.dtype)}

    def reference(self, feeds: dict[str, np.ndarray]) -> np.ndarray | None:
        """The model's output computed in float64 with numpy from its stored weights (None
        when an activation has no float64 form here)."""
        acts = [activation_op(h.activation) for h in self.spec.hidden]
        if any(a.fn is None for a in acts):
            return None
        values = feeds["x"].astype(np.float64)
        for index, (layer, form) in enumerate(zip(self.layers, self.spec.forms, strict=True)):
            values = values @ (form.alpha * layer.weight.astype(np.float64)).T
            if layer.bias is not None:
                values = values + form.beta * layer.bias.astype(np.float64)
            if index < len(acts):
                values = acts[index].fn(values, **dict(self.spec.hidden[index].attrs))
        return values

    def input_shape_args(self, batch: int = 8) -> list[str]:
        """CLI arguments that give random checks a shape for symbolic dims but the first."""
        if self.spec.rank == 3 and self.spec.seq is None:
            return ["--input-shape", f"x:{batch},4,{self.spec.in_features}"]
        return []


@dataclass
class _Layer:
    weight: np.ndarray  # stored values, (out, in) in the model's dtype
    bias: np.ndarray | None  # stored values, (out,)


@dataclass
class _Upstream:
    """The expected lumping of the previous layer, as the pass defines it: neuron j equals
    ``scale[j] * y[block[j]] + offset[j]`` (block -1: the constant ``offset[j]``)."""

    block: np.ndarray
    scale: np.ndarray
    offset: np.ndarray

    @classmethod
    def identity(cls, n: int) -> _Upstream:
        return cls(np.arange(n), np.ones(n), np.zeros(n))

    def aggregate(self, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_blocks = int(self.block.max()) + 1
        membership = np.zeros((weight.shape[1], n_blocks))
        kept = np.flatnonzero(self.block >= 0)
        membership[kept, self.block[kept]] = self.scale[kept]
        return weight @ membership, bias + weight @ self.offset


def build(spec: ChainSpec) -> Built:
    """The model ``spec`` describes; the same spec always gives the same model."""
    dtype = np.dtype(spec.dtype)
    upstream = _Upstream.identity(spec.in_features)
    fan_in, layers, expected = spec.in_features, [], []
    for index, hidden in enumerate(spec.hidden):
        form = spec.forms[index]
        layer, upstream, distinct = _realise_hidden(spec, index, hidden, form, fan_in, upstream)
        layers.append(layer)
        expected.append(distinct)
        fan_in = hidden.width
    rng = np.random.default_rng([spec.seed, len(spec.hidden)])
    weight = (rng.standard_normal((spec.out_features, fan_in)) / np.sqrt(fan_in)).astype(dtype)
    bias = None
    if spec.forms[-1].bias != "none":
        bias = (0.5 * rng.standard_normal(spec.out_features)).astype(dtype)
    layers.append(_Layer(weight, bias))
    return Built(spec, _graph(spec, layers), expected, spec.planted_widths, layers)


def _realise_hidden(
    spec: ChainSpec,
    index: int,
    hidden: HiddenSpec,
    form: DenseForm,
    fan_in: int,
    upstream: _Upstream,
) -> tuple[_Layer, _Upstream, int]:
    """Draw the layer's stored weights until its distinct neurons are well apart; when
    there are too many for the layer's input, turn the surplus into duplicates."""
    act = activation_op(hidden.activation)
    attrs = dict(hidden.attrs)
    family, k = symmetry(act, attrs)
    distinct = hidden.distinct
    precision = float(np.finfo(spec.dtype).eps)
    for attempt in range(60):
        if attempt and attempt % 4 == 0:
            distinct = max(1, (distinct * 3) // 4)
        rng = np.random.default_rng([spec.seed, index, attempt])
        weight, bias, block = _planted_rows(rng, spec.dtype, hidden, family, distinct, form, fan_in)
        effective_w = form.alpha * weight.astype(np.float64)
        effective_b = np.zeros(hidden.width) if bias is None else form.beta * bias.astype(float)
        coefficients, agg_bias = upstream.aggregate(effective_w, effective_b)
        lumping = _mirror_lumping(coefficients, agg_bias, block, act, attrs, family, k, precision)
        if lumping is not None:
            return _Layer(weight, bias), lumping, distinct
    raise RuntimeError(f"generator: cannot separate the neurons of hidden layer {index}: {spec}")


def _planted_rows(rng, dtype, hidden: HiddenSpec, family: str, distinct: int, form, fan_in):
    """Stored (out, in) weights and (out,) bias with the planted copies, in a random
    order, and each neuron's block (its distinct neuron; -1 for a zero row)."""
    dtype = np.dtype(dtype)
    has_bias = form.bias != "none"
    base_w = (rng.standard_normal((distinct, fan_in)) / np.sqrt(fan_in)).astype(dtype)
    base_b = (0.5 * rng.standard_normal(distinct)).astype(dtype)
    if not has_bias:
        base_b[:] = 0
    n_copies = hidden.width - distinct - hidden.zero
    n_scaled = min(hidden.scaled, n_copies)
    of = rng.integers(0, distinct, size=n_copies)
    kind = SCALED_KIND.get(family)
    scale = np.ones(n_copies)
    # Powers of two keep a copy exact in every dtype; other factors only in float32/64,
    # where the rounding they leave is far below the pass's allowance.
    if kind == "proportional":
        choices = _POW2_POSITIVE if dtype == np.float16 else (*_POW2_POSITIVE, 0.37, 1.9)
        scale[:n_scaled] = rng.choice(choices, size=n_scaled)
    elif kind == "flip":
        scale[:n_scaled] = -1.0
    elif kind == "affine":
        choices = _POW2_ANY if dtype == np.float16 else (*_POW2_ANY, -0.37, 1.9)
        scale[:n_scaled] = rng.choice(choices, size=n_scaled)
    copy_w = (scale[:, None] * base_w[of].astype(np.float64)).astype(dtype)
    copy_b = scale * base_b[of].astype(np.float64)
    if kind == "affine" and has_bias:  # the identity's bias moves on: any bias merges
        copy_b[:n_scaled] = rng.standard_normal(n_scaled)
    zero_w = np.zeros((hidden.zero, fan_in), dtype=dtype)
    zero_b = 0.5 * rng.standard_normal(hidden.zero) if has_bias else np.zeros(hidden.zero)
    weight = np.concatenate([base_w, copy_w, zero_w])
    bias = np.concatenate([base_b, copy_b.astype(dtype), zero_b.astype(dtype)])
    block = np.concatenate([np.arange(distinct), of, np.full(hidden.zero, -1)])
    order = rng.permutation(hidden.width)
    return weight[order], (bias[order] if has_bias else None), block[order]


def _mirror_lumping(
    coefficients: np.ndarray,
    bias: np.ndarray,
    block: np.ndarray,
    act: ActivationOp,
    attrs: dict,
    family: str,
    k: float,
    precision: float,
) -> _Upstream | None:
    """The lumping the pass should find for rows aggregated over the upstream blocks,
    written from the pass's definitions, not its code; None when two different blocks
    (or a live neuron and a constant) come closer than MARGIN rounding allowances."""
    n = len(bias)
    l1 = np.abs(coefficients).sum(axis=1)
    constant = block < 0
    constant_tolerance = ROUNDING_UNITS * precision * float(l1.max(initial=0.0))
    if np.any(l1[~constant] <= MARGIN * constant_tolerance):
        return None  # a live neuron the pass could fold as a constant
    largest = np.abs(coefficients).argmax(axis=1)
    sign = np.where(coefficients[np.arange(n), largest] < 0, -1.0, 1.0)
    scale, offset = np.ones(n), np.zeros(n)
    if family == "homogeneous":  # rows rescaled to the layer's median norm
        norms = np.linalg.norm(np.column_stack([coefficients, bias]), axis=1)
        scale = norms / _median_or_one(norms[~constant])
    elif family == "linear":  # direction only; the bias moves to the next layer
        norms = np.linalg.norm(coefficients, axis=1)
        scale, offset = sign * norms / _median_or_one(norms[~constant]), bias.copy()
    elif family == "point":  # sigma(-z) = k - sigma(z)
        scale, offset = sign, k * (sign < 0)
    inner = offset if family == "linear" else 0.0
    rows = np.column_stack([coefficients, bias - inner])
    rows = np.divide(rows, scale[:, None], out=np.zeros_like(rows), where=scale[:, None] != 0)
    threshold = MARGIN * ROUNDING_UNITS * precision * float(np.abs(rows).sum(axis=1).max())
    distance = np.abs(rows[:, None, :] - rows[None, :, :]).sum(axis=2)
    same = block[:, None] == block[None, :]
    both_constant = constant[:, None] & constant[None, :]
    if np.any(distance[~same & ~both_constant] <= threshold):
        return None
    if np.any(distance[same & ~both_constant] > threshold / MARGIN**2):
        raise AssertionError("generator: a planted copy is not a copy")  # a bug here
    if constant.any():
        value = act.fn(bias, **attrs)  # what a constant neuron outputs
        offset = np.where(constant, value, offset)
    return _Upstream(block, np.where(constant, 0.0, scale), offset)


def _median_or_one(values: np.ndarray) -> float:
    median = float(np.median(values)) if values.size else 0.0
    return median if median > 0 else 1.0


# -- writing the graph ---------------------------------------------------------------------


def _graph(spec: ChainSpec, layers: list[_Layer]) -> onnx.ModelProto:
    dtype = np.dtype(spec.dtype)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    lead: list = ["N"] if spec.rank == 2 else ["N", spec.seq or "S"]
    nodes: list = []
    inits: list = []
    infos: list = []
    domains: set[str] = set()

    def constant(name: str, array: np.ndarray, as_node: bool) -> str:
        tensor = numpy_helper.from_array(np.ascontiguousarray(array.astype(dtype)), name)
        if as_node:
            node = helper.make_node("Constant", [], [name], name=f"{name}_node", value=tensor)
            nodes.append(node)
        else:
            inits.append(tensor)
        return name

    current = "x"
    last = len(layers) - 1
    for index, (layer, form) in enumerate(zip(layers, spec.forms, strict=True)):
        width = layer.weight.shape[0]
        out = "y" if index == last else f"dense{index}"
        bias_name = None
        if layer.bias is not None:
            shape = {"vector": (width,), "row": (1, width), "row3": (1, 1, width)}[form.bias_shape]
            bias_name = constant(f"B{index}", layer.bias.reshape(shape), form.bias_constant)
        if form.op == "Gemm":
            stored = layer.weight if form.trans_b else layer.weight.T
            inputs = [current, constant(f"W{index}", stored, form.weight_constant)]
            if bias_name is not None:
                inputs.append(bias_name)
            attrs = {"transB": 1} if form.trans_b else {}
            if form.alpha != 1.0:
                attrs["alpha"] = form.alpha
            if form.beta != 1.0:
                attrs["beta"] = form.beta
            nodes.append(helper.make_node("Gemm", inputs, [out], name=f"gemm{index}", **attrs))
        else:
            weight = constant(f"W{index}", layer.weight.T, form.weight_constant)
            product = out if bias_name is None else f"matmul{index}"
            matmul = helper.make_node("MatMul", [current, weight], [product], name=f"mm{index}")
            nodes.append(matmul)
            if bias_name is not None:
                pair = [bias_name, product] if form.bias == "left" else [product, bias_name]
                nodes.append(helper.make_node("Add", pair, [out], name=f"add{index}"))
                infos.append((product, width))
        current = out
        if index < last:
            infos.append((out, width))
            hidden = spec.hidden[index]
            act = activation_op(hidden.activation)
            if act is not IDENTITY:
                activated = f"act{index}"
                builder = _Nodes(f"act{index}", dtype)
                act.emit(builder, out, activated, dict(hidden.attrs))
                nodes += builder.nodes
                domains |= builder.domains
                infos.append((activated, width))
                current = activated
    opset = max([17] + [activation_op(h.activation).opset for h in spec.hidden])
    value_info = [helper.make_tensor_value_info(n, elem, [*lead, w]) for n, w in infos]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", elem, [*lead, spec.in_features])],
        [helper.make_tensor_value_info("y", elem, [*lead, spec.out_features])],
        inits,
        opset,
        sorted(domains),
    )
    if spec.value_info:
        model.graph.value_info.extend(value_info)
    return model
