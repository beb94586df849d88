"""The search's caches (onnx_lump.data.cache) change its speed, never its result."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS, run_ort

from onnx_lump.api import compress
from onnx_lump.data.refine import RefineOptions
from onnx_lump.methods import Lump
from onnx_lump.methods.lumping import LumpOptions
from onnx_lump.ode.data_grouping import group_data_rows
from onnx_lump.ode.grouping import Linkage, group_rows
from onnx_lump.ode.partition import PartitionOptions, Similarity
from onnx_lump.search import Evaluator, bisect

DEMO = MODELS / "rn_tanh_2x64.onnx"
CALIB = dict(np.load(MODELS / "rn_calib.npz"))


def evaluator(caches: bool, similarity=Similarity.DATA, refine=False) -> Evaluator:
    return Evaluator(
        onnx.load(DEMO),
        lambda eps: Lump(PartitionOptions(eps, similarity=similarity)),
        CALIB,
        refine=refine,
        caches=caches,
    )


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def assert_same_model(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


@pytest.mark.parametrize("similarity", [Similarity.DATA, Similarity.WEIGHTS])
@pytest.mark.parametrize("target", [{"target_params": 0.3}, {"max_error": 0.02}])
def test_search_returns_the_same_result_with_and_without_the_caches(similarity, target):
    results = []
    for caches in (True, False):
        evaluate = evaluator(caches, similarity)
        knob, point, met = bisect(evaluate, None, **target)
        model, report = evaluate.finish(knob, verify=False)
        steps = sorted(evaluate._steps[False]) + sorted(evaluate._steps[True])
        results.append((knob, point, met, steps, model, report, evaluate))
    (k1, p1, m1, s1, model1, r1, cached), (k2, p2, m2, s2, model2, r2, _) = results
    assert (k1, m1, s1) == (k2, m2, s2)
    assert (p1.retained, p1.params_after) == (p2.retained, p2.params_after)
    np.testing.assert_equal(p1.error, p2.error)  # NaN on both for a size target
    assert r1.widths_after == r2.widths_after and r1.holdout_error == r2.holdout_error
    assert_same_model(model1, model2)
    assert cached.data_cache.chain(0).hits > 0  # the cache did serve something
    (expected,), (actual,) = (
        run_ort(model1, {"input": CALIB["input"][:32]}),
        run_ort(model2, {"input": CALIB["input"][:32]}),
    )
    np.testing.assert_array_equal(expected, actual)


def test_knobs_between_equal_lumpings_reuse_them_and_agree():
    """A knob between two that lumped a layer alike is served from the cache; every
    knob's result equals the one computed from scratch."""
    knobs = [0.02, 0.03, 0.025, 0.0275, 0.2, 0.1, 0.15, 0.0]
    cached = evaluator(True)
    for knob in knobs:
        _, report, point = cached(knob)
        _, fresh_report, fresh = evaluator(False)(knob)
        assert report.widths_after == fresh_report.widths_after, knob
        assert (point.error, point.params_after) == (fresh.error, fresh.params_after), knob
    assert cached.data_cache.chain(0).hits > 0


def test_size_search_refines_only_the_chosen_point():
    evaluate = evaluator(True, Similarity.WEIGHTS, refine=RefineOptions(max_iters=40))
    knob, point, met = bisect(evaluate, None, target_params=0.3)
    assert met
    with evaluate.unrefined_steps():
        assert all(not step[1].refine for step in evaluate.cache.values())
    _, report = evaluate.finish(knob, verify=False)
    (stats,) = report.refine
    assert 0 < stats.iterations <= 40
    assert report.retained == point.retained
    # refinement never loses ground against the unrefined network at that knob (which
    # the size search did not measure)
    _, unrefined = compress(
        evaluate.model, evaluate.make_method(knob), calibration=CALIB, refine=False, verify=False
    )
    assert report.holdout_error <= unrefined.holdout_error + 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_data_grouping_matches_the_general_grouping(seed):
    rng = np.random.default_rng(seed)
    n, dim = int(rng.integers(70, 200)), int(rng.integers(20, 300))
    prototypes = rng.standard_normal((int(rng.integers(2, 20)), dim)) / dim
    noise = rng.choice([1e-4, 1e-2, 0.3]) / dim
    rows = prototypes[rng.integers(0, len(prototypes), n)] + noise * rng.standard_normal((n, dim))

    class Stored:  # the RowSource the data path hands over
        shape = rows.shape

        def take(self, index):
            return rows[index]

        def project(self, directions):
            return rows @ directions

    distances = np.abs(rows[:, None] - rows[None]).sum(-1)
    for eps in (0.0, *np.quantile(distances, [0.02, 0.2, 0.6])):
        for linkage in Linkage:
            np.testing.assert_array_equal(
                group_data_rows(Stored(), eps, linkage), group_rows(rows, eps, linkage)
            )


def test_a_layer_states_comparison_on_the_data_is_formed_once(monkeypatch):
    """The data similarity's rows do not depend on eps (only on the rows constant at it):
    steps at other knobs with the same layer state reuse them, and agree."""
    import onnx_lump.ode.equivalence as equivalence

    calls = []
    original = equivalence.read_data_rows
    monkeypatch.setattr(equivalence, "read_data_rows", lambda *a: calls.append(1) or original(*a))
    knobs = [0.02, 0.05, 0.1, 0.2]
    cached, plain = evaluator(True), evaluator(False)
    with_cache = [cached(k)[1].widths_after for k in knobs]
    formed = len(calls)
    assert [plain(k)[1].widths_after for k in knobs] == with_cache
    assert len(calls) - formed >= 2 * len(knobs)  # both layers, every step
    # the first layer's rows once (its state never changes), and nothing twice
    assert formed <= len(calls) - formed - len(knobs) + 1


def test_the_cache_bound_counts_what_an_entry_holds():
    """A read-only view of arrays held elsewhere (a layer's pinned weights, passed on
    unmerged) adds nothing; owned arrays count in full, and the oldest go first."""
    from onnx_lump.data.cache import ChainCache

    held = np.zeros((64, 64))
    view = held.view()
    view.setflags(write=False)
    cache = ChainCache(max_bytes=2 * held.nbytes)
    for key in range(10):  # ten views: no eviction
        cache.get(("view", key), lambda: (view, np.zeros(4)))
    assert all(("view", key) in cache._entries for key in range(10))
    for key in range(3):  # owned copies: only two fit, with the small rest
        cache.get(("copy", key), lambda: held.copy())
    assert ("copy", 0) not in cache._entries and ("copy", 2) in cache._entries


def test_one_compress_call_keeps_no_comparison_only_another_eps_could_reuse():
    """The data comparison of a layer state is reused across eps only: a single call's
    cache does not hold it (it held up to the 1 GiB bound on the 4 x 4096 benchmark),
    a search's does, and both give the same network."""
    from onnx_lump.api import compress
    from onnx_lump.data.cache import SearchCache

    model = onnx.load(DEMO)
    method = Lump(PartitionOptions(0.05, similarity=Similarity.DATA))
    results = []
    for across_calls in (False, True):
        cache = SearchCache(across_calls=across_calls)
        reduced, _ = compress(model, method, calibration=CALIB, refine=False, cache=cache)
        kept = [key for key in cache.chain(0)._entries if key[0] == "data rows"]
        assert bool(kept) == across_calls
        results.append(reduced)
    assert_same_model(*results)


def test_compress_runs_each_model_once_on_the_held_out_rows(monkeypatch):
    """The held-out error and the verification use the same rows: the original and the
    reduced model each get one onnxruntime session there (each got two), and the
    numbers are onnxruntime's."""
    import onnx_lump.runtime as runtime
    from onnx_lump.api import compress
    from onnx_lump.data.holdout import output_error, split_calibration

    sessions = []
    original = runtime.session
    monkeypatch.setattr(runtime, "session", lambda m, *a: sessions.append(1) or original(m, *a))
    model = onnx.load(DEMO)
    method = Lump(PartitionOptions(0.3, similarity=Similarity.DATA))
    reduced, report = compress(model, method, calibration=CALIB, refine=False)
    assert len(sessions) == 2  # the chain starts at the graph input: no session for it
    held = split_calibration(CALIB).holdout
    (expected,), (actual,) = run_ort(model, held), run_ort(reduced, held)
    assert report.holdout_error == pytest.approx(output_error(expected, actual), rel=1e-12)
    assert report.verification.n_samples == len(next(iter(held.values())))
    assert report.verification.outputs[0].max_abs == pytest.approx(np.abs(expected - actual).max())


def test_a_network_two_knobs_give_alike_is_refined_once(monkeypatch):
    """Knobs that merge alike give the same network: an error search refines it once, and
    both steps report what a search without caches measures."""
    import onnx_lump.pipeline.compress as stage

    calls = []
    original = stage.refine_result
    monkeypatch.setattr(stage, "refine_result", lambda *a: calls.append(1) or original(*a))
    refine = RefineOptions(max_iters=30)
    cached, plain = evaluator(True, refine=refine), evaluator(False, refine=refine)
    knobs = (0.2, 0.2 * (1 + 1e-6))
    steps = [cached(k) for k in knobs]
    assert steps[0][1].widths_after == steps[1][1].widths_after
    assert steps[0][1].retained < 1.0 and len(calls) == 1  # merged, and refined once
    for knob, (model, report, point) in zip(knobs, steps, strict=True):
        fresh_model, fresh_report, fresh = plain(knob)
        assert point.error == fresh.error
        ((stats,), (fresh_stats,)) = report.refine, fresh_report.refine
        assert (stats.iterations, stats.holdout_after) == (
            fresh_stats.iterations,
            fresh_stats.holdout_after,
        )
        assert_same_model(model, fresh_model)
    assert len(calls) == 3  # the plain search refined at both knobs


def test_a_search_that_does_not_keep_models_finishes_with_the_same_network():
    """keep_models=False (the CLI's): the cache holds each step's report and point but
    not its network, and the network finish() hands over is the same."""
    refine = RefineOptions(max_iters=20)
    runs = {}
    for keep in (True, False):
        evaluate = Evaluator(
            onnx.load(DEMO),
            lambda eps: Lump(PartitionOptions(eps, similarity=Similarity.DATA)),
            CALIB,
            refine=refine,
            keep_models=keep,
        )
        knob, point, met = bisect(evaluate, None, max_error=0.05)
        assert met and len(evaluate.cache) > 2
        kept = [step[0] is not None for step in evaluate.cache.values()]
        assert all(kept) if keep else not any(kept)
        assert evaluate(knob)[2] == point  # a cache hit still has its point
        runs[keep] = evaluate.finish(knob, verify=False)
    assert_same_model(runs[True][0], runs[False][0])
    assert runs[True][1].holdout_error == runs[False][1].holdout_error


def test_a_spans_first_layer_constants_are_found_once_per_search(monkeypatch):
    """Which first-layer neurons are constant on the fitting rows depends on no knob:
    a search finds them once (on all-MiniLM-L6-v2 the pass over every token row took a
    quarter of a --max-error search), and the steps agree with uncached ones."""
    import onnx_lump.methods.lumping as lumping

    model = onnx.load(DEMO)
    first = next(n for n in model.graph.node if n.op_type == "Gemm")
    first_bias = next(
        onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == first.input[2]
    )
    calls: list[bool] = []  # whether the layer asked about is the first
    original = lumping.unsupported_constants

    def spy(weight, bias, *rest):
        calls.append(bias.shape == first_bias.shape and np.allclose(bias, first_bias))
        return original(weight, bias, *rest)

    monkeypatch.setattr(lumping, "unsupported_constants", spy)

    def span_evaluator(caches: bool) -> Evaluator:
        return Evaluator(
            onnx.load(DEMO),
            lambda eps: LumpOptions(reduction="span").method(eps, with_data=True),
            CALIB,
            refine=False,
            caches=caches,
        )

    knobs = [0.01, 0.05, 0.1, 0.2]
    search = span_evaluator(True)
    cached = [search(k)[1].widths_after for k in knobs]
    first_cached = sum(calls)
    calls.clear()
    plain = span_evaluator(False)
    assert [plain(k)[1].widths_after for k in knobs] == cached
    assert first_cached == 1 and sum(calls) >= len(knobs)
