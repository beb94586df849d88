"""The FFN blocks of a (possibly compressed) MiniLM graph: where they are, their
parameters, and writing new weights into them.

A dense node is a ``MatMul`` whose second input is a constant 2-D weight, or a ``Gemm``
with a constant ``B`` (``transB`` read). An FFN is a dense node ``up`` (model width ->
h) whose output reaches exactly one dense node ``down`` (h -> model width) through
elementwise ops (and reshapes) only, with a nonlinearity among them (``Erf``, ``Gelu``,
``BiasGelu``, ...). LayerNormalization, Softmax and variable MatMuls stop the walk, so the
attention projections are never taken for an FFN. Biases: an ``Add`` of a constant
vector right after the dense node, ``BiasGelu``'s bias, ``SkipLayerNormalization``'s bias
input (the onnxruntime optimizer's fusions), or the ``Gemm``'s ``C``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from tools.minilm_bench.common import HIDDEN

__all__ = ["Dense", "Ffn", "ffns", "model_params", "set_ffn", "with_outputs"]

_PASS = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Erf",
    "Tanh",
    "Sigmoid",
    "Relu",
    "Pow",
    "Sqrt",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "QuickGelu",
    "Identity",
    "Cast",
    "Reshape",
    "Flatten",
}
_NONLINEAR = {"Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu"}


@dataclass
class Dense:
    node: onnx.NodeProto
    weight: str  # initializer name
    transposed: bool  # stored (out, in): Gemm with transB=1
    bias: str | None  # initializer name of its bias vector, if found
    n_in: int
    n_out: int

    @property
    def input(self) -> str:
        return self.node.input[0]

    @property
    def output(self) -> str:
        return self.node.output[0]


@dataclass
class Ffn:
    up: Dense
    down: Dense

    @property
    def hidden(self) -> int:
        return self.up.n_out

    @property
    def params(self) -> int:
        n = 2 * self.up.n_in * self.up.n_out
        return (
            n + (self.up.n_out if self.up.bias else 0) + (self.down.n_out if self.down.bias else 0)
        )


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _attribute(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _bias(node, inits, consumers, n_out) -> str | None:
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in inits:
        return node.input[2]
    for user in consumers[node.output[0]]:
        if user.op_type in ("Add", "BiasGelu"):
            for name in user.input:
                if name in inits and tuple(inits[name].dims) == (n_out,):
                    return name
        if user.op_type.startswith("SkipLayerNormalization") and len(user.input) > 4:
            name = user.input[4]
            if name in inits and tuple(inits[name].dims) == (n_out,):
                return name
    return None


def _dense(model: onnx.ModelProto) -> list[Dense]:
    inits = _initializers(model)
    consumers = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    found = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is None or len(weight.dims) != 2:
            continue
        transposed = node.op_type == "Gemm" and bool(_attribute(node, "transB", 0))
        n_in, n_out = weight.dims[::-1] if transposed else weight.dims
        bias = _bias(node, inits, consumers, n_out)
        found.append(Dense(node, weight.name, transposed, bias, int(n_in), int(n_out)))
    return found


def ffns(model: onnx.ModelProto, width: int = HIDDEN) -> list[Ffn]:
    """The FFN blocks, in graph order (the exporters write the blocks in order)."""
    dense = {d.node.name or d.output: d for d in _dense(model)}
    by_node = {id(d.node): d for d in dense.values()}
    consumers = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    blocks = []
    for up in dense.values():
        if up.n_in != width:
            continue
        reached, nonlinear, frontier, seen = [], False, [up.output], set()
        for _ in range(16):  # the GELU subgraph is a few ops deep
            following = []
            for tensor in frontier:
                for user in consumers[tensor]:
                    if id(user) in seen:
                        continue
                    seen.add(id(user))
                    if id(user) in by_node and user.input[0] == tensor:
                        reached.append(by_node[id(user)])
                    elif user.op_type in _PASS:
                        nonlinear |= user.op_type in _NONLINEAR
                        following.extend(user.output)
                    else:
                        reached.append(None)  # anything else: not an FFN
            frontier = following
        if (
            nonlinear
            and len(reached) == 1
            and reached[0] is not None
            and reached[0].n_in == up.n_out
            and reached[0].n_out == width
        ):
            blocks.append(Ffn(up, reached[0]))
    return blocks


def model_params(model: onnx.ModelProto) -> int:
    """Elements of every float or 8-bit initializer (and float Constant node) of the graph,
    subgraphs included; int64 shape constants are not parameters."""
    kinds = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
    }
    total = 0
    for graph in _graphs(model.graph):
        for t in graph.initializer:
            if t.data_type in kinds:
                total += int(np.prod(t.dims))
        for node in graph.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and a.t.data_type in kinds:
                        total += int(np.prod(a.t.dims))
    return total


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def weights(model: onnx.ModelProto, ffn: Ffn) -> tuple[np.ndarray, ...]:
    """``(W1 (in, h), b1 (h,), W2 (h, out), b2 (out,))`` as float64; zero missing biases."""
    inits = _initializers(model)

    def get(dense: Dense):
        w = numpy_helper.to_array(inits[dense.weight]).astype(np.float64)
        w = w.T if dense.transposed else w
        b = numpy_helper.to_array(inits[dense.bias]).astype(np.float64) if dense.bias else None
        return w, np.zeros(dense.n_out) if b is None else b

    return (*get(ffn.up), *get(ffn.down))


def set_ffn(model: onnx.ModelProto, ffn: Ffn, w1, b1, w2, b2) -> None:
    """Replace an FFN's weights and biases in place (new hidden width allowed). Each
    initializer must be used by this FFN only; value_info is dropped (stale widths)."""
    inits = _initializers(model)
    uses = defaultdict(int)
    for node in model.graph.node:
        for name in node.input:
            uses[name] += 1
    for dense, w, b in ((ffn.up, w1, b1), (ffn.down, w2, b2)):
        if dense.bias is None:
            raise ValueError(f"{dense.node.name}: no bias initializer found to replace")
        for name in (dense.weight, dense.bias):
            if uses[name] != 1:
                raise ValueError(f"initializer {name} is shared; cannot replace it alone")
        dtype = numpy_helper.to_array(inits[dense.weight]).dtype
        stored = w.T if dense.transposed else w
        for name, value in ((dense.weight, stored), (dense.bias, b)):
            new = numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name)
            inits[name].CopyFrom(new)
    del model.graph.value_info[:]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the float tensors ``names``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    return copy
