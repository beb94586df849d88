"""The data-aware pass and the literature's methods, each through onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import mlp, random_layers
from conftest import FIXTURES, MANIFEST, MODELS, feeds_for, relative_error, run_ort

from onnx_lump import compress, lump, scan_graph
from onnx_lump.data.calibration import chain_inputs, forward_chain
from onnx_lump.data.holdout import split_calibration
from onnx_lump.methods import (
    ChainProblem,
    EliminationCompensation,
    Exact,
    LinearFolding,
    Lump,
    Magnitude,
    Scope,
    Sequence,
    Wanda,
)
from onnx_lump.ode.encoding import encode_chain
from onnx_lump.runtime import resolve_providers

CALIB = dict(np.load(MODELS / "rn_calib.npz"))
# what the methods fit on, and the rows they are judged by (compress's default split)
FIT_ROWS = split_calibration(CALIB).fit
HELD_ROWS = split_calibration(CALIB).holdout


def demo(name: str = "rn_relu_2x64.onnx") -> onnx.ModelProto:
    return onnx.load(MODELS / name)


def held_out(batch: int = 200, seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((batch, 6)).astype(np.float32)}


def calibration_error(model, reduced, feeds) -> float:
    (expected,), (actual,) = run_ort(model, feeds), run_ort(reduced, feeds)
    return float(np.mean((expected.astype(np.float64) - actual) ** 2))


def test_numpy_forward_matches_onnxruntime_hidden_tensors():
    import onnx_graphsurgeon as gs

    model = demo("rn_tanh_2x64.onnx")
    (chain,) = scan_graph(gs.import_onnx(model)).chains
    (inputs,) = chain_inputs(model, [chain], CALIB, resolve_providers(["cpu"]))
    system = encode_chain(chain)
    values = forward_chain([(x.coefficients, x.bias) for x in system.layers], system, inputs)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    hidden = [n.output[0] for n in probe.graph.node if n.op_type == "Tanh"]
    for name in hidden:
        probe.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    outputs = run_ort(probe, CALIB)
    for ort_value, numpy_value in zip(outputs[1:], values[1:-1], strict=True):
        np.testing.assert_allclose(numpy_value, ort_value, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values[-1], outputs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_exact_method_is_lossless(entry):
    model = onnx.load(FIXTURES / entry["file"])
    reduced, report = compress(model, Exact(), verify=False)
    feeds = feeds_for(entry, seed=3)
    tolerance = 4e-3 if entry["dtype"] == "float16" else 1e-5
    assert relative_error(run_ort(model, feeds), run_ort(reduced, feeds)) < tolerance
    assert report.params_after < report.params_before


def planted_relu_model() -> onnx.ModelProto:
    layers = random_layers([6, 12, 10, 6], seed=21)
    layers[0][0][10], layers[0][1][10] = 2.5 * layers[0][0][3], 2.5 * layers[0][1][3]
    layers[0][0][11], layers[0][1][11] = layers[0][0][4], layers[0][1][4]
    layers[1][0][9], layers[1][1][9] = 0.5 * layers[1][0][1], 0.5 * layers[1][1][1]
    model = mlp(layers, ["Relu", "Relu"])
    model.graph.input[0].name = "input"
    model.graph.node[0].input[0] = "input"
    return model


@pytest.mark.parametrize("similarity", ["weights", "data"])
def test_lump_with_refit_is_exact_at_eps_zero(similarity):
    model = planted_relu_model()
    reduced, report = lump(model, 0.0, calibration=CALIB, similarity=similarity, verify=False)
    assert [s.width_after for s in report.layers] == [10, 9, 6]
    feeds = held_out()
    assert relative_error(run_ort(model, feeds), run_ort(reduced, feeds)) < 1e-5


@pytest.mark.parametrize("name", ["rn_tanh_2x64.onnx", "rn_relu_2x64.onnx"])
@pytest.mark.parametrize("eps", [0.5, 1.0, 1.25, 1.5, 2.0])
def test_refit_never_worsens_the_held_out_error(name, eps):
    model = demo(name)
    options = {"calibration": CALIB, "refine": False, "verify": False, "reduction": "partition"}
    refit, _ = lump(model, eps, **options)
    plain, _ = lump(model, eps, refit=False, **options)
    assert (
        calibration_error(model, refit, HELD_ROWS)
        <= calibration_error(model, plain, HELD_ROWS) * (1 + 1e-6) + 1e-12
    )


def test_refit_improves_a_lossy_merge():
    model = demo("rn_tanh_2x64.onnx")
    options = {"similarity": "weights", "refine": False, "verify": False}
    refit, r1 = lump(model, 1.5, calibration=CALIB, **options)
    plain, _ = lump(model, 1.5, calibration=CALIB, refit=False, **options)
    assert r1.params_after <= 0.6 * r1.params_before
    assert calibration_error(model, refit, HELD_ROWS) < 0.2 * calibration_error(
        model, plain, HELD_ROWS
    )


def test_dead_neurons_on_the_data_are_folded_only_when_eps_is_positive():
    layers = random_layers([6, 10, 6], seed=4)
    layers[0][0][7] = 0.01 * layers[0][0][7]
    layers[0][1][7] = -100.0  # never active on any reasonable input
    model = mlp(layers, ["Relu"])
    model.graph.input[0].name = "input"
    model.graph.node[0].input[0] = "input"
    _, exact = lump(model, 0.0, calibration=CALIB, verify=False)
    reduced, loose = lump(model, 1e-6, calibration=CALIB, verify=False)
    assert exact.layers[0].width_after == 10
    assert loose.layers[0].width_after == 9
    feeds = held_out()
    assert relative_error(run_ort(model, feeds), run_ort(reduced, feeds)) < 1e-5


def test_magnitude_zeroes_the_requested_share():
    model = demo()
    reduced, report = compress(model, Magnitude(0.5), verify=False)
    weights = [
        onnx.numpy_helper.to_array(t)
        for t in reduced.graph.initializer
        if t.dims and len(t.dims) == 2
    ]
    for weight in weights:
        assert abs(np.mean(weight == 0) - 0.5) < 0.02
    assert not report.structured
    assert report.params_after == sum(int(np.count_nonzero(w)) for w in weights) + 64 + 64 + 6
    _, global_report = compress(model, Magnitude(0.5, Scope.GLOBAL), verify=False)
    assert abs(global_report.params_after - report.params_after) <= 3


def test_wanda_prunes_each_row_evenly():
    model = demo()
    reduced, _ = compress(model, Wanda(0.5), calibration=CALIB, verify=False)
    first = next(
        onnx.numpy_helper.to_array(t) for t in reduced.graph.initializer if t.name == "0.weight"
    )
    assert np.all((first == 0).sum(axis=1) == 3)  # 6 inputs per row, half pruned


def test_ec_beats_magnitude_at_equal_sparsity_and_shifts_biases():
    model = demo("rn_tanh_2x64.onnx")  # no dead neurons: every pruned weight needs a shift
    ec, ec_report = compress(model, EliminationCompensation(0.3), calibration=CALIB, verify=False)
    mag, mag_report = compress(model, Magnitude(0.3, Scope.GLOBAL), calibration=CALIB, verify=False)
    assert abs(ec_report.params_after - mag_report.params_after) <= 3
    assert calibration_error(model, ec, CALIB) < calibration_error(model, mag, CALIB)
    before = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in ec.graph.initializer}
    shifted = [n for n in ("0.bias", "2.bias", "4.bias") if not np.array_equal(before[n], after[n])]
    assert shifted  # pruned weights were compensated through their neuron's bias


def test_linear_folding_folds_only_what_the_data_supports():
    """On the Relu demo the neurons silent on the calibration rows sit too close to their
    threshold to be called dead (six of them fire on 0.45% of other training rows), so
    tau = 1 folds nothing rather than claim a loss the data cannot back."""
    model = demo()
    reduced, report = compress(model, LinearFolding(1.0), calibration=CALIB, verify=False)
    assert report.params_after == report.params_before and report.refine == []
    feeds = held_out()
    assert relative_error(run_ort(model, feeds), run_ort(reduced, feeds)) < 1e-6


def test_linear_folding_adds_a_shortcut_when_neurons_are_always_active():
    layers = random_layers([6, 12, 6], seed=8)
    layers[0][1][:8] = 50.0  # 8 neurons always active: linear
    model = mlp(layers, ["Relu"])
    model.graph.input[0].name = "input"
    model.graph.node[0].input[0] = "input"
    reduced, report = compress(model, LinearFolding(1.0), calibration=CALIB, verify=False)
    ops = [n.op_type for n in reduced.graph.node]
    assert ops.count("MatMul") == 1 and ops.count("Add") == 1
    assert report.layers[0].width_after == 4 and report.shortcut_params == 36
    assert relative_error(run_ort(model, CALIB), run_ort(reduced, CALIB)) < 1e-5


def test_lump_plus_linear_combines_both():
    model = demo()
    method = Sequence(Lump(), LinearFolding(1.0))
    reduced, report = compress(model, method, calibration=CALIB, verify=False)
    assert report.method.startswith("lump (eps=0") and "linear" in report.method
    assert calibration_error(model, reduced, FIT_ROWS) < 1e-8


METHODS = {
    "lump": lambda: Lump(),
    "exact": Exact,
    "magnitude": lambda: Magnitude(0.3),
    "wanda": lambda: Wanda(0.3),
    "ec": lambda: EliminationCompensation(0.3),
    "linear": lambda: LinearFolding(0.9),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_every_method_on_every_variant_runs_in_onnxruntime(method, entry):
    model = onnx.load(FIXTURES / entry["file"])
    calibration = feeds_for(entry, batch=64, seed=7)
    reduced, report = compress(model, METHODS[method](), calibration=calibration, verify=False)
    onnx.checker.check_model(reduced, full_check=True)
    feeds = feeds_for(entry, batch=8, seed=9)
    expected, actual = run_ort(model, feeds), run_ort(reduced, feeds)
    for e, a in zip(expected, actual, strict=True):
        assert e.shape == a.shape and e.dtype == a.dtype and np.isfinite(a).all()
    assert report.params_after <= report.params_before


def test_problem_without_data_refuses_data_methods():
    from onnx_lump import LumpError

    with pytest.raises(LumpError, match="calibration"):
        compress(demo(), Wanda(0.5))
    system = encode_chain(scan_graph(__import__("onnx_graphsurgeon").import_onnx(demo())).chains[0])
    assert ChainProblem(system).calibration is None


def test_affine_similarity_merges_neurons_equal_up_to_an_affine_map():
    layers = random_layers([6, 9, 4], seed=12)
    layers[0][0][8], layers[0][1][8] = -2.0 * layers[0][0][2], 0.7  # a_8 = -2 a_2 + const
    model = mlp(layers, [None])
    model.graph.input[0].name = "input"
    model.graph.node[0].input[0] = "input"
    reduced, report = lump(model, 1e-6, calibration=CALIB, similarity="affine", verify=False)
    assert report.layers[0].width_after == 8
    feeds = held_out()
    assert relative_error(run_ort(model, feeds), run_ort(reduced, feeds)) < 1e-5
    _, exact = lump(model, 0.0, calibration=CALIB, similarity="affine", verify=False)
    assert exact.layers[0].width_after == 8  # eps 0 uses the exact weight symmetries


@pytest.mark.parametrize("name", ["rn_tanh_2x64.onnx", "rn_relu_2x64.onnx"])
def test_affine_similarity_compresses_trained_networks(name):
    model = demo(name)
    options = {"similarity": "affine", "refine": False, "verify": False}
    reduced, report = lump(model, 0.3, calibration=CALIB, **options)
    assert report.retained < 0.9
    plain, _ = lump(model, 0.3, calibration=CALIB, refit=False, **options)
    assert calibration_error(model, reduced, HELD_ROWS) <= (
        calibration_error(model, plain, HELD_ROWS) + 1e-12
    )


def test_forward_equivalence_with_calibration_refits_and_stays_runnable():
    model = demo("rn_tanh_2x64.onnx")
    options = {"equivalence": "forward", "refine": False, "verify": False}
    refit, report = lump(model, 0.5, calibration=CALIB, **options)
    plain, _ = lump(model, 0.5, calibration=CALIB, refit=False, **options)
    assert report.retained < 1.0
    assert calibration_error(model, refit, HELD_ROWS) <= (
        calibration_error(model, plain, HELD_ROWS) + 1e-12
    )
