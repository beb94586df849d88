"""Chains inside bigger graphs: rank-3 data with dynamic batch and sequence between a
LayerNormalization and a residual Add, onnxsim's Reshape -> Gemm -> Reshape form, and a
BatchNormalization folded into the dense layer before it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnx_lump import lump, scan_graph

PATTERNS = Path(__file__).parents[2] / "fixtures" / "patterns"  # tests/fixtures/patterns
D = 6  # model width: input and output of every FFN


def run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [o.astype(np.float64) for o in session.run(None, feeds)]


def assert_same_outputs(model, reduced, feeds, rtol=1e-5):
    for before, after in zip(run(model, feeds), run(reduced, feeds), strict=True):
        assert np.abs(after - before).max() <= rtol * np.abs(before).max()


def dense_widths(model: onnx.ModelProto) -> list[int]:
    """Out width of each Gemm/MatMul, read from its weight initializer."""
    inits = {t.name: t for t in model.graph.initializer}
    widths = []
    for node in model.graph.node:
        if node.op_type in ("Gemm", "MatMul") and node.input[1] in inits:
            dims = list(inits[node.input[1]].dims)
            trans = any(a.name == "transB" and a.i for a in node.attribute)
            widths.append(dims[0] if (node.op_type == "Gemm" and trans) else dims[-1])
    return widths


def planted(widths, seed=0):
    """Layers (out x in) for ``widths``; every hidden layer's row 3 copies row 0 and
    row 5 copies row 1."""
    rng = np.random.default_rng(seed)
    layers = []
    for i, o in itertools.pairwise(widths):
        w = (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)
        b = (0.3 * rng.standard_normal(o)).astype(np.float32)
        layers.append((w, b))
    for w, b in layers[:-1]:
        w[3], b[3], w[5], b[5] = w[0], b[0], w[1], b[1]
    return layers


def _gelu(nodes, inits, x, tag):
    """The PyTorch dynamo exporter's erf Gelu."""
    for name, value in (("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", 0.5)):
        inits.append(numpy_helper.from_array(np.array(value, np.float32), f"{name}{tag}"))
    nodes += [
        helper.make_node("Div", [x, f"sqrt2{tag}"], [f"d{tag}"]),
        helper.make_node("Erf", [f"d{tag}"], [f"e{tag}"]),
        helper.make_node("Add", [f"e{tag}", f"one{tag}"], [f"p{tag}"]),
        helper.make_node("Mul", [f"half{tag}", f"p{tag}"], [f"q{tag}"]),
        helper.make_node("Mul", [x, f"q{tag}"], [f"g{tag}"]),
    ]
    return f"g{tag}"


def ffn_model(hidden=(10, 9), activation=_gelu, layer_norm=True) -> onnx.ModelProto:
    """x (batch, seq, D) -> LayerNorm -> [MatMul + Add -> act]* -> MatMul + Add -> + x."""
    layers = planted([D, *hidden, D])
    nodes, inits = [], []
    h = "x"
    if layer_norm:
        inits += [
            numpy_helper.from_array(np.linspace(0.5, 1.5, D).astype(np.float32), "ln_scale"),
            numpy_helper.from_array(np.linspace(-0.2, 0.2, D).astype(np.float32), "ln_bias"),
        ]
        nodes.append(
            helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["ln"], axis=-1)
        )
        h = "ln"
    for index, (w, b) in enumerate(layers):
        inits += [
            numpy_helper.from_array(w.T.copy(), f"W{index}"),
            numpy_helper.from_array(b, f"b{index}"),
        ]
        nodes += [
            helper.make_node("MatMul", [h, f"W{index}"], [f"mm{index}"]),
            helper.make_node("Add", [f"b{index}", f"mm{index}"], [f"dense{index}"]),
        ]
        h = f"dense{index}"
        if index < len(layers) - 1:
            h = activation(nodes, inits, h, index)
    nodes.append(helper.make_node("Add", ["x", h], ["y"]))  # the residual
    dims = ["batch", "seq", D]
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, dims)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def feeds(batch, seq, seed=1):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, seq, D)).astype(np.float32)}


def test_rank3_chain_between_layernorm_and_residual():
    model = ffn_model()
    (chain,) = scan_graph(gs.import_onnx(model)).chains
    assert chain.hidden_widths == [10, 9]
    assert [a.name for a in chain.activations] == ["Gelu", "Gelu"]

    reduced, _ = lump(model, 0.0, verify=False)

    onnx.checker.check_model(reduced, full_check=True)
    assert dense_widths(reduced) == [8, 7, D]
    for batch, seq in [(2, 5), (3, 1), (1, 11)]:  # dynamic batch and sequence
        assert_same_outputs(model, reduced, feeds(batch, seq))
    dims = reduced.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["batch", "seq"]


def test_rank3_chain_with_calibration_runs_through_layernorm():
    model = ffn_model()
    calib = feeds(64, 4, seed=5)
    exact, _ = lump(model, 0.0, calibration=calib, verify=False)
    assert dense_widths(exact) == [8, 7, D]
    assert_same_outputs(model, exact, feeds(4, 3))
    lossy, _ = lump(model, 1.0, calibration=calib, verify=False)
    assert sum(dense_widths(lossy)[:2]) < 15
    before, after = run(model, feeds(4, 3))[0], run(lossy, feeds(4, 3))[0]
    assert np.isfinite(after).all() and after.shape == before.shape


@pytest.fixture(scope="module")
def onnxsim():
    return pytest.importorskip("onnxsim", reason="onnxsim is optional")


@pytest.mark.parametrize("hidden", [(10, 9), (8, 8)], ids=["distinct-widths", "equal-widths"])
def test_onnxsim_reshape_gemm_reshape_form(onnxsim, hidden):
    model = ffn_model(hidden)
    simplified, ok = onnxsim.simplify(model)
    assert ok
    ops = [n.op_type for n in simplified.graph.node]
    assert "Gemm" in ops and "Reshape" in ops and "MatMul" not in ops  # onnxsim's own form
    (chain,) = scan_graph(gs.import_onnx(simplified)).chains
    assert chain.hidden_widths == list(hidden)
    assert all(layer.describe().startswith("Reshape+Gemm+Reshape") for layer in chain.layers)

    reduced, _ = lump(simplified, 0.0, verify=False)

    onnx.checker.check_model(reduced, full_check=True)
    assert dense_widths(reduced) == [hidden[0] - 2, hidden[1] - 2, D]
    for batch, seq in [(2, 5), (1, 3)]:
        assert_same_outputs(simplified, reduced, feeds(batch, seq))
    # and onnx_lump before onnxsim gives the same widths
    assert dense_widths(lump(model, 0.0, verify=False)[0]) == dense_widths(reduced)


def test_reshape_whose_width_is_not_a_constant_is_not_read(onnxsim):
    simplified, _ = onnxsim.simplify(ffn_model())
    graph = gs.import_onnx(simplified)
    concat = next(n for n in graph.nodes if n.op == "Concat")
    width = gs.Variable("dynamic_width", dtype=np.int64, shape=[1])
    graph.inputs.append(width)
    concat.inputs[-1] = width
    scan = scan_graph(graph)
    assert any("does not end in the constant width" in note for note in scan.notes)
    assert all(c.hidden_widths != [10, 9] for c in scan.chains)


# -- BatchNormalization folding --------------------------------------------------------


def bn_model(bias=True, identity_stats=False, training_mode=0, rank3=False) -> onnx.ModelProto:
    """x -> Gemm (or bias-free MatMul) -> BatchNormalization -> Relu -> Gemm -> y, with
    channel 4 a duplicate of channel 1 (rows, bias and statistics)."""
    rng = np.random.default_rng(7)
    f, h, o = 5, 9, 3
    w0 = rng.standard_normal((h, f)).astype(np.float32)
    b0 = rng.standard_normal(h).astype(np.float32)
    stats = [
        rng.uniform(0.5, 2.0, h),  # scale
        rng.standard_normal(h),  # B
        rng.standard_normal(h),  # mean
        rng.uniform(0.2, 3.0, h),  # var
    ]
    stats = [s.astype(np.float32) for s in stats]
    for array in [w0, b0, *stats]:
        array[4] = array[1]
    w1 = rng.standard_normal((o, h)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w0, "W0"),
        numpy_helper.from_array(b0, "b0"),
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(np.zeros(o, np.float32), "b1"),
    ]
    names = ["bn_scale", "bn_B", "bn_mean", "bn_var"]
    nodes = []
    for name, value in zip(names, stats, strict=True):
        if identity_stats:  # TorchScript: stats behind Identity nodes
            inits.append(numpy_helper.from_array(value, name + "_stored"))
            nodes.append(helper.make_node("Identity", [name + "_stored"], [name]))
        else:
            inits.append(numpy_helper.from_array(value, name))
    if bias and not rank3:
        nodes.append(helper.make_node("Gemm", ["x", "W0", "b0"], ["dense0"], transB=1))
    else:
        inits.append(numpy_helper.from_array(w0.T.copy(), "W0T"))
        nodes.append(helper.make_node("MatMul", ["x", "W0T"], ["dense0"]))
    nodes += [
        helper.make_node(
            "BatchNormalization",
            ["dense0", *names],
            ["bn"],
            epsilon=1e-3,
            training_mode=training_mode,
        ),
        helper.make_node("Relu", ["bn"], ["act"]),
    ]
    if rank3:
        inits.append(numpy_helper.from_array(w1.T.copy(), "W1T"))
        nodes.append(helper.make_node("MatMul", ["act", "W1T"], ["y"]))
    else:
        nodes.append(helper.make_node("Gemm", ["act", "W1", "b1"], ["y"], transB=1))
    dims = ["N", f] if not rank3 else ["N", h, f]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize(("bias", "identity_stats"), [(True, False), (False, False), (True, True)])
def test_batch_norm_is_folded_into_the_dense_layer(bias, identity_stats):
    model = bn_model(bias, identity_stats)
    (chain,) = scan_graph(gs.import_onnx(model)).chains
    assert chain.hidden_widths == [9]
    assert "+BatchNormalization" in chain.layers[0].describe()

    reduced, _ = lump(model, 0.0, verify=False)

    onnx.checker.check_model(reduced, full_check=True)
    ops = [n.op_type for n in reduced.graph.node]
    assert "BatchNormalization" not in ops and "Identity" not in ops
    assert dense_widths(reduced)[0] == 8
    x = np.random.default_rng(2).standard_normal((16, 5)).astype(np.float32)
    assert_same_outputs(model, reduced, {"x": x})


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [({"training_mode": 1}, "training_mode=0"), ({"rank3": True}, "rank-2")],
    ids=["training-mode", "rank-3"],
)
def test_batch_norm_that_cannot_fold_ends_the_chain(kwargs, why):
    model = bn_model(**kwargs)
    scan = scan_graph(gs.import_onnx(model))
    assert not scan.chains
    assert any("BatchNormalization" in note and why in note for note in scan.notes)


# -- fixtures exported by PyTorch (python -m tools.make_fixtures --patterns) --------------

MANIFEST = json.loads((PATTERNS / "manifest.json").read_text()) if PATTERNS.is_dir() else []


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_exported_patterns_merge_exactly(entry):
    model = onnx.load(PATTERNS / entry["file"])
    scan = scan_graph(gs.import_onnx(model))
    assert [c.hidden_widths for c in scan.chains] == entry["chains"]
    assert [[a.describe() for a in c.activations] for c in scan.chains] == entry["activations"]

    reduced, _ = lump(model, 0.0, verify=False)

    onnx.checker.check_model(reduced, full_check=True)
    after = scan_graph(gs.import_onnx(reduced))
    assert [c.hidden_widths for c in after.chains] == entry["expected_chains"]
    rng = np.random.default_rng(0)
    shape = [3 if d is None else d for d in entry["input_shape"]]
    assert_same_outputs(model, reduced, {entry["input"]: rng.standard_normal(shape).astype("f")})


def test_exported_patterns_are_present():
    assert {e["pattern"] for e in MANIFEST} >= {"batchnorm", "dynamo", "onnxsim"}
