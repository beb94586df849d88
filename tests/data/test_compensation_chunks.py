"""The refit's one-pass held-out scores and chunked moments agree with the direct sums."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_lump.data.compensation as compensation
from onnx_lump.data.compensation import (
    RIDGE_GRID,
    RIDGE_SLACK,
    centred_moments,
    refit_layer,
    residual,
)
from onnx_lump.types import ReducedLayer


def _problem(seed: int = 0, rows: int = 300, width: int = 12, outputs: int = 7):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, width)) + 3.0  # offset: the centring must not cancel
    truth = rng.standard_normal((outputs, width))
    t = np.tanh(x @ truth.T) + 0.05 * rng.standard_normal((rows, outputs))
    held = rng.standard_normal((rows // 3, width)) + 3.0
    return x, t, held, np.tanh(held @ truth.T)


def _direct_refit(x, t, strength):
    mean_x, mean_t = x.mean(axis=0), t.mean(axis=0)
    xc = x - mean_x
    gram = xc.T @ xc
    lam = strength * float(np.mean(np.diag(gram)))
    weight_t = np.linalg.solve(gram + lam * np.eye(len(gram)), xc.T @ (t - mean_t))
    return ReducedLayer(weight_t.T, mean_t - mean_x @ weight_t)


def test_one_pass_held_out_scores_equal_direct_residuals(monkeypatch):
    x, t, held, held_t = _problem()
    scores = {}
    original = compensation.held_out_residuals

    def spy(*args):
        scores["one pass"] = original(*args)
        return scores["one pass"]

    monkeypatch.setattr(compensation, "held_out_residuals", spy)
    layer, strength = refit_layer(x, t, None, held, held_t)
    direct = [residual(_direct_refit(x, t, s), held, held_t) for s in RIDGE_GRID]
    np.testing.assert_allclose(scores["one pass"], direct, rtol=1e-7)
    within = [i for i, e in enumerate(direct) if e <= RIDGE_SLACK * min(direct)]
    assert strength == RIDGE_GRID[max(within)]
    expected = _direct_refit(x, t, strength)
    np.testing.assert_allclose(layer.weight, expected.weight, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(layer.bias, expected.bias, rtol=1e-6, atol=1e-9)


def test_chunked_sums_match_one_chunk(monkeypatch):
    x, t, held, held_t = _problem(seed=3)
    whole = refit_layer(x, t, None, held, held_t)
    moments = centred_moments(x, t)
    monkeypatch.setattr(compensation, "ROW_CHUNK_ENTRIES", 40)  # two rows a chunk
    chunked = refit_layer(x, t, None, held, held_t)
    assert chunked[1] == whole[1]
    np.testing.assert_allclose(chunked[0].weight, whole[0].weight, rtol=1e-9, atol=1e-12)
    for a, b in zip(centred_moments(x, t), moments, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    assert residual(whole[0], held, held_t) == pytest.approx(
        float(np.mean((held @ whole[0].weight.T + whole[0].bias - held_t) ** 2)), rel=1e-10
    )
