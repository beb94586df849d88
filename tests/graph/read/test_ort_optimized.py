"""BERT encoders after onnxruntime's transformer optimizer (``--model_type bert``).

The fixtures (``tools/make_bert_fixtures.py``) are a tiny ``transformers.BertModel`` with
planted duplicate FFN neurons, exported by TorchScript and then optimized. The optimizer
fuses each FFN's bias Adds into the nodes after the MatMuls: ``MatMul -> BiasGelu(., b1)
-> MatMul -> SkipLayerNormalization(., residual, gamma, beta, b2)`` (``FastGelu(., b1)``
with the Gelu approximation, ``Add -> com.microsoft:Gelu`` without the bias-Gelu fusion).
The reader takes ``b1`` and ``b2`` as the layers' biases and the rewrite writes them where
they live, so exact lumping must find the planted widths and keep every output.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import FIXTURES, run_ort
from onnx import TensorProto, helper, numpy_helper

from onnx_lump import lump
from onnx_lump.activations import ActivationKind
from onnx_lump.cli import main
from onnx_lump.graph.read.chains import scan_graph
from onnx_lump.graph.write.importer import import_graph

MANIFEST = json.loads((FIXTURES / "bert_manifest.json").read_text())
FILES = {entry["file"]: entry for entry in MANIFEST["files"]}
OPTIMIZED = [name for name, entry in FILES.items() if entry["optimizer_options"] is not None]
EXPORT = next(name for name, entry in FILES.items() if entry["optimizer_options"] is None)
WIDTHS, PLANTED = MANIFEST["ffn_widths"], MANIFEST["expected_ffn_widths"]
HIDDEN, VOCAB = MANIFEST["hidden"], MANIFEST["vocab"]
CALIB = FIXTURES / MANIFEST["calibration"]
MS = "com.microsoft"

# the activation and where each FFN's two biases live, per file
FORMS = {
    "bert_ort_optimized.onnx": (ActivationKind.GELU, "BiasGelu", "SkipLayerNormalization"),
    "bert_ort_fastgelu.onnx": (ActivationKind.GELU_TANH, "FastGelu", "SkipLayerNormalization"),
    "bert_ort_nobiasgelu.onnx": (ActivationKind.GELU, None, "SkipLayerNormalization"),
    "bert_torchscript.onnx": (ActivationKind.GELU, None, None),
}


@pytest.fixture(params=OPTIMIZED)
def optimized(request) -> str:
    return request.param


def load(name: str) -> onnx.ModelProto:
    return onnx.load(FIXTURES / name)


def tokens(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded ids with some padding, at any batch and length (both are dynamic)."""
    rng = np.random.default_rng(seed)
    mask = (rng.random((batch, seq)) < 0.85).astype(np.int64)
    mask[:, 0] = 1
    return {
        "input_ids": rng.integers(0, VOCAB, (batch, seq), dtype=np.int64),
        "attention_mask": mask,
        "token_type_ids": rng.integers(0, 2, (batch, seq), dtype=np.int64),
    }


def ffn_widths(model: onnx.ModelProto) -> list[int]:
    """The width of every FFN in graph order, read off the graph itself: the rows of each
    down projection, a MatMul by a constant (width, HIDDEN) initializer (attention's are
    (HIDDEN, HIDDEN), the up projections (HIDDEN, width))."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    widths = []
    for node in model.graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is not None and weight.shape[1] == HIDDEN and weight.shape[0] != HIDDEN:
            widths.append(int(weight.shape[0]))
    return widths


def assert_same_outputs(model: onnx.ModelProto, reduced: onnx.ModelProto, rtol: float = 1e-5):
    for batch, seq, seed in ((3, 11, 1), (1, 25, 2), (6, 4, 3)):
        feeds = tokens(batch, seq, seed)
        (expected,), (actual,) = run_ort(model, feeds), run_ort(reduced, feeds)
        assert actual.shape == expected.shape == (batch, seq, HIDDEN)
        scale = float(np.abs(expected).max())
        assert float(np.abs(actual - expected).max()) <= rtol * scale


def test_the_fixtures_hold_the_optimizers_fused_ops():
    assert "com.microsoft:BiasGelu" in FILES["bert_ort_optimized.onnx"]["ops"]
    assert "com.microsoft:FastGelu" in FILES["bert_ort_fastgelu.onnx"]["ops"]
    assert "com.microsoft:Gelu" in FILES["bert_ort_nobiasgelu.onnx"]["ops"]
    for name in OPTIMIZED:
        model = load(name)
        ops = {(n.domain, n.op_type) for n in model.graph.node}
        assert (MS, "SkipLayerNormalization") in ops
        assert ("", "Erf") not in ops
        assert ffn_widths(model) == WIDTHS
        # the down projections' MatMuls have no Add: their bias is SkipLayerNorm's 5th input
        for node in model.graph.node:
            if node.op_type == "SkipLayerNormalization":
                assert len(node.input) == 5 and node.input[4]


@pytest.mark.parametrize("name", list(FORMS))
def test_both_ffns_are_read_with_their_fused_biases(name):
    model = load(name)
    scan = scan_graph(import_graph(model))

    assert len(scan.chains) == 2, scan.notes
    kind, first_holder, last_holder = FORMS[name]
    biases = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for chain, width in zip(scan.chains, WIDTHS, strict=True):
        assert chain.hidden_widths == [width]
        assert [layer.shape for layer in chain.layers] == [(width, HIDDEN), (HIDDEN, width)]
        assert [a.kind for a in chain.activations] == [kind]
        for layer, holder in zip(chain.layers, (first_holder, last_holder), strict=True):
            assert layer.bias_ref is not None  # every layer of a BERT FFN has a bias
            if holder is None:
                assert layer.bias_holder is None
                continue
            assert layer.bias_holder is not None and layer.bias_holder.op == holder
            assert layer.bias_ref.consumer is layer.bias_holder
            assert layer.bias_add is None and layer.output is layer.node.outputs[0]
            np.testing.assert_array_equal(layer.bias, biases[layer.bias_ref.name])
    assert scan.why_no_chain() == ""


@pytest.mark.parametrize("name", list(FORMS))
def test_eps0_reduces_each_ffn_to_its_planted_width(name):
    model = load(name)

    reduced, report = lump(model, 0.0, verify=False)

    assert ffn_widths(reduced) == PLANTED
    hidden = [s for s in report.layers if s.width_before in WIDTHS]
    assert [s.width_after for s in hidden] == PLANTED
    assert report.params_before == sum(2 * w * HIDDEN + w + HIDDEN for w in WIDTHS)
    assert report.params_after == sum(2 * w * HIDDEN + w + HIDDEN for w in PLANTED)
    # the biases shrank where they live: no new node, no Add in front of a fused op
    assert len(reduced.graph.node) == len(model.graph.node)
    widths = {t.name: list(t.dims) for t in reduced.graph.initializer}
    for index, width in enumerate(PLANTED):
        assert widths[f"bert.encoder.layer.{index}.intermediate.dense.bias"] == [width]
        assert widths[f"bert.encoder.layer.{index}.output.dense.bias"] == [HIDDEN]
    assert_same_outputs(model, reduced)


def test_refit_biases_are_written_into_the_fused_ops(optimized):
    """Beyond exact merging the refit changes the down projection's bias: written into
    SkipLayerNormalization it gives what the same compression of the unfused export gives."""
    calibration = dict(np.load(CALIB))
    options = dict(calibration=calibration, refine=False, verify=False)
    plain, plain_report = lump(load(EXPORT), 1.0, **options)
    model = load(optimized)

    reduced, report = lump(model, 1.0, **options)

    widths = [s.width_after for s in report.layers]
    assert widths == [s.width_after for s in plain_report.layers]
    assert sum(ffn_widths(reduced)) < sum(PLANTED)  # beyond the exact merges
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in reduced.graph.initializer}
    name = "bert.encoder.layer.0.output.dense.bias"
    assert not np.allclose(before[name], after[name])  # the refit moved b2
    assert set(after) == set(before)  # written in place, nothing added
    for seed in (5, 6):
        feeds = tokens(4, 9, seed)
        (expected,), (actual,) = run_ort(plain, feeds), run_ort(reduced, feeds)
        if optimized == "bert_ort_fastgelu.onnx":  # another Gelu: the same widths only
            assert np.isfinite(actual).all()
            continue
        assert float(np.abs(actual - expected).max()) <= 1e-4 * float(np.abs(expected).max())


def test_eps0_through_the_cli(optimized, tmp_path):
    out, report_path = tmp_path / "small.onnx", tmp_path / "report.json"

    code = main(
        [
            str(FIXTURES / optimized),
            str(out),
            "--eps",
            "0",
            "--calib",
            str(CALIB),
            "--report-json",
            str(report_path),
            "-q",
        ]
    )

    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["verification"]["passed"]
    reduced = onnx.load(out)
    assert ffn_widths(reduced) == PLANTED
    assert_same_outputs(load(optimized), reduced)


def test_a_shared_fused_bias_is_copied_not_changed():
    """Both BiasGelus read one initializer (the optimizer merges equal ones): each layer
    gets its own narrower copy and the original stays whole."""
    model = load("bert_ort_optimized.onnx")
    gelus = [n for n in model.graph.node if n.op_type == "BiasGelu"]
    shared = gelus[0].input[1]
    gelus[1].input[1] = shared
    unread = "bert.encoder.layer.1.intermediate.dense.bias"
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == unread))

    reduced, _ = lump(model, 0.0, verify=False)

    inputs = [n.input[1] for n in reduced.graph.node if n.op_type == "BiasGelu"]
    assert len(set(inputs)) == 2 and shared not in inputs
    assert all(name.startswith(shared) for name in inputs)
    assert_same_outputs(model, reduced)


# -- hand-built graphs: the fused ops outside the optimizer's exact output ----------------


def _ffn(first: str, holder: str | None, bias: np.ndarray, *, add_bias: bool = False):
    """x (N, S, 4) -> first layer (8 wide, rows 4..7 copies of rows 0..3) -> ``holder``
    (``BiasGelu``/``FastGelu`` with ``bias``) -> MatMul -> SkipLayerNormalization(., x)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 4)).astype(np.float32)
    w1 = np.concatenate([w1, w1])  # (8, 4): neuron i + 4 copies neuron i
    w2 = rng.standard_normal((4, 8)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w2.T.copy(), "W2"),
        numpy_helper.from_array(np.ones(4, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(4, np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2"),
        numpy_helper.from_array(bias.astype(np.float32), "b1"),
    ]
    nodes = []
    if first == "Gemm":  # rank 2, no C (beta scales nothing): the bias is BiasGelu's
        inits.append(numpy_helper.from_array(w1 / 2.0, "W1"))
        gemm = helper.make_node("Gemm", ["x", "W1"], ["h"], transB=1, alpha=2.0, beta=0.5)
        nodes.append(gemm)
    else:
        inits.append(numpy_helper.from_array(w1.T.copy(), "W1"))
        nodes.append(helper.make_node("MatMul", ["x", "W1"], ["h"]))
    if add_bias:
        inits.append(numpy_helper.from_array(np.full(8, 0.3, np.float32), "b0"))
        nodes.append(helper.make_node("Add", ["h", "b0"], ["h_b"]))
    pre = "h_b" if add_bias else "h"
    nodes += [
        helper.make_node(holder, [pre, "b1"], ["a"], domain=MS),
        helper.make_node("MatMul", ["a", "W2"], ["o"]),
        helper.make_node(
            "SkipLayerNormalization", ["o", "x", "gamma", "beta", "b2"], ["y"], domain=MS
        ),
    ]
    dims = ["N", 4] if first == "Gemm" else ["N", "S", 4]
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _twice(rng: np.random.Generator) -> np.ndarray:
    half = rng.standard_normal(4)
    return np.concatenate([half, half])  # copies keep their bias: still duplicates


@pytest.mark.parametrize("first", ["MatMul", "Gemm"])
@pytest.mark.parametrize("holder", ["BiasGelu", "FastGelu"])
def test_hand_built_fused_ffn_is_lumped_exactly(first, holder):
    model = _ffn(first, holder, _twice(np.random.default_rng(1)))
    x = np.random.default_rng(2).standard_normal((5, 4) if first == "Gemm" else (2, 3, 4))

    reduced, report = lump(model, 0.0, verify=False)

    assert [s.width_after for s in report.layers] == [4, 4]
    (expected,), (actual,) = (run_ort(m, {"x": x.astype(np.float32)}) for m in (model, reduced))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    b1 = next(t for t in reduced.graph.initializer if t.name == "b1")
    assert list(b1.dims) == [4]


def test_a_fused_bias_after_a_biased_layer_must_be_one_repeated_value():
    """MatMul + Add -> BiasGelu: the Gelu's own bias is no layer's; a per-feature one
    ends the chain with a note, a repeated one is Gelu(x + c), no registered activation."""
    varying = _ffn("MatMul", "BiasGelu", _twice(np.random.default_rng(1)), add_bias=True)
    scan = scan_graph(gs.import_onnx(varying))
    assert not scan.chains
    assert any("varies per feature" in note for note in scan.notes)
    assert "varies per feature" in scan.why_no_chain()

    repeated = _ffn("MatMul", "BiasGelu", np.full(8, 0.5), add_bias=True)
    scan = scan_graph(gs.import_onnx(repeated))
    assert not scan.chains
    assert "no registered activation" in scan.why_no_chain()


def test_the_op_that_stops_a_chain_is_named_without_verbose_output():
    """An op the reader does not take as an activation (here onnxruntime's BiasSplitGelu,
    which halves the width) between the FFN's MatMuls: the reason names it."""
    model = load("bert_ort_optimized.onnx")
    for node in model.graph.node:
        if node.op_type == "BiasGelu":
            node.op_type = "BiasSplitGelu"

    scan = scan_graph(import_graph(model))

    assert not scan.chains
    why = scan.why_no_chain()
    assert why.startswith(". In this graph: ")
    assert "'com.microsoft:BiasSplitGelu'" in why
    assert "between MatMul '/bert/encoder/layer.0/intermediate/dense/MatMul'" in why
    assert "and MatMul(+bias in SkipLayerNormalization) '/bert/encoder/layer.0/output" in why
    assert "is not a registered element-wise activation" in why
    assert why.count("BiasSplitGelu") == 2  # one reason per FFN, no hint lists
    assert len(why) < 600


def test_the_reason_without_candidates_counts_the_dense_layers():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.ones((3, 2), np.float32), "W")],
    )
    scan = scan_graph(gs.import_onnx(helper.make_model(graph)))
    assert scan.why_no_chain() == ". In this graph: 1 dense layer was read"
