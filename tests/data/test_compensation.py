"""The refit (eigenbasis, one pass for every strength, rows or cross moments projected)
equals a direct solve per ridge strength: the same chosen strength, the same weights."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_lump.data.compensation as compensation
from onnx_lump.data.compensation import FALLBACK_RIDGE, RIDGE_GRID, RIDGE_SLACK, refit_layer


def _clustered(rows, held, width, outputs, noise, seed, offset=2.0):
    """tanh of clustered projections (near-copies of columns: an ill-conditioned Gram
    matrix, as merged neurons give), offset so that the centring matters, float32."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((rows + held, max(3, width // 3)))
    centres = rng.standard_normal((max(2, width // 3), latent.shape[1]))
    mixing = centres[rng.integers(0, len(centres), width)]
    mixing += 0.02 * rng.standard_normal(mixing.shape)
    x = np.tanh(latent @ mixing.T / np.sqrt(latent.shape[1]) + 0.5) + offset
    truth = rng.standard_normal((width, outputs))
    t = x @ truth + 3.0 + noise * rng.standard_normal((rows + held, outputs))
    x, t = x.astype(np.float32), t.astype(np.float32)
    return x[:rows], t[:rows], x[rows:], t[rows:]


def _reference(x, t, held_x, held_t, strengths):
    """Direct ridge solve per strength on float64 centred copies; the strongest strength
    within RIDGE_SLACK of the lowest held-out mean squared error."""
    x, t = x.astype(np.float64), t.astype(np.float64)
    mean_x, mean_t = x.mean(axis=0), t.mean(axis=0)
    xc, tc = x - mean_x, t - mean_t
    gram = xc.T @ xc
    scale = float(np.mean(np.diag(gram)))
    fits, errors = [], []
    for strength in strengths:
        lam = max(strength, 1e-12) * scale
        weight_t = np.linalg.solve(gram + lam * np.eye(len(gram)), xc.T @ tc)
        bias = mean_t - mean_x @ weight_t
        fits.append((weight_t.T, bias))
        if held_x is not None:
            errors.append(float(np.mean((held_x @ weight_t + bias - held_t) ** 2)))
    if not errors:
        return fits[0], strengths[0], errors
    best = max(i for i, e in enumerate(errors) if e <= RIDGE_SLACK * min(errors))
    return fits[best], strengths[best], errors


def _assert_close(layer, weight, bias):
    """Within 1e-9 of the largest entry: rounding, amplified by the Gram matrix's
    condition (up to 1e7 here), stays far below."""
    np.testing.assert_allclose(layer.weight, weight, rtol=0, atol=1e-9 * np.abs(weight).max())
    np.testing.assert_allclose(layer.bias, bias, rtol=0, atol=1e-9 * np.abs(bias).max())


CASES = [
    # rows, held, width, outputs, noise, seed[, offset]: outputs > rows projects the rows,
    # outputs <= rows the cross moments
    pytest.param((120, 40, 18, 300, 0.05, 0), id="wide-targets"),
    pytest.param((120, 40, 18, 300, 2.0, 1), id="wide-targets-noisy"),
    pytest.param((200, 60, 24, 9, 0.05, 2), id="narrow-targets"),
    pytest.param((200, 60, 24, 9, 3.0, 3), id="narrow-targets-noisy"),
    # far from the origin: the rows must be centred before they are projected
    pytest.param((120, 40, 18, 300, 0.05, 0, 3e4), id="wide-targets-offset"),
    pytest.param((200, 60, 24, 9, 0.05, 2, 3e4), id="narrow-targets-offset"),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk_entries", [1 << 22, 600], ids=["one-chunk", "chunks"])
def test_refit_equals_direct_solve_per_strength(monkeypatch, case, chunk_entries):
    monkeypatch.setattr(compensation, "ROW_CHUNK_ENTRIES", chunk_entries)
    x, t, held_x, held_t = _clustered(*case)
    (weight, bias), strength, errors = _reference(x, t, held_x, held_t, RIDGE_GRID)
    bound = RIDGE_SLACK * min(errors)
    assert all(abs(e - bound) > 1e-6 * bound for e in errors)  # no rounding tie at the bound
    layer, chosen = refit_layer(x, t, None, held_x, held_t)
    assert chosen == strength
    assert layer.weight.shape == (t.shape[1], x.shape[1]) and layer.weight.flags.c_contiguous
    _assert_close(layer, weight, bias)


@pytest.mark.parametrize("case", CASES[::2])
@pytest.mark.parametrize("ridge", [None, 1e-2])
def test_given_or_fallback_strength_equals_direct_solve(case, ridge):
    x, t, _, _ = _clustered(*case)
    used = FALLBACK_RIDGE if ridge is None else ridge
    (weight, bias), _, _ = _reference(x, t, None, None, (used,))
    layer, chosen = refit_layer(x, t, ridge)
    assert chosen == used
    _assert_close(layer, weight, bias)


def test_rows_and_cross_projections_agree():
    """The same fit through both projections: wide targets (rows projected) against
    their column blocks fitted narrow (cross moments projected), at a given strength."""
    x, t, _, _ = _clustered(150, 0, 20, 400, 0.1, 4)
    whole, _ = refit_layer(x, t, 1e-4)
    for columns in (slice(0, 100), slice(100, 250), slice(250, 400)):
        part, _ = refit_layer(x, t[:, columns], 1e-4)
        np.testing.assert_allclose(part.weight, whole.weight[columns], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(part.bias, whole.bias[columns], rtol=1e-8, atol=1e-10)
