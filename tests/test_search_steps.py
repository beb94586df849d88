"""The knob search's step rules on a synthetic size curve: it looks down from the bracket
by orders of magnitude, lands on the first knob that meets a size target, and stops at the
resolution that matters instead of spending its whole step budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS

from onnx_lump.api import LayerStats, Report, compress
from onnx_lump.data.cache import SearchCache
from onnx_lump.methods import Lump
from onnx_lump.ode.equivalence import PartitionOptions
from onnx_lump.search import SweepPoint, bisect

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
        w = _widths(knob, self.cliff)
        dims = [(N_IN, WIDTH, w), (WIDTH, WIDTH, w), (WIDTH, N_OUT, N_OUT)]
        ins = [N_IN, w, w]
        layers = [
            LayerStats(0, f"L{i}", "tanh", before, after, (fan_in + 1) * before, (k + 1) * after)
            for i, ((fan_in, before, after), k) in enumerate(zip(dims, ins, strict=True))
        ]
        report = Report("fake", True, layers, [], 0.0, widths_after=[[w, w]])
        point = SweepPoint(knob, report.params_before, report.params_after, report.retained, 0, 0)
        self.cache[knob] = (None, report, point)
        return self.cache[knob]


@pytest.mark.parametrize("cliff", [1e-5, 1.1e-4, 3e-2])
@pytest.mark.parametrize("target", [0.5, 0.05])
def test_size_search_finds_the_cliff_in_few_steps(cliff, target):
    evaluate = FakeEvaluator(cliff)
    knob, point, met = bisect(evaluate, None, target_params=target)
    assert met and point.retained <= target
    # met closely: within 0.5% of the target or one neuron a layer of it
    assert point.retained >= target * (1 - 0.005) - 2 * (2 * WIDTH + N_IN + N_OUT) / (
        point.params_before
    )
    # a knob a little smaller keeps more than the target: the smallest such knob
    below = evaluate(knob * (1 - 1e-3))[2]
    assert below.retained > target or below.retained == point.retained
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
