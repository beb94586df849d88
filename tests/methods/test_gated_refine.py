"""Refinement of gated FFNs: the gate, up and down weights move together onto the
original FFN's output (gradients, the held-out rule, and the CLI on the LLaMA fixture)."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, central_differences, run_ort
from test_gated import gated_model, planted_ffn

from onnx_lump import lump
from onnx_lump.activations import IDENTITY, Activation, ActivationKind
from onnx_lump.cli import main
from onnx_lump.data.refine import ChainData, ChainNetwork, RefineOptions, chain_loss, refine_chain
from onnx_lump.methods.gated import GatedFFN
from onnx_lump.types import ChainResult, ReducedLayer

MANIFEST = json.loads((FIXTURES / "gated_manifest.json").read_text())[0]
MODEL = FIXTURES / MANIFEST["file"]
CALIB = np.load(FIXTURES / MANIFEST["calibration"])["input_ids"]

SILU = Activation(ActivationKind.SWISH)
GELU = Activation(ActivationKind.GELU)


def random_ffn(rng: np.random.Generator, n_in: int, width: int, n_out: int, activation):
    def layer(out: int, inp: int) -> ReducedLayer:
        return ReducedLayer(rng.normal(size=(out, inp)), rng.normal(size=out))

    return GatedFFN(layer(width, n_in), layer(width, n_in), layer(n_out, width), activation)


def as_result(ffn: GatedFFN) -> tuple[ChainResult, list[Activation]]:
    return ChainResult([ffn.up, ffn.down], gate=ffn.gate), [ffn.activation, IDENTITY]


@pytest.mark.parametrize("activation", [SILU, GELU], ids=["silu", "gelu"])
def test_gated_gradients_match_finite_differences(activation):
    rng = np.random.default_rng(1)
    ffn = random_ffn(rng, 3, 4, 2, activation)
    network = ChainNetwork(*as_result(ffn), None)
    data = ChainData(rng.normal(size=(30, 3)), rng.normal(size=(30, 2)))

    _, analytic = network.loss_and_gradient(network.theta0, data, 1.0)
    numeric = central_differences(network, network.theta0, data)

    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)
    gate = network.unpack(analytic)[-2:]  # the gate's weight and bias come last
    assert gate[0].shape == (4, 3) and gate[1].shape == (4,) and np.all(gate[0] != 0)


def test_the_network_computes_the_gated_ffn_and_gives_its_gate_back():
    rng = np.random.default_rng(2)
    ffn = random_ffn(rng, 5, 7, 3, SILU)
    rows = rng.normal(size=(40, 5))

    exact = ChainNetwork(*as_result(ffn), None)
    single = ChainNetwork(*as_result(ffn), None, np.float32)
    back = exact.result(exact.theta0)

    np.testing.assert_allclose(exact.output(exact.theta0, rows), ffn.output(rows), rtol=1e-12)
    out32 = single.output(single.theta0, rows.astype(np.float32))
    np.testing.assert_allclose(out32, ffn.output(rows), rtol=1e-4, atol=1e-4)
    assert back.gate is not None
    np.testing.assert_array_equal(back.gate.weight, ffn.gate.weight)
    np.testing.assert_array_equal(back.gate.bias, ffn.gate.bias)


def test_the_float32_gradient_follows_the_float64_one():
    """The float32 path (Adam on a wide FFN's token rows) opens the gate in float32."""
    rng = np.random.default_rng(6)
    ffn = random_ffn(rng, 5, 8, 3, SILU)
    data = ChainData(rng.normal(size=(50, 5)), rng.normal(size=(50, 3)))
    exact = ChainNetwork(*as_result(ffn), None)
    single = ChainNetwork(*as_result(ffn), None, np.float32)
    data32 = ChainData(data.inputs.astype(np.float32), data.targets.astype(np.float32))

    loss, gradient = exact.loss_and_gradient(exact.theta0, data, 1.0)
    loss32, gradient32 = single.loss_and_gradient(single.theta0.astype(np.float32), data32, 1.0)

    assert loss32 == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(gradient32, gradient, rtol=1e-3, atol=1e-5 * np.abs(gradient).max())


def test_masks_keep_the_gates_zeros():
    rng = np.random.default_rng(3)
    ffn = random_ffn(rng, 4, 6, 2, SILU)
    gate = ReducedLayer(
        np.where(np.abs(ffn.gate.weight) > 0.5, ffn.gate.weight, 0.0), ffn.gate.bias
    )
    result = ChainResult([ffn.up, ffn.down], gate=gate)
    masks = [layer.weight != 0 for layer in result.layers]

    network = ChainNetwork(result, [SILU, IDENTITY], masks)
    data = ChainData(rng.normal(size=(20, 4)), rng.normal(size=(20, 2)))
    _, gradient = network.loss_and_gradient(network.theta0, data, 1.0)

    zeros = gate.weight == 0
    assert zeros.any() and np.all(network.unpack(gradient)[-2][zeros] == 0.0)


def test_fixed_biases_do_not_move():
    """A bias-free gate and up (a LLaMA MLP) stay bias-free: no gradient reaches them."""
    rng = np.random.default_rng(7)
    ffn = random_ffn(rng, 4, 5, 2, SILU)
    network = ChainNetwork(*as_result(ffn), None, fixed_biases=(0, 2))  # up, gate
    data = ChainData(rng.normal(size=(20, 4)), rng.normal(size=(20, 2)))

    _, gradient = network.loss_and_gradient(network.theta0, data, 1.0)

    up_bias, down_bias, gate_bias = (network.unpack(gradient)[i] for i in (1, 3, 5))
    assert np.all(up_bias == 0) and np.all(gate_bias == 0) and np.all(down_bias != 0)


@pytest.mark.parametrize("seed", range(4))
def test_refining_a_gated_ffn_never_worsens_the_held_out_error(seed):
    """A random FFN cut to half its pairs (the down columns of the rest dropped) refined
    onto the whole one: the held-out error goes down, or the start comes back."""
    rng = np.random.default_rng(seed)
    teacher = random_ffn(rng, 6, 12, 3, SILU if seed % 2 else GELU)
    kept = np.sort(rng.choice(12, 6, replace=False))
    start = teacher.keep(kept, ReducedLayer(teacher.down.weight[:, kept], teacher.down.bias))
    result, activations = as_result(start)
    inputs = rng.normal(size=(160, 6))
    fit = ChainData(inputs[:120], teacher.output(inputs[:120]))
    held = ChainData(inputs[120:], teacher.output(inputs[120:]))
    options = RefineOptions(max_iters=150, jitter=(0.0, 0.1))

    refined, stats = refine_chain(result, activations, fit, held, options, teacher=teacher.output)

    before, after = chain_loss(result, activations, held), chain_loss(refined, activations, held)
    assert stats.holdout_before == pytest.approx(before)
    assert stats.holdout_after == pytest.approx(after)
    assert after <= before
    if stats.improved:
        assert refined.gate is not None and refined.gate.weight.shape == (6, 6)
        assert not np.array_equal(refined.gate.weight, start.gate.weight)  # the gate moved
    else:
        assert refined is result


def test_refining_the_original_gated_ffn_keeps_it():
    rng = np.random.default_rng(5)
    ffn = random_ffn(rng, 4, 6, 2, GELU)
    result, activations = as_result(ffn)
    inputs = rng.normal(size=(80, 4))
    fit = ChainData(inputs[:60], ffn.output(inputs[:60]))
    held = ChainData(inputs[60:], ffn.output(inputs[60:]))

    refined, stats = refine_chain(result, activations, fit, held, RefineOptions(max_iters=50))

    assert refined is result and not stats.improved


def test_a_gated_ffn_with_nothing_to_merge_is_not_refined():
    rng = np.random.default_rng(4)
    model = gated_model(*planted_ffn(rng, 6, 8, 8, 3), "swiglu")
    calib = {"x": rng.standard_normal((300, 6)).astype(np.float32)}

    reduced, report = lump(model, 0.0, calibration=calib, verify=False)

    assert report.widths_after == [[8]] and report.refine == []
    before = {t.name: t.raw_data for t in model.graph.initializer}
    assert {t.name: t.raw_data for t in reduced.graph.initializer} == before


def _cli(tmp_path, name: str, *extra: str) -> tuple[dict, onnx.ModelProto]:
    out, report_path = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
    args = [str(MODEL), str(out), "--calib", str(tmp_path / "fit.npz")]
    args += ["--val", str(tmp_path / "val.npz"), "--report-json", str(report_path), "-q"]
    assert main([*args, "--target-params", "0.5", *extra]) == 0
    return json.loads(report_path.read_text()), onnx.load(out)


def test_refinement_lowers_the_fixtures_held_out_error_through_the_cli(tmp_path):
    split = 3 * CALIB.shape[0] // 4
    np.savez(tmp_path / "fit.npz", input_ids=CALIB[:split])
    np.savez(tmp_path / "val.npz", input_ids=CALIB[split:])
    feeds = {"input_ids": CALIB[split:]}
    (expected,) = run_ort(onnx.load(MODEL), feeds)
    expected = expected.astype(np.float64)

    def measured(model: onnx.ModelProto) -> float:
        """The written file's relative RMSE on the --val rows, through onnxruntime."""
        (actual,) = run_ort(model, feeds)
        return math.sqrt(float(np.mean((actual - expected) ** 2))) / float(expected.std())

    plain, plain_model = _cli(tmp_path, "plain", "--no-refine")
    refined, refined_model = _cli(tmp_path, "refined", "--refine-iters", "200")

    assert plain["refine"] == [] and len(refined["refine"]) == len(MANIFEST["ffn_widths"])
    assert all(r["holdout_after"] < r["holdout_before"] for r in refined["refine"])
    assert not any("not refined" in note for note in refined["notes"])
    # the same pairs, and no bias learnt where the bias-free MLP had none
    assert refined["widths_after"] == plain["widths_after"]
    assert refined["params_after"] == plain["params_after"] and refined["retained"] <= 0.5
    assert measured(refined_model) == pytest.approx(refined["holdout_error"], rel=1e-3, abs=1e-6)
    assert measured(plain_model) == pytest.approx(plain["holdout_error"], rel=1e-3, abs=1e-6)
    assert refined["holdout_error"] <= plain["holdout_error"]
