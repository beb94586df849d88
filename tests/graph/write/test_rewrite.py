"""What the rewritten model keeps, drops and records."""

from __future__ import annotations

import json

import numpy as np
import onnx
from builders import mlp, random_layers
from conftest import FIXTURES, MODELS

from onnx_lump import lump
from onnx_lump.graph.io.save import save_model


def planted_model(**kwargs) -> onnx.ModelProto:
    layers = random_layers([4, 10, 8, 2], seed=11)
    for neuron, of in ((8, 1), (9, 2)):
        layers[0][0][neuron], layers[0][1][neuron] = layers[0][0][of], layers[0][1][of]
    return mlp(layers, ["Tanh", "Tanh"], **kwargs)


def test_model_fields_are_kept_and_the_reduction_recorded():
    model = planted_model()
    model.doc_string = "my model"
    model.model_version = 7
    model.producer_name = "exporter"
    model.graph.doc_string = "graph doc"
    model.metadata_props.add(key="author", value="me")
    reduced, _ = lump(model, 0.0, verify=False)
    assert reduced.doc_string == "my model"
    assert reduced.model_version == 7
    assert reduced.producer_name == "exporter"
    assert reduced.graph.doc_string == "graph doc"
    assert reduced.ir_version == model.ir_version
    props = {p.key: p.value for p in reduced.metadata_props}
    assert props["author"] == "me"
    assert float(props["pkg.onnx_lump.eps"]) == 0.0
    assert json.loads(props["pkg.onnx_lump.widths_before"]) == [[10, 8]]
    assert json.loads(props["pkg.onnx_lump.widths_after"]) == [[8, 8]]


def test_initializers_no_node_reads_are_kept():
    model = planted_model()
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(3, np.float32), "spare"))
    reduced, _ = lump(model, 0.0, verify=False)
    spare = [t for t in reduced.graph.initializer if t.name == "spare"]
    assert len(spare) == 1 and spare[0] == model.graph.initializer[-1]


def test_stale_value_info_of_narrowed_tensors_is_dropped():
    model = planted_model(value_info=True)
    reduced, _ = lump(model, 0.0, verify=False)
    onnx.checker.check_model(reduced, full_check=True)
    shapes = {v.name: v for v in reduced.graph.value_info}
    for name in ("dense0", "act0"):
        dims = shapes[name].type.tensor_type.shape.dim if name in shapes else []
        assert not dims or dims[-1].dim_value in (0, 8)
    inferred = onnx.shape_inference.infer_shapes(reduced, strict_mode=True)
    assert inferred is not None


def test_constant_nodes_are_rewritten_in_place():
    model = onnx.load(FIXTURES / "constant_nodes.onnx")
    reduced, _ = lump(model, 0.0, verify=False)
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    assert count(reduced, "Constant") == count(model, "Constant")
    assert len(reduced.graph.initializer) == len(model.graph.initializer)


def test_identity_and_transpose_paths_keep_their_nodes():
    model = onnx.load(FIXTURES / "identity_transpose.onnx")
    reduced, _ = lump(model, 0.0, verify=False)
    ops = [n.op_type for n in reduced.graph.node]
    assert ops.count("Transpose") == 1 and ops.count("Identity") == 1


def test_demo_model_round_trip_through_a_file(tmp_path):
    model = onnx.load(MODELS / "rn_relu_2x64.onnx")
    reduced, report = lump(model, 1.0)
    target = tmp_path / "out.onnx"
    save_model(reduced, target)
    again = onnx.load(target)
    onnx.checker.check_model(again, full_check=True)
    assert sum(
        t.dims[0] * (t.dims[1] if len(t.dims) > 1 else 1) for t in again.graph.initializer
    ) == (report.params_after)
