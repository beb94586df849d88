"""The onnx-ir pass in PassManager pipelines, the model sources the API accepts, and the
Olive pass."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from builders import mlp, random_layers
from conftest import FIXTURES, activation_widths, run_ort
from onnx import helper
from onnx_ir.passes.common import (
    CheckerPass,
    IdentityEliminationPass,
    LiftConstantsToInitializersPass,
    RemoveUnusedNodesPass,
    TopologicalSortPass,
)

from onnx_lump import lump
from onnx_lump.errors import LumpError
from onnx_lump.integrations.onnx_ir import LumpPass
from onnx_lump.methods import Magnitude, Scope

TOOLS = Path(__file__).resolve().parents[2] / "tools"
FEEDS = {"x": np.random.default_rng(5).standard_normal((32, 4)).astype(np.float32)}


def planted_layers():
    """Widths 4 -> 10 -> 8 -> 2 with neurons 8 and 9 of the first hidden layer copies of 1
    and 2: exact lumping at eps=0 leaves 8 -> 8."""
    layers = random_layers([4, 10, 8, 2], seed=11)
    for neuron, of in ((8, 1), (9, 2)):
        layers[0][0][neuron], layers[0][1][neuron] = layers[0][0][of], layers[0][1][of]
    return layers


def with_clutter(model: onnx.ModelProto) -> onnx.ModelProto:
    """Insert what the other passes remove: an Identity after the first activation, a
    Constant node for the second layer's bias, and a dead node."""
    graph = model.graph
    for node in graph.node:
        if node.output[0] == "act0":
            node.output[0] = "act0_raw"
    identity = helper.make_node("Identity", ["act0_raw"], ["act0"], name="identity")
    bias = next(t for t in graph.initializer if t.name == "b1")
    graph.initializer.remove(bias)
    constant = helper.make_node("Constant", [], ["b1"], name="b1_const", value=bias)
    dead = helper.make_node("Neg", ["x"], ["unused"], name="dead")
    nodes = [constant, dead, *graph.node]
    at = next(i for i, n in enumerate(nodes) if n.output[0] == "act0_raw") + 1
    nodes.insert(at, identity)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def onnxscript_passes():
    """onnxscript's own constant folding and rewrite passes, when onnxscript is installed."""
    pytest.importorskip("onnxscript", reason="onnxscript not installed")
    from onnxscript.optimizer._constant_folding import FoldConstantsPass
    from onnxscript.rewriter import _DEFAULT_REWRITE_RULES, RewritePass

    fold = FoldConstantsPass(shape_inference=True, input_size_limit=1024, output_size_limit=1024)
    return fold, RewritePass(_DEFAULT_REWRITE_RULES)


def pipeline(lump_pass: LumpPass, check: bool = True) -> ir.passes.PassManager:
    """onnx-ir and onnxscript passes on both sides of ours. onnx-ir's CheckerPass cannot
    check a model whose tensors live in external files (it checks a detached proto)."""
    fold, rewrite = onnxscript_passes()
    after = [rewrite, RemoveUnusedNodesPass(), TopologicalSortPass()]
    return ir.passes.PassManager(
        [
            IdentityEliminationPass(),
            LiftConstantsToInitializersPass(size_limit=0),
            fold,
            lump_pass,
            *after,
            *([CheckerPass(full_check=True)] if check else []),
        ]
    )


def run_ir(model: ir.Model) -> list[np.ndarray]:
    return run_ort(ir.to_proto(model), FEEDS)


def test_pass_in_a_pass_manager_on_an_in_memory_model():
    original = with_clutter(mlp(planted_layers(), ["Tanh", "Tanh"]))
    expected = run_ort(original, FEEDS)
    model = ir.from_proto(original)
    lump_pass = LumpPass(0.0, atol=1e-5)
    result = pipeline(lump_pass)(model)
    assert result.modified
    assert result.model is not model
    reduced = ir.to_proto(result.model)
    assert activation_widths(reduced) == [8, 8]
    assert {n.op_type for n in reduced.graph.node} == {"Gemm", "Tanh"}
    np.testing.assert_allclose(run_ort(reduced, FEEDS)[0], expected[0], atol=1e-5)
    assert lump_pass.last_report.params_after < lump_pass.last_report.params_before
    assert json.loads(result.model.metadata_props["pkg.onnx_lump.widths_after"]) == [[8, 8]]
    assert not any(k.startswith("onnx_lump.") for k in result.model.metadata_props)
    # the passes before it work in place on `model`; ours, functional, did not narrow it
    assert model.graph.initializers["W0"].const_value.shape == (10, 4)


def test_pass_in_a_pass_manager_on_external_data(tmp_path):
    source = tmp_path / "model.onnx"
    onnx.save_model(
        with_clutter(mlp(planted_layers(), ["Tanh", "Tanh"])),
        source,
        save_as_external_data=True,
        location="model.data",
        size_threshold=0,
    )
    expected = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(
        None, FEEDS
    )
    model = ir.load(source)
    assert isinstance(model.graph.initializers["W2"].const_value, ir.ExternalTensor)
    result = pipeline(LumpPass(0.0), check=False)(model)
    assert result.modified
    weights = {name: v.const_value for name, v in result.model.graph.initializers.items()}
    assert weights["W0"].shape == (8, 4)
    # the last layer's weights were not touched: still the memory-mapped original
    assert weights["W2"] is model.graph.initializers["W2"].const_value
    assert isinstance(model.graph.initializers["W0"].const_value, ir.ExternalTensor)

    out = tmp_path / "out" / "small.onnx"
    out.parent.mkdir()
    ir.save(result.model, out, external_data="small.data", size_threshold_bytes=0)
    assert (out.parent / "small.data").is_file()
    saved = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in saved.graph.initializer)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, FEEDS)[0], expected[0], atol=1e-5)
    assert activation_widths(onnx.load(str(out))) == [8, 8]


def test_nothing_to_merge_is_not_modified():
    model = ir.from_proto(mlp(random_layers([4, 10, 8, 2], seed=1), ["Tanh", "Tanh"]))
    result = LumpPass(0.0)(model)
    assert not result.modified
    assert result.model is not model  # functional: a new model object, same content
    assert ir.to_proto(result.model).graph == ir.to_proto(model).graph
    assert not any(k.startswith("pkg.onnx_lump.") for k in result.model.metadata_props)


def test_a_model_without_a_chain_passes_through_unless_required():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])
    proto = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    result = ir.passes.PassManager([IdentityEliminationPass(), LumpPass(0.0)])(ir.from_proto(proto))
    assert not result.modified
    np.testing.assert_array_equal(run_ir(result.model)[0], np.maximum(FEEDS["x"], 0))
    with pytest.raises(LumpError, match="no dense chain"):
        LumpPass(0.0, require_chain=True)(ir.from_proto(proto))


def test_a_tolerance_the_result_misses_fails_the_pass():
    model = ir.from_proto(mlp(random_layers([4, 10, 8, 2], seed=1), ["Tanh", "Tanh"]))
    with pytest.raises(LumpError, match="beyond the tolerance"):
        LumpPass(5.0, atol=1e-9)(model)
    with pytest.raises(ir.passes.PassError):  # what a PassManager makes of it
        ir.passes.PassManager([LumpPass(5.0, atol=1e-9)])(model)


def test_options_reach_lump_and_a_method_runs_through_compress():
    model = ir.from_proto(mlp(planted_layers(), ["Tanh", "Tanh"]))
    quiet = LumpPass(0.0, verify=False, symmetries=False)
    assert quiet(model).modified and quiet.last_report.verification is None
    calibration = {"x": np.random.default_rng(2).standard_normal((64, 4)).astype(np.float32)}
    data_aware = LumpPass(0.5, calibration=calibration, similarity="weights", refit=True)
    assert data_aware(model).modified
    assert data_aware.last_report.retained < 1
    pruned = LumpPass(method=Magnitude(0.5, Scope.LAYER))
    result = pruned(model)
    assert result.modified and not pruned.last_report.structured
    weights = result.model.graph.initializers["W1"].const_value.numpy()
    assert np.count_nonzero(weights) == weights.size // 2


@pytest.mark.parametrize("kind", ["proto", "ir", "str", "path"])
def test_the_api_takes_a_proto_an_ir_model_or_a_path(kind, tmp_path):
    proto = mlp(planted_layers(), ["Tanh", "Tanh"])
    path = tmp_path / "sub" / "model.onnx"
    path.parent.mkdir()
    detached = onnx.ModelProto()
    detached.CopyFrom(proto)  # saving with external data rewrites the tensors it is given
    onnx.save_model(
        detached, path, save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    source = {
        "proto": proto,
        "ir": ir.load(path),
        "str": str(path),
        "path": Path(os.path.relpath(path)),
    }[kind]
    reduced, report = lump(source, 0.0)
    assert activation_widths(reduced) == [8, 8]
    assert report.verification and report.verification.max_abs < 1e-5
    np.testing.assert_allclose(run_ort(reduced, FEEDS)[0], run_ort(proto, FEEDS)[0], atol=1e-5)


def test_the_api_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(LumpError, match=r"expected an onnx\.ModelProto"):
        lump(b"not a model")
    with pytest.raises(LumpError, match="does not exist"):
        lump(tmp_path / "missing.onnx")
    path = tmp_path / "model.onnx"
    onnx.save_model(
        mlp(planted_layers(), ["Tanh", "Tanh"]),
        path,
        save_as_external_data=True,
        location="model.data",
        size_threshold=0,
    )
    (tmp_path / "model.data").unlink()
    with pytest.raises(LumpError, match="external data"):
        lump(path)


def test_olive_workflow_runs_the_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("OLIVE_DISABLE_TELEMETRY", "1")  # no network from tests
    pytest.importorskip("olive", reason="Olive not installed (pip install onnx_lump[olive])")
    from olive.workflows import run as olive_run

    from onnx_lump.integrations.olive import package_config

    workflow = json.loads((TOOLS / "olive_example.json").read_text())
    source = FIXTURES / "skl_relu.onnx"
    assert workflow["input_model"]["model_path"] == "tests/fixtures/skl_relu.onnx"
    workflow["input_model"]["model_path"] = str(source)
    workflow["output_dir"] = str(tmp_path / "out")
    workflow["cache_dir"] = str(tmp_path / "cache")
    del workflow["passes"]["quantize"]  # the quantized chain is checked in test_edge
    olive_run(workflow, package_config=package_config())

    outputs = sorted((tmp_path / "out").rglob("*.onnx"))
    assert len(outputs) == 1
    reduced = onnx.load(str(outputs[0]))
    original = onnx.load(str(source))
    assert activation_widths(original) == [12, 10]
    assert activation_widths(reduced) == [10, 8]
    feeds = {"X": np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)}
    np.testing.assert_allclose(run_ort(reduced, feeds)[0], run_ort(original, feeds)[0], atol=1e-4)
    props = {p.key: p.value for p in reduced.metadata_props}
    assert props["pkg.onnx_lump.eps"] == "0.0"


def test_olive_package_config_names_the_pass(tmp_path):
    pytest.importorskip("olive", reason="Olive not installed (pip install onnx_lump[olive])")
    from olive.package_config import OlivePackageConfig

    from onnx_lump.integrations.olive import OnnxLump, write_package_config

    config = OlivePackageConfig.parse_file_or_obj(str(write_package_config(tmp_path / "p.json")))
    assert config.import_pass_module("OnnxLump") is OnnxLump
    assert config.get_pass_module_config("OnnxDynamicQuantization")  # Olive's own still there
    from olive.hardware import DEFAULT_CPU_ACCELERATOR

    config_class, _ = OnnxLump.get_config_class(DEFAULT_CPU_ACCELERATOR)
    assert config_class.model_validate({"eps": 0.25}).eps == 0.25


@pytest.mark.parametrize("reduction", [None, "span"])
def test_olive_pass_with_calibration_writes_external_data(tmp_path, monkeypatch, reduction):
    monkeypatch.setenv("OLIVE_DISABLE_TELEMETRY", "1")
    pytest.importorskip("olive", reason="Olive not installed (pip install onnx_lump[olive])")
    from olive.hardware import DEFAULT_CPU_ACCELERATOR
    from olive.model import ONNXModelHandler

    from onnx_lump.integrations.olive import OnnxLump

    source = tmp_path / "model.onnx"
    onnx.save_model(mlp(random_layers([4, 24, 16, 2], seed=4), ["Tanh", "Tanh"]), source)
    x = np.random.default_rng(1).standard_normal((256, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    eps = 0.5 if reduction is None else 0.05  # span's eps is a share of energy
    options = {"eps": eps, "calibration_path": str(tmp_path / "calib.npz")}
    if reduction is not None:  # every LumpOptions field is a config parameter
        options["reduction"] = reduction
    config = OnnxLump.generate_config(
        DEFAULT_CPU_ACCELERATOR, {**options, "save_as_external_data": True}, disable_search=True
    )
    out = OnnxLump(DEFAULT_CPU_ACCELERATOR, config).run(
        ONNXModelHandler(model_path=str(source)), str(tmp_path / "out" / "small.onnx")
    )
    written = Path(out.model_path)
    assert (written.parent / "small.onnx.data").is_file()
    widths = activation_widths(onnx.load(str(written)))
    assert widths[0] < 24 and widths[1] < 16
    expected, _ = lump(source, eps, calibration={"x": x}, reduction=reduction)
    assert activation_widths(expected) == widths
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        session.run(None, {"x": x})[0], run_ort(expected, {"x": x})[0], rtol=1e-5, atol=1e-6
    )


def test_olive_pass_judges_the_file_it_wrote(tmp_path, monkeypatch):
    """The tolerance is judged on the file Olive wrote, run by onnxruntime: missed, the
    pass fails with the post-condition's error."""
    monkeypatch.setenv("OLIVE_DISABLE_TELEMETRY", "1")
    pytest.importorskip("olive", reason="Olive not installed (pip install onnx_lump[olive])")
    from olive.hardware import DEFAULT_CPU_ACCELERATOR
    from olive.model import ONNXModelHandler

    from onnx_lump.integrations.olive import OnnxLump
    from onnx_lump.integrations.onnx_ir import ToleranceExceeded

    source = tmp_path / "model.onnx"
    onnx.save_model(mlp(random_layers([4, 24, 16, 2], seed=4), ["Tanh", "Tanh"]), source)
    config = OnnxLump.generate_config(
        DEFAULT_CPU_ACCELERATOR, {"eps": 5.0, "atol": 1e-9}, disable_search=True
    )
    with pytest.raises(ToleranceExceeded, match="beyond the tolerance"):
        OnnxLump(DEFAULT_CPU_ACCELERATOR, config).run(
            ONNXModelHandler(model_path=str(source)), str(tmp_path / "out" / "small.onnx")
        )


def test_requires_names_calibration_inputs_the_graph_does_not_have():
    model = ir.from_proto(mlp(planted_layers(), ["Tanh", "Tanh"]))
    lump_pass = LumpPass(0.1, calibration={"not_x": FEEDS["x"]})
    with pytest.raises(ir.passes.PreconditionError, match=r"\['not_x'\] are not inputs"):
        lump_pass(model)


def test_ensures_the_graph_keeps_its_inputs_and_outputs(monkeypatch):
    """The post-condition holds for a real run, and catches a result whose outputs were
    renamed (a call that broke the interface)."""
    model = ir.from_proto(mlp(planted_layers(), ["Tanh", "Tanh"]))
    assert LumpPass(0.0)(model).modified  # requires and ensures both ran and held
    broken = LumpPass(0.0)
    renamed = ir.from_proto(mlp(planted_layers(), ["Tanh", "Tanh"]))
    renamed.graph.outputs[0].name = "renamed"
    monkeypatch.setattr(broken, "call", lambda m: ir.passes.PassResult(renamed, modified=True))
    with pytest.raises(ir.passes.PostconditionError, match="inputs or outputs changed"):
        broken(model)
