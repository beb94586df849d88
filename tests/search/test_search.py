"""Automatic choice of the knob, sweeps, and the CLI around them."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import pytest
from conftest import MODELS, run_ort

from onnx_lump.cli import main
from onnx_lump.data.holdout import output_error, split_calibration
from onnx_lump.data.refine import RefineOptions
from onnx_lump.methods import Lump, Magnitude
from onnx_lump.ode.partition import PartitionOptions
from onnx_lump.search import Evaluator, bisect, parse_knobs, sweep

DEMO = MODELS / "rn_tanh_2x64.onnx"
CALIB = dict(np.load(MODELS / "rn_calib.npz"))


def lump_evaluator(model=None, refine=False) -> Evaluator:
    model = model or onnx.load(DEMO)
    return Evaluator(model, lambda eps: Lump(PartitionOptions(eps)), CALIB, refine=refine)


def held_out_rows() -> dict[str, np.ndarray]:
    return split_calibration(CALIB).holdout


def onnxruntime_error(model, reduced, feeds) -> float:
    (expected,), (actual,) = run_ort(model, feeds), run_ort(reduced, feeds)
    return output_error(expected, actual)


def test_parse_knobs():
    assert parse_knobs("0,0.5,1") == [0.0, 0.5, 1.0]
    assert parse_knobs("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("target", [0.8, 0.5, 0.3])
def test_bisection_meets_a_size_target(target):
    evaluate = lump_evaluator()
    knob, point, met = bisect(evaluate, None, target_params=target)
    assert met and point.retained <= target and point.knob == knob
    _, report = evaluate.finish(knob, verify=False)
    assert report.retained == point.retained


@pytest.mark.parametrize("limit", [0.01, 0.05])
def test_bisection_meets_an_error_target_on_held_out_rows(limit):
    model = onnx.load(DEMO)
    evaluate = lump_evaluator(model)
    knob, point, met = bisect(evaluate, None, max_error=limit)
    assert met and point.error <= limit
    reduced, report = evaluate.finish(knob, verify=False)
    # the error searched on is onnxruntime's, on rows no fit saw
    assert onnxruntime_error(model, reduced, held_out_rows()) == pytest.approx(point.error)
    assert report.holdout_error == pytest.approx(point.error)
    assert point.retained < 1.0  # it did compress


def test_max_error_is_monotone():
    """A looser error budget never keeps more parameters (it once kept 100% at 1.0)."""
    evaluate = lump_evaluator()
    kept = [bisect(evaluate, None, max_error=e)[1].retained for e in (0.05, 0.2, 0.9, 1.0, 2.0)]
    assert kept == sorted(kept, reverse=True), kept
    assert kept[-1] < 0.05


def test_refined_search_is_warm_started_and_honest():
    model = onnx.load(DEMO)
    budget = RefineOptions(max_iters=100)
    evaluate = lump_evaluator(model, refine=budget)
    knob, point, met = bisect(evaluate, None, max_error=0.02)
    assert met
    reduced, report = evaluate.finish(knob, verify=False)
    (stats,) = report.refine
    assert stats.iterations <= budget.max_iters  # search leg + final leg share one budget
    assert report.holdout_error <= point.error + 1e-12  # the final leg never loses ground
    assert onnxruntime_error(model, reduced, held_out_rows()) == pytest.approx(report.holdout_error)
    plain_knob, _, _ = bisect(lump_evaluator(model), None, max_error=0.02)
    assert knob >= plain_knob  # refinement lets the search merge at least as far


def test_bisection_for_pruning_uses_the_sparsity_limit():
    model = onnx.load(DEMO)
    evaluate = Evaluator(model, lambda s: Magnitude(s), CALIB)
    _, point, met = bisect(evaluate, 0.999, target_params=0.6)
    assert met and 0.55 <= point.retained <= 0.6


def test_error_is_measured_against_targets_when_given():
    model = onnx.load(DEMO)
    feeds = held_out_rows()
    (outputs,) = run_ort(model, feeds)
    evaluate = Evaluator(
        model,
        lambda eps: Lump(PartitionOptions(eps)),
        None,
        validation=feeds,
        validation_targets=outputs,
    )
    _, report, point = evaluate(0.0)
    assert point.error == 0.0 and report.retained == 1.0


def test_sweep_points_shrink_with_eps():
    points = sweep(lump_evaluator(), [0.0, 1.0, 2.0])
    assert [p.knob for p in points] == [0.0, 1.0, 2.0]
    assert points[0].error < 1e-6 and points[0].retained == 1.0
    assert points[0].params_after >= points[1].params_after >= points[2].params_after


def test_size_search_steps_are_not_measured_and_the_result_is(monkeypatch):
    """A size target steers by sizes: its steps run no held-out model (onnxruntime
    sessions are most of a wide step's cost); the network handed over is measured."""
    model = onnx.load(DEMO)
    evaluate = lump_evaluator(model)
    import onnx_lump.runtime as runtime

    runs = []  # onnxruntime sessions (the demo's chain starts at the graph input: none)
    original = runtime.session
    monkeypatch.setattr(runtime, "session", lambda *a: runs.append(1) or original(*a))
    knob, point, met = bisect(evaluate, None, target_params=0.5)
    assert met and np.isnan(point.error) and not runs
    assert all(np.isnan(p.error) for *_, p in evaluate._steps[False].values())
    reduced, report = evaluate.finish(knob, verify=False)
    assert runs and report.holdout_error > 0
    assert onnxruntime_error(model, reduced, held_out_rows()) == pytest.approx(report.holdout_error)
    # an error target measures every step
    _, point, _ = bisect(lump_evaluator(model), None, max_error=0.05)
    assert np.isfinite(point.error)


def test_cli_target_params(tmp_path, capsys):
    out = tmp_path / "small.onnx"
    code = main(
        [str(DEMO), str(out), "--calib", str(MODELS / "rn_calib.npz"), "--target-params", "0.5"]
    )
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "search: eps=" in text and "met" in text
    assert "nan" not in text.lower() and "held-out error" in text  # the written file's
    reduced = onnx.load(out)
    weights = sum(int(np.prod(t.dims)) for t in reduced.graph.initializer)
    assert weights <= 0.5 * 4998


def test_cli_unreachable_error_target_writes_nothing(tmp_path, capsys):
    out = tmp_path / "small.onnx"
    code = main(
        [
            str(DEMO),
            str(out),
            "--calib",
            str(MODELS / "rn_calib.npz"),
            "--max-error",
            "0.0001",
            "--target-params",
            "0.2",
        ]
    )
    assert code == 1 and not out.exists()
    assert "NOT met" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_cli_sweep_writes_a_table(tmp_path, suffix):
    table = tmp_path / f"sweep{suffix}"
    code = main(
        [
            str(DEMO),
            str(table),
            "--calib",
            str(MODELS / "rn_calib.npz"),
            "--sweep",
            "0:0.15:0.05",
            "-q",
        ]
    )
    assert code == 0
    if suffix == ".csv":
        rows = list(csv.DictReader(table.open()))
    else:
        rows = json.loads(table.read_text())
    assert [float(r["eps"]) for r in rows] == [0.0, 0.05, 0.1, 0.15]
    assert {"params_before", "params_after", "retained", "error", "seconds"} <= set(rows[0])


def test_cli_csv_calibration_and_methods(tmp_path):
    data = CALIB["input"]
    csv_path = tmp_path / "calib.csv"
    np.savetxt(csv_path, data, delimiter=",", header="a,b,c,d,e,f", comments="")
    for method in ("magnitude", "wanda", "ec", "linear", "exact", "lump+linear"):
        out = tmp_path / f"{method}.onnx"
        model = MODELS / "rn_relu_2x64.onnx"
        assert (
            main([str(model), str(out), "--method", method, "--calib", str(csv_path), "-q"]) == 0
        ), method
        assert out.exists()


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--method", "wanda"], "needs calibration"),
        (["--sparsity", "1.5"], "--sparsity"),
        (["--tau", "0"], "--tau"),
        (["--target-params", "0"], "--target-params"),
        (["--similarity", "data"], "needs --calib"),
        (["--method", "exact", "--sweep", "0,1"], "no knob"),
        (["--sweep", "a:b"], "--sweep"),
    ],
)
def test_cli_rejects_bad_settings(tmp_path, capsys, extra, expected):
    out = tmp_path / "out.json" if "--sweep" in extra else tmp_path / "out.onnx"
    assert main([str(DEMO), str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not out.exists()


def test_a_search_warns_about_few_calibration_rows_once(caplog):
    """Every step of a search has the same rows: the warning that they are too few for
    the widest layer comes once, not once a step (it came 12 times on the wide model)."""
    few = {name: rows[:40] for name, rows in CALIB.items()}
    evaluate = Evaluator(onnx.load(DEMO), lambda eps: Lump(PartitionOptions(eps)), few)
    with caplog.at_level("WARNING", logger="onnx_lump.api"):
        bisect(evaluate, None, target_params=0.5)
    warned = [r for r in caplog.records if "fitting rows for layers" in r.getMessage()]
    assert len(evaluate.cache) + len(evaluate._steps[False]) > 2 and len(warned) == 1
    _, report = evaluate.finish(bisect(evaluate, None, target_params=0.5)[0], verify=False)
    assert any("fitting rows for layers" in note for note in report.notes)  # still noted
