"""The rewrite keeps every field it does not change: the whole model proto is compared
before and after, field by field, outside the rewritten tensors."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from builders import random_layers
from conftest import FIXTURES
from onnx import TensorProto, helper, numpy_helper

from onnx_lump import lump
from onnx_lump.graph.write.export import export_model
from onnx_lump.graph.write.importer import import_graph
from onnx_lump.graph.write.rewrite import rewrite_chain
from onnx_lump.methods import Exact


def _run(model: onnx.ModelProto, feeds: dict) -> list:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _meta(proto, **pairs) -> None:
    for key, value in pairs.items():
        proto.metadata_props.add(key=key, value=value)


def documented_model() -> onnx.ModelProto:
    """x -> Gemm -> Tanh -> Gemm -> Tanh -> Gemm -> Softmax, with a doc string and metadata
    on everything that can hold one, an unused sparse initializer, and planted duplicates."""
    layers = random_layers([6, 10, 8, 3], seed=3)
    for neuron, of in ((8, 1), (9, 4)):
        layers[0][0][neuron], layers[0][1][neuron] = layers[0][0][of], layers[0][1][of]
    inits, nodes = [], []
    current = "x"
    for index, (weight, bias) in enumerate(layers):
        for name, value in ((f"W{index}", weight), (f"b{index}", bias)):
            tensor = numpy_helper.from_array(value.astype(np.float32), name)
            tensor.doc_string = f"doc of {name}"
            _meta(tensor, origin=f"init {name}")
            inits.append(tensor)
        node = helper.make_node(
            "Gemm",
            [current, f"W{index}", f"b{index}"],
            [f"h{index}"],
            name=f"gemm{index}",
            transB=1,
            doc_string=f"gemm {index} from layer.{index}",
        )
        _meta(node, **{"pkg.torch.stack": f"Linear[{index}]", "namespace": "net"})
        nodes.append(node)
        current = f"h{index}"
        if index < 2:
            act = helper.make_node(
                "Tanh", [current], [f"a{index}"], name=f"tanh{index}", doc_string=f"tanh {index}"
            )
            _meta(act, **{"pkg.torch.stack": f"Tanh[{index}]"})
            nodes.append(act)
            current = f"a{index}"
    soft = helper.make_node("Softmax", [current], ["y"], name="softmax", axis=1, doc_string="out")
    _meta(soft, **{"pkg.torch.stack": "Softmax"})
    nodes.append(soft)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6], doc_string="the input")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3], doc_string="scores")
    infos = [
        helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["N", 10], doc_string="hidden 0"),
        helper.make_tensor_value_info("h2", TensorProto.FLOAT, ["N", 3], doc_string="logits"),
    ]
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "unused_sparse"),
        numpy_helper.from_array(np.array([1, 7], np.int64), "unused_sparse_indices"),
        [3, 4],
    )
    graph = helper.make_graph(
        nodes,
        "documented",
        [x],
        [y],
        inits,
        doc_string="graph doc",
        value_info=infos,
        sparse_initializer=[sparse],
    )
    _meta(graph, **{"graph.key": "graph value"})
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    model.doc_string, model.producer_name, model.producer_version = "model doc", "hand", "1.0"
    model.domain, model.model_version = "test.domain", 5
    _meta(model, author="me")
    onnx.checker.check_model(model)
    return model


def _fields(message) -> dict:
    return {d.name: v for d, v in message.ListFields()}


def assert_preserved(before: onnx.ModelProto, after: onnx.ModelProto, rewritten: set[str]):
    """Every field of ``after`` equals ``before``'s, except the values of ``rewritten``
    initializers, value_info of narrowed tensors, and the metadata the pass appends."""
    top_before, top_after = _fields(before), _fields(after)
    for name in set(top_before) | set(top_after):
        if name in ("graph", "metadata_props"):
            continue
        assert top_before.get(name) == top_after.get(name), name
    props = [(p.key, p.value) for p in after.metadata_props]
    assert props[: len(before.metadata_props)] == [(p.key, p.value) for p in before.metadata_props]
    assert all(k.startswith("pkg.onnx_lump.") for k, _ in props[len(before.metadata_props) :])
    g0, g1 = _fields(before.graph), _fields(after.graph)
    for name in set(g0) | set(g1):
        if name in ("initializer", "value_info"):
            continue
        assert g0.get(name) == g1.get(name), f"graph.{name}"
    kept_before = [t for t in before.graph.initializer]
    assert [t.name for t in after.graph.initializer] == [t.name for t in kept_before]
    for old, new in zip(kept_before, after.graph.initializer, strict=True):
        if old.name in rewritten:
            assert (new.doc_string, list(new.metadata_props)) == (
                old.doc_string,
                list(old.metadata_props),
            )
            assert new.data_type == old.data_type
        else:
            assert new == old, old.name
    infos_after = {v.name: v for v in after.graph.value_info}
    for info in before.graph.value_info:
        if info.name in infos_after:
            assert infos_after[info.name] == info


def test_every_field_outside_the_rewritten_tensors_is_kept():
    model = documented_model()
    reduced, report = lump(model, 0.0, verify=False)
    assert report.layers[0].width_after == 8  # the planted duplicates merged
    assert_preserved(model, reduced, rewritten={"W0", "b0", "W1"})
    assert [v.name for v in reduced.graph.value_info] == ["h2"]  # h0 narrowed: dropped
    onnx.checker.check_model(reduced, full_check=True)
    feeds = {"x": np.random.default_rng(0).standard_normal((7, 6)).astype(np.float32)}
    np.testing.assert_allclose(_run(reduced, feeds)[0], _run(model, feeds)[0], atol=1e-5)


def test_an_unchanged_model_is_kept_whole():
    model = documented_model()
    reduced, _ = lump(model, 0.0, symmetries=False, verify=False)
    assert_preserved(model, reduced, rewritten={"W0", "b0", "W1"})


def test_graphs_not_tagged_by_import_graph_are_matched_by_name():
    """export_model works on a plain gs.import_onnx graph too (nodes matched by name)."""
    from onnx_lump.graph.read.chains import scan_graph
    from onnx_lump.ode.encoding import encode_chain

    model = documented_model()
    graph = gs.import_onnx(model)
    chain = scan_graph(graph).chains[0]
    result = Exact().compress(_problem(encode_chain(chain)))
    assert rewrite_chain(graph, chain, result.layers, result.shortcuts)
    reduced = export_model(graph, model, {})
    assert_preserved(model, reduced, rewritten={"W0", "b0", "W1"})


def _problem(system):
    from onnx_lump.methods import ChainProblem

    return ChainProblem(system, None)


def test_shared_initializer_gets_a_copy_and_the_original_stays():
    model = onnx.load(FIXTURES / "shared_initializer.onnx")
    model.graph.node[0].doc_string = "first reader"
    reduced, _ = lump(model, 0.0, verify=False)
    read = {name for node in reduced.graph.node for name in node.input}
    names = [t.name for t in reduced.graph.initializer]
    assert any(name.startswith("W0_lumped") for name in names)
    assert set(names) <= read  # W0 goes only once no reader is left
    assert reduced.graph.node[0].doc_string == "first reader"
    x = {"x": np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)}
    for a, b in zip(_run(model, x), _run(reduced, x), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_constant_nodes_keep_their_doc_strings():
    model = onnx.load(FIXTURES / "constant_nodes.onnx")
    for index, node in enumerate(model.graph.node):
        node.doc_string = f"node {index}"
        _meta(node, where=str(index))
    reduced, _ = lump(model, 0.0, verify=False)
    docs = {n.output[0]: (n.doc_string, list(n.metadata_props)) for n in model.graph.node}
    for node in reduced.graph.node:
        if node.output[0] in docs:
            assert (node.doc_string, list(node.metadata_props)) == docs[node.output[0]]


def ir3_model() -> onnx.ModelProto:
    """IR 3: every initializer is also listed as a graph input."""
    layers = random_layers([4, 6, 3], seed=5)
    layers[0][0][5], layers[0][1][5] = layers[0][0][0], layers[0][1][0]
    inits, inputs = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])]
    for index, (weight, bias) in enumerate(layers):
        for name, value in ((f"W{index}", weight), (f"b{index}", bias)):
            inits.append(numpy_helper.from_array(value.astype(np.float32), name))
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, value.shape))
    nodes = [
        helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "W1", "b1"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "ir3",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)


def test_ir3_initializers_listed_as_inputs_are_kept_and_resized():
    model = ir3_model()
    reduced, report = lump(model, 0.0, verify=False)
    assert report.layers[0].width_after == 5
    assert [v.name for v in reduced.graph.input] == [v.name for v in model.graph.input]
    inits = {t.name: list(t.dims) for t in reduced.graph.initializer}
    assert set(inits) == {"W0", "b0", "W1", "b1"}
    for info in reduced.graph.input[1:]:
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
        assert dims == inits[info.name]
    x = {"x": np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)}
    np.testing.assert_allclose(_run(reduced, x)[0], _run(model, x)[0], atol=1e-5)


@pytest.mark.parametrize("name", ["skl_relu.onnx", "skl_tanh.onnx", "skl_logistic.onnx"])
def test_skl2onnx_fixtures_are_preserved(name):
    model = onnx.load(FIXTURES / name)
    reduced, report = lump(model, 0.0, verify=False)
    assert report.params_after < report.params_before
    assert_preserved_nodes(model, reduced)
    for field in ("input", "output", "value_info", "doc_string", "name"):
        assert getattr(reduced.graph, field) == getattr(model.graph, field), field
    changed = {t.name for t in reduced.graph.initializer} ^ {
        t.name for t in model.graph.initializer
    }
    assert not changed  # every weight rewritten in place, under its own name
    feeds = {"X": np.random.default_rng(3).standard_normal((9, 4)).astype(np.float32)}
    np.testing.assert_allclose(_run(reduced, feeds)[0], _run(model, feeds)[0], atol=1e-4)


def assert_preserved_nodes(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    assert [n.name for n in after.graph.node] == [n.name for n in before.graph.node]
    for old, new in zip(before.graph.node, after.graph.node, strict=True):
        assert new == old, old.name  # in-place rewrites keep every node proto


def test_zipmap_output_type_is_kept_and_loads():
    """skl2onnx's classifier ends in ZipMap: a seq(map(int64, float)) output."""
    skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx builds the ZipMap model")
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    labels = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    clf = MLPClassifier(hidden_layer_sizes=(8, 6), max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged in 30 steps: fine for this test
        clf.fit(x, labels)
    # plant a duplicate hidden neuron so the rewrite has work to do
    clf.coefs_[0][:, 7] = clf.coefs_[0][:, 2]
    clf.intercepts_[0][7] = clf.intercepts_[0][2]
    model = skl2onnx.to_onnx(clf, x[:1], target_opset=17)
    outputs = {o.name: o for o in model.graph.output}
    assert any(o.type.HasField("sequence_type") for o in outputs.values())
    reduced, report = lump(model, 0.0, verify=False)
    assert report.params_after < report.params_before
    assert list(reduced.graph.output) == list(model.graph.output)
    before, after = _run(model, {"X": x}), _run(reduced, {"X": x})
    np.testing.assert_array_equal(before[0], after[0])
    for a, b in zip(before[1], after[1], strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(list(a.values()), list(b.values()), atol=1e-5)


def test_import_graph_tags_nodes_in_order():
    model = documented_model()
    graph = import_graph(model)
    assert [n._onnx_lump_index for n in graph.nodes] == list(range(len(model.graph.node)))
