"""Every graph variant the reader supports, with planted redundant neurons, at eps = 0."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, MANIFEST, activation_widths, feeds_for, relative_error, run_ort

from onnx_lump import lump, scan_graph

# Exact merges are exact to the arithmetic of the model's own dtype.
_TOLERANCE = {"float16": 4e-3, "float32": 1e-5, "float64": 1e-12}


def test_manifest_covers_every_variant():
    sources = {entry["source"] for entry in MANIFEST}
    assert {"skl2onnx", "torch-dynamo-false", "onnx.helper"} <= sources
    ops = set().union(*(entry["ops"] for entry in MANIFEST))
    assert {"Gemm", "MatMul", "Add", "Constant", "Identity", "Transpose"} <= ops
    assert {"Relu", "LeakyRelu", "Tanh", "Sigmoid"} <= ops
    assert {entry["dtype"] for entry in MANIFEST} == {"float16", "float32", "float64"}


def test_planted_neurons_merge_exactly(fixture_entry):
    model = onnx.load(FIXTURES / fixture_entry["file"])
    assert activation_widths(model) == fixture_entry["hidden_widths"]

    reduced, report = lump(model, 0.0, verify=False)

    onnx.checker.check_model(reduced, full_check=True)
    assert activation_widths(reduced) == fixture_entry["expected_hidden_widths"]
    feeds = feeds_for(fixture_entry)
    error = relative_error(run_ort(model, feeds), run_ort(reduced, feeds))
    assert error < _TOLERANCE[fixture_entry["dtype"]]
    assert report.params_after < report.params_before


def test_dtype_and_names_are_kept(fixture_entry):
    model = onnx.load(FIXTURES / fixture_entry["file"])
    reduced, _ = lump(model, 0.0, verify=False)
    before = {t.name: t.data_type for t in model.graph.initializer}
    after = {t.name: t.data_type for t in reduced.graph.initializer}
    for name, data_type in after.items():
        assert before.get(name, data_type) == data_type
    assert [o.name for o in reduced.graph.output] == [o.name for o in model.graph.output]
    assert [i.name for i in reduced.graph.input] == [i.name for i in model.graph.input]
    assert reduced.ir_version == model.ir_version
    assert list(reduced.opset_import) == list(model.opset_import)


def test_shared_initializer_is_not_rewritten_in_place():
    model = onnx.load(FIXTURES / "shared_initializer.onnx")
    graph = model.graph
    shared = [
        name
        for name in {t.name for t in graph.initializer}
        if sum(name in n.input for n in graph.node) > 1
    ]
    assert shared, "fixture must share an initializer"
    reduced, _ = lump(model, 0.0, verify=False)
    readers = [n for n in reduced.graph.node if shared[0] in n.input]
    new_names = {i for n in reduced.graph.node for i in n.input if i.startswith(shared[0])}
    # Either the original stays for a remaining reader with its old value, or no one reads it.
    for tensor in reduced.graph.initializer:
        if tensor.name == shared[0]:
            original = next(t for t in graph.initializer if t.name == shared[0])
            assert readers and tensor == original
    assert len(new_names) >= 2  # each branch got its own narrowed copy


def test_observable_hidden_layer_keeps_its_neurons():
    model = onnx.load(FIXTURES / "observable_hidden.onnx")
    reduced, report = lump(model, 0.0, verify=False)
    assert any("graph output" in note for note in report.notes)
    observable = next(o for o in reduced.graph.output if o.name != "y")
    widths = activation_widths(reduced)
    entry = next(e for e in MANIFEST if e["file"] == "observable_hidden.onnx")
    assert widths == entry["expected_hidden_widths"]
    assert observable.name in {n.output[0] for n in reduced.graph.node}


def test_unsupported_nodes_are_left_untouched_and_reported():
    model = onnx.load(FIXTURES / "unsupported_op.onnx")
    reduced, report = lump(model, 0.0, verify=False)
    original = next(n for n in model.graph.node if n.op_type == "Sin")
    kept = next(n for n in reduced.graph.node if n.op_type == "Sin")
    assert kept == original
    assert any("'Sin'" in note and "not a registered" in note for note in report.notes)


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_reader_finds_the_planted_chains(entry):
    import onnx_graphsurgeon as gs

    scan = scan_graph(gs.import_onnx(onnx.load(FIXTURES / entry["file"])))
    assert sorted(c.hidden_widths for c in scan.chains) == sorted(entry["chains"])
    for chain in scan.chains:
        for layer in chain.layers:
            assert layer.weight.dtype == np.float64
            assert layer.dtype == np.dtype(entry["dtype"])
