"""Refinement of reduced chains: gradients, guarantees, and the CLI around it."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import mlp, random_layers
from conftest import MODELS, central_differences, run_ort

from onnx_lump import compress, lump
from onnx_lump.activations import IDENTITY, REGISTRY, Activation, ActivationKind
from onnx_lump.cli import main
from onnx_lump.data.holdout import error_rows, output_error, split_calibration
from onnx_lump.data.refine import ChainData, ChainNetwork, RefineOptions, chain_loss, refine_chain
from onnx_lump.errors import LumpError
from onnx_lump.methods import Magnitude, RandomInit
from onnx_lump.types import ChainResult, ReducedLayer, Shortcut

DEMO = MODELS / "rn_tanh_2x64.onnx"
CALIB_PATH = MODELS / "rn_calib.npz"
CALIB = dict(np.load(CALIB_PATH))


def small_chain(activation: Activation, seed: int = 0, shortcut: bool = True):
    rng = np.random.default_rng(seed)
    sizes = [3, 5, 4, 2]
    layers = [
        ReducedLayer(rng.normal(size=(o, i)), rng.normal(size=o))
        for i, o in itertools.pairwise(sizes)
    ]
    shortcuts = [Shortcut(0, 1, rng.normal(size=(4, 3)))] if shortcut else []
    return ChainResult(layers, shortcuts), [activation, activation, IDENTITY]


@pytest.mark.parametrize("kind", sorted(REGISTRY, key=lambda k: k.value), ids=lambda k: k.value)
def test_gradients_match_finite_differences_for_every_activation(kind):
    activation = Activation(kind)
    result, activations = small_chain(activation, seed=1)
    network = ChainNetwork(result, activations, None)
    rng = np.random.default_rng(2)
    data = ChainData(rng.normal(size=(30, 3)), rng.normal(size=(30, 2)))
    _, analytic = network.loss_and_gradient(network.theta0, data, 1.0)
    numeric = central_differences(network, network.theta0, data)
    # kinks (Relu at 0, Clip bounds) are met with probability 0 by random inputs
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6)


def test_masked_weights_have_zero_gradient():
    result, activations = small_chain(Activation(ActivationKind.TANH), shortcut=False)
    masks = [np.abs(layer.weight) > 0.5 for layer in result.layers]
    network = ChainNetwork(result, activations, masks)
    rng = np.random.default_rng(3)
    data = ChainData(rng.normal(size=(20, 3)), rng.normal(size=(20, 2)))
    _, gradient = network.loss_and_gradient(network.theta0, data, 1.0)
    arrays = network.unpack(gradient)
    for index, mask in enumerate(masks):
        assert np.all(arrays[2 * index][~mask] == 0.0)
        assert np.any(arrays[2 * index][mask] != 0.0)


@pytest.mark.parametrize("seed", range(4))
def test_refinement_lowers_the_held_out_error_or_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    teacher, activations = small_chain(Activation(ActivationKind.TANH), seed=10 + seed)
    inputs = rng.normal(size=(120, 3))
    outputs = ChainNetwork(teacher, activations, None).output
    theta = ChainNetwork(teacher, activations, None).theta0
    fit = ChainData(inputs[:90], outputs(theta, inputs[:90]))
    held = ChainData(inputs[90:], outputs(theta, inputs[90:]))
    start, _ = small_chain(Activation(ActivationKind.TANH), seed=20 + seed)
    refined, stats = refine_chain(start, activations, fit, held, RefineOptions(max_iters=200))
    before = chain_loss(start, activations, held)
    after = chain_loss(refined, activations, held)
    assert stats.holdout_before == pytest.approx(before)
    assert stats.holdout_after == pytest.approx(after)
    if stats.improved:
        assert after < before
    else:
        assert refined is start


def test_refinement_of_the_original_network_keeps_it():
    """Nothing to gain: the unrefined weights come back, the very same arrays."""
    teacher, activations = small_chain(Activation(ActivationKind.SIGMOID), seed=4)
    rng = np.random.default_rng(5)
    inputs = rng.normal(size=(60, 3))
    network = ChainNetwork(teacher, activations, None)
    targets = network.output(network.theta0, inputs)
    fit, held = ChainData(inputs[:40], targets[:40]), ChainData(inputs[40:], targets[40:])
    refined, stats = refine_chain(teacher, activations, fit, held, RefineOptions())
    assert refined is teacher and not stats.improved


def no_redundancy_model() -> onnx.ModelProto:
    model = mlp(random_layers([6, 9, 7, 6], seed=8), ["Tanh", "Relu"])
    model.graph.input[0].name = "input"
    model.graph.node[0].input[0] = "input"
    return model


def test_eps_zero_with_nothing_merged_stays_bit_identical():
    model = no_redundancy_model()
    reduced, report = lump(model, 0.0, calibration=CALIB, verify=False)
    assert report.refine == []  # nothing merged: nothing refined
    before = {t.name: t.raw_data or bytes(t.SerializeToString()) for t in model.graph.initializer}
    after = {t.name: t.raw_data or bytes(t.SerializeToString()) for t in reduced.graph.initializer}
    assert before == after


# (reduction, eps, refined / plain held-out error at most): partitions at eps 1.0 keep
# 29% at 90% error (refined 0.63x measured); span (the default with data) keeps 28% at
# 2.3% (refined 0.69x)
LOSSY = [("partition", 1.0, 0.7), ("span", 0.01, 0.8)]


@pytest.mark.parametrize(("reduction", "eps", "ratio"), LOSSY)
def test_refinement_improves_a_lossy_lumping_through_onnxruntime(reduction, eps, ratio):
    model = onnx.load(DEMO)
    options = {"calibration": CALIB, "reduction": reduction}
    plain, _ = lump(model, eps, refine=False, verify=False, **options)
    refined, report = lump(model, eps, refine=RefineOptions(max_iters=200), **options)
    (stats,) = report.refine
    feeds = split_calibration(CALIB).holdout
    (reference,) = run_ort(model, feeds)
    plain_error = output_error(reference, run_ort(plain, feeds)[0])
    refined_error = output_error(reference, run_ort(refined, feeds)[0])
    assert refined_error < ratio * plain_error
    assert stats.holdout_after == pytest.approx(refined_error, rel=1e-3)
    assert report.holdout_error == pytest.approx(refined_error, rel=1e-6)


def test_unstructured_methods_keep_their_zero_pattern():
    model = onnx.load(DEMO)
    pruned, _ = compress(model, Magnitude(0.6), verify=False)
    refined, report = compress(
        model, Magnitude(0.6), calibration=CALIB, refine=RefineOptions(max_iters=50)
    )
    assert report.refine and report.refine[0].improved

    def weights(m):
        return [onnx.numpy_helper.to_array(t) for t in m.graph.initializer if len(t.dims) == 2]

    for before, after in zip(weights(pruned), weights(refined), strict=True):
        np.testing.assert_array_equal(before == 0, after == 0)
    assert any(
        not np.array_equal(b, a) for b, a in zip(weights(pruned), weights(refined), strict=True)
    )


def test_random_init_refines_into_a_working_network():
    model = onnx.load(DEMO)
    _, report = compress(
        model, RandomInit([8, 8]), calibration=CALIB, refine=RefineOptions(max_iters=150)
    )
    assert report.widths_after == [[8, 8]]
    assert report.refine[0].improved
    assert report.holdout_error < report.refine[0].holdout_before


def cli(tmp_path, name, *extra):
    out = tmp_path / f"{name}.onnx"
    code = main([str(DEMO), str(out), "--calib", str(CALIB_PATH), "-q", *extra])
    assert code == 0
    return out


def test_refine_iters_zero_equals_no_refinement(tmp_path):
    none = cli(tmp_path, "none", "--eps", "1.0", "--no-refine")
    zero = cli(tmp_path, "zero", "--eps", "1.0", "--refine-iters", "0")
    strip = onnx.load(none), onnx.load(zero)
    for m in strip:  # provenance differs only in the refinement note
        del m.metadata_props[:]
    assert strip[0].SerializeToString() == strip[1].SerializeToString()


def test_searched_error_is_what_onnxruntime_measures_on_the_written_file(tmp_path):
    report_path = tmp_path / "report.json"
    out = cli(
        tmp_path,
        "searched",
        "--max-error",
        "0.05",
        "--refine-iters",
        "100",
        "--report-json",
        str(report_path),
    )
    report = json.loads(report_path.read_text())
    feeds = error_rows(CALIB)  # the audit rows: nothing fitted or chose on them
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (reference,) = run_ort(onnx.load(DEMO), feeds)
    measured = output_error(reference, session.run(None, feeds)[0])
    assert report["holdout_error"] == pytest.approx(measured, rel=1e-6, abs=1e-9)
    assert measured <= 0.05


@pytest.mark.parametrize("samples", [50, 400])  # fewer and more samples than neurons
def test_span_selection_keeps_a_basis_and_folds_the_rest_exactly(samples):
    from onnx_lump.ode.span import select_span

    rng = np.random.default_rng(6)
    basis = rng.normal(size=(samples, 12))
    mixing = rng.normal(size=(12, 30))
    activations = np.concatenate([basis, basis @ mixing + 0.5], axis=1)  # rank 12 + constant
    selection = select_span(activations, 1e-9)
    assert len(selection.kept) == 12 and len(selection.removed) == 30
    rebuilt = activations[:, selection.kept] @ selection.coefficients.T + selection.offset
    np.testing.assert_allclose(rebuilt, activations[:, selection.removed], atol=1e-8)
    weight, bias = rng.normal(size=(3, 42)), rng.normal(size=3)
    folded_w, folded_b = selection.fold(weight, bias)
    np.testing.assert_allclose(
        activations[:, selection.kept] @ folded_w.T + folded_b,
        activations @ weight.T + bias,
        atol=1e-7,
    )
    assert len(select_span(activations, 1.0).kept) == 1


def test_span_reduction_runs_through_onnxruntime():
    from onnx_lump.methods import Lump, Reduction
    from onnx_lump.ode.partition import PartitionOptions, Similarity

    model = onnx.load(DEMO)
    method = Lump(PartitionOptions(0.05, similarity=Similarity.DATA), reduction=Reduction.SPAN)
    reduced, report = compress(model, method, calibration=CALIB, refine=False)
    assert report.retained < 0.8
    feeds = split_calibration(CALIB).holdout
    (reference,) = run_ort(model, feeds)
    assert output_error(reference, run_ort(reduced, feeds)[0]) == pytest.approx(
        report.holdout_error
    )
    assert report.holdout_error < 0.2


def test_refinement_keeps_every_blas_thread_only_for_wide_networks():
    """One BLAS thread for small networks (threads cost L-BFGS more than they gain), all
    of them where the products dominate (a wide reduced network: 1.8x on two cores)."""
    from types import SimpleNamespace

    import threadpoolctl

    from onnx_lump.data import refine

    def blas_threads() -> list[int]:
        return [
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        ]

    before = blas_threads()
    small = SimpleNamespace(products_per_row=64 * 6 + 1 * 64)  # layers 6 -> 64 -> 1
    with refine.blas_threads(small, 256):
        assert set(blas_threads()) == {1}
    wide = SimpleNamespace(products_per_row=900 * 64 + 3 * 900 * 900)  # 64 -> 900 x 4
    with refine.blas_threads(wide, 1638):
        assert blas_threads() == before


def test_refinement_stops_once_its_held_out_error_stalls():
    """A refinement whose held-out error has not dropped by stall_gain for stall_share of
    its iteration budget stops (a wide network went on 44 s after its last 0.5% gain),
    and still returns the best weights it saw. Counted in iterations, not seconds."""
    rng = np.random.default_rng(3)
    teacher, activations = small_chain(Activation(ActivationKind.TANH), seed=13)
    inputs = rng.normal(size=(120, 3))
    network = ChainNetwork(teacher, activations, None)
    fit = ChainData(inputs[:90], network.output(network.theta0, inputs[:90]))
    held = ChainData(inputs[90:], network.output(network.theta0, inputs[90:]))
    start, _ = small_chain(Activation(ActivationKind.TANH), seed=23)

    def run(gain: float):
        options = RefineOptions(
            max_iters=5000, max_seconds=1e6, patience=10**9, stall_gain=gain, stall_share=0.02
        )
        return refine_chain(start, activations, fit, held, options)  # stall: 100 iterations

    refined, stalled = run(0.05)  # a 5% gain every 100 iterations, or stop
    _, patient = run(0.0)  # any gain resets the window
    assert stalled.iterations < patient.iterations <= 5000
    assert stalled.holdout_after <= stalled.holdout_before
    assert chain_loss(refined, activations, held) == pytest.approx(stalled.holdout_after)


@pytest.mark.parametrize("kind", [ActivationKind.GELU, ActivationKind.TANH, ActivationKind.RELU])
def test_float32_gradients_match_float64(kind):
    """The float32 path (large chains) computes the float64 path's loss and gradient to
    float32 precision."""
    result, activations = small_chain(Activation(kind), seed=5)
    rng = np.random.default_rng(6)
    data = ChainData(rng.normal(size=(40, 3)), rng.normal(size=(40, 2)))
    exact = ChainNetwork(result, activations, None)
    single = ChainNetwork(result, activations, None, np.float32)
    loss64, grad64 = exact.loss_and_gradient(exact.theta0, data, 1.0)
    loss32, grad32 = single.loss_and_gradient(
        single.theta0, ChainData(*(a.astype(np.float32) for a in (data.inputs, data.targets))), 1.0
    )
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    np.testing.assert_allclose(grad32, grad64, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_large_chains_refine_by_adam_and_never_worsen_the_held_out_error(seed, monkeypatch):
    """A chain past FLOAT32_PRODUCTS refines by Adam mini-batches: the held-out error it
    reports is the returned weights' own (float64), never above the start's."""
    import onnx_lump.data.refine as refine_module

    monkeypatch.setattr(refine_module, "FLOAT32_PRODUCTS", 1.0)
    rng = np.random.default_rng(seed)
    teacher = ChainResult(
        [ReducedLayer(w, b) for w, b in random_layers([6, 40, 3], seed=30 + seed)]
    )
    activations = [Activation(ActivationKind.GELU), IDENTITY]
    theta = ChainNetwork(teacher, activations, None).theta0
    inputs = rng.normal(size=(3000, 6))
    outputs = ChainNetwork(teacher, activations, None).output(theta, inputs)
    fit, held = ChainData(inputs[:2400], outputs[:2400]), ChainData(inputs[2400:], outputs[2400:])
    start = ChainResult([ReducedLayer(w, b) for w, b in random_layers([6, 12, 3], seed=seed)])
    refined, stats = refine_chain(
        start, activations, fit, held, RefineOptions(max_iters=40, max_seconds=30)
    )
    before, after = chain_loss(start, activations, held), chain_loss(refined, activations, held)
    assert stats.holdout_before == pytest.approx(before, rel=1e-5)
    assert stats.holdout_after == pytest.approx(after, rel=1e-4)
    assert stats.improved and after < 0.9 * before
    assert stats.iterations >= 1


def test_one_rule_decides_the_default_refinement():
    """default_refine is the rule the pipeline, the search's final step and the CLI's
    budget read: structured lossy methods with data get the budget given (or the
    default one), everything else none; asking explicitly goes through the same checks."""
    from onnx_lump.methods import Exact, Lump, Wanda
    from onnx_lump.pipeline.compress import default_refine, refine_options_for

    budget = RefineOptions(max_iters=7)
    assert default_refine(Lump(), True) == RefineOptions()
    assert default_refine(Lump(), True, budget) is budget
    assert default_refine(Lump(), False, budget) is None
    assert default_refine(Exact(), True, budget) is None  # lossless: nothing to refine
    assert default_refine(Wanda(0.5), True, budget) is None  # unstructured
    split = split_calibration(CALIB)
    assert refine_options_for(None, Lump(), split) == RefineOptions()
    assert refine_options_for(None, Exact(), split) is None
    assert refine_options_for(budget, Wanda(0.5), split) is budget
    with pytest.raises(LumpError, match="lossless"):
        refine_options_for(True, Exact(), split)
    with pytest.raises(LumpError, match="calibration"):
        refine_options_for(True, Lump(), None)
