"""Shared helpers: fixture models, onnxruntime runs, and widths read off the graph."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, settings

# Property tests (tests/e2e/test_properties.py): "ci", the default, is derandomised so every run
# draws the same examples; HYPOTHESIS_PROFILE=thorough draws 2000, at random.
_HYPOTHESIS = dict(deadline=None, database=None, print_blob=True)
_HYPOTHESIS["suppress_health_check"] = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", derandomize=True, max_examples=150, **_HYPOTHESIS)
settings.register_profile("thorough", max_examples=2000, **_HYPOTHESIS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = Path(__file__).resolve().parent.parent / "models"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
ACTIVATION_OPS = {"Relu", "LeakyRelu", "Tanh", "Sigmoid", "Softplus", "Sin"}


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def central_differences(network, theta: np.ndarray, data, step: float = 1e-6) -> np.ndarray:
    """The gradient of ``network.loss_and_gradient`` at ``theta`` by central differences
    (tiny networks: a loop over a few dozen parameters)."""
    grad = np.zeros_like(theta)
    for index in range(theta.size):
        delta = np.zeros_like(theta)
        delta[index] = step
        plus = network.loss_and_gradient(theta + delta, data, 1.0)[0]
        minus = network.loss_and_gradient(theta - delta, data, 1.0)[0]
        grad[index] = (plus - minus) / (2 * step)
    return grad


def activation_widths(model: onnx.ModelProto) -> list[int]:
    """Hidden widths in graph order, read from shape inference on the activations' outputs,
    independently of the pass's own graph reader."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    widths = []
    for node in inferred.graph.node:
        if node.op_type in ACTIVATION_OPS:
            dims = shapes[node.output[0]].type.tensor_type.shape.dim
            widths.append(dims[-1].dim_value)
    return widths


def feeds_for(entry: dict, batch: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(entry["dtype"])
    return {
        name: rng.standard_normal([batch if d is None else d for d in dims]).astype(dtype)
        for name, dims in entry["inputs"].items()
    }


def relative_error(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    worst = 0.0
    for e, a in zip(expected, actual, strict=True):
        e64, a64 = e.astype(np.float64), a.astype(np.float64)
        worst = max(worst, float(np.abs(e64 - a64).max() / np.abs(e64).max()))
    return worst


@pytest.fixture(params=MANIFEST, ids=[entry["file"] for entry in MANIFEST])
def fixture_entry(request) -> dict:
    return request.param
