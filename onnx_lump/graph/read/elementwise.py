"""The element-wise ops an activation subgraph may hold, read as expressions.

Each handler turns one ONNX node into the canonical expression that
``onnx_lump.activations.matching`` matches against the registry, so a decomposed activation
(the erf Gelu, ``x * Sigmoid(x)``) is recognised whatever ops the exporter chose. The
table sits apart from the walk that uses it because dense-layer reading needs it too:
the rank of an unannotated tensor is traced back through these same ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import onnx_graphsurgeon as gs

from onnx_lump import activations as act
from onnx_lump.activations import expressions as ex

__all__ = [
    "HANDLERS",
    "NoMatch",
    "Operands",
    "Walk",
    "op_domain",
    "tensor_rank",
    "traced_rank",
]


class Walk(Protocol):
    """The state of one backward walk that the handlers read: the dense layers by the
    id of their output tensor (the walk of :mod:`onnx_lump.graph.read.links`)."""

    by_output: dict[int, Any]


class Operands(Protocol):
    """What a handler asks of the reader walking the subgraph: the graph's opset and a
    node's inputs read as expressions or constants (the reader of
    :mod:`onnx_lump.graph.read.links`)."""

    opset: int

    def operand(self, node: gs.Node, index: int, walk: Walk) -> tuple: ...

    def scalar(self, node: gs.Node, index: int, walk: Walk, default: float) -> float: ...


_STANDARD = ("", "ai.onnx")


class NoMatch(Exception):
    """The walk back from a dense layer's input found no activation subgraph."""

    def __init__(self, reason: str, node: gs.Node | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.node = node


def tensor_rank(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


def traced_rank(tensor: gs.Tensor, budget: list[int] | None = None) -> int | None:
    """The rank of ``tensor``, from its shape or, where exporters left none, traced back
    through ops whose output rank follows from their inputs': element-wise ones
    (broadcasting: the largest input rank), BatchNormalization, Gemm (2) and MatMul with
    a constant weight, which dense reading requires to be 2-D."""
    budget = [64] if budget is None else budget
    rank = tensor_rank(tensor)
    if rank is not None or isinstance(tensor, gs.Constant) or len(tensor.inputs) != 1:
        return len(tensor.shape) if isinstance(tensor, gs.Constant) else rank
    budget[0] -= 1
    node = tensor.inputs[0]
    if budget[0] < 0:
        return None
    if node.op == "Gemm":
        return 2
    if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
        return len(node.attrs["value"].shape)
    if node.op == "MatMul":
        weight = node.inputs[1] if len(node.inputs) == 2 else None
        if weight is None or traced_rank(weight, budget) != 2:
            return None
        return traced_rank(node.inputs[0], budget)
    if node.op != "BatchNormalization" and (op_domain(node), node.op) not in HANDLERS:
        return None
    ranks = [traced_rank(t, budget) for t in node.inputs if t.name]
    known = [rank for rank in ranks if rank is not None]
    return None if not ranks or len(known) < len(ranks) else max(known)


def op_domain(node: gs.Node) -> str:
    """The node's op domain, "" for the standard one."""
    domain = node.domain or ""
    return "" if domain in _STANDARD else domain


def _unary(op: str, **defaults: float | str):
    def handle(reader: Operands, node: gs.Node, walk: Walk) -> tuple:
        arg = reader.operand(node, 0, walk)
        params = {k: node.attrs.get(k, v) for k, v in defaults.items()}
        params = {k: v.decode() if isinstance(v, bytes) else v for k, v in params.items()}
        params = {k: v if isinstance(v, str) else float(v) for k, v in params.items()}
        return ex.fn(op, arg, **params)

    return handle


def _binary(combine):
    def handle(reader: Operands, node: gs.Node, walk: Walk) -> tuple:
        if len(node.inputs) != 2:
            raise NoMatch(f"{node.op} '{node.name}' does not have two inputs")
        return combine(reader.operand(node, 0, walk), reader.operand(node, 1, walk))

    return handle


def _divide(a: tuple, b: tuple) -> tuple:
    if b[0] == "const":
        if b[1] == 0.0:
            raise NoMatch("division by a zero constant")
        return ex.mul(a, ex.constant(1.0 / b[1]))
    return ex.mul(a, ex.power(b, -1.0))


def _pow(a: tuple, b: tuple) -> tuple:
    if b[0] != "const":
        raise NoMatch("Pow with a non-constant exponent")
    return ex.power(a, b[1])


def _extremum(kind: str):
    def handle(reader: Operands, node: gs.Node, walk: Walk) -> tuple:
        args = [reader.operand(node, i, walk) for i in range(len(node.inputs))]
        data = [a for a in args if a[0] != "const"]
        bounds = [a[1] for a in args if a[0] == "const"]
        if len(data) != 1 or not bounds:
            raise NoMatch(f"{node.op} '{node.name}' needs one data input and constants")
        if kind == "Max":
            return ex.fn("Clip", data[0], low=max(bounds))
        return ex.fn("Clip", data[0], high=min(bounds))

    return handle


def _clip(reader: Operands, node: gs.Node, walk: Walk) -> tuple:
    arg = reader.operand(node, 0, walk)
    if reader.opset < 11 and ("min" in node.attrs or "max" in node.attrs):
        low = float(node.attrs.get("min", -math.inf))
        high = float(node.attrs.get("max", math.inf))
    else:
        low = reader.scalar(node, 1, walk, -math.inf)
        high = reader.scalar(node, 2, walk, math.inf)
    return ex.fn("Clip", arg, low=low, high=high)


def _prelu(reader: Operands, node: gs.Node, walk: Walk) -> tuple:
    arg = reader.operand(node, 0, walk)
    slope = reader.operand(node, 1, walk)
    if slope[0] != "const":
        raise NoMatch(f"PRelu '{node.name}' has a slope that is not a constant")
    return ex.fn("PRelu", arg, alpha=slope[1])


def _compare(kind: str, flipped: str):
    def handle(reader: Operands, node: gs.Node, walk: Walk) -> tuple:
        a, b = reader.operand(node, 0, walk), reader.operand(node, 1, walk)
        if b[0] == "const" and a[0] != "const":
            return ("cmp", kind, a, b[1])
        if a[0] == "const" and b[0] != "const":
            return ("cmp", flipped, b, a[1])
        raise NoMatch(f"{node.op} '{node.name}' does not compare with a constant")

    return handle


def _where(reader: Operands, node: gs.Node, walk: Walk) -> tuple:
    cond = reader.operand(node, 0, walk)
    if cond[0] != "cmp":
        raise NoMatch(f"Where '{node.name}' has a condition that is not a comparison")
    return ("where", cond, reader.operand(node, 1, walk), reader.operand(node, 2, walk))


def _biased(op: str, **params: str):
    """An activation of ``x + bias``, the bias its input 1 (onnxruntime's ``BiasGelu``,
    ``FastGelu``; see ``ActivationSpec.bias_ops``): ``op(x)`` where the reader took the bias
    as the dense layer's before it (``DenseLayer.bias_holder``), else ``op(x + c)``, which
    only a constant ``c`` repeated along the features can give."""

    def handle(reader: Operands, node: gs.Node, walk: Walk) -> tuple:
        arg = reader.operand(node, 0, walk)
        layer = walk.by_output.get(id(node.inputs[0]))
        held = layer is not None and layer.bias_holder is node
        if len(node.inputs) > 1 and node.inputs[1].name and not held:
            arg = ex.add(arg, reader.operand(node, 1, walk))
        return ex.fn(op, arg, **params)

    return handle


# The expression of each kind an op of ``activations.BIAS_ACTIVATION_OPS`` computes.
_BIASED_FORMS = {
    act.ActivationKind.GELU: ("Gelu", {"approximate": "none"}),
    act.ActivationKind.GELU_TANH: ("Gelu", {"approximate": "tanh"}),
}


Handler = Callable[[Operands, gs.Node, Walk], tuple]

HANDLERS: dict[tuple[str, str], Handler] = {
    ("", "Identity"): lambda r, n, w: r.operand(n, 0, w),
    ("", "Add"): _binary(ex.add),
    ("", "Sub"): _binary(lambda a, b: ex.add(a, ex.mul(ex.constant(-1.0), b))),
    ("", "Mul"): _binary(ex.mul),
    ("", "Div"): _binary(_divide),
    ("", "Pow"): _binary(_pow),
    ("", "Neg"): lambda r, n, w: ex.mul(ex.constant(-1.0), r.operand(n, 0, w)),
    ("", "Reciprocal"): lambda r, n, w: ex.power(r.operand(n, 0, w), -1.0),
    ("", "Sqrt"): lambda r, n, w: ex.power(r.operand(n, 0, w), 0.5),
    ("", "Max"): _extremum("Max"),
    ("", "Min"): _extremum("Min"),
    ("", "Clip"): _clip,
    ("", "PRelu"): _prelu,
    ("", "Greater"): _compare("gt", "lt"),
    ("", "GreaterOrEqual"): _compare("ge", "le"),
    ("", "Less"): _compare("lt", "gt"),
    ("", "LessOrEqual"): _compare("le", "ge"),
    ("", "Where"): _where,
    ("", "LeakyRelu"): _unary("LeakyRelu", alpha=0.01),
    ("", "Elu"): _unary("Elu", alpha=1.0),
    ("", "Selu"): _unary("Selu", alpha=1.67326319217681884765625, gamma=1.05070102214813232421875),
    ("", "Celu"): _unary("Celu", alpha=1.0),
    ("", "HardSigmoid"): _unary("HardSigmoid", alpha=0.2, beta=0.5),
    ("", "Gelu"): _unary("Gelu", approximate="none"),
    ("com.microsoft", "Gelu"): _unary("Gelu", approximate="none"),
    ("com.microsoft", "QuickGelu"): _unary("QuickGelu", alpha=1.702),
    **{
        ("", op): _unary(op)
        for op in (
            "Relu",
            "Tanh",
            "Sigmoid",
            "Softplus",
            "Softsign",
            "HardSwish",
            "Mish",
            "Erf",
            "Exp",
            "Log",
            "Abs",
        )
    },
    **{
        (domain, name): _biased(_BIASED_FORMS[kind][0], **_BIASED_FORMS[kind][1])
        for (domain, _, name), kind in (
            (op.partition(":"), kind) for op, kind in act.BIAS_ACTIVATION_OPS.items()
        )
    },
}
