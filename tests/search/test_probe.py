"""The size search's probe: before its first step, a size search asks the method's
cheaper variant (for lumping with refits, the merge-only path) how the later layers
follow the first at the hint's knob, and redoes the hint with that; the first step then
lands where a retry would have. The probe is not a step, and a step at the probed knob
gives the same network as one without a probe before it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS
from test_retry_hint import FOLLOW, WIDTH, FollowingEvaluator

from onnx_lump.methods import Lump
from onnx_lump.methods.lumping import Reduction
from onnx_lump.ode.partition import PartitionOptions, Similarity
from onnx_lump.search import Evaluator, bisect

DEMO = MODELS / "rn_tanh_2x64.onnx"
CALIB = dict(np.load(MODELS / "rn_calib.npz"))


class ProbedEvaluator(FollowingEvaluator):
    """:class:`FollowingEvaluator` with a probe: a cheap variant whose later layers
    follow the first as a step's do (its network is not a step: it is not cached as one)."""

    probes = True

    def __init__(self) -> None:
        super().__init__()
        self.probed: list[float] = []
        self.slacks: list[float] = []

    def hint(self, target: float, after=None, slack: float = 0.0) -> float:
        self.slacks.append(slack)
        return super().hint(target, after)

    def probe(self, knob: float):
        self.probed.append(knob)
        return FollowingEvaluator(self.cliff)(knob)[1]


@pytest.mark.parametrize("target", [0.05, 0.1, 0.3])
def test_the_probe_puts_the_first_step_within_the_tolerance(target):
    evaluate = ProbedEvaluator()
    _, point, met = bisect(evaluate, None, target_params=target)
    assert met and target * (1 - 0.005) <= point.retained <= target
    assert len(evaluate.probed) == 1 and len(evaluate.calls) == 1, evaluate.calls
    # the probe was at the first hint (a rough one), and the step at the hint redone
    # (exact) with its widths
    first_hint, probed_hint = evaluate.hints[:2]
    assert first_hint[1] is None and probed_hint[1] is not None
    assert evaluate.slacks[:2] == [0.01, 0.0]
    assert evaluate.probed[0] not in evaluate.cache  # a probe is not a step


def test_without_a_probe_the_first_step_misses():
    """The control: every layer assumed alike, the first step keeps too little (the
    second layer keeps FOLLOW = 0.6 times the first's share), so a retry is needed."""
    assert FOLLOW < 1 and WIDTH > 100
    evaluate = FollowingEvaluator()
    bisect(evaluate, None, target_params=0.1)
    assert len(evaluate.calls) == 2


def test_lumping_probes_with_its_merge_only_path():
    options = PartitionOptions(1e-3, similarity=Similarity.DATA)
    probe = Lump(options).probe()
    assert probe == Lump(options, refit=False)
    assert Lump(options, refit=False).probe() is None  # already the cheap path
    assert Lump(options, reduction=Reduction.SPAN).probe() is None


def _evaluator() -> Evaluator:
    return Evaluator(
        onnx.load(DEMO),
        lambda eps: Lump(PartitionOptions(eps, similarity=Similarity.DATA)),
        CALIB,
        refine=False,
    )


def test_a_probe_is_the_merge_only_network_and_changes_no_step():
    knob = 0.3
    probed = _evaluator()
    report = probed.probe(knob)
    merge_only = Evaluator(
        onnx.load(DEMO),
        lambda eps: Lump(PartitionOptions(eps, similarity=Similarity.DATA), refit=False),
        CALIB,
        refine=False,
    )
    with merge_only.unrefined_steps():
        _, expected, _ = merge_only(knob)
    assert [s.width_after for s in report.layers] == [s.width_after for s in expected.layers]
    assert report.params_after == expected.params_after
    assert knob not in probed.cache  # not a step

    # a step at the probed knob, sharing the probe's caches, is the step without them
    with probed.unrefined_steps():
        after_probe, after_report, _ = probed(knob)
    plain = _evaluator()
    with plain.unrefined_steps():
        alone, alone_report, _ = plain(knob)
    assert after_report.params_after == alone_report.params_after
    for a, b in zip(after_probe.graph.initializer, alone.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))


def test_methods_without_a_probe_search_as_before():
    evaluate = Evaluator(
        onnx.load(DEMO),
        lambda eps: Lump(PartitionOptions(eps, similarity=Similarity.DATA), refit=False),
        CALIB,
        refine=False,
    )
    assert evaluate.probe(0.3) is None
    _, point, met = bisect(evaluate, None, target_params=0.3)
    assert met and point.retained <= 0.3
