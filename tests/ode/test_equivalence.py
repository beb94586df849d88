"""Exactness at eps = 0, symmetries, monotonicity in eps, and forward equivalence."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import mlp, random_layers
from conftest import MODELS, activation_widths, relative_error, run_ort

from onnx_lump import lump


def plant(layers, layer: int, neuron: int, of: int, factor: float):
    """Make neuron ``neuron`` of hidden layer ``layer`` a scaled copy of neuron ``of``."""
    weight, bias = layers[layer]
    weight[neuron], bias[neuron] = factor * weight[of], factor * bias[of]


def feeds(n_inputs: int, dtype=np.float32, batch: int = 32, seed: int = 1):
    return {"x": np.random.default_rng(seed).standard_normal((batch, n_inputs)).astype(dtype)}


@pytest.mark.parametrize(
    "activation,factor",
    [
        ("Relu", 2.5),
        ("Relu", 0.37),
        ("LeakyRelu", 3.1),
        ("Tanh", -1.0),
        ("Sigmoid", -1.0),
        ("Tanh", 1.0),
    ],
)
@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_symmetric_neurons_merge_exactly_with_any_scale(activation, factor, op):
    layers = random_layers([5, 9, 7, 2], seed=4)
    plant(layers, 0, 6, 1, factor)
    plant(layers, 0, 8, 3, factor)
    plant(layers, 1, 5, 0, factor)
    model = mlp(layers, [activation, activation], op=op)
    reduced, _ = lump(model, 0.0, verify=False)
    assert activation_widths(reduced) == [7, 6]
    x = feeds(5)
    assert relative_error(run_ort(model, x), run_ort(reduced, x)) < 1e-5


def test_sign_flip_on_bias_free_sigmoid_adds_the_folded_constant():
    layers = [(w, None) for w, _ in random_layers([4, 8, 3], seed=2)]
    layers[0][0][7] = -layers[0][0][2]
    model = mlp(layers, ["Sigmoid"], op="MatMul")
    reduced, _ = lump(model, 0.0, verify=False)
    assert activation_widths(reduced) == [7]
    assert [n.op_type for n in reduced.graph.node].count("Add") == 1  # 1 - sigma(z) needs a bias
    x = feeds(4)
    assert relative_error(run_ort(model, x), run_ort(reduced, x)) < 1e-5


def test_without_redundancy_eps_zero_changes_nothing():
    model = mlp(random_layers([6, 16, 16, 3], seed=9), ["Relu", "Tanh"])
    reduced, report = lump(model, 0.0, verify=False)
    assert report.params_after == report.params_before
    assert list(reduced.graph.initializer) == list(model.graph.initializer)


def test_symmetries_off_merges_only_identical_rows():
    layers = random_layers([5, 9, 2], seed=4)
    plant(layers, 0, 7, 1, 1.0)
    plant(layers, 0, 8, 3, 2.5)
    model = mlp(layers, ["Relu"])
    _, with_symmetries = lump(model, 0.0, verify=False)
    _, without = lump(model, 0.0, symmetries=False, verify=False)
    assert with_symmetries.layers[0].width_after == 7
    assert without.layers[0].width_after == 8


@pytest.mark.parametrize("name", ["rn_tanh_2x64.onnx", "rn_relu_2x64.onnx"])
def test_single_linkage_width_never_grows_with_eps(name):
    model = onnx.load(MODELS / name)
    previous = None
    for eps in np.linspace(0.0, 3.0, 25):
        _, report = lump(model, float(eps), verify=False)
        widths = [s.width_after for s in report.layers[:-1]]
        if previous is not None:
            assert all(w <= p for w, p in zip(widths, previous, strict=True)), (
                eps,
                previous,
                widths,
            )
        previous = widths
    assert sum(previous) < 128  # the sweep reaches real merges


def test_error_grows_smoothly_and_is_reported():
    model = onnx.load(MODELS / "rn_tanh_2x64.onnx")
    calib = dict(np.load(MODELS / "rn_calib.npz"))
    _, small = lump(model, 0.5, inputs=calib)
    _, large = lump(model, 1.5, inputs=calib)
    assert small.params_after > large.params_after
    assert small.verification.outputs[0].rmse < large.verification.outputs[0].rmse


def test_forward_equivalence_is_exact_on_linear_layers():
    layers = random_layers([4, 10, 3], seed=6)
    outgoing = layers[1][0]
    outgoing[:, 7] = outgoing[:, 2]  # equal outgoing columns: the block sum is closed
    outgoing[:, 9] = outgoing[:, 4]
    model = mlp(layers, [None], op="MatMul")
    reduced, report = lump(model, 0.0, equivalence="forward", verify=False)
    assert report.layers[0].width_after == 8
    x = feeds(4)
    assert relative_error(run_ort(model, x), run_ort(reduced, x)) < 1e-5


def test_forward_equivalence_merges_neurons_with_matching_outgoing_weights():
    model = onnx.load(MODELS / "rn_relu_2x64.onnx")
    _, report = lump(model, 0.5, equivalence="forward", verify=False)
    assert report.layers[1].width_after < 64


def test_backward_identity_layer_merges_proportional_rows_with_any_bias():
    layers = random_layers([4, 10, 3], seed=7)
    weight, bias = layers[0]
    weight[8], bias[8] = -1.7 * weight[1], 0.9
    model = mlp(layers, [None])
    reduced, report = lump(model, 0.0, verify=False)
    assert report.layers[0].width_after == 9
    x = feeds(4)
    assert relative_error(run_ort(model, x), run_ort(reduced, x)) < 1e-5


def test_complete_linkage_never_merges_more_than_single():
    model = onnx.load(MODELS / "rn_tanh_2x64.onnx")
    for eps in (1.0, 1.5, 2.0):
        _, single = lump(model, eps, linkage="single", verify=False)
        _, complete = lump(model, eps, linkage="complete", verify=False)
        assert complete.params_after >= single.params_after


def test_input_model_is_not_modified():
    model = onnx.load(MODELS / "rn_relu_2x64.onnx")
    before = model.SerializeToString()
    lump(model, 1.0, verify=False)
    assert model.SerializeToString() == before
