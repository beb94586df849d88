"""Generate the ONNX test fixtures for ``onnx_lump``.

Run from the repository root::

    python tools/make_fixtures.py [--out tests/fixtures]

Every fixture is a small dense network (MatMul/Gemm chains) whose hidden
layers contain PLANTED redundant neurons, so an exact (epsilon=0) neuron
merging pass has a known expected result. The script is deterministic: every
fixture draws from its own RNG seeded by its file name, so rerunning it
rewrites byte-identical files (for the same torch / skl2onnx versions, which
the exported models record as producer_version). Each written model is
checked with ``onnx.checker`` (full_check) and run once in onnxruntime.

Planting works on "canonical" layers ``(W, b)`` with ``W`` of shape
(out x in), i.e. one row per neuron, and ``b`` of shape (out,). For hidden
layer ``L``, the rows live in dense layer ``L`` and the outgoing weights are
the columns of dense layer ``L + 1``. Planted kinds (``W[k] = scale * W[of]``
and ``b[k] = scale * b[of]``):

* ``duplicate``    scale 1.0, any activation;
* ``proportional`` scale c > 0, Relu / LeakyRelu only (positively homogeneous);
* ``sign_flip``    scale -1.0, Tanh / Sigmoid only (odd / point-symmetric);
* ``zero_row``     ``W[k] = 0`` (bias kept): a constant neuron, ``of`` is null
  and scale is 0.0.

Proportional scales are powers of two (0.5, 2.0, 4.0): then ``c * W[i]`` is
exact in binary floating point and ratios of planted rows are exactly ``c``,
so "exact" merging is well defined (a scale like 2.5 would leave rounding
noise in float32 and make epsilon=0 results ambiguous).
Planted neurons get fresh outgoing weights bounded away from zero, so merging
them changes the computation and must be compensated.

Manifest (``manifest.json``): a list with one object per fixture::

    {
      "file": "skl_relu.onnx",
      "source": "skl2onnx" | "torch-dynamo-false" | "onnx.helper",
      "opset": 21, "ir_version": 10,
      "ops": ["Add", "Cast", ...],          # sorted unique op types
      "dtype": "float32",                    # element type of the first input
      "inputs": {"X": [null, 4]},            # null = dynamic dimension
      "outputs": {"variable": [null, 1]},
      "activation": "Relu",                  # activation of the merge chains
      "hidden_widths": [12, 10],             # every hidden layer, graph order
      "expected_hidden_widths": [10, 8],     # after exact merging
      "chains": [[12, 10]],                  # hidden widths per mergeable chain
      "expected_chains": [[10, 8]],
      "planted": [{"layer": 0, "kind": "duplicate", "neuron": 7, "of": 2,
                   "scale": 1.0, "expect_merged": true}, ...],
      "notes": "..."
    }

``layer`` indexes ``hidden_widths``. Hidden layers are listed in graph order
over all chains; for branching fixtures that is per branch in the order of
the graph outputs. ``expect_merged`` is false for planted neurons that must
survive (observable layer, layer feeding an unsupported op), so for every
layer: expected width = width - number of plants with ``expect_merged``.
``chains`` lists, per chain, the widths of the hidden layers a merge pass may
touch; hidden layers outside every chain (e.g. a Sin layer) are only in
``hidden_widths``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

OPSET = 17
IR_VERSION = 8

# Which planted kinds keep the network function unchanged after a merge.
ALLOWED_KINDS = {
    "Relu": {"duplicate", "proportional", "zero_row"},
    "LeakyRelu": {"duplicate", "proportional", "zero_row"},
    "Tanh": {"duplicate", "sign_flip", "zero_row"},
    "Sigmoid": {"duplicate", "sign_flip", "zero_row"},
    "Softplus": {"duplicate", "zero_row"},
    "Sin": {"duplicate", "zero_row"},
}


# --------------------------------------------------------------------------
# Planting
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plant:
    """One planted neuron: W[neuron] = scale * W[of] (see module docstring)."""

    layer: int
    kind: str
    neuron: int
    of: int | None
    scale: float
    expect_merged: bool = True


def dup(layer, neuron, of, keep=False):
    return Plant(layer, "duplicate", neuron, of, 1.0, not keep)


def prop(layer, neuron, of, scale, keep=False):
    return Plant(layer, "proportional", neuron, of, scale, not keep)


def flip(layer, neuron, of, keep=False):
    return Plant(layer, "sign_flip", neuron, of, -1.0, not keep)


def zero(layer, neuron, keep=False):
    return Plant(layer, "zero_row", neuron, None, 0.0, not keep)


def outgoing_weights(rng, n):
    """Random weights with |w| in [0.5, 1.5]: never (near) zero."""
    return rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.5, 1.5, size=n)


def plant_rows(rng, w_in, biases, w_outs, plants, activation):
    """Plant ``plants`` into one hidden layer, in place.

    ``w_in`` is (out x in); ``biases`` are the (out,) bias vectors feeding the
    layer (several when branches share ``w_in``); ``w_outs`` are the next
    layers' (next x out) matrices whose columns are the outgoing weights.
    """
    planted = {p.neuron for p in plants}
    for p in plants:
        assert p.kind in ALLOWED_KINDS[activation], (p, activation)
        # A copy of a planted neuron would make expected widths ambiguous.
        assert p.of not in planted, p
        if p.kind == "zero_row":
            w_in[p.neuron] = 0  # bias kept: the neuron outputs act(b[k])
        else:
            w_in[p.neuron] = p.scale * w_in[p.of]
            for b in biases:
                b[p.neuron] = p.scale * b[p.of]
        for w_out in w_outs:
            w_out[:, p.neuron] = outgoing_weights(rng, w_out.shape[0])


def plant_net(rng, net, plants, activations):
    """Plant into every hidden layer of a single chain ``net = [(W, b), ...]``.

    Layers are planted in order: planting hidden layer L rewrites columns of
    dense layer L+1 before its own rows are copied, so a copied row of layer
    L+1 also copies the columns of the planted layer-L neurons.
    """
    if isinstance(activations, str):
        activations = [activations] * (len(net) - 1)
    for layer, activation in enumerate(activations):
        (w, b), (w_next, _) = net[layer], net[layer + 1]
        mine = [p for p in plants if p.layer == layer]
        plant_rows(rng, w, [] if b is None else [b], [w_next], mine, activation)


def random_net(rng, widths, dtype=np.float32, bias=True):
    """Gaussian canonical layers for widths [in, h1, ..., out]."""
    return [
        (
            rng.normal(size=(n_out, n_in)).astype(dtype),
            rng.normal(size=n_out).astype(dtype) if bias else None,
        )
        for n_in, n_out in itertools.pairwise(widths)
    ]


# --------------------------------------------------------------------------
# Hand-built graphs
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Fixtures: each returns a Fixture (model + manifest facts)
# --------------------------------------------------------------------------


@dataclass
class Fixture:
    model: onnx.ModelProto
    source: str
    activation: str
    hidden_widths: list[int]
    plants: list[Plant]
    notes: str
    # Hidden-layer indices per mergeable chain; default: one chain, all layers.
    chain_layers: list[list[int]] = field(default_factory=list)


def sklearn_fixture(rng, activation):
    import skl2onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (np.sin(x) @ rng.normal(size=4)).astype(np.float32)
    model = MLPRegressor(
        hidden_layer_sizes=(12, 10), activation=activation, max_iter=200, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    # sklearn stores coefs_ as (in x out): transpose into canonical rows.
    net = [
        (c.T.astype(np.float32), b.astype(np.float32))
        for c, b in zip(model.coefs_, model.intercepts_, strict=False)
    ]
    onnx_act = {"relu": "Relu", "tanh": "Tanh", "logistic": "Sigmoid"}[activation]
    second = prop(0, 10, 4, 2.0) if onnx_act == "Relu" else flip(0, 10, 4)
    fourth = prop(1, 8, 3, 0.5) if onnx_act == "Relu" else flip(1, 8, 3)
    plants = [dup(0, 7, 2), second, dup(1, 5, 1), fourth]
    plant_net(rng, net, plants, onnx_act)
    model.coefs_ = [w.T.copy() for w, _ in net]
    model.intercepts_ = [b for _, b in net]
    onx = skl2onnx.to_onnx(model, x[:1])
    notes = (
        f"MLPRegressor(activation={activation!r}) fit on random data, then planted. "
        "skl2onnx emits Cast(X) -> [MatMul(x, W in x out) -> Add(., b of shape (1, H))"
        " -> act]* -> MatMul -> Add -> Reshape(., [-1, 1]); batch dim has no dim_param."
    )
    return Fixture(onx, "skl2onnx", onnx_act, [12, 10], plants, notes)


def torch_fixture(rng, seed, activation, plants, rank3=False):
    import torch
    from torch import nn

    acts = {
        "Relu": nn.ReLU,
        "LeakyRelu": lambda: nn.LeakyReLU(negative_slope=0.1),
        "Sigmoid": nn.Sigmoid,
        "Tanh": nn.Tanh,
    }
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 12),
        acts[activation](),
        nn.Linear(12, 10),
        acts[activation](),
        nn.Linear(10, 2),
    )
    linears = [m for m in model if isinstance(m, nn.Linear)]
    # torch stores Linear.weight as (out x in) already: canonical rows.
    net = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in linears]
    plant_net(rng, net, plants, activation)
    with torch.no_grad():
        for m, (w, b) in zip(linears, net, strict=False):
            m.weight.copy_(torch.from_numpy(w))
            m.bias.copy_(torch.from_numpy(b))
    x = torch.zeros(3, 7, 5) if rank3 else torch.zeros(3, 5)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation notice
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    onx = onnx.load_from_string(buf.getvalue())
    if rank3:
        notes = (
            "Rank-3 input (batch, 7, 5): the TorchScript exporter emits MatMul(x, W in x out)"
            " + Add(b, .) with the bias as the FIRST Add input."
        )
    else:
        notes = "TorchScript exporter: Gemm(x, W out x in, b) with transB=1, alpha=beta=1."
    return Fixture(onx, "torch-dynamo-false", activation, [12, 10], plants, notes)


def fx_skl_relu(rng):
    return sklearn_fixture(rng, "relu")


def fx_skl_tanh(rng):
    return sklearn_fixture(rng, "tanh")


def fx_skl_logistic(rng):
    return sklearn_fixture(rng, "logistic")


def fx_torch_gemm_relu(rng):
    plants = [
        dup(0, 3, 0),
        prop(0, 9, 5, 2.0),
        zero(0, 11),
        dup(1, 6, 2),
        prop(1, 9, 4, 0.5),
    ]
    fx = torch_fixture(rng, 1, "Relu", plants)
    fx.notes += " Layer 0 neuron 11 is a zero row (constant neuron)."
    return fx


def fx_torch_gemm_leakyrelu(rng):
    plants = [dup(0, 4, 1), prop(0, 8, 6, 0.5), prop(1, 7, 0, 4.0), dup(1, 3, 5)]
    fx = torch_fixture(rng, 2, "LeakyRelu", plants)
    fx.notes += " LeakyRelu alpha=0.1."
    return fx


def fx_torch_gemm_sigmoid(rng):
    plants = [dup(0, 10, 3), flip(0, 6, 1), flip(1, 8, 2), dup(1, 4, 0)]
    return torch_fixture(rng, 3, "Sigmoid", plants)


def fx_torch_matmul3d_tanh(rng):
    plants = [dup(0, 5, 0), flip(0, 11, 7), flip(1, 9, 1), dup(1, 6, 3)]
    return torch_fixture(rng, 4, "Tanh", plants, rank3=True)


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


FIXTURES = {
    "skl_relu.onnx": fx_skl_relu,
    "skl_tanh.onnx": fx_skl_tanh,
    "skl_logistic.onnx": fx_skl_logistic,
    "torch_gemm_relu.onnx": fx_torch_gemm_relu,
    "torch_gemm_leakyrelu.onnx": fx_torch_gemm_leakyrelu,
    "torch_gemm_sigmoid.onnx": fx_torch_gemm_sigmoid,
    "torch_matmul3d_tanh.onnx": fx_torch_matmul3d_tanh,
    "gemm_alpha_beta.onnx": fx_gemm_alpha_beta,
    "gemm_scalar_bias.onnx": fx_gemm_scalar_bias,
    "matmul_nobias.onnx": fx_matmul_nobias,
    "matmul_bias_2d.onnx": fx_matmul_bias_2d,
    "constant_nodes.onnx": fx_constant_nodes,
    "identity_transpose.onnx": fx_identity_transpose,
    "fp16.onnx": fx_fp16,
    "fp64.onnx": fx_fp64,
    "shared_initializer.onnx": fx_shared_initializer,
    "observable_hidden.onnx": fx_observable_hidden,
    "unsupported_op.onnx": fx_unsupported_op,
}


# --------------------------------------------------------------------------
# Manifest, checks, main
# --------------------------------------------------------------------------


def value_dims(value_info):
    """Static dims as ints, dynamic ones (dim_param or unset) as None."""
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def manifest_entry(file, fx):
    graph = fx.model.graph
    expected = [
        width - sum(p.expect_merged for p in fx.plants if p.layer == layer)
        for layer, width in enumerate(fx.hidden_widths)
    ]
    chains = fx.chain_layers or [list(range(len(fx.hidden_widths)))]
    elem = graph.input[0].type.tensor_type.elem_type
    return {
        "file": file,
        "source": fx.source,
        "opset": next(o.version for o in fx.model.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": fx.model.ir_version,
        "ops": sorted({n.op_type for n in graph.node}),
        "dtype": str(helper.tensor_dtype_to_np_dtype(elem)),
        "inputs": {i.name: value_dims(i) for i in graph.input},
        "outputs": {o.name: value_dims(o) for o in graph.output},
        "activation": fx.activation,
        "hidden_widths": fx.hidden_widths,
        "expected_hidden_widths": expected,
        "chains": [[fx.hidden_widths[i] for i in c] for c in chains],
        "expected_chains": [[expected[i] for i in c] for c in chains],
        "planted": [asdict(p) for p in fx.plants],
        "notes": fx.notes,
    }


def manifest_json(manifest):
    """JSON with one line per field and per planted neuron: compact, diffable."""

    def entry(e):
        fields = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in e.items()]
        plants = ",\n".join(f"      {json.dumps(p)}" for p in e["planted"])
        fields[list(e).index("planted")] = f'    "planted": [\n{plants}\n    ]'
        return "  {\n" + ",\n".join(fields) + "\n  }"

    return "[\n" + ",\n".join(entry(e) for e in manifest) + "\n]\n"


def smoke_test(path, entry):
    """Full checker pass and a finite onnxruntime run at batch 3."""
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {
        name: rng.normal(size=[3 if d is None else d for d in dims]).astype(entry["dtype"])
        for name, dims in entry["inputs"].items()
    }
    outputs = session.run(None, feeds)
    assert all(np.isfinite(o).all() for o in outputs), path


# --------------------------------------------------------------------------
# Pattern fixtures (tests/fixtures/patterns): exporter forms of the activation
# registry, onnxsim's Reshape -> Gemm -> Reshape and TorchScript BatchNorm1d.
# Written only with --patterns, so the fixtures above stay byte-identical.
# --------------------------------------------------------------------------


def _torch_plant(rng, linears, norms=()):
    """Row 3 of every hidden layer copies row 0, row 5 copies row 1: weight rows, bias
    and the BatchNorm1d parameters and statistics that follow the layer."""
    import torch

    norms = list(norms) + [None] * (len(linears) - len(norms))
    with torch.no_grad():
        for linear, norm in zip(linears[:-1], norms, strict=False):
            tensors = [linear.weight] + ([linear.bias] if linear.bias is not None else [])
            if norm is not None:
                norm.running_mean.copy_(torch.from_numpy(rng.normal(size=norm.num_features)))
                norm.running_var.copy_(
                    torch.from_numpy(rng.uniform(0.3, 2.0, size=norm.num_features))
                )
                norm.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, norm.num_features)))
                norm.bias.copy_(torch.from_numpy(rng.normal(size=norm.num_features)))
                tensors += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
            for tensor in tensors:
                tensor[3] = tensor[0]
                tensor[5] = tensor[1]


def _torch_export(model, x, dynamo, opset, dynamic):
    import torch

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {i: torch.export.Dim(n) for i, n in dynamic.items()}
            program = torch.onnx.export(
                model, (x,), dynamo=True, opset_version=opset, dynamic_shapes=(dims,)
            )
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": dynamic, "y": dynamic},
        )
        return onnx.load_from_string(buf.getvalue())


def px_torchscript_batchnorm(rng):
    """Linear -> BatchNorm1d -> ReLU twice (the second Linear bias-free: MatMul + BN)."""
    import torch
    from torch import nn

    torch.manual_seed(11)
    linears = [nn.Linear(5, 12), nn.Linear(12, 10, bias=False), nn.Linear(10, 2)]
    norms = [nn.BatchNorm1d(12), nn.BatchNorm1d(10)]
    _torch_plant(rng, linears, norms)
    model = nn.Sequential(linears[0], norms[0], nn.ReLU(), linears[1], norms[1], nn.ReLU(),
                          linears[2])
    onx = _torch_export(model, torch.zeros(4, 5), False, 17, {0: "batch"})
    return onx, {"pattern": "batchnorm", "chains": [[12, 10]], "expected_chains": [[10, 8]],
                 "activations": [["Relu", "Relu"]]}


def px_dynamo_decomposed(rng):
    """Rank-3, dynamic batch and sequence: the dynamo exporter's erf Gelu, Where Softplus
    and tanh Gelu (opset 18 decomposes them)."""
    import torch
    from torch import nn

    torch.manual_seed(12)
    linears = [nn.Linear(6, 12), nn.Linear(12, 10), nn.Linear(10, 9), nn.Linear(9, 6)]
    _torch_plant(rng, linears)
    model = nn.Sequential(linears[0], nn.GELU(), linears[1], nn.Softplus(beta=2.0, threshold=3.0),
                          linears[2], nn.GELU(approximate="tanh"), linears[3])
    onx = _torch_export(model, torch.zeros(2, 5, 6), True, 18, {0: "batch", 1: "seq"})
    acts = ["Gelu", "Softplus(beta=2, threshold=3)", "Gelu(approximate='tanh')"]
    return onx, {"pattern": "dynamo", "chains": [[12, 10, 9]], "expected_chains": [[10, 8, 7]],
                 "activations": [acts]}


def px_torchscript_decomposed(rng):
    """TorchScript at opset 17: tanh Gelu, SiLU, Mish decomposed; HardSwish, Relu6 (Clip
    with Constant bounds) and PRelu as single ops."""
    import torch
    from torch import nn

    torch.manual_seed(13)
    widths = [5, 12, 11, 10, 9, 8, 7, 3]
    linears = [nn.Linear(a, b) for a, b in itertools.pairwise(widths)]
    _torch_plant(rng, linears)
    acts = [nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish(), nn.Hardswish(), nn.ReLU6(),
            nn.PReLU()]
    layers = [m for pair in zip(linears, [*acts, None], strict=True) for m in pair if m]
    onx = _torch_export(nn.Sequential(*layers), torch.zeros(4, 5), False, 17, {0: "batch"})
    names = ["Gelu(approximate='tanh')", "SiLU", "Mish", "HardSwish",
             "Relu6(low=0, high=6)", "PRelu(alpha=0.25)"]
    return onx, {"pattern": "torchscript", "chains": [widths[1:-1]],
                 "expected_chains": [[w - 2 for w in widths[1:-1]]], "activations": [names]}


def px_onnxsim_rank3(rng):
    """TorchScript rank-3 export simplified by onnxsim: Reshape -> Gemm -> Reshape with
    the erf Gelu between."""
    import onnxsim
    import torch
    from torch import nn

    torch.manual_seed(14)
    linears = [nn.Linear(6, 12), nn.Linear(12, 10), nn.Linear(10, 6)]
    _torch_plant(rng, linears)
    model = nn.Sequential(linears[0], nn.GELU(), linears[1], nn.ReLU(), linears[2])
    onx = _torch_export(model, torch.zeros(2, 5, 6), False, 17, {0: "batch", 1: "seq"})
    simplified, ok = onnxsim.simplify(onx)
    assert ok
    return simplified, {"pattern": "onnxsim", "chains": [[12, 10]],
                        "expected_chains": [[10, 8]], "activations": [["Gelu", "Relu"]]}


PATTERN_FIXTURES = {
    "torchscript_batchnorm.onnx": px_torchscript_batchnorm,
    "dynamo_decomposed_rank3.onnx": px_dynamo_decomposed,
    "torchscript_decomposed.onnx": px_torchscript_decomposed,
    "onnxsim_reshape_gemm.onnx": px_onnxsim_rank3,
}


def write_pattern_fixtures(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for file, build in PATTERN_FIXTURES.items():
        model, facts = build(np.random.default_rng(zlib.crc32(file.encode())))
        onnx.save(model, out / file)
        onnx.checker.check_model(onnx.load(out / file), full_check=True)
        first = model.graph.input[0]
        entry = {"file": file, **facts, "input": first.name, "input_shape": value_dims(first)}
        manifest.append(entry)
        print(f"{file:34s} {facts['chains']} -> {facts['expected_chains']}")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    parser.add_argument(
        "--patterns",
        action="store_true",
        help="write only the pattern fixtures, into OUT/patterns",
    )
    args = parser.parse_args()
    if args.patterns:
        write_pattern_fixtures(args.out / "patterns")
        return
    args.out.mkdir(parents=True, exist_ok=True)

    manifest = []
    for file, build in FIXTURES.items():
        # Seed per file name so fixtures do not depend on each other's draws.
        fx = build(np.random.default_rng(zlib.crc32(file.encode())))
        path = args.out / file
        onnx.save(fx.model, path)
        entry = manifest_entry(file, fx)
        smoke_test(path, entry)
        manifest.append(entry)
        print(f"{file:28s} {entry['hidden_widths']} -> {entry['expected_hidden_widths']}")

    (args.out / "manifest.json").write_text(manifest_json(manifest))


if __name__ == "__main__":
    main()
