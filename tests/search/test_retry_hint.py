"""The size search's retry hint follows the later layers as the last step left them.

The first hint assumes every hidden layer keeps the share of its neurons the first keeps;
told how the later layers followed the first in the step it gave, the second hint must
land within the size tolerance of a target the first missed.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from onnx_lump.pipeline.report import LayerStats, Report
from onnx_lump.search import bisect
from onnx_lump.search.hints import uniform_width_share, width_ratios
from onnx_lump.types import SweepPoint


def _chain(*dims: int) -> SimpleNamespace:
    layers = [
        SimpleNamespace(in_features=a, out_features=b, n_params=a * b + b)
        for a, b in itertools.pairwise(dims)
    ]
    return SimpleNamespace(layers=layers)


@pytest.mark.parametrize("ratios", [[1.0, 0.8, 1.3], [1.0, 0.2, 0.05], [1.0, 1.0, 1.0]])
@pytest.mark.parametrize("target", [0.05, 0.3])
def test_the_width_share_with_ratios_keeps_the_target(ratios, target):
    dims = (64, 300, 200, 100, 1)
    f = uniform_width_share([_chain(*dims)], target, [ratios])
    kept = (dims[0], *(f * r * w for r, w in zip(ratios, dims[1:-1], strict=True)), dims[-1])
    total = sum(a * b + b for a, b in itertools.pairwise(dims))
    assert sum(a * b + b for a, b in itertools.pairwise(kept)) == pytest.approx(target * total)


def test_width_ratios_read_how_the_later_layers_followed_the_first():
    dims, after = (10, 100, 50, 3), (40, 10, 3)
    stats = [LayerStats(0, f"L{i}", "tanh", dims[i + 1], after[i], 1, 1) for i in range(len(after))]
    report = Report("fake", True, stats, [], 0.0)
    (ratios,) = width_ratios(report, [_chain(*dims)])
    assert ratios == pytest.approx([1.0, (10 / 50) / (40 / 100)])
    assert width_ratios(report, [_chain(10, 100, 3)]) == [None]  # not this chain's layers


N_IN, N_OUT, WIDTH, FOLLOW = 20, 3, 1000, 0.6


class FollowingEvaluator:
    """A size search's evaluator on a chain whose second hidden layer keeps ``FOLLOW``
    times the share the first keeps; its hint knows the first layer exactly (as the
    method's hint does) and the second only through ``after``."""

    def __init__(self, cliff: float = 1e-4) -> None:
        self.cliff = cliff
        self.cache: dict[float, tuple] = {}
        self.calls: list[float] = []
        self.hints: list[tuple[float, Report | None]] = []
        self.chain = _chain(N_IN, WIDTH, WIDTH, N_OUT)

    def unrefined_steps(self, active: bool = True):
        import contextlib

        return contextlib.nullcontext(self)

    def _first(self, knob: float) -> int:
        return WIDTH if knob <= self.cliff else max(1, int(WIDTH * self.cliff / knob))

    def __call__(self, knob: float):
        knob = float(knob)
        if knob not in self.cache:
            self.calls.append(knob)
            w1 = self._first(knob)
            w2 = max(1, round(FOLLOW * w1))
            widths = [(N_IN, WIDTH, w1, N_IN), (WIDTH, WIDTH, w2, w1), (WIDTH, N_OUT, N_OUT, w2)]
            layers = [
                LayerStats(0, f"L{i}", "tanh", before, after, (k + 1) * before, (k2 + 1) * after)
                for i, (k, before, after, k2) in enumerate(widths)
            ]
            report = Report("fake", True, layers, [], 0.0, widths_after=[[w1, w2]])
            point = SweepPoint(
                knob, report.params_before, report.params_after, report.retained, 0, 0
            )
            self.cache[knob] = (None, report, point)
        return self.cache[knob]

    def hint(self, target: float, after: Report | None = None) -> float:
        self.hints.append((target, after))
        ratios = None if after is None else width_ratios(after, [self.chain])
        want = uniform_width_share([self.chain], target, ratios) * WIDTH
        return self.cliff * WIDTH / (want + 0.5)  # the knob whose first width is round(want)


@pytest.mark.parametrize("target", [0.05, 0.1, 0.3])
def test_the_second_hint_follows_the_later_layers_to_the_target(target):
    evaluate = FollowingEvaluator()
    _, point, met = bisect(evaluate, None, target_params=target)
    assert met and target * (1 - 0.005) <= point.retained <= target
    first = evaluate.cache[evaluate.calls[0]][2]
    assert first.retained < target * (1 - 0.005)  # every layer alike: too small
    # the retry is told what the first step did, and lands within the tolerance
    assert evaluate.hints[1][1] is evaluate.cache[evaluate.calls[0]][1]
    assert len(evaluate.calls) == 2, evaluate.calls
