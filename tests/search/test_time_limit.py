"""--time-limit: the search stops at the best point reached, says so, and still writes a
verified model (or fails when no point met the target); -v shows each step as it starts."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import MODELS
from test_bisection import FakeEvaluator

from onnx_lump.cli import main
from onnx_lump.search import Evaluator
from onnx_lump.search.bisection import TimeLimitReached, bisect
from onnx_lump.types import SweepPoint

DEMO = MODELS / "rn_tanh_2x64.onnx"
CALIB = MODELS / "rn_calib_2048.npz"


class TimedFakeEvaluator(FakeEvaluator):
    """A fake search target whose time runs out after ``steps`` new steps, with errors
    growing as the network shrinks (1% per 10% of the parameters removed)."""

    def __init__(self, cliff: float, steps: int) -> None:
        super().__init__(cliff)
        self.steps = steps

    def __call__(self, knob: float):
        knob = float(knob)
        if knob not in self.cache and len(self.calls) >= self.steps:
            raise TimeLimitReached
        model, report, point = super().__call__(knob)
        error = 0.1 * (1.0 - point.retained)
        point = SweepPoint(
            point.knob, point.params_before, point.params_after, point.retained, error, 0
        )
        self.cache[knob] = (model, report, point)
        return self.cache[knob]


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_an_error_search_out_of_time_returns_the_smallest_network_within_budget(steps):
    evaluate = TimedFakeEvaluator(cliff=0.01, steps=steps)
    knob, point, met = bisect(evaluate, None, max_error=0.05)
    points = [step[2] for step in evaluate.cache.values()]
    within = [p for p in points if p.error <= 0.05]
    assert met and within  # knob 0 (the whole network, error 0) is always within
    assert point.params_after == min(p.params_after for p in within)
    assert knob in evaluate.cache


def test_an_error_search_with_nothing_within_budget_returns_the_most_accurate():
    evaluate = TimedFakeEvaluator(cliff=0.01, steps=2)
    _, point, met = bisect(evaluate, None, max_error=-1.0)  # nothing can meet it
    assert not met
    assert point.error == min(step[2].error for step in evaluate.cache.values())


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_a_size_search_out_of_time_returns_the_largest_network_within_the_target(steps):
    evaluate = TimedFakeEvaluator(cliff=0.01, steps=steps)
    _, point, met = bisect(evaluate, None, target_params=0.3)
    points = [step[2] for step in evaluate.cache.values()]
    within = [p for p in points if p.retained <= 0.3]
    if within:
        assert met and point.params_after == max(p.params_after for p in within)
    else:  # not met: the smallest network reached, and the caller fails
        assert not met and point.params_after == min(p.params_after for p in points)


def test_the_evaluator_takes_one_step_then_stops_past_its_deadline():
    model = onnx.load(str(DEMO))
    calib = dict(np.load(CALIB))
    from onnx_lump.cli import build_method
    from onnx_lump.cli.parser import make_parser

    args = make_parser("x\n\ny").parse_args([str(DEMO), "out.onnx", "--calib", str(CALIB)])
    evaluate = Evaluator(
        model, lambda knob: build_method("lump", knob, args), calib, refine=False, deadline=0.0
    )
    evaluate(0.0)  # the first step runs however late: there must be a point to return
    assert not evaluate.timed_out
    with pytest.raises(TimeLimitReached):
        evaluate(0.3)
    assert evaluate.timed_out
    assert evaluate(0.0)[2].knob == 0.0  # a step taken is still there


def run(tmp_path, *options):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    code = main(
        [str(DEMO), str(out), "--calib", str(CALIB), "--report-json", str(report), *options]
    )
    return code, out, report


def test_cli_time_limit_writes_the_best_point_so_far_verified(tmp_path, capsys):
    code, out, report = run(tmp_path, "--max-error", "0.05", "--time-limit", "0.001")
    printed = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "time limit of 0.001 s reached after 1 steps" in printed
    assert "PASSED" in printed
    data = json.loads(report.read_text())
    assert data["verification"]["passed"]
    assert data["retained"] == 1.0  # the one step taken: knob 0, the whole network


def test_cli_time_limit_on_a_sweep_writes_the_points_reached(tmp_path, capsys):
    out = tmp_path / "sweep.csv"
    code = main(
        [
            str(DEMO),
            str(out),
            "--calib",
            str(CALIB),
            "--sweep",
            "0,0.2,0.4",
            "--time-limit",
            "0.001",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "reached after 1 of 3 points" in printed
    assert len(out.read_text().strip().splitlines()) == 2  # header and knob 0


def test_cli_time_limit_must_be_positive(tmp_path, capsys):
    code, out, _ = run(tmp_path, "--max-error", "0.05", "--time-limit", "0")
    assert code == 2 and not out.exists()
    assert "--time-limit must be > 0" in capsys.readouterr().err


def test_verbose_shows_each_step_before_it_ends(tmp_path, capsys):
    code, _, _ = run(tmp_path, "--max-error", "0.05", "-v")
    assert code == 0
    lines = capsys.readouterr().err.splitlines()
    starts = [i for i, line in enumerate(lines) if "step 1: knob 0" in line]
    ends = [i for i, line in enumerate(lines) if "onnx_lump.search: knob 0:" in line]
    assert starts and ends and starts[0] < ends[0]
