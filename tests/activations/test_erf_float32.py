"""The float32 erf behind GELU's float32 path: close to the float64 erf everywhere,
odd, bounded, and what onnxruntime's own float32 Gelu computes to float32 tolerance."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper
from scipy import special

from onnx_lump.activations import Activation, ActivationKind
from onnx_lump.activations.forms import erf

FLOAT32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.integers(1, 64), elements=FLOAT32))
def test_float32_erf_is_within_5e7_of_the_float64_one(values):
    approximate = erf(values)
    assert approximate.dtype == np.float32
    exact = special.erf(values.astype(np.float64))
    np.testing.assert_allclose(approximate, exact, rtol=0, atol=5e-7)
    np.testing.assert_array_equal(erf(-values), -approximate)  # odd, bit for bit
    assert np.all(np.abs(approximate) <= 1.0)


def test_float32_erf_on_a_dense_grid_and_at_the_ends():
    grid = np.linspace(-6, 6, 1_200_001, dtype=np.float32)
    error = np.abs(erf(grid) - special.erf(grid.astype(np.float64)))
    assert error.max() < 5e-7
    ends = np.array([-np.inf, np.inf, np.nan], np.float32)
    np.testing.assert_allclose(erf(ends)[:2], [-1.0, 1.0], atol=1e-7)
    assert np.isnan(erf(ends)[2])
    # float64 input keeps scipy's erf exactly
    wide = grid.astype(np.float64)
    np.testing.assert_array_equal(erf(wide), special.erf(wide))


def test_float32_gelu_matches_onnxruntime_gelu():
    """GELU's float32 path against onnxruntime's Gelu (opset 20) on the same float32
    values: both approximate erf in float32; they agree to a few float32 ulps."""
    node = helper.make_node("Gelu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = np.linspace(-10, 10, 200_001, dtype=np.float32)
    (runtime,) = session.run(None, {"x": values})
    ours = Activation(ActivationKind.GELU).float32(values)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, runtime, rtol=1e-6, atol=2e-6)
    onnx.checker.check_model(model)
