"""The ODE encoding as an inspectable object: variables, rows, text and ERODE export."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from builders import mlp, random_layers
from conftest import MODELS

from onnx_lump import LumpError, encode_chain, scan_graph
from onnx_lump.activations import ActivationKind


def system_of(model: onnx.ModelProto):
    (chain,) = scan_graph(gs.import_onnx(model)).chains
    return chain, encode_chain(chain, "demo")


def test_one_variable_per_input_and_neuron():
    chain, system = system_of(onnx.load(MODELS / "rn_tanh_2x64.onnx"))
    assert system.inputs == tuple(f"x{j}" for j in range(6))
    assert [layer.size for layer in system.layers] == [64, 64, 6]
    assert system.n_variables == 6 + 64 + 64 + 6
    assert [layer.activation.kind for layer in system.layers] == [
        ActivationKind.TANH,
        ActivationKind.TANH,
        ActivationKind.IDENTITY,
    ]
    for layer, dense in zip(system.layers, chain.layers, strict=True):
        np.testing.assert_array_equal(layer.coefficients, dense.weight)
        np.testing.assert_array_equal(layer.bias, dense.bias)


def test_text_dump_lists_every_right_hand_side():
    _, system = system_of(onnx.load(MODELS / "rn_relu_2x64.onnx"))
    text = system.to_text()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(lines) == system.n_variables
    assert lines[0].startswith("x0' = 0")
    assert any(line.startswith("h1_0' = Relu(") and "*x5" in line for line in lines)
    assert any(line.startswith("y5' = ") and "*h2_63" in line for line in lines)


def test_erode_export_of_a_polynomial_chain():
    layers = random_layers([2, 3, 1], seed=0)
    layers[0][0][1, 0] = 0.0
    _, system = system_of(mlp(layers, [None]))
    text = system.to_erode()
    assert text.startswith("begin model demo")
    assert "d(x0) = 0" in text and "d(x1) = 0" in text
    assert text.count("d(h1_") == 3 and text.count("d(y0)") == 1
    h1_1 = next(line for line in text.splitlines() if "d(h1_1)" in line)
    assert "*x0" not in h1_1 and "*x1" in h1_1  # zero coefficients are omitted
    assert text.rstrip().endswith("end model")


def test_erode_export_refuses_non_polynomial_activations():
    _, system = system_of(onnx.load(MODELS / "rn_tanh_2x64.onnx"))
    with pytest.raises(LumpError, match="polynomial"):
        system.to_erode()
