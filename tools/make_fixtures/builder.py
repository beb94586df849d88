"""Hand-built graphs: a small onnx.helper graph builder and the dense-layer forms the
hand-built fixtures are made of."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from tools.make_fixtures.planting import Fixture

__all__ = [
    "IR_VERSION",
    "OPSET",
    "GraphBuilder",
    "gemm",
    "hand_chain",
    "helper_fixture",
    "io_spec",
    "matmul_add",
]

OPSET = 17
IR_VERSION = 8


class GraphBuilder:
    """Collects nodes and initializers; auto-names intermediate tensors."""

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self.nodes = []
        self.initializers = []

    def init(self, name, array):
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, output=None, **attrs):
        output = output or f"{op.lower()}_{len(self.nodes)}"
        name = f"{op}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def model(self, name, inputs, outputs):
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)

        def infos(spec):
            return [helper.make_tensor_value_info(n, elem, s) for n, s in spec.items()]

        graph = helper.make_graph(
            self.nodes, name, infos(inputs), infos(outputs), self.initializers
        )
        return helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            # The fixtures record it: renaming it would rewrite every hand-built file.
            producer_name="tools/make_fixtures.py",
        )


def matmul_add(gb, x, w, b, tag, out=None, bias_shape=None):
    """y = x @ W.T (+ b): MatMul with the (in x out) weight, optional Add."""
    y = gb.node("MatMul", [x, gb.init(f"W{tag}", w.T.copy())], None if b is not None else out)
    if b is None:
        return y
    bias = b.reshape(bias_shape or b.shape)
    return gb.node("Add", [y, gb.init(f"b{tag}", bias)], out)


def gemm(gb, x, w, b, tag, out=None):
    """Gemm with transB=1 and the (out x in) weight, as PyTorch exports it."""
    inputs = [x, gb.init(f"W{tag}", w)]
    if b is not None:
        inputs.append(gb.init(f"b{tag}", b))
    return gb.node("Gemm", inputs, out, transB=1)


def hand_chain(net, activation, dense, dtype=np.float32, **act_attrs):
    """x -> dense -> act -> ... -> dense -> y, built with ``dense``."""
    gb = GraphBuilder(dtype)
    h = "x"
    for i, (w, b) in enumerate(net):
        last = i == len(net) - 1
        h = dense(gb, h, w, b, i, out="y" if last else None)
        if not last:
            h = gb.node(activation, [h], **act_attrs)
    return gb


def io_spec(net):
    return {"x": ["N", net[0][0].shape[1]]}, {"y": ["N", net[-1][0].shape[0]]}


def helper_fixture(name, gb, net, activation, plants, notes, chain_layers=None):
    """Fixture for a hand-built single-input/single-output chain ``net``."""
    widths = [w.shape[0] for w, _ in net[:-1]]
    model = gb.model(name, *io_spec(net))
    return Fixture(model, "onnx.helper", activation, widths, plants, notes, chain_layers or [])
