"""Bisection of a method's knob to a size or an error target.

A size target (``target_params``) is steered by sizes only; an error target
(``max_error``) by the held-out error of each step. An unbounded knob (epsilon) matters
by its order of magnitude, so the search brackets the target in log space: from the
method's hint where it has one (``evaluate.hint``: where the first hidden layer keeps the
share of its neurons the target implies), else by doubling from 1 and looking down a
factor at a time. It then splits the bracket, interpolating the size where that closes
in on the target, and stops at the resolution that matters: one neuron a layer.
"""

from __future__ import annotations

import itertools
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

from onnx_lump.errors import LumpError
from onnx_lump.pipeline.report import Report
from onnx_lump.types import SweepPoint

__all__ = ["HintedSearchTarget", "SearchTarget", "TimeLimitReached", "bisect"]

# one search step: the network (whatever the target makes), its report and its point
Step = tuple[Any, Report, SweepPoint]


class SearchTarget(Protocol):
    """What :func:`bisect` searches over (:class:`onnx_lump.search.Evaluator` is one):
    a step at a knob, the steps taken so far by knob, and a mode in which steps are not
    refined. A target may also be a :class:`HintedSearchTarget`; bisect looks for
    ``hint`` and ``probes`` on it."""

    @property
    def cache(self) -> dict[float, Step]: ...

    def __call__(self, knob: float) -> Step: ...

    def unrefined_steps(self, active: bool = True) -> AbstractContextManager[Any]: ...


class HintedSearchTarget(SearchTarget, Protocol):
    """A :class:`SearchTarget` with a cheap estimate of the knob for a size target
    (``hint``) and, where ``probes``, a cheaper variant's report at a knob (``probe``)."""

    def hint(
        self, target_params: float, after: Report | None = None, slack: float = 0.0
    ) -> float | None: ...

    @property
    def probes(self) -> bool: ...

    def probe(self, knob: float) -> Report | None: ...


class TimeLimitReached(Exception):
    """Raised by a search target asked for a new step after its time limit: :func:`bisect`
    then returns the best step reached so far."""


_MAX_DOUBLINGS = 40


def _close(low: Report, high: Report) -> bool:
    """True when finer knob values cannot matter: no layer's width differs by more than
    one neuron between two points (structured methods), or their sizes by less than
    0.1% of the original (unstructured ones)."""
    if not low.structured:
        return abs(low.params_after - high.params_after) <= 1e-3 * low.params_before
    for lows, highs in zip(low.widths_after, high.widths_after, strict=True):
        if any(abs(a - b) > 1 for a, b in zip(lows, highs, strict=True)):
            return False
    return True


def bisect(
    evaluate: SearchTarget,
    upper_limit: float | None,
    target_params: float | None = None,
    max_error: float | None = None,
    steps: int = 24,
) -> tuple[float, SweepPoint, bool]:
    """The knob meeting the targets: with ``max_error``, the largest knob whose error is
    within it; else with ``target_params`` (a fraction), the smallest knob keeping at
    most that share of the parameters. Returns the knob, its point, and whether every
    target given is met; when not met, the point is the closest one reached (the
    smallest network for a size target, the most accurate for an error target)."""
    if target_params is None and max_error is None:
        raise LumpError("give --target-params or --max-error")

    def good(point: SweepPoint) -> bool:
        if max_error is not None:
            return point.error <= max_error
        assert target_params is not None  # one of the two is given (checked above)
        return point.retained > target_params  # still too big: go further

    # A size target is steered by sizes only: its steps need no refinement.
    with evaluate.unrefined_steps(max_error is None):
        try:
            return _bisect(evaluate, upper_limit, target_params, max_error, steps, good)
        except TimeLimitReached:
            return _best_so_far(evaluate, target_params, max_error)


def _best_so_far(
    evaluate: SearchTarget, target_params: float | None, max_error: float | None
) -> tuple[float, SweepPoint, bool]:
    """The best step taken when time ran out: for an error target the smallest network
    within it (else the most accurate), for a size target the largest network within it
    (else the smallest), with whether every target given is met."""
    points = [step[2] for step in evaluate.cache.values()]
    if not points:
        raise LumpError("the time limit was reached before the first search step")
    if max_error is not None:
        within = [p for p in points if p.error <= max_error]
        point = (
            min(within, key=lambda p: p.params_after)
            if within
            else min(points, key=lambda p: p.error)
        )
    else:
        assert target_params is not None, "a size target when no error target"
        within = [p for p in points if p.retained <= target_params]
        point = (
            max(within, key=lambda p: p.params_after)
            if within
            else min(points, key=lambda p: p.params_after)
        )
    met = (max_error is None or point.error <= max_error) and (
        target_params is None or point.retained <= target_params
    )
    return point.knob, point, met


def _bisect(evaluate, upper_limit, target_params, max_error, steps, good):
    geometric = upper_limit is None
    # A size target starts from the method's hint when it has one (on a bounded knob only
    # span's share of energy has one); knob 0 is then evaluated only if the search comes
    # down to it.
    bracket = _hinted(evaluate, good, target_params) if max_error is None else None
    if bracket is None:
        low = evaluate(0.0)
        bracket = (
            (low, low) if not good(low[2]) else _initial_bracket(evaluate, good, low, upper_limit)
        )
    lo, hi = bracket
    if not good(lo[2]):  # knob 0 already fails the error target, or meets the size target
        result = lo
    elif hi is None:  # nothing up to the limit fails: the largest knob tried is best
        result = evaluate(max(evaluate.cache))
    else:
        lo, hi = _narrow(evaluate, good, lo, hi, geometric, target_params, max_error, steps)
        result = lo if max_error is not None else hi
    point = result[2]
    met = (max_error is None or point.error <= max_error) and (
        target_params is None or point.retained <= target_params
    )
    return point.knob, point, met


def _initial_bracket(evaluate, good, low, upper_limit):
    """(good, bad) steps around the target from knob 0 (``low``, good); bad is None when
    no knob up to the limit (or to one neuron a layer) fails."""
    high = _bracket(evaluate, good, upper_limit)
    if high is None:
        return low, None
    # An unbounded knob (epsilon) matters by its order of magnitude: look down from the
    # bracket a factor at a time (then the interval is split in log space).
    return _descend(evaluate, good, low, high) if upper_limit is None else (low, high)


def _narrow(evaluate, good, lo, hi, geometric, target_params, max_error, steps):
    """Split (lo, hi) until :func:`_resolved`, in at most ``steps`` steps: for a size
    target where the size, interpolated, would meet it, while that keeps closing in (a
    step halves the interval, or the nearer end's distance to the target in log size),
    else one step in the middle before interpolating again; for an error target in the
    middle. A size search from knob 0 also tries a knob next to 0 once (see below)."""
    interpolate = target_params is not None
    plateau = False
    near_zero = lo[2].knob == 0 and target_params is not None
    top = max(evaluate.cache)  # the largest knob tried: the bracket's bad end
    for _ in range(steps):
        if _resolved(lo, hi, target_params, max_error):
            break
        # knob 0 is the good end: once the bad end is a thousandth of the largest knob
        # tried (at once where the look down from the bracket found no good knob above
        # 0), try next to 0. Within the target there too, no knob above 0 keeps more
        # (span with fewer fitting rows than neurons is capped at their rank: 24 halvings
        # towards 0 took 8 minutes on the 4 x 4096 model at 0.2); else it is a closer
        # good end.
        if near_zero and hi[2].knob <= _NEAR_ZERO_SHARE * top:
            near_zero = False
            near = evaluate(hi[2].knob * _DESCENT_FLOOR)
            if not good(near[2]):
                return lo, near
            lo = near
            continue
        width = _width(lo[2], hi[2], geometric)
        gap = _size_gap(lo[2], hi[2], target_params)
        ends = (lo[2].params_after, hi[2].params_after)
        mid = evaluate(_midpoint(lo[2], hi[2], geometric, target_params, interpolate))
        if good(mid[2]):
            lo = mid
        else:
            hi = mid
        closing = _width(lo[2], hi[2], geometric) <= 0.5 * width or (
            _size_gap(lo[2], hi[2], target_params) <= 0.5 * gap
        )
        # an interpolated step whose size did not move landed on a plateau, along which
        # interpolating on the size creeps by its margin: bisect until a size is new
        moved = mid[2].params_after not in ends
        plateau = not moved and (plateau or interpolate)
        interpolate = (
            target_params is not None and not plateau and not (interpolate and not closing)
        )
    return lo, hi


def _size_gap(lo: SweepPoint, hi: SweepPoint, target: float | None) -> float:
    """How far (in log size) the nearer of two steps is from a size target."""
    if target is None or target <= 0 or min(lo.retained, hi.retained) <= 0:
        return float("inf")
    return float(min(abs(np.log(p.retained / target)) for p in (lo, hi)))


# Looking down from the bracket, each step divides the knob by this; a knob this many
# times smaller than the bracket is as good as 0 (linear bisection from there).
_DESCENT_FACTOR = 16.0
_DESCENT_FLOOR = 1e-12
# An interpolated knob stays this share of the (log) interval away from either end.
_INTERPOLATION_MARGIN = 0.05
# A size search narrowing from knob 0 tries a knob next to 0 (the bad end times
# _DESCENT_FLOOR) once its bad end is this share of the largest knob tried.
_NEAR_ZERO_SHARE = 1e-3
# Knob values closer than this (relative) are not told apart.
_KNOB_RESOLUTION = 1e-4
# A size target is met closely enough within this share of it (or one neuron a layer):
# where a merge changes several layers at once no knob may land closer.
_SIZE_TOLERANCE = 0.005


# From the method's hint, a size search looks for the other side of the target at the
# hints for the middle of the tolerance (see _met_closely) these ratios further on the
# side the first step missed (each hint taking the widths the last step left), then at
# the last ratio squared each step, up to _HINT_STEPS steps in all before it falls back to
# the hint-free bracket. Given how the later layers followed the first, the hint is close
# (on the wide benchmark model 4.98% kept for an aim of 4.99%), so the first retry aims at
# the tolerance itself.
_HINT_RATIOS = (1.0, 1.0 + 8 * _SIZE_TOLERANCE, 1.25)
_HINT_STEPS = 8
# The hint a probe is taken at may leave the first layer this share of its width short
# (on the wide benchmark model 10 groupings of that layer instead of 13).
_PROBE_SLACK = 0.01


def _hint_ratio(step: int) -> float:
    if step < len(_HINT_RATIOS):
        return _HINT_RATIOS[step]
    return _HINT_RATIOS[-1] ** (2 ** (step - len(_HINT_RATIOS) + 1))


def _hinted(evaluate, good, target_params: float):
    """The bracket (good, bad) found from the method's hint for the target
    (``evaluate.hint(target, after)``, optional; ``after`` the report of the last step,
    whose layer widths say how the later layers follow the first; where
    ``evaluate.probes``, the first hint is redone after a probe, see :func:`_probed`):
    the hint's step, then
    steps at the hints for targets a growing ratio (:data:`_HINT_RATIOS`) further on the
    side the first one missed, or at least 1.25 times its knob where the hint does not
    move (or, after the first retries, moves less). A step that meets the target closely
    enough (see :func:`_met_closely`) ends the search as ``(step, step)``.
    ``(good, None)`` when knobs up to one neuron a layer stay good; ``(knob 0's step,
    bad)`` when the search comes down to knob 0; None without a hint or a bracket within
    :data:`_HINT_STEPS`."""
    hint = getattr(evaluate, "hint", None)
    if hint is None:
        return None
    probing = bool(getattr(evaluate, "probes", False))
    # a hint for the probe only needs to be rough: the hint redone after it is exact
    first = hint(target_params, slack=_PROBE_SLACK) if probing else hint(target_params)
    if first is None or first <= 0:  # no hint, or knob 0 may do already
        return None
    middle = target_params * (1.0 - 0.5 * _SIZE_TOLERANCE)
    if probing:
        first = _probed(evaluate, hint, first, middle)
    previous = evaluate(first)
    if _met_closely(previous[1], target_params) and previous[2].retained < 1.0:
        return previous, previous  # (keeping everything, knob 0 is the one to hand over)
    upward = good(previous[2])  # still too big: larger knobs
    for step in range(_HINT_STEPS):
        if upward and previous[2].params_after <= _floor(previous[1]):
            return previous, None  # one neuron a layer: nothing smaller
        ratio = _hint_ratio(step)
        if not upward and target_params * ratio >= 1.0:  # no hint keeps more: knob 0
            return evaluate(0.0), previous
        hinted = hint(middle / ratio if upward else middle * ratio, previous[1])
        last = previous[2].knob
        step_ratio = max(ratio, _HINT_RATIOS[-1])  # what a distrusted hint moves by at least
        moved = last * step_ratio if upward else last / step_ratio
        trusted = step < len(_HINT_RATIOS)
        if trusted and hinted is not None and (hinted > last if upward else hinted < last):
            knob = hinted  # the first retries trust the hint
        elif hinted is None:
            knob = moved
        else:  # later ones move the knob by the ratio at least: a poor hint costs few steps
            knob = max(hinted, moved) if upward else min(hinted, moved)
        if not upward and knob <= last * _DESCENT_FLOOR:
            return evaluate(0.0), previous
        point = evaluate(knob)
        if _met_closely(point[1], target_params):
            return point, point
        if good(point[2]) != upward:
            return (previous, point) if upward else (point, previous)
        previous = point
    return None


def _probed(evaluate: HintedSearchTarget, hint, knob: float, aim: float) -> float:
    """The knob of the first step: the hint ``knob`` (from the first layer alone, every
    layer keeping its share; rough) redone for ``aim`` with the later layers as the
    method's cheaper variant (``evaluate.probe``) follows the first at ``knob``. On the
    wide benchmark model the probe's widths are within a neuron a layer of a step's at
    the same knob, so the first step lands where a second would have, for the cost of
    the merge-only path (a quarter of a step there) instead of a step."""
    report = evaluate.probe(knob)
    if report is None:
        return knob
    probed = hint(aim, report)
    return knob if probed is None or probed <= 0 else probed


def _descend(evaluate, good, low, high):
    """The bracket (good, bad) with a good knob above 0 when one is found by dividing
    the bad knob by _DESCENT_FACTOR: the size or error of a lumping changes over orders
    of magnitude of epsilon, most of them far below the first bad knob (doubling
    from 1), where halving from [0, 1] would spend a step an octave."""
    floor = high[2].knob * _DESCENT_FLOOR
    while high[2].knob / _DESCENT_FACTOR > floor:
        point = evaluate(high[2].knob / _DESCENT_FACTOR)
        if good(point[2]):
            return point, high
        high = point
    return low, high


def _width(lo: SweepPoint, hi: SweepPoint, geometric: bool) -> float:
    if geometric and lo.knob > 0:
        return float(np.log(hi.knob / lo.knob))
    return hi.knob - lo.knob


def _midpoint(
    lo: SweepPoint, hi: SweepPoint, geometric: bool, target: float | None, interpolate: bool
) -> float:
    """The next knob inside (lo, hi): where the logarithm of the size, linear in the
    knob's logarithm (or in the knob), would reach ``target`` when ``interpolate``,
    else the middle."""
    log = geometric and lo.knob > 0
    a, b = (np.log(lo.knob), np.log(hi.knob)) if log else (lo.knob, hi.knob)
    share = 0.5
    # interpolate: a size target is given
    if interpolate and target is not None and lo.retained > hi.retained > 0 and target > 0:
        share = np.log(lo.retained / target) / np.log(lo.retained / hi.retained)
        share = min(max(share, _INTERPOLATION_MARGIN), 1.0 - _INTERPOLATION_MARGIN)
    mid = a + share * (b - a)
    return float(np.exp(mid)) if log else float(mid)


def _resolved(lo, hi, target_params: float | None, max_error: float | None) -> bool:
    """True when finer knob values cannot matter: the two points' widths are within one
    neuron, their knobs within :data:`_KNOB_RESOLUTION`, a size target is met closely
    enough (within one neuron a layer or :data:`_SIZE_TOLERANCE` of it), or for an error
    target the two points' sizes differ by at most :data:`_SIZE_TOLERANCE` of the
    original's (on wide layers a neuron is a far smaller step than that: MiniLM's
    search bisected 1,536-wide FFNs to one neuron, 13 refined steps)."""
    if _close(lo[1], hi[1]) or hi[2].knob - lo[2].knob <= _KNOB_RESOLUTION * hi[2].knob:
        return True
    if max_error is not None:
        gap = abs(lo[2].params_after - hi[2].params_after)
        return gap <= _SIZE_TOLERANCE * lo[2].params_before
    if target_params is None:
        return False
    return _met_closely(hi[1], target_params)


def _met_closely(report: Report, target_params: float) -> bool:
    """True when a structured network keeps at most ``target_params`` of the parameters,
    and at least that less :data:`_SIZE_TOLERANCE` of it or one neuron a layer."""
    if not report.structured:
        return False
    slack = target_params * report.params_before - report.params_after
    tolerance = max(
        _one_neuron_each(report), _SIZE_TOLERANCE * target_params * report.params_before
    )
    return 0 <= slack <= tolerance


def _one_neuron_each(report: Report) -> int:
    """Parameters one more neuron in every hidden layer would add: its row (weights and
    bias) and its column in the next layer of the chain."""
    total = 0
    for layer, following in itertools.pairwise(report.layers):
        if layer.chain == following.chain and layer.width_after > 0:
            row = layer.params_after / layer.width_after
            total += round(row) + following.width_after
    return total


def _bracket(evaluate, good, upper_limit: float | None):
    """A point where ``good`` fails: the limit, or doubling from 1 when unbounded."""
    if upper_limit is not None:
        top = evaluate(upper_limit)
        return None if good(top[2]) else top
    knob = 1.0
    for _ in range(_MAX_DOUBLINGS):
        point = evaluate(knob)
        if not good(point[2]):
            return point
        if point[2].params_after <= _floor(point[1]):  # one neuron a layer: nothing smaller
            return None
        knob *= 2.0
    return None


def _floor(report: Report) -> int:
    """Parameters of the network reduced to its output layers and one neuron a layer
    (what a point whose widths are all 1 keeps)."""
    if any(w != 1 for widths in report.widths_after for w in widths):
        return -1
    return report.params_after
