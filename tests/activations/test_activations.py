"""The activation registry: numpy forms against onnxruntime, derivatives against finite
differences, symmetries, and every single-op and decomposed form lumped exactly at eps=0."""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnx_lump import lump, scan_graph
from onnx_lump.activations import REGISTRY, Activation, ActivationKind

K = ActivationKind
SQRT2 = math.sqrt(2.0)
TANH_SCALE = math.sqrt(2.0 / math.pi)

# One instance per kind and parameter set worth telling apart.
INSTANCES = [
    Activation(K.IDENTITY),
    Activation(K.RELU),
    Activation(K.LEAKY_RELU, 0.1),
    Activation(K.PRELU, 0.3),
    Activation(K.TANH),
    Activation(K.SIGMOID),
    Activation(K.GELU),
    Activation(K.GELU_TANH),
    Activation(K.SWISH),
    Activation(K.SWISH, alpha=1.702),
    Activation(K.SOFTPLUS),
    Activation(K.SOFTPLUS, beta=2.0, threshold=10.0),
    Activation(K.ELU, 0.7),
    Activation(K.SELU),
    Activation(K.CELU, 1.3),
    Activation(K.HARD_SIGMOID, 0.2, 0.5),
    Activation(K.HARD_SIGMOID, 0.25, 0.3),
    Activation(K.HARD_SWISH),
    Activation(K.MISH),
    Activation(K.CLIP, low=0.0, high=6.0),
    Activation(K.CLIP, low=-2.0, high=2.0),
    Activation(K.CLIP, low=0.0),
    Activation(K.SOFTSIGN),
]


def _kinks(a: Activation) -> list[float]:
    if a.kind is K.HARD_SIGMOID:
        return [-a.beta / a.alpha, (1 - a.beta) / a.alpha]
    if a.kind is K.HARD_SWISH:
        return [-3.0, 3.0]
    if a.kind is K.CLIP:
        return [a.low, a.high]
    if a.kind is K.SOFTPLUS:
        return [a.threshold / a.beta]
    return [0.0]


def test_registry_has_every_kind():
    assert set(REGISTRY) == set(ActivationKind)
    assert {a.kind for a in INSTANCES} == set(ActivationKind)


@pytest.mark.parametrize("activation", INSTANCES, ids=lambda a: a.describe())
def test_derivative_matches_central_differences(activation):
    z = np.random.default_rng(0).uniform(-7.0, 7.0, 4000)
    z = z[np.min(np.abs(z[:, None] - np.array(_kinks(activation))[None]), axis=1) > 1e-3]
    h = 1e-6
    numeric = (activation(z + h) - activation(z - h)) / (2 * h)
    analytic = activation.derivative(z)
    assert np.all(np.isfinite(activation.derivative(np.array([-1e4, -50.0, 0.0, 50.0, 1e4]))))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", INSTANCES, ids=lambda a: a.describe())
def test_claimed_symmetries_hold_exactly(activation):
    z = np.linspace(-9.0, 9.0, 721)
    if activation.is_positively_homogeneous:
        for c in (0.5, 2.0, 3.0):
            np.testing.assert_allclose(activation(c * z), c * activation(z), atol=1e-12)
    k = activation.point_symmetry
    if k is not None:
        np.testing.assert_allclose(activation(-z), k - activation(z), atol=1e-12)
    assert activation.is_odd == (k == 0.0)


def test_symmetries_are_none_by_default():
    claimed = {a.describe() for a in INSTANCES if a.point_symmetry is not None}
    homogeneous = {a.describe() for a in INSTANCES if a.is_positively_homogeneous}
    assert claimed == {
        "Identity",
        "Tanh",
        "Sigmoid",
        "HardSigmoid",
        "Clip(low=-2, high=2)",
        "Softsign",
    }
    assert homogeneous == {
        "Relu",
        "LeakyRelu(alpha=0.1)",
        "PRelu(alpha=0.3)",
        "Clip(low=0, high=inf)",
    }


# -- numpy forward against onnxruntime, single ops ------------------------------------------

SINGLE_OPS = [
    ("Relu", {}, Activation(K.RELU)),
    ("LeakyRelu", {"alpha": 0.1}, Activation(K.LEAKY_RELU, 0.1)),
    ("Tanh", {}, Activation(K.TANH)),
    ("Sigmoid", {}, Activation(K.SIGMOID)),
    ("Gelu", {}, Activation(K.GELU)),
    ("Gelu", {"approximate": "tanh"}, Activation(K.GELU_TANH)),
    ("Softplus", {}, Activation(K.SOFTPLUS)),
    ("Elu", {"alpha": 0.7}, Activation(K.ELU, 0.7)),
    ("Selu", {}, Activation(K.SELU)),
    ("Celu", {"alpha": 1.3}, Activation(K.CELU, 1.3)),
    ("HardSigmoid", {"alpha": 0.25, "beta": 0.3}, Activation(K.HARD_SIGMOID, 0.25, 0.3)),
    ("HardSwish", {}, Activation(K.HARD_SWISH)),
    ("Mish", {}, Activation(K.MISH)),
    ("Softsign", {}, Activation(K.SOFTSIGN)),
]


@pytest.mark.parametrize(("op", "attrs", "activation"), SINGLE_OPS, ids=lambda v: str(v))
def test_forward_matches_onnxruntime(op, attrs, activation):
    z = np.linspace(-12.0, 12.0, 2001).astype(np.float32)
    node = helper.make_node(op, ["z"], ["y"], **attrs)
    info = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [None]) for n in "zy"]
    graph = helper.make_graph([node], "one", [info[0]], [info[1]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"z": z})
    np.testing.assert_allclose(activation(z), expected, rtol=2e-6, atol=2e-6)


# -- graphs: x -> Gemm -> act -> Gemm -> act -> Gemm -> y, with planted neurons -------------


class Builder:
    """Nodes and constants of a hand-built graph; constants as initializers or, with
    ``constant_nodes``, as Constant nodes."""

    def __init__(self, constant_nodes: bool = False) -> None:
        self.nodes, self.inits, self.constant_nodes = [], [], constant_nodes

    def c(self, value, dtype=np.float32) -> str:
        name = f"c{len(self.nodes)}_{len(self.inits)}"
        array = np.asarray(value, dtype=dtype)
        if self.constant_nodes:
            tensor = numpy_helper.from_array(array, name + "_value")
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.inits.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op: str, *inputs: str, domain: str | None = None, **attrs) -> str:
        out = f"{op.lower()}_{len(self.nodes)}"
        kwargs = {"domain": domain} if domain else {}
        self.nodes.append(helper.make_node(op, list(inputs), [out], **kwargs, **attrs))
        return out


def _gelu_torchscript(b, x):
    a = b.op("Add", b.op("Erf", b.op("Div", x, b.c(SQRT2))), b.c(1.0))
    return b.op("Mul", b.op("Mul", x, a), b.c(0.5))


def _gelu_dynamo(b, x):
    a = b.op("Add", b.op("Erf", b.op("Div", x, b.c(SQRT2))), b.c(1.0))
    return b.op("Mul", x, b.op("Mul", b.c(0.5), a))


def _gelu_half_first(b, x):
    half = b.op("Mul", b.c(0.5), x)
    a = b.op("Add", b.c(1.0), b.op("Erf", b.op("Mul", b.c(1 / SQRT2), x)))
    return b.op("Mul", a, half)


def _gelu_jax(b, x):
    a = b.op("Add", b.op("Erf", b.op("Div", x, b.c(SQRT2))), b.c(1.0))
    return b.op("Div", b.op("Mul", x, a), b.c(2.0))


def _gelu_tanh_torchscript(b, x):
    cube = b.op("Mul", x, b.op("Mul", x, x))
    inner = b.op("Add", x, b.op("Mul", b.c(0.044715), cube))
    t = b.op("Tanh", b.op("Mul", b.c(TANH_SCALE), inner))
    return b.op("Mul", b.c(0.5), b.op("Mul", x, b.op("Add", b.c(1.0), t)))


def _gelu_tanh_dynamo(b, x):
    inner = b.op("Add", x, b.op("Mul", b.c(0.044715), b.op("Pow", x, b.c(3.0))))
    t = b.op("Tanh", b.op("Mul", b.c(TANH_SCALE), inner))
    return b.op("Mul", x, b.op("Mul", b.c(0.5), b.op("Add", t, b.c(1.0))))


def _gelu_tanh_factored(b, x):
    poly = b.op("Add", b.c(1.0), b.op("Mul", b.c(0.044715), b.op("Mul", x, x)))
    t = b.op("Tanh", b.op("Mul", b.op("Mul", x, b.c(TANH_SCALE)), poly))
    return b.op("Mul", b.op("Mul", b.c(0.5), x), b.op("Add", b.c(1.0), t))


def _softplus_where(beta: float, threshold: float):
    def build(b, x):
        scaled = b.op("Mul", x, b.c(beta)) if beta != 1.0 else x
        soft = b.op("Softplus", scaled)
        if beta != 1.0:
            soft = b.op("Div", soft, b.c(beta))
        return b.op("Where", b.op("Greater", scaled, b.c(threshold)), x, soft)

    return build


def _prelu(shape):
    def build(b, x, width):
        return b.op("PRelu", x, b.c(np.full([width if s == "H" else s for s in shape], 0.3)))

    return build


# (id, builder, expected activation, planted kind beyond duplicates, opset)
FORMS = [
    ("Relu", lambda b, x: b.op("Relu", x), Activation(K.RELU), "scale"),
    (
        "LeakyRelu",
        lambda b, x: b.op("LeakyRelu", x, alpha=0.1),
        Activation(K.LEAKY_RELU, 0.1),
        "scale",
    ),
    ("Tanh", lambda b, x: b.op("Tanh", x), Activation(K.TANH), "sign"),
    ("Sigmoid", lambda b, x: b.op("Sigmoid", x), Activation(K.SIGMOID), "sign"),
    ("Gelu-op", lambda b, x: b.op("Gelu", x), Activation(K.GELU), None),
    ("Gelu-ms", lambda b, x: b.op("Gelu", x, domain="com.microsoft"), Activation(K.GELU), None),
    ("Gelu-torchscript", _gelu_torchscript, Activation(K.GELU), None),
    ("Gelu-dynamo", _gelu_dynamo, Activation(K.GELU), None),
    ("Gelu-half-first-constant-nodes", _gelu_half_first, Activation(K.GELU), None),
    ("Gelu-jax2tf", _gelu_jax, Activation(K.GELU), None),
    (
        "GeluTanh-op",
        lambda b, x: b.op("Gelu", x, approximate="tanh"),
        Activation(K.GELU_TANH),
        None,
    ),
    ("GeluTanh-torchscript", _gelu_tanh_torchscript, Activation(K.GELU_TANH), None),
    ("GeluTanh-dynamo", _gelu_tanh_dynamo, Activation(K.GELU_TANH), None),
    ("GeluTanh-factored", _gelu_tanh_factored, Activation(K.GELU_TANH), None),
    (
        "GeluTanh-FastGelu",
        lambda b, x: b.op("FastGelu", x, domain="com.microsoft"),
        Activation(K.GELU_TANH),
        None,
    ),
    ("SiLU", lambda b, x: b.op("Mul", x, b.op("Sigmoid", x)), Activation(K.SWISH), None),
    ("SiLU-swapped", lambda b, x: b.op("Mul", b.op("Sigmoid", x), x), Activation(K.SWISH), None),
    (
        "Swish-1.702",
        lambda b, x: b.op("Mul", x, b.op("Sigmoid", b.op("Mul", x, b.c(1.702)))),
        Activation(K.SWISH, alpha=1.702),
        None,
    ),
    (
        "QuickGelu-ms",
        lambda b, x: b.op("QuickGelu", x, domain="com.microsoft", alpha=1.702),
        Activation(K.SWISH, alpha=1.702),
        None,
    ),
    ("Softplus-op", lambda b, x: b.op("Softplus", x), Activation(K.SOFTPLUS), None),
    (
        "Softplus-log1pexp",
        lambda b, x: b.op("Log", b.op("Add", b.op("Exp", x), b.c(1.0))),
        Activation(K.SOFTPLUS),
        None,
    ),
    (
        "Softplus-beta-torchscript",
        lambda b, x: b.op("Div", b.op("Softplus", b.op("Mul", x, b.c(2.0))), b.c(2.0)),
        Activation(K.SOFTPLUS, beta=2.0),
        None,
    ),
    (
        "Softplus-dynamo",
        _softplus_where(1.0, 0.5),
        Activation(K.SOFTPLUS, threshold=0.5),
        None,
    ),
    (
        "Softplus-beta-dynamo",
        _softplus_where(2.0, 1.0),
        Activation(K.SOFTPLUS, beta=2.0, threshold=1.0),
        None,
    ),
    ("Elu", lambda b, x: b.op("Elu", x, alpha=0.7), Activation(K.ELU, 0.7), None),
    ("Selu", lambda b, x: b.op("Selu", x), Activation(K.SELU), None),
    ("Celu", lambda b, x: b.op("Celu", x, alpha=1.3), Activation(K.CELU, 1.3), None),
    (
        "HardSigmoid-op",
        lambda b, x: b.op("HardSigmoid", x, alpha=1 / 6, beta=0.5),
        Activation(K.HARD_SIGMOID, 1 / 6, 0.5),
        "sign",
    ),
    (
        "HardSigmoid-clip",
        lambda b, x: b.op(
            "Clip", b.op("Add", b.op("Mul", x, b.c(0.2)), b.c(0.3)), b.c(0.0), b.c(1.0)
        ),
        Activation(K.HARD_SIGMOID, 0.2, 0.3),
        None,
    ),
    ("HardSwish-op", lambda b, x: b.op("HardSwish", x), Activation(K.HARD_SWISH), None),
    (
        "HardSwish-hardsigmoid",
        lambda b, x: b.op("Mul", x, b.op("HardSigmoid", x, alpha=1 / 6, beta=0.5)),
        Activation(K.HARD_SWISH),
        None,
    ),
    (
        "HardSwish-relu6",
        lambda b, x: b.op(
            "Div",
            b.op("Mul", x, b.op("Clip", b.op("Add", x, b.c(3.0)), b.c(0.0), b.c(6.0))),
            b.c(6.0),
        ),
        Activation(K.HARD_SWISH),
        None,
    ),
    ("Mish-op", lambda b, x: b.op("Mish", x), Activation(K.MISH), None),
    (
        "Mish-decomposed",
        lambda b, x: b.op("Mul", x, b.op("Tanh", b.op("Softplus", x))),
        Activation(K.MISH),
        None,
    ),
    (
        "Mish-log1pexp",
        lambda b, x: b.op(
            "Mul", b.op("Tanh", b.op("Log", b.op("Add", b.c(1.0), b.op("Exp", x)))), x
        ),
        Activation(K.MISH),
        None,
    ),
    (
        "Relu6-clip",
        lambda b, x: b.op("Clip", x, b.c(0.0), b.c(6.0)),
        Activation(K.CLIP, low=0.0, high=6.0),
        None,
    ),
    (
        "Relu6-min-max",
        lambda b, x: b.op("Min", b.op("Max", x, b.c(0.0)), b.c(6.0)),
        Activation(K.CLIP, low=0.0, high=6.0),
        None,
    ),
    (
        "Relu6-min-relu",
        lambda b, x: b.op("Min", b.c(6.0), b.op("Relu", x)),
        Activation(K.CLIP, low=0.0, high=6.0),
        None,
    ),
    (
        "Hardtanh-clip",
        lambda b, x: b.op("Clip", x, b.c(-2.0), b.c(2.0)),
        Activation(K.CLIP, low=-2.0, high=2.0),
        "sign",
    ),
    (
        "Clip-min-only",
        lambda b, x: b.op("Clip", x, b.c(0.0)),
        Activation(K.RELU),
        "scale",
    ),
    ("PRelu-scalar", _prelu(()), Activation(K.PRELU, 0.3), "scale"),
    ("PRelu-1x1", _prelu((1, 1)), Activation(K.PRELU, 0.3), "scale"),
    ("PRelu-per-channel-equal", _prelu(("H",)), Activation(K.PRELU, 0.3), "scale"),
    ("Softsign-op", lambda b, x: b.op("Softsign", x), Activation(K.SOFTSIGN), "sign"),
    (
        "Softsign-decomposed",
        lambda b, x: b.op("Div", x, b.op("Add", b.op("Abs", x), b.c(1.0))),
        Activation(K.SOFTSIGN),
        "sign",
    ),
]

WIDTHS = (5, 8, 7, 3)  # in, hidden, hidden, out


def planted_layers(extra: str | None, seed: int = 0):
    """Weights with duplicates (and, for ``extra``, a scaled or sign-flipped row) planted
    into both hidden layers; returns the layers and the widths an exact merge leaves."""
    rng = np.random.default_rng(seed)
    layers = [
        (rng.standard_normal((o, i)) / np.sqrt(i), 0.3 * rng.standard_normal(o))
        for i, o in itertools.pairwise(WIDTHS)
    ]
    (w0, b0), (w1, b1) = layers[0], layers[1]
    w0[5], b0[5] = w0[1], b0[1]
    w1[4], b1[4] = w1[0], b1[0]
    expected = [WIDTHS[1] - 1, WIDTHS[2] - 1]
    if extra is not None:
        s = 2.0 if extra == "scale" else -1.0
        w0[6], b0[6] = s * w0[2], s * b0[2]
        expected[0] -= 1
    return layers, expected


def chain_model(build, layers, constant_nodes=False, opset=20) -> onnx.ModelProto:
    b = Builder(constant_nodes)
    h = "x"
    for index, (w, bias) in enumerate(layers):
        out = "y" if index == len(layers) - 1 else None
        name = b.op("Gemm", h, b.c(w), b.c(bias), transB=1)
        if out:
            b.nodes[-1].output[0] = "y"
            break
        h = build(b, name, w.shape[0]) if build.__code__.co_argcount == 3 else build(b, name)
    graph = helper.make_graph(
        b.nodes,
        "chain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", WIDTHS[0]])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", WIDTHS[-1]])],
        b.inits,
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def dense_widths(model: onnx.ModelProto) -> list[int]:
    """Out width of each Gemm/MatMul, read from its weight initializer."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            inits[node.output[0]] = node.attribute[0].t
    widths = []
    for node in model.graph.node:
        if node.op_type in ("Gemm", "MatMul") and node.input[1] in inits:
            dims = list(inits[node.input[1]].dims)
            trans = any(a.name == "transB" and a.i for a in node.attribute)
            widths.append(dims[0] if (node.op_type == "Gemm" and trans) else dims[-1])
    return widths


def run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0].astype(np.float64)


@pytest.mark.parametrize(("name", "build", "expected", "extra"), FORMS, ids=[f[0] for f in FORMS])
def test_planted_neurons_merge_exactly(name, build, expected, extra):
    layers, widths = planted_layers(extra)
    model = chain_model(build, layers, constant_nodes="constant-nodes" in name)
    onnx.checker.check_model(model)
    (chain,) = scan_graph(gs.import_onnx(model)).chains
    assert [a.kind for a in chain.activations] == [expected.kind] * 2
    for found in chain.activations:
        for field in ("alpha", "beta", "gamma", "low", "high", "threshold"):
            assert getattr(found, field) == pytest.approx(getattr(expected, field), rel=1e-6)

    reduced, report = lump(model, 0.0, verify=False)

    onnx.checker.check_model(reduced, full_check=True)
    assert dense_widths(reduced) == [*widths, WIDTHS[-1]]
    x = np.random.default_rng(1).standard_normal((64, WIDTHS[0])).astype(np.float32) * 2
    before, after = run(model, {"x": x}), run(reduced, {"x": x})
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()
    assert report.params_after < report.params_before


def test_activation_subgraph_stays_and_shrinks():
    layers, _ = planted_layers(None)
    model = chain_model(_prelu(("H",)), layers)
    reduced, _ = lump(model, 0.0, verify=False)
    slopes = [
        numpy_helper.to_array(t)
        for t in reduced.graph.initializer
        if any(n.op_type == "PRelu" and n.input[1] == t.name for n in reduced.graph.node)
    ]
    assert [s.shape for s in slopes] == [(1,), (1,)]  # one repeated value now broadcasts
    assert sum(n.op_type == "PRelu" for n in reduced.graph.node) == 2


def _notes(model) -> list[str]:
    return scan_graph(gs.import_onnx(model)).notes


def test_per_channel_prelu_ends_the_chain_with_a_note():
    layers, _ = planted_layers(None)

    def build(b, x, width):
        return b.op("PRelu", x, b.c(np.linspace(0.1, 0.3, width)))

    model = chain_model(build, layers)
    assert not scan_graph(gs.import_onnx(model)).chains
    assert any("varies per feature" in note for note in _notes(model))


def test_unknown_op_is_named_with_the_pattern_it_would_need():
    layers, _ = planted_layers(None)
    model = chain_model(lambda b, x: b.op("Mul", x, b.op("Erf", x)), layers)
    notes = _notes(model)
    assert not scan_graph(gs.import_onnx(model)).chains
    assert any("no registered activation" in n and "Erf(x / sqrt 2)" in n for n in notes)

    model = chain_model(lambda b, x: b.op("Sin", x), layers)
    assert any("'Sin'" in n and "not a registered" in n for n in _notes(model))


def test_intermediate_with_another_reader_is_not_matched():
    layers, _ = planted_layers(None)

    def build(b, x):
        s = b.op("Sigmoid", x)
        b.op("Identity", s)  # a second reader of the Sigmoid output
        b.nodes[-1].output[0] = "extra"
        return b.op("Mul", x, s)

    model = chain_model(build, layers)
    model.graph.output.append(helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, None))
    assert not scan_graph(gs.import_onnx(model)).chains
    reduced, _ = lump(chain_model(lambda b, x: b.op("Tanh", x), layers), 0.0, verify=False)
    assert dense_widths(reduced)[:2] == [7, 6]


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("Gelu", _gelu_dynamo),
        ("Mish", lambda b, x: b.op("Mish", x)),
        ("SiLU", lambda b, x: b.op("Mul", x, b.op("Sigmoid", x))),
    ],
)
def test_data_aware_lumping_with_calibration(name, build):
    layers, widths = planted_layers(None)
    model = chain_model(build, layers)
    rng = np.random.default_rng(3)
    calib = {"x": rng.standard_normal((256, WIDTHS[0])).astype(np.float32)}
    # partitions with data similarity, whose eps is an L1 distance (span's is a share)
    exact, _ = lump(model, 0.0, calibration=calib, verify=False, reduction="partition")
    assert dense_widths(exact)[:2] == widths
    lossy, _ = lump(model, 1.0, calibration=calib, verify=False, reduction="partition")
    got = dense_widths(lossy)[:2]
    assert all(g <= w for g, w in zip(got, widths, strict=True)) and sum(got) < sum(widths)
    x = rng.standard_normal((128, WIDTHS[0])).astype(np.float32)
    before, after = run(model, {"x": x}), run(lossy, {"x": x})
    # measured: 0.11-0.16 of the output range for 7+6 -> 6-7 hidden neurons
    assert np.abs(after - before).max() < 0.3 * np.abs(before).max()
