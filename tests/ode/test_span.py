"""The next-layer span order (``ode.span.readout_span_order``) and the SPAN_NEXT
reduction built on it: each pivot is the best next neuron for the next layer's
least-squares refit, ``left`` is what that refit leaves, SPAN_NEXT keeps as many neurons
as SPAN, and on a layer with loud neurons nobody reads it keeps the neurons that
matter."""

from __future__ import annotations

import numpy as np
import pytest
from builders import mlp
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_lump import compress
from onnx_lump.methods import Lump, Reduction
from onnx_lump.ode import span
from onnx_lump.ode.partition import PartitionOptions, Similarity
from onnx_lump.ode.span import next_layer_order, readout_span_order, span_order


def _residual_share(centred: np.ndarray, targets: np.ndarray, kept) -> float:
    """What the least-squares fit of ``targets`` from the ``kept`` columns leaves, as a
    share of the targets' norm (both centred: the constant is the mean)."""
    if len(kept) == 0:
        return 1.0
    columns = centred[:, list(kept)]
    solution = np.linalg.lstsq(columns, targets, rcond=None)[0]
    return float(np.linalg.norm(targets - columns @ solution) / np.linalg.norm(targets))


def _layer(seed: int, rows: int, width: int, outputs: int, rank: int):
    rng = np.random.default_rng(seed)
    activations = np.tanh(rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, width)))
    if rank < width:  # a duplicate column: the Gram matrix is singular
        activations[:, -1] = activations[:, 0]
    readout = rng.normal(size=(outputs, width))
    mean = activations.mean(axis=0)
    centred = activations - mean
    return mean, centred, readout


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    width=st.integers(2, 10),
    outputs=st.integers(1, 6),
    duplicate=st.booleans(),
)
def test_each_pivot_is_the_best_next_neuron_and_left_is_the_refits_residual(
    seed, width, outputs, duplicate
):
    mean, centred, readout = _layer(seed, 60, width, outputs, width - int(duplicate))
    targets = centred @ readout.T
    order = readout_span_order(mean, centred.T @ centred, readout)
    assert sorted(order.order) == list(range(width))
    gram = centred.T @ centred
    permuted = gram[np.ix_(order.order, order.order)]
    np.testing.assert_allclose(
        order.factor.T @ order.factor, permuted, atol=1e-8 * np.abs(gram).max()
    )
    for k in range(1, width + 1):
        share = _residual_share(centred, targets, order.order[:k])
        assert order.left[k - 1] == pytest.approx(share, abs=1e-6)
        # greedy: no other neuron added to the first k - 1 would have left less
        best = min(
            _residual_share(centred, targets, [*order.order[: k - 1], other])
            for other in order.order[k - 1 :]
        )
        assert share <= best + 1e-6
    assert order.left[-1] == 0.0


def test_a_loud_neuron_nobody_reads_comes_last():
    mean, centred, readout = _layer(3, 200, 8, 3, 8)
    centred[:, 2] *= 50.0  # by far the largest variance ...
    readout[:, 2] = 0.0  # ... and the next layer does not read it
    gram = centred.T @ centred
    assert span_order(mean, gram).order[0] == 2
    assert readout_span_order(mean, gram, readout).order[-1] == 2


def test_a_wide_next_layer_is_read_through_its_sketch(monkeypatch):
    monkeypatch.setattr(span, "READOUT_SKETCH", 4)
    mean, centred, readout = _layer(5, 120, 9, 30, 9)
    order = readout_span_order(mean, centred.T @ centred, readout)
    assert sorted(order.order) == list(range(9))
    assert np.all(np.diff(order.left) <= 1e-12) and order.left[-1] == 0.0
    assert 0.0 <= order.left[0] <= 1.0


def test_past_the_width_cap_the_activation_order_is_kept(monkeypatch):
    monkeypatch.setattr(span, "READOUT_MAX_WIDTH", 5)
    mean, centred, readout = _layer(7, 80, 8, 3, 8)
    gram = centred.T @ centred
    np.testing.assert_array_equal(
        readout_span_order(mean, gram, readout).order, span_order(mean, gram).order
    )


def test_next_layer_order_keeps_pivoted_qrs_widths_in_the_next_layers_order():
    mean, centred, readout = _layer(11, 150, 12, 4, 12)
    gram = centred.T @ centred
    mixed, widths = next_layer_order(mean, gram, readout), span_order(mean, gram)
    chosen = readout_span_order(mean, gram, readout)
    for eps in np.linspace(0.0, 1.0, 21):
        width = widths.width_for(eps)
        assert mixed.width_for(eps) == width
        assert set(mixed.select(eps).kept) == set(chosen.order[:width])


def _loud_unread_model(seed: int):
    """A 6 -> 16 tanh -> 16 tanh -> 2 network whose first hidden layer has four neurons
    with 8x the input weights (near +-1 most of the time: loud) that the next layer
    reads with weight 0, and its calibration rows."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(16, 6)) / np.sqrt(6)
    w1[:4] *= 8.0
    w2 = rng.normal(size=(16, 16)) / 4.0
    w2[:, :4] = 0.0
    w3 = rng.normal(size=(2, 16)) / 4.0
    layers = [(w1, np.zeros(16)), (w2, np.zeros(16)), (w3, np.zeros(2))]
    model = mlp(layers, ["Tanh", "Tanh"])
    return model, {"x": rng.normal(size=(1024, 6)).astype(np.float32)}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("eps", [0.2, 0.4])
def test_span_next_beats_span_at_the_same_widths_where_loud_neurons_go_unread(seed, eps):
    model, calibration = _loud_unread_model(seed)

    def run(reduction: Reduction):
        method = Lump(PartitionOptions(eps, similarity=Similarity.DATA), reduction=reduction)
        return compress(model, method, calibration=calibration, refine=False)[1]

    plain, chosen = run(Reduction.SPAN), run(Reduction.SPAN_NEXT)
    # the first layer's width is the same share of the same activations; the second
    # layer's activations follow from the first's choice, so its width may differ
    assert chosen.widths_after[0][0] == plain.widths_after[0][0]
    assert sum(chosen.widths_after[0]) <= sum(plain.widths_after[0])
    assert plain.widths_after[0][0] < 16  # something was left out
    assert chosen.holdout_error < 0.8 * plain.holdout_error


def test_span_next_at_eps_0_is_exact():
    model, calibration = _loud_unread_model(2)
    method = Lump(PartitionOptions(0.0, similarity=Similarity.DATA), reduction=Reduction.SPAN_NEXT)
    _, report = compress(model, method, calibration=calibration, refine=False)
    assert report.verification and report.verification.max_abs < 1e-5
