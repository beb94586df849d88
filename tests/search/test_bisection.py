"""The knob search's step rules on a synthetic size curve: it looks down from the bracket
by orders of magnitude, lands on the first knob that meets a size target, and stops at the
resolution that matters instead of spending its whole step budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_lump.api import compress
from onnx_lump.data.cache import SearchCache
from onnx_lump.methods import Lump
from onnx_lump.ode.partition import PartitionOptions
from onnx_lump.pipeline.report import LayerStats, Report
from onnx_lump.search import bisect
from onnx_lump.types import SweepPoint

N_IN, N_OUT, WIDTH = 20, 3, 1000


def _widths(knob: float, cliff: float) -> int:
    """Full width below ``cliff``, then shrinking as (cliff / knob)^2, like neurons that
    merge over an order of magnitude of epsilon, far below the bracket's knob 1."""
    if knob <= cliff:
        return WIDTH
    return max(1, int(WIDTH * (cliff / knob) ** 2))


class FakeEvaluator:
    """The Evaluator interface bisect uses: call with a knob, a ``cache`` of steps, and
    ``unrefined_steps``; sizes from a two-hidden-layer chain of width ``_widths``."""

    def __init__(self, cliff: float) -> None:
        self.cliff = cliff
        self.cache: dict[float, tuple] = {}
        self.calls: list[float] = []

    def unrefined_steps(self, active: bool = True):
        import contextlib

        return contextlib.nullcontext(self)

    def __call__(self, knob: float):
        knob = float(knob)
        if knob in self.cache:
            return self.cache[knob]
        self.calls.append(knob)
        w = self.width(knob)
        dims = [(N_IN, WIDTH, w), (WIDTH, WIDTH, w), (WIDTH, N_OUT, N_OUT)]
        ins = [N_IN, w, w]
        layers = [
            LayerStats(0, f"L{i}", "tanh", before, after, (fan_in + 1) * before, (k + 1) * after)
            for i, ((fan_in, before, after), k) in enumerate(zip(dims, ins, strict=True))
        ]
        report = Report("fake", True, layers, [], 0.0, widths_after=[[w, w]])
        error = self.error(report.retained)
        point = SweepPoint(
            knob, report.params_before, report.params_after, report.retained, error, 0
        )
        self.cache[knob] = (None, report, point)
        return self.cache[knob]

    def width(self, knob: float) -> int:
        return _widths(knob, self.cliff)

    def error(self, retained: float) -> float:
        return 0.0


def _assert_closely_met(
    evaluate: FakeEvaluator, target: float, smallest: bool = True
) -> SweepPoint:
    """Search for ``target``: met, and closely (within 0.5% of the target or one neuron a
    layer of it), with ``smallest`` at the smallest knob that meets it; returns the point."""
    knob, point, met = bisect(evaluate, None, target_params=target)
    assert met and point.retained <= target
    assert point.retained >= target * (1 - 0.005) - 2 * (2 * WIDTH + N_IN + N_OUT) / (
        point.params_before
    )
    if smallest:  # a knob a little smaller keeps more than the target
        below = evaluate(knob * (1 - 1e-3))[2]
        assert below.retained > target or below.retained == point.retained
    return point


@pytest.mark.parametrize("cliff", [1e-5, 1.1e-4, 3e-2])
@pytest.mark.parametrize("target", [0.5, 0.05])
def test_size_search_finds_the_cliff_in_few_steps(cliff, target):
    evaluate = FakeEvaluator(cliff)
    _assert_closely_met(evaluate, target)
    # halving from [0, 1] would need about 17 steps to reach 1e-5 before resolving anything
    assert len(evaluate.calls) <= 20, evaluate.calls


def test_unreachable_size_target_returns_the_smallest_network():
    evaluate = FakeEvaluator(1e-3)
    _, point, met = bisect(evaluate, None, target_params=1e-6)
    assert not met and point.params_after == min(p[2].params_after for p in evaluate.cache.values())


def test_the_not_refit_note_survives_the_search_caches():
    """A layer with fewer fitting rows than inputs is not refit, and says so, also when a
    search step takes that layer's state from the cache (the merge-only path made it)."""

    model = onnx.load(MODELS / "rn_tanh_2x64.onnx")
    calibration = {k: v[:60] for k, v in np.load(MODELS / "rn_calib.npz").items()}  # 48 fit
    cache = SearchCache()
    for eps in (0.0, 0.01, 0.01):  # the repeat is served from the cache
        _, report = compress(
            model,
            Lump(PartitionOptions(eps)),
            calibration=calibration,
            refine=False,
            verify=False,
            cache=cache,
        )
        assert any("not refit: 48 fitting rows for" in note for note in report.notes), eps
    _, forced = compress(
        model,
        Lump(PartitionOptions(0.01), force_refit=True),
        calibration=calibration,
        refine=False,
        verify=False,
    )
    assert not any("not refit" in note for note in forced.notes)


class HintedFakeEvaluator(FakeEvaluator):
    """FakeEvaluator with ``hint``: the knob at which the first layer keeps the width share
    a target implies, off by the factor ``miss`` (1: exact), or None (``miss`` None)."""

    def __init__(self, cliff: float, miss: float | None) -> None:
        super().__init__(cliff)
        self.miss = miss
        self.hints: list[float] = []

    def hint(self, target: float, after=None) -> float | None:
        self.hints.append(target)
        if self.miss is None:
            return None
        # the width w keeping the target: (N_IN + 1) w + (w + 1) w + (w + 1) N_OUT of total
        total = (N_IN + 1) * WIDTH + (WIDTH + 1) * WIDTH + (WIDTH + 1) * N_OUT
        w = np.roots([1.0, N_IN + 2 + N_OUT, N_OUT - target * total]).real.max()
        w = min(float(WIDTH), max(w, 1.0))
        return self.miss * self.cliff * np.sqrt(WIDTH / w)


@pytest.mark.parametrize("miss", [1.0, 0.3, 3.0, 100.0, 1e-3])
@pytest.mark.parametrize("cliff", [1e-5, 1.1e-4, 3e-2])
@pytest.mark.parametrize("target", [0.5, 0.05])
def test_a_hinted_size_search_meets_the_target_as_closely(miss, cliff, target):
    """Whatever the hint's error, the hinted search lands where the hint-free one does,
    within the size tolerance (it stops at the first step within it, which need not be
    the smallest knob meeting the target); with a good hint in few steps."""
    plain = FakeEvaluator(cliff)
    _, plain_point, _ = bisect(plain, None, target_params=target)
    evaluate = HintedFakeEvaluator(cliff, miss)
    point = _assert_closely_met(evaluate, target, smallest=False)
    assert abs(point.retained - plain_point.retained) <= 0.005 * target
    # an exact hint in a few steps; one off by 3x in a few more than the hint-free search;
    # one off by orders of magnitude within the hint-free search's own bound
    limit = 5 if miss == 1.0 else len(plain.calls) + 6 if 0.1 <= miss <= 10 else 20
    assert len(evaluate.calls) <= limit, (evaluate.calls, plain.calls)


def test_without_a_hint_the_search_brackets_as_before():
    plain, hinted = FakeEvaluator(1.1e-4), HintedFakeEvaluator(1.1e-4, None)
    assert bisect(plain, None, target_params=0.05)[0] == bisect(hinted, None, target_params=0.05)[0]
    assert plain.calls == hinted.calls and hinted.hints == [0.05]


def test_a_hinted_search_reaches_knob_0_when_it_already_meets_the_target():
    evaluate = HintedFakeEvaluator(1e-3, 1.0)
    knob, point, met = bisect(evaluate, None, target_params=1.0)
    assert (knob, met) == (0.0, True) and point.retained == 1.0


@settings(max_examples=60, deadline=None)
@given(
    cliff=st.floats(1e-9, 0.5),
    miss=st.one_of(st.none(), st.floats(1e-3, 1e3)),
    target=st.floats(0.01, 0.9),
)
def test_any_hint_leaves_the_size_search_correct(cliff, miss, target):
    """Whatever the cliff, the target and the hint's error (or no hint), the search meets
    the target closely (within 0.5% of it or one neuron a layer: where it may stop, so
    not always at the smallest knob), in a bounded number of steps."""
    evaluate = HintedFakeEvaluator(cliff, miss)
    _assert_closely_met(evaluate, target, smallest=False)
    assert len(evaluate.calls) <= 30, evaluate.calls


class PlateauEvaluator(FakeEvaluator):
    """Sizes that stay just above the target over a plateau of knobs, then meet it
    closely only over a narrow window, then fall far below: interpolating on the size
    from the plateau creeps along it by the interpolation margin."""

    def __init__(self, target: float) -> None:
        super().__init__(1.0)
        total = (N_IN + 1) * WIDTH + (WIDTH + 1) * WIDTH + (WIDTH + 1) * N_OUT

        def width_for(share: float) -> int:
            roots = np.roots([1.0, N_IN + 2 + N_OUT, N_OUT - share * total]).real
            return int(roots.max())

        self.plateau, self.window = width_for(target) + 1, width_for(target)
        self.far = width_for(0.6 * target)

    def width(self, knob: float) -> int:
        if knob < 1.0:
            return WIDTH
        if knob < 1.5:
            return self.plateau
        return self.window if knob < 1.55 else self.far


@pytest.mark.parametrize("target", [0.3, 0.05])
def test_a_plateau_above_the_target_is_bisected_not_crept_along(target, monkeypatch):
    evaluate = PlateauEvaluator(target)
    monkeypatch.setattr(
        "test_bisection._widths", lambda knob, cliff: evaluate.width(knob), raising=True
    )
    _, point, met = bisect(evaluate, None, target_params=target)
    # 13 steps at 30% when each interpolation off the plateau moved by its margin
    assert len(evaluate.calls) <= 11, evaluate.calls
    assert met and point.params_after == evaluate(1.52)[2].params_after


class ShareErrorFakeEvaluator(FakeEvaluator):
    """A knob that is the share of neurons left out (span-uniform's: width (1 - knob) x
    1,000 in both layers, up to knob 1), with an error that grows as it shrinks."""

    def width(self, knob: float) -> int:
        return max(1, round(WIDTH * (1.0 - knob)))

    def error(self, retained: float) -> float:
        return 1.0 - retained


def test_an_error_search_stops_when_its_bracket_is_within_the_size_tolerance():
    """On 1,000-wide layers one neuron is 0.1% of the chain: an error search stops once
    the good and the failing step differ by at most 0.5% of the parameters, instead of
    bisecting to one neuron (MiniLM's 1,536-wide FFNs took 13 refined steps)."""
    evaluate = ShareErrorFakeEvaluator(0.0)
    _, point, met = bisect(evaluate, 1.0, max_error=0.5)
    assert met and point.error <= 0.5
    failing = [p for _, _, p in evaluate.cache.values() if p.error > 0.5]
    nearest = max(p.params_after for p in failing)
    assert point.params_after - nearest <= 0.005 * point.params_before
    assert len(evaluate.calls) <= 11, evaluate.calls  # to one neuron: 12


class CappedFakeEvaluator(FakeEvaluator):
    """Every knob above 0 keeps at most ``cap`` neurons a layer, knob 0 all of them: span
    with fewer fitting rows than neurons (at most their rank)."""

    def __init__(self, cliff: float, cap: int) -> None:
        super().__init__(cliff)
        self.cap = cap

    def width(self, knob: float) -> int:
        return WIDTH if knob == 0 else min(self.cap, _widths(knob, self.cliff))


@pytest.mark.parametrize("upper_limit", [1.0, None])
def test_a_size_target_above_the_cap_next_to_knob_0_ends_in_a_few_steps(upper_limit):
    """No knob but 0 reaches the target: the largest network within it is next to knob 0,
    found in a few steps, not 24 halvings towards 0 (the 4 x 4096 model at 0.2 with
    2,048 rows: 26 steps, 8 minutes)."""
    evaluate = CappedFakeEvaluator(1e-5, cap=300)
    knob, point, met = bisect(evaluate, upper_limit, target_params=0.5)
    assert met and 0 < knob and point.params_after == evaluate(knob * 1e-6)[2].params_after
    assert evaluate.width(knob) == 300
    assert len(evaluate.calls) <= 14, evaluate.calls


def test_a_cap_below_the_cliff_leaves_the_search_its_answer():
    """With the cap above the target's width the search still meets the target closely."""
    _assert_closely_met(CappedFakeEvaluator(1e-5, cap=900), 0.5)
