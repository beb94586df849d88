"""Refinement on teacher-labelled jitter, and a budget counted in iterations."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from builders import mlp, random_layers
from conftest import MODELS, run_ort

import onnx_lump.data.refine as refine
import onnx_lump.pipeline.compress as chain_stage
from onnx_lump import lump
from onnx_lump.activations import IDENTITY, Activation, ActivationKind
from onnx_lump.cli import main
from onnx_lump.data.refine import (
    ChainData,
    ChainNetwork,
    Jitter,
    RefineOptions,
    chain_loss,
    iteration_budget,
    iteration_work,
    refine_chain,
)
from onnx_lump.methods.base import ChainResult
from onnx_lump.ode.reduction import ReducedLayer

CALIB = dict(np.load(MODELS / "rn_calib.npz"))


def chain(sizes, seed: int, activation=ActivationKind.TANH):
    layers = [ReducedLayer(w, b) for w, b in random_layers(sizes, seed=seed)]
    return ChainResult(layers), [Activation(activation)] * (len(sizes) - 2) + [IDENTITY]


def problem(seed: int = 0):
    """A wide teacher on few rows (a chain that refinement overfits), a narrow start, and
    the teacher's forward pass."""
    teacher, activations = chain([4, 24, 24, 2], seed=40 + seed)

    def forward(rows: np.ndarray) -> np.ndarray:
        values = rows
        for layer, activation in zip(teacher.layers, activations, strict=True):
            values = activation(values @ layer.weight.T + layer.bias)
        return values

    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(100, 4))
    fit, held = (
        ChainData(inputs[:60], forward(inputs[:60])),
        ChainData(inputs[60:], forward(inputs[60:])),
    )
    start, _ = chain([4, 6, 6, 2], seed=50 + seed)
    return start, activations, fit, held, forward


def weights(result: ChainResult) -> list[np.ndarray]:
    return [a for layer in result.layers for a in (layer.weight, layer.bias)]


@pytest.mark.parametrize("seed", range(3))
def test_the_chosen_strength_has_the_lowest_held_out_error(seed):
    """With probes of the whole budget every strength runs as it would alone: the chosen
    one is the one whose own refinement has the lowest held-out error, 0 included."""
    start, activations, fit, held, forward = problem(seed)
    strengths = (0.0, 0.05, 0.3)
    alone = {}
    for strength in strengths:
        options = RefineOptions(max_iters=60, jitter=(strength,), max_seconds=1e6)
        alone[strength] = refine_chain(start, activations, fit, held, options, teacher=forward)
    options = RefineOptions(max_iters=60, jitter=strengths, probe_share=1.0, max_seconds=1e6)
    refined, stats = refine_chain(start, activations, fit, held, options, teacher=forward)
    best = min(strengths, key=lambda s: alone[s][1].holdout_after)
    assert stats.jitter == best
    assert stats.holdout_after == alone[best][1].holdout_after
    for mine, theirs in zip(weights(refined), weights(alone[best][0]), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert stats.trial_iterations == sum(alone[s][1].iterations for s in strengths if s != best)


def test_each_strength_is_chosen_where_it_is_best():
    """Both outcomes occur: jitter is not always chosen, nor never (so the choice is one)."""
    chosen = set()
    for seed in range(6):
        start, activations, fit, held, forward = problem(seed)
        options = RefineOptions(max_iters=60, jitter=(0.0, 0.3), max_seconds=1e6)
        chosen.add(refine_chain(start, activations, fit, held, options, teacher=forward)[1].jitter)
    assert chosen == {0.0, 0.3}


def test_jittered_rows_follow_each_column_spread_and_their_targets_are_the_teachers():
    _, _, fit, _, forward = problem(1)
    fit = ChainData(fit.inputs * [1.0, 10.0, 0.1, 0.0], fit.targets)  # one constant column
    jitter = Jitter(fit, forward, copies=3)
    data = jitter.data(0.2)
    n = fit.n_samples
    assert data.n_samples == 4 * n
    np.testing.assert_array_equal(data.inputs[:n], fit.inputs)
    np.testing.assert_array_equal(data.targets[:n], fit.targets)
    np.testing.assert_allclose(data.targets[n:], forward(data.inputs[n:]))
    shift = data.inputs[n:] - np.tile(fit.inputs, (3, 1))
    ratio = shift.std(axis=0)[:3] / fit.inputs.std(axis=0)[:3]
    np.testing.assert_allclose(ratio, 0.2, rtol=0.15)
    assert np.all(shift[:, 3] == 0.0)  # a constant column stays constant
    np.testing.assert_array_equal(jitter.data(0.0).inputs[n:], np.tile(fit.inputs, (3, 1)))


def test_sequential_rows_jitter_the_original_chains_own_inputs():
    """Where the original chain's inputs differ from the reduced one's (sequential
    calibration), the targets are the original chain on its own inputs, equally moved."""
    _, _, fit, _, forward = problem(2)
    source = fit.inputs + 0.5
    jitter = Jitter(ChainData(fit.inputs, fit.targets, source), forward, copies=2)
    data = jitter.data(0.1)
    n = fit.n_samples
    moved = data.inputs[n:] - np.tile(fit.inputs, (2, 1)) + np.tile(source, (2, 1))
    np.testing.assert_allclose(data.targets[n:], forward(moved))


def test_compress_labels_jitter_with_the_original_network(monkeypatch):
    """The teacher compress hands refinement is the original network (onnxruntime)."""
    model = mlp(random_layers([3, 16, 12, 2], seed=3), ["Tanh", "Relu"])
    seen = {}

    def spy(*args, **kwargs):
        seen["teacher"] = kwargs.get("teacher", args[8] if len(args) > 8 else None)
        return refine_chain(*args, **kwargs)

    monkeypatch.setattr(chain_stage, "refine_chain", spy)
    calibration = {"x": np.random.default_rng(4).normal(size=(200, 3)).astype(np.float32)}
    lump(model, 0.2, calibration=calibration, refine=RefineOptions(max_iters=5), verify=False)
    rows = np.random.default_rng(5).normal(size=(7, 3))
    expected = run_ort(model, {"x": rows.astype(np.float32)})[0]
    np.testing.assert_allclose(seen["teacher"](rows), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_jitter_never_returns_weights_worse_on_the_held_out_rows(seed):
    start, activations, fit, held, forward = problem(seed)
    options = RefineOptions(max_iters=40, max_seconds=1e6)
    refined, stats = refine_chain(start, activations, fit, held, options, teacher=forward)
    before, after = chain_loss(start, activations, held), chain_loss(refined, activations, held)
    assert stats.holdout_before == pytest.approx(before)
    assert stats.holdout_after == pytest.approx(after)
    assert stats.jitter in options.jitter
    if stats.improved:
        assert after < before
    else:
        assert refined is start and stats.jitter == 0.0


def test_the_iteration_budget_makes_results_independent_of_wall_time(monkeypatch):
    """The same refinement on an idle and on a slow machine (a clock that jumps 1,000 s
    a call, short of the time cap) returns the same weights after the same iterations."""
    start, activations, fit, held, forward = problem(0)
    options = RefineOptions(max_iters=50, max_seconds=1e6)
    fast, fast_stats = refine_chain(start, activations, fit, held, options, teacher=forward)
    ticks = itertools.count()
    monkeypatch.setattr(refine.time, "perf_counter", lambda: 1000.0 * next(ticks))
    slow, slow_stats = refine_chain(start, activations, fit, held, options, teacher=forward)
    assert not fast_stats.time_capped and not slow_stats.time_capped
    assert slow_stats.iterations == fast_stats.iterations
    assert slow_stats.jitter == fast_stats.jitter
    for a, b in zip(weights(fast), weights(slow), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_wide_chain_is_bounded_by_work_the_same_on_any_clock(monkeypatch):
    """Where max_iters iterations would cost more than max_work multiply-adds, the
    budget is what the work allows: the same weights as that many iterations asked for
    outright, on an idle and on a slow machine (a clock jumping 1,000 s a call, short of
    the cap), and the stats say the work bound set it."""
    start, activations, fit, held, forward = problem(0)
    network = ChainNetwork(start, activations, None)
    rows = 2 * fit.n_samples  # the fitting rows and their jittered copy
    per_iteration = iteration_work(network, rows, held.n_samples)
    per_row = 4 * 6 + 6 * 6 + 6 * 2 + 40 * (4 + 2)  # products, then the rows' values
    assert per_iteration == per_row * (3 * rows + held.n_samples)
    bound = RefineOptions(max_iters=500, max_seconds=1e6, max_work=30.5 * per_iteration)
    assert iteration_budget(bound, per_iteration) == 30
    counted = RefineOptions(max_iters=30, max_seconds=1e6, max_work=None)
    by_work, work_stats = refine_chain(start, activations, fit, held, bound, teacher=forward)
    by_count, count_stats = refine_chain(start, activations, fit, held, counted, teacher=forward)
    ticks = itertools.count()
    monkeypatch.setattr(refine.time, "perf_counter", lambda: 1000.0 * next(ticks))
    slow, slow_stats = refine_chain(start, activations, fit, held, bound, teacher=forward)
    assert work_stats.budget == 30 and work_stats.work_bound and not slow_stats.time_capped
    assert count_stats.budget == 30 and not count_stats.work_bound
    assert work_stats.iterations == count_stats.iterations == slow_stats.iterations
    for a, b, c in zip(weights(by_work), weights(by_count), weights(slow), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_an_adam_iteration_costs_its_mini_batches_not_every_row():
    start, activations = chain([8, 5, 3], seed=1)
    wide = ChainNetwork(start, activations, None, dtype=np.float32)
    per_row = 8 * 5 + 5 * 3 + 40 * (8 + 3)
    assert iteration_work(wide, 50_000, 100) == per_row * (3 * 4 * 1024 + 100)
    assert iteration_work(wide, 600, 100) == per_row * (3 * 4 * 600 + 100)
    # at least one iteration, however wide; none where none are asked for
    assert iteration_budget(RefineOptions(max_work=1.0), 1e12) == 1
    assert iteration_budget(RefineOptions(max_iters=0), 1e12) == 0
    assert iteration_budget(RefineOptions(max_work=None), 1e12) == RefineOptions().max_iters
    with pytest.raises(Exception, match="work"):
        RefineOptions(max_work=0.0)


def test_the_time_cap_stops_refinement_and_says_so(monkeypatch):
    start, activations, fit, held, forward = problem(0)
    ticks = itertools.count()
    monkeypatch.setattr(refine.time, "perf_counter", lambda: 1.0 * next(ticks))
    options = RefineOptions(max_iters=500, max_seconds=10.0)
    refined, stats = refine_chain(start, activations, fit, held, options, teacher=forward)
    assert stats.time_capped
    assert stats.iterations + stats.trial_iterations < 15
    assert stats.holdout_after <= stats.holdout_before
    assert chain_loss(refined, activations, held) == pytest.approx(stats.holdout_after)


def test_the_cli_summary_and_json_report_the_strength_and_the_time_cap(tmp_path, capsys):
    model = mlp(random_layers([3, 16, 12, 2], seed=3), ["Tanh", "Relu"])
    model.graph.input[0].name = "input"
    model.graph.node[0].input[0] = "input"
    onnx.save(model, tmp_path / "in.onnx")
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "calib.npz", input=rng.normal(size=(300, 3)).astype(np.float32))
    base = [str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), "--eps", "0.2"]
    base += ["--calib", str(tmp_path / "calib.npz"), "--no-verify"]
    assert main([*base, "--refine-iters", "20", "--report-json", str(tmp_path / "a.json")]) == 0
    free = capsys.readouterr().out
    assert "jitter" in free and "time cap" not in free
    (entry,) = json.loads((tmp_path / "a.json").read_text())["refine"]
    assert entry["jitter"] in RefineOptions().jitter and entry["time_capped"] is False
    assert main([*base, "--refine-seconds", "1e-9", "--report-json", str(tmp_path / "b.json")]) == 0
    assert "stopped by the time cap" in capsys.readouterr().out
    (entry,) = json.loads((tmp_path / "b.json").read_text())["refine"]
    assert entry["time_capped"] is True


def test_the_work_bound_is_the_cli_default_and_a_search_splits_it(tmp_path, capsys, monkeypatch):
    """By default a chain whose iterations cost 1/50 of the work bound gets 50; the
    summary says the work bound set it. A search refines each step on a fifth of the
    work (a twentieth) and the final network on the rest. An explicit --refine-iters holds."""
    model = mlp(random_layers([3, 16, 12, 2], seed=3), ["Tanh", "Relu"])
    model.graph.input[0].name = "input"
    model.graph.node[0].input[0] = "input"
    onnx.save(model, tmp_path / "in.onnx")
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "calib.npz", input=rng.normal(size=(300, 3)).astype(np.float32))
    monkeypatch.setattr(refine, "iteration_work", lambda *_: RefineOptions().max_work / 50)
    base = [str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), "--calib"]
    base += [str(tmp_path / "calib.npz"), "--no-verify", "--report-json"]
    assert main([*base, str(tmp_path / "a.json"), "--eps", "0.2"]) == 0
    assert "iterations (of 50: the work bound of a chain this wide)" in capsys.readouterr().out
    (entry,) = json.loads((tmp_path / "a.json").read_text())["refine"]
    assert entry["budget"] == 50 and entry["work_bound"] is True
    assert main([*base, str(tmp_path / "b.json"), "--max-error", "0.5", "--metric", "rmse"]) == 0
    (entry,) = json.loads((tmp_path / "b.json").read_text())["refine"]
    # whole iterations within each share: 2.5 -> 2 for the step, 47.5 -> 47 for the rest
    assert entry["budget"] == 2 + 47 and entry["work_bound"] is True
    assert main([*base, str(tmp_path / "c.json"), "--eps", "0.2", "--refine-iters", "70"]) == 0
    (entry,) = json.loads((tmp_path / "c.json").read_text())["refine"]
    assert entry["budget"] == 70 and entry["work_bound"] is False


def test_jitter_options_are_checked():
    with pytest.raises(Exception, match="jitter"):
        RefineOptions(jitter=(0.0, -0.1))
    with pytest.raises(Exception, match="probe_share"):
        RefineOptions(probe_share=0.0)
    assert RefineOptions(jitter=[0, 0.1]).jitter == (0.0, 0.1)
    assert hash(RefineOptions(jitter=[0, 0.1])) == hash(RefineOptions(jitter=(0.0, 0.1)))


@pytest.mark.parametrize("seed", range(3))
def test_jitter_at_strength_0_is_plain_refinement(seed):
    """Strength 0 alone, with the teacher, returns the very weights of refinement without
    a teacher (no jittered rows): the jitter adds nothing unless chosen."""
    start, activations, fit, held, forward = problem(seed)
    only_zero = RefineOptions(max_iters=30, max_seconds=1e6, jitter=(0.0,))
    with_teacher, stats = refine_chain(start, activations, fit, held, only_zero, teacher=forward)
    plain, plain_stats = refine_chain(start, activations, fit, held, only_zero)
    assert stats.jitter == 0.0 and stats.trial_iterations == 0
    assert stats.iterations == plain_stats.iterations
    for a, b in zip(weights(with_teacher), weights(plain), strict=True):
        np.testing.assert_array_equal(a, b)
