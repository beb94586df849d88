"""Fixtures built with onnx.helper: Gemm and MatMul variants, Constant and
Identity/Transpose weights, float16/float64, shared initializers, an observable hidden
layer and an unsupported op between chains."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from tools.make_fixtures.builder import GraphBuilder, gemm, hand_chain, helper_fixture, matmul_add
from tools.make_fixtures.planting import (
    Fixture,
    Plant,
    dup,
    flip,
    plant_net,
    plant_rows,
    prop,
    random_net,
    zero,
)

__all__ = [
    "fx_constant_nodes",
    "fx_fp16",
    "fx_fp64",
    "fx_gemm_alpha_beta",
    "fx_gemm_scalar_bias",
    "fx_identity_transpose",
    "fx_matmul_bias_2d",
    "fx_matmul_nobias",
    "fx_observable_hidden",
    "fx_shared_initializer",
    "fx_unsupported_op",
]


def fx_gemm_alpha_beta(rng):
    net = random_net(rng, [4, 12, 10, 3])
    plants = [dup(0, 2, 8), prop(0, 11, 5, 2.0), dup(1, 7, 0), prop(1, 9, 4, 0.5)]
    plant_net(rng, net, plants, "Relu")
    (w0, b0), (w1, b1), (w2, _) = net
    gb = GraphBuilder()
    # transB=0: weights stored (in x out). alpha/beta scale a whole layer
    # uniformly, so row relations planted in the stored W/C carry over.
    h = gb.node(
        "Gemm",
        ["x", gb.init("W0", w0.T.copy()), gb.init("C0", b0[None, :])],
        alpha=0.5,
        beta=2.0,
    )
    h = gb.node("Relu", [h])
    h = gb.node("Gemm", [h, gb.init("W1", w1.T.copy()), gb.init("C1", b1)], alpha=2.0, beta=0.25)
    h = gb.node("Relu", [h])
    gb.node("Gemm", [h, gb.init("W2", w2.T.copy())], "y", alpha=0.5)
    notes = (
        "Gemm transB=0 (W stored in x out). Layer 0: alpha=0.5, beta=2.0, C of shape (1, 12);"
        " layer 1: alpha=2.0, beta=0.25, C of shape (10,); output layer: alpha=0.5, no C."
        " Planting is on the stored W/C, so it also holds for alpha*W / beta*C."
    )
    return helper_fixture("gemm_alpha_beta", gb, net, "Relu", plants, notes)


def fx_gemm_scalar_bias(rng):
    net = random_net(rng, [5, 12, 10, 2])
    for _, b in net:
        b[:] = b[0]  # one shared bias per layer, stored as shape (1,)
    # Only duplicates: a sign flip would need b[k] = -b[i] with one shared b.
    plants = [dup(0, 6, 1), dup(0, 9, 3), dup(1, 7, 0)]
    plant_net(rng, net, plants, "Tanh")
    gb = GraphBuilder()
    h = "x"
    for i, (w, b) in enumerate(net):
        last = i == len(net) - 1
        h = gb.node(
            "Gemm",
            [h, gb.init(f"W{i}", w), gb.init(f"b{i}", b[:1])],
            "y" if last else None,
            transB=1,
        )
        if not last:
            h = gb.node("Tanh", [h])
    notes = "Gemm transB=1 with C of shape (1,) broadcast over all neurons; duplicates only."
    return helper_fixture("gemm_scalar_bias", gb, net, "Tanh", plants, notes)


def fx_matmul_nobias(rng):
    net = random_net(rng, [6, 14, 9, 1], bias=False)
    plants = [dup(0, 13, 2), prop(0, 6, 10, 0.5), dup(1, 8, 4), prop(1, 1, 7, 2.0)]
    plant_net(rng, net, plants, "Relu")
    gb = hand_chain(net, "Relu", matmul_add)
    notes = "MatMul only (no Add anywhere): bias-free dense layers."
    return helper_fixture("matmul_nobias", gb, net, "Relu", plants, notes)


def fx_matmul_bias_2d(rng):
    net = random_net(rng, [3, 11, 13, 2])
    plants = [dup(0, 4, 0), prop(0, 10, 7, 2.0), dup(1, 12, 5), zero(1, 3)]
    plant_net(rng, net, plants, "LeakyRelu")

    def dense(gb, x, w, b, tag, out=None):
        return matmul_add(gb, x, w, b, tag, out, bias_shape=(1, -1))

    gb = hand_chain(net, "LeakyRelu", dense, alpha=0.2)
    notes = (
        "MatMul + Add(., b of shape (1, H)); LeakyRelu alpha=0.2."
        " Layer 1 neuron 3 is a zero row (constant neuron)."
    )
    return helper_fixture("matmul_bias_2d", gb, net, "LeakyRelu", plants, notes)


def fx_constant_nodes(rng):
    net = random_net(rng, [4, 10, 12, 2])
    plants = [dup(0, 9, 2), flip(0, 5, 7), flip(1, 0, 11), dup(1, 10, 6)]
    plant_net(rng, net, plants, "Tanh")
    gb = GraphBuilder()
    h = "x"
    for i, (w, b) in enumerate(net):
        last = i == len(net) - 1
        # Parameters come from Constant nodes, not initializers.
        wt = gb.node("Constant", [], f"W{i}", value=numpy_helper.from_array(w.T.copy()))
        bt = gb.node("Constant", [], f"b{i}", value=numpy_helper.from_array(b))
        h = gb.node("Add", [gb.node("MatMul", [h, wt]), bt], "y" if last else None)
        if not last:
            h = gb.node("Tanh", [h])
    notes = "MatMul + Add whose W and b are outputs of Constant nodes (attribute 'value')."
    return helper_fixture("constant_nodes", gb, net, "Tanh", plants, notes)


def fx_identity_transpose(rng):
    net = random_net(rng, [5, 12, 10, 1])
    plants = [dup(0, 1, 6), flip(0, 10, 3), dup(1, 9, 2), flip(1, 4, 7)]
    plant_net(rng, net, plants, "Sigmoid")
    (w0, b0), (w1, b1), (w2, b2) = net
    gb = GraphBuilder()
    # Layer 0: (in x out) weight reaches MatMul through an Identity node.
    w = gb.node("Identity", [gb.init("W0", w0.T.copy())], "W0_identity")
    h = gb.node("Add", [gb.node("MatMul", ["x", w]), gb.init("b0", b0)])
    h = gb.node("Sigmoid", [h])
    # Layer 1: (out x in) weight transposed by a Transpose node.
    w = gb.node("Transpose", [gb.init("W1", w1)], "W1_transposed", perm=[1, 0])
    h = gb.node("Add", [gb.node("MatMul", [h, w]), gb.init("b1", b1)])
    h = gb.node("Sigmoid", [h])
    matmul_add(gb, h, w2, b2, 2, out="y")
    notes = (
        "Layer 0 weight: initializer (in x out) -> Identity -> MatMul; layer 1 weight:"
        " initializer (out x in) -> Transpose(perm=[1, 0]) -> MatMul."
    )
    return helper_fixture("identity_transpose", gb, net, "Sigmoid", plants, notes)


def fx_fp16(rng):
    net = random_net(rng, [4, 12, 10, 2], dtype=np.float64)
    # Round to multiples of 1/64 in [-4, 4]: exact in float16, and halving or
    # doubling such values stays exact (no subnormals).
    net = [(np.round(w * 64) / 64, np.round(b * 64) / 64) for w, b in net]
    net = [(w.astype(np.float16), b.astype(np.float16)) for w, b in net]
    plants = [dup(0, 3, 10), prop(0, 7, 1, 2.0), dup(1, 0, 8), prop(1, 5, 2, 0.5)]
    plant_net(rng, net, plants, "Relu")
    gb = hand_chain(net, "Relu", gemm, dtype=np.float16)
    notes = "float16 input, weights and output; Gemm transB=1; weights on a 1/64 grid."
    return helper_fixture("fp16", gb, net, "Relu", plants, notes)


def fx_fp64(rng):
    net = random_net(rng, [6, 10, 9, 3], dtype=np.float64)
    plants = [dup(0, 8, 1), flip(0, 4, 6), flip(1, 7, 0), dup(1, 2, 5)]
    plant_net(rng, net, plants, "Tanh")
    gb = hand_chain(net, "Tanh", matmul_add, dtype=np.float64)
    notes = "float64 input, weights and output; MatMul + Add(., b of shape (H,))."
    return helper_fixture("fp64", gb, net, "Tanh", plants, notes)


def fx_shared_initializer(rng):
    # Layer (W, b) pairs: the shared first layer and each branch's output layer.
    (w0, b_a), (v_a, c_a) = random_net(rng, [4, 12, 2])
    b_b = rng.normal(size=12).astype(np.float32)
    (v_b, c_b) = random_net(rng, [12, 1])[0]
    # Both branches see the same rows of W0, so one planting serves both layers.
    shared = [dup(0, 5, 0), prop(0, 9, 3, 2.0)]
    plant_rows(rng, w0, [b_a, b_b], [v_a, v_b], shared, "Relu")
    plants = shared + [Plant(1, p.kind, p.neuron, p.of, p.scale) for p in shared]
    gb = GraphBuilder()
    gb.init("W0", w0)
    for tag, b, v, c, out in [("a", b_a, v_a, c_a, "y1"), ("b", b_b, v_b, c_b, "y2")]:
        h = gb.node("Gemm", ["x", "W0", gb.init(f"b0{tag}", b)], transB=1)
        h = gb.node("Relu", [h])
        gb.node("Gemm", [h, gb.init(f"W1{tag}", v), gb.init(f"b1{tag}", c)], out, transB=1)
    model = gb.model("shared_initializer", {"x": ["N", 4]}, {"y1": ["N", 2], "y2": ["N", 1]})
    notes = (
        "Two branches x -> Gemm(W0 shared, own bias) -> Relu -> Gemm -> y1 / y2. The"
        " first-layer weight initializer 'W0' is used by both branches; biases differ but"
        " are planted consistently. Hidden layer 0 = branch y1, layer 1 = branch y2."
    )
    return Fixture(model, "onnx.helper", "Relu", [12, 12], plants, notes, [[0], [1]])


def fx_observable_hidden(rng):
    net = random_net(rng, [5, 12, 10, 2])
    plants = [
        dup(0, 4, 1, keep=True),
        prop(0, 10, 7, 2.0, keep=True),
        dup(1, 3, 8),
        prop(1, 6, 0, 0.5),
    ]
    plant_net(rng, net, plants, "Relu")
    gb = GraphBuilder()
    h = gb.node("Relu", [gemm(gb, "x", *net[0], 0)], "h1")
    h = gb.node("Relu", [gemm(gb, h, *net[1], 1)])
    gemm(gb, h, *net[2], 2, out="y")
    model = gb.model("observable_hidden", {"x": ["N", 5]}, {"y": ["N", 2], "h1": ["N", 12]})
    notes = (
        "Gemm chain whose first hidden activation 'h1' is also a graph output, so its"
        " planted neurons must NOT be merged: the observable tensor ends a chain, leaving"
        " one mergeable chain (hidden layer 1) after it, which shrinks."
    )
    return Fixture(model, "onnx.helper", "Relu", [12, 10], plants, notes, [[1]])


def fx_unsupported_op(rng):
    net = random_net(rng, [4, 12, 10, 11, 2])
    # Sin: an element-wise op no activation of the registry stands for (Softplus, used
    # here before, is supported now).
    acts = ["Relu", "Sin", "Relu"]
    plants = [
        dup(0, 6, 2),
        dup(0, 11, 9),
        dup(1, 7, 3, keep=True),
        dup(2, 10, 0),
        prop(2, 4, 8, 2.0),
    ]
    plant_net(rng, net, plants, acts)
    gb = GraphBuilder()
    h = "x"
    for i, (w, b) in enumerate(net):
        last = i == len(net) - 1
        h = matmul_add(gb, h, w, b, i, out="y" if last else None)
        if not last:
            h = gb.node(acts[i], [h])
    notes = (
        "dense, Relu, dense, Sin, dense, Relu, dense (MatMul + Add). Sin is"
        " unsupported and splits two chains; its 10-wide input is a chain output and keeps"
        " its width even though neuron 7 is a planted duplicate."
    )
    return helper_fixture("unsupported_op", gb, net, "Relu", plants, notes, [[0], [2]])
