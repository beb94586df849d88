"""Choosing a method's knob: sweeps, and bisection to a size or an error target.

Every method has one knob that trades size for accuracy, larger meaning smaller: epsilon
for lumping, sparsity for pruning, 1 - tau for linear folding. A point of the trade-off
is the network the user would get at that knob, refined when refinement is on, and its
error is measured by onnxruntime on the held-out calibration rows (or on ``--val``), which
no fit saw: the relative RMSE increase against targets when the data carries them,
otherwise the RMSE of the output change relative to the spread of the original outputs.

Refinement inside the search is warm-started: each search step refines for a share of
the budget, and the chosen point continues from where its search step stopped for the
rest, so the whole search costs a few refinements rather than one per step.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from onnx_lump.api import Report, compress, refines_by_default
from onnx_lump.data.cache import SearchCache
from onnx_lump.data.holdout import DEFAULT_HOLDOUT, output_error, stacked_outputs
from onnx_lump.data.refine import RefineOptions
from onnx_lump.errors import LumpError
from onnx_lump.methods import Method
from onnx_lump.runtime import resolve_providers

__all__ = ["Evaluator", "SweepPoint", "bisect", "parse_knobs", "sweep", "write_table"]

logger = logging.getLogger(__name__)

_MAX_DOUBLINGS = 40
# The share of the refinement budget each search step spends; the chosen point gets the rest.
SEARCH_REFINE_SHARE = 0.2


@dataclass(frozen=True)
class SweepPoint:
    knob: float
    params_before: int
    params_after: int
    retained: float
    error: float  # NaN where not measured (the steps of a size search)
    seconds: float

    def summary(self) -> str:
        """``12.3% kept, error 4.56%`` (the error only where it was measured)."""
        kept = f"{100 * self.retained:.1f}% kept"
        return kept if np.isnan(self.error) else f"{kept}, error {100 * self.error:.3g}%"


class Evaluator:
    """Compress with the method a knob value builds, and measure size and held-out error.

    ``compress_options`` go to :func:`onnx_lump.api.compress` (``holdout``, ``seed``,
    ``validation``, ``validation_targets``, ``providers``). ``refine`` is the budget of
    the network finally returned (None: compress's default; False: off). With
    ``caches`` (the default) the steps share what does not depend on the knob
    (:mod:`onnx_lump.data.cache`)."""

    def __init__(
        self,
        model: onnx.ModelProto,
        make_method: Callable[[float], Method],
        calibration: Mapping[str, np.ndarray] | None,
        *,
        validation: Mapping[str, np.ndarray] | None = None,
        validation_targets: np.ndarray | None = None,
        holdout: float = DEFAULT_HOLDOUT,
        seed: int = 0,
        refine: RefineOptions | bool | None = None,
        providers: Sequence[str] = ("cpu",),
        progress: Callable[[SweepPoint], None] | None = None,
        caches: bool = True,
    ) -> None:
        if calibration is None and validation is None:
            raise LumpError(
                "choosing the knob needs data to measure the error on: give --calib or --val"
            )
        self.model = model
        self.make_method = make_method
        self.calibration = calibration
        self.validation = validation
        self.validation_targets = validation_targets
        self.options = {"holdout": holdout, "seed": seed, "providers": list(providers)}
        if calibration is not None:
            self.options.update(validation=validation, validation_targets=validation_targets)
        self.final_refine = refine
        self._runtime = resolve_providers(list(providers))
        self._reference = None
        self.progress = progress
        # knob -> step, for steps refined (True) and not (False); see unrefined_steps
        self._steps: dict[bool, dict[float, tuple[onnx.ModelProto, Report, SweepPoint]]] = {
            True: {},
            False: {},
        }
        self._refine_steps = True
        # what every step shares (chain inputs, the original's activations, repeated layer
        # states); the results are the same without it, only slower
        self.data_cache = SearchCache() if caches else None

    @property
    def cache(self) -> dict[float, tuple[onnx.ModelProto, Report, SweepPoint]]:
        """The steps evaluated so far (in the current mode), by knob."""
        return self._steps[self._refine_steps]

    @contextlib.contextmanager
    def unrefined_steps(self, active: bool = True):
        """Within this block, search steps are not refined and their error is not measured
        (``point.error`` is NaN): for a size target, where the error does not steer the
        search, the chosen point is then refined once, with the whole budget, and
        measured, by :meth:`finish`."""
        before, self._refine_steps = self._refine_steps, not active and self._refine_steps
        try:
            yield self
        finally:
            self._refine_steps = before

    def _search_refine(self, method: Method) -> RefineOptions | bool | None:
        if not self._refine_steps:
            return False
        full = self._full_refine(method)
        if not isinstance(full, RefineOptions):
            return full
        return dataclasses.replace(
            full,
            max_iters=max(1, round(SEARCH_REFINE_SHARE * full.max_iters)),
            max_seconds=SEARCH_REFINE_SHARE * full.max_seconds,
        )

    def _full_refine(self, method: Method) -> RefineOptions | bool | None:
        refine = self.final_refine
        if refine is False or self.calibration is None:
            return False
        if refine is None:  # compress's default
            return RefineOptions() if refines_by_default(method) else False
        return RefineOptions() if refine is True else refine

    def _error(self, model: onnx.ModelProto, report: Report) -> float:
        if not self._refine_steps:
            return float("nan")  # a size step: steered by its size, not measured
        if self.calibration is not None:
            return float(report.holdout_error)
        # data-free method judged on --val: nothing was fitted on it
        if self._reference is None:
            self._reference = stacked_outputs(self.model, self.validation, self._runtime)
        output = stacked_outputs(model, self.validation, self._runtime)
        return output_error(self._reference, output, self.validation_targets)

    def __call__(self, knob: float) -> tuple[onnx.ModelProto, Report, SweepPoint]:
        knob = float(knob)
        if knob in self.cache:
            return self.cache[knob]
        started = time.perf_counter()
        method = self.make_method(knob)
        reduced, report = compress(
            self.model,
            method,
            calibration=self.calibration,
            refine=self._search_refine(method),
            verify=False,
            cache=self.data_cache,
            measure_holdout=self._refine_steps,
            **self.options,
        )
        point = SweepPoint(
            knob,
            report.params_before,
            report.params_after,
            report.retained,
            self._error(reduced, report),
            time.perf_counter() - started,
        )
        logger.info("knob %.6g: %s", knob, point.summary())
        if self.progress is not None:
            self.progress(point)
        self.cache[knob] = (reduced, report, point)
        return self.cache[knob]

    def finish(self, knob: float, **verify_options) -> tuple[onnx.ModelProto, Report]:
        """The network to hand to the user at ``knob``: the search step's network,
        refined for the rest of the budget (warm start), and verified with
        ``verify_options`` (``atol``, ``rtol``, ``n_check``, ...)."""
        knob = float(knob)
        method = self.make_method(knob)
        full = self._full_refine(method)
        unrefined = knob not in self._steps[True] and knob in self._steps[False]
        if unrefined:  # a step of a size search: refined here, with the whole budget
            _, report, _ = self._steps[False][knob]
        else:
            _, report, _ = self(knob)
        refine: RefineOptions | bool = False
        if isinstance(full, RefineOptions):
            used = sum(r.iterations for r in report.refine)
            budget = max(0, full.max_iters - used // max(1, len(report.refine)))
            spent = 0.0 if unrefined else self._search_refine(method).max_seconds
            refine = dataclasses.replace(
                full,
                max_iters=budget,
                max_seconds=max(full.max_seconds - spent, 1e-3),
            )
        final, final_report = compress(
            self.model,
            method,
            calibration=self.calibration,
            refine=refine,
            warm_start=report.results,
            cache=self.data_cache,
            **self.options,
            **verify_options,
        )
        final_report.refine = _merge_refine(report.refine, final_report.refine)
        if self.calibration is None:
            final_report.holdout_error = self._error(final, final_report)
        return final, final_report


def _merge_refine(search: list, final: list) -> list:
    """Refinement stats of a warm-started chain: both legs' iterations and time, from
    the search step's starting error to the final one."""
    if not final:
        return search
    if not search:
        return final
    merged = []
    for first, second in zip(search, final, strict=True):
        merged.append(
            dataclasses.replace(
                second,
                iterations=first.iterations + second.iterations,
                seconds=first.seconds + second.seconds,
                fit_before=first.fit_before,
                holdout_before=first.holdout_before,
            )
        )
    return merged


def parse_knobs(spec: str) -> list[float]:
    """``0,0.1,0.5`` or ``start:stop:step`` (stop included) as a list of values."""
    try:
        if ":" in spec:
            start, stop, step = (float(v) for v in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            return [round(start + i * step, 12) for i in range(count)]
        knobs = [float(v) for v in spec.split(",") if v.strip()]
        if not knobs or not all(np.isfinite(knobs)):
            raise ValueError
        return knobs
    except ValueError:
        raise LumpError(
            f"--sweep '{spec}' is not a list 'a,b,c' or a range 'start:stop:step'"
        ) from None


def sweep(evaluate: Evaluator, knobs: Sequence[float]) -> list[SweepPoint]:
    return [evaluate(k)[2] for k in knobs]


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
    evaluate: Evaluator,
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
        return point.retained > target_params  # still too big: go further

    # A size target is steered by sizes only: its steps need no refinement.
    with evaluate.unrefined_steps(max_error is None):
        return _bisect(evaluate, upper_limit, target_params, max_error, steps, good)


def _bisect(evaluate, upper_limit, target_params, max_error, steps, good):
    low = evaluate(0.0)
    if not good(low[2]):  # knob 0 already fails the error target, or meets the size target
        result = low
    else:
        high = _bracket(evaluate, good, upper_limit)
        if high is None:  # nothing up to the limit fails: the largest knob tried is best
            result = evaluate(max(evaluate.cache))
        else:
            # An unbounded knob (epsilon) matters by its order of magnitude: look down from
            # the bracket a factor at a time, then split the interval in log space.
            geometric = upper_limit is None
            lo, hi = _descend(evaluate, good, low, high) if geometric else (low, high)
            interpolate = target_params is not None
            for _ in range(steps):
                if _resolved(lo, hi, target_params, max_error):
                    break
                width = _width(lo[2], hi[2], geometric)
                mid = evaluate(_midpoint(lo[2], hi[2], geometric, target_params, interpolate))
                if good(mid[2]):
                    lo = mid
                else:
                    hi = mid
                # interpolation on the size while it at least halves the interval, else
                # a bisection: never more than twice the steps of bisection alone
                interpolate = target_params is not None and not (
                    interpolate and _width(lo[2], hi[2], geometric) > 0.5 * width
                )
            result = lo if max_error is not None else hi
    point = result[2]
    met = (max_error is None or point.error <= max_error) and (
        target_params is None or point.retained <= target_params
    )
    return point.knob, point, met


# Looking down from the bracket, each step divides the knob by this; a knob this many
# times smaller than the bracket is as good as 0 (linear bisection from there).
_DESCENT_FACTOR = 16.0
_DESCENT_FLOOR = 1e-12
# An interpolated knob stays this share of the (log) interval away from either end.
_INTERPOLATION_MARGIN = 0.05
# Knob values closer than this (relative) are not told apart.
_KNOB_RESOLUTION = 1e-4
# A size target is met closely enough within this share of it (or one neuron a layer):
# where a merge changes several layers at once no knob may land closer.
_SIZE_TOLERANCE = 0.005


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
    if interpolate and lo.retained > hi.retained > 0 and target > 0:
        share = np.log(lo.retained / target) / np.log(lo.retained / hi.retained)
        share = min(max(share, _INTERPOLATION_MARGIN), 1.0 - _INTERPOLATION_MARGIN)
    mid = a + share * (b - a)
    return float(np.exp(mid)) if log else float(mid)


def _resolved(lo, hi, target_params: float | None, max_error: float | None) -> bool:
    """True when finer knob values cannot matter: the two points' widths are within one
    neuron, their knobs within :data:`_KNOB_RESOLUTION`, or a size target is met
    closely enough (within one neuron a layer or :data:`_SIZE_TOLERANCE` of it)."""
    if _close(lo[1], hi[1]) or hi[2].knob - lo[2].knob <= _KNOB_RESOLUTION * hi[2].knob:
        return True
    report = hi[1]
    if target_params is None or max_error is not None or not report.structured:
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


def _bracket(evaluate: Evaluator, good, upper_limit: float | None):
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


def write_table(points: Sequence[SweepPoint], path: Path, knob_name: str) -> None:
    rows = [
        {knob_name: p.knob, **{k: v for k, v in asdict(p).items() if k != "knob"}} for p in points
    ]
    try:
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps(rows, indent=1) + "\n")
            return
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise LumpError(f"cannot write '{path}': {exc.strerror or exc}") from exc
