"""Choosing a method's knob: sweeps, and bisection to a size or an error target.

Every method has one knob that trades size for accuracy, larger meaning smaller: epsilon
for lumping, sparsity for pruning, 1 - tau for linear folding. A point of the trade-off
is the network the user would get at that knob, refined when refinement is on, and its
error is measured by onnxruntime on the held-out calibration rows (or on ``--val``), which
no fit saw, by the ``metric`` chosen (:mod:`onnx_lump.data.holdout`): for ``rmse``, the
relative RMSE increase against targets when the data carries them, otherwise the RMSE of
the output change relative to the spread of the original outputs; for ``cosine``, the
mean 1 - cosine of the output rows to the original's.

Refinement inside the search is warm-started: each search step refines for a share of
the budget, and the chosen point continues from where its search step stopped for the
rest, so the whole search costs a few refinements rather than one per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnx_lump.data.cache import SearchCache
from onnx_lump.data.calibration import AUTO_MASK_INPUT, check_feeds
from onnx_lump.data.holdout import (
    DEFAULT_HOLDOUT,
    check_metric,
    output_error,
    split_calibration,
    stacked_outputs,
)
from onnx_lump.data.refine import RefineOptions
from onnx_lump.errors import LumpError
from onnx_lump.graph.io.source import to_model_proto
from onnx_lump.methods import Method
from onnx_lump.pipeline.compress import default_refine
from onnx_lump.pipeline.options import CalibrationOptions, CheckOptions
from onnx_lump.pipeline.quantize import quantized_copy
from onnx_lump.pipeline.report import Report
from onnx_lump.pipeline.run import run
from onnx_lump.progress import stage
from onnx_lump.runtime import resolve_providers
from onnx_lump.search.bisection import TimeLimitReached
from onnx_lump.search.hints import knob_hint
from onnx_lump.types import RMSE, SweepPoint, format_error

__all__ = ["FINAL_REFINE_FLOOR_SECONDS", "Evaluator"]

logger = logging.getLogger("onnx_lump.search")  # the search's notes keep their name

# A step: its network (None in the cache of an evaluator that does not keep them), its
# report and its point.
Step = tuple[onnx.ModelProto | None, Report, SweepPoint]

# The share of the refinement budget each search step spends; the chosen point gets the rest.
SEARCH_REFINE_SHARE = 0.2
# The same for a wide chain's budget in work: a twentieth, 2-3 Adam iterations on a MiniLM
# FFN (what the time cap used to leave a step; a fifth cost a --max-error search 40%
# more time), while the chosen point gets the rest (about 45).
SEARCH_WORK_SHARE = 0.05
# Past --time-limit, the network handed over still gets this much refinement.
FINAL_REFINE_FLOOR_SECONDS = 2.0


class Evaluator:
    """Compress with the method a knob value builds, and measure size and held-out error.

    Every step is one :func:`onnx_lump.pipeline.run.run` with the search's calibration
    options (``holdout``, ``seed``, ``validation``, ``validation_targets``,
    ``mask_input``, ``sequential``) and ``providers``. ``refine`` is the budget of the
    network finally returned (None: compress's default; False: off). With ``caches``
    (the default) the steps share what does not depend on the knob
    (:mod:`onnx_lump.data.cache`). With ``quantize``
    (``"int8"``) every error measured is that of the step's network quantized
    (:func:`onnx_lump.pipeline.quantize.quantized_copy`), against the original. ``metric``
    (``"rmse"`` or ``"cosine"``) is how every step's error is measured, and so what an
    error budget is in. Without ``keep_models`` a step's network is handed to the caller
    but not kept in :attr:`cache` (its report and point are): a search on a large model
    then holds one network at a time (MiniLM: 77 MB a step), and :meth:`finish` rebuilds
    the chosen one from its report; with ``quantize`` they are always kept (``finish``
    may hand a step's network over)."""

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
        mask_input: str | None = AUTO_MASK_INPUT,
        sequential: bool = False,
        quantize: str | None = None,
        deadline: float | None = None,
        metric: str = RMSE,
        keep_models: bool = True,
    ) -> None:
        if calibration is None and validation is None:
            raise LumpError(
                "choosing the knob needs data to measure the error on: give --calib or --val"
            )
        self.metric = check_metric(metric)
        self.model = to_model_proto(model)
        self.make_method = make_method
        # checked once: every step's compress then gets the same dict (caches key on it)
        if calibration is not None:
            calibration = check_feeds(calibration, model, "calibration")
        if validation is not None:
            validation = check_feeds(validation, model, "validation")
        self.calibration = calibration
        self.validation = validation
        self.validation_targets = validation_targets
        # what every step is given: --val replaces the held-out share only where there is
        # calibration to hold out from (else it is what a data-free step is judged on)
        with_data = calibration is not None
        self.data = CalibrationOptions(
            holdout,
            seed,
            validation if with_data else None,
            validation_targets if with_data else None,
            mask_input,
            sequential,
        )
        self.providers = list(providers)
        self.final_refine = refine
        self._runtime = resolve_providers(list(providers))
        self._reference: np.ndarray | None = None
        self.progress = progress
        # knob -> step, for steps refined (True) and not (False); see unrefined_steps
        self._steps: dict[bool, dict[float, Step]] = {
            True: {},
            False: {},
        }
        self._refine_steps = True
        # what every step shares (chain inputs, the original's activations, repeated layer
        # states); the results are the same without it, only slower
        self.data_cache = SearchCache() if caches else None
        # with a quantization scheme, every error measured is the quantized network's
        self.quantize = quantize
        self.keep_models = keep_models or quantize is not None
        self._rows: tuple[Mapping[str, np.ndarray], np.ndarray | None, np.ndarray] | None = None
        # past ``deadline`` (time.monotonic()), a new step raises TimeLimitReached once a
        # step exists, and refinement gets only the time left
        self.deadline = deadline
        self.timed_out = False
        # how progress names the steps (the command line's sweep calls them so)
        self.label = "search"

    @property
    def cache(self) -> dict[float, Step]:
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
            max_work=None if full.max_work is None else SEARCH_WORK_SHARE * full.max_work,
            max_seconds=self._time_left(SEARCH_REFINE_SHARE * full.max_seconds),
        )

    def _time_left(self, seconds: float, floor: float = 1e-3) -> float:
        """``seconds``, or less where the deadline comes sooner (at least ``floor``)."""
        if self.deadline is None:
            return seconds
        return min(seconds, max(self.deadline - time.monotonic(), floor))

    def _check_deadline(self) -> None:
        """Raise TimeLimitReached past the deadline, once the search has a step to return."""
        if self.deadline is None or time.monotonic() < self.deadline:
            return
        if any(self._steps.values()):
            self.timed_out = True
            raise TimeLimitReached

    def _full_refine(self, method: Method) -> RefineOptions | bool | None:
        refine, with_data = self.final_refine, self.calibration is not None
        if refine is None:  # the pipeline's default
            return default_refine(method, with_data) or False
        if refine is False or not with_data:
            return False
        return RefineOptions() if refine is True else refine

    def _error(self, model: onnx.ModelProto, report: Report) -> float:
        if not self._refine_steps:
            return float("nan")  # a size step: steered by its size, not measured
        if self.quantize is not None:
            return self._quantized_error(model)
        if self.calibration is not None:
            assert report.holdout_error is not None  # measured: refined steps, not quantized
            return float(report.holdout_error)
        # data-free method judged on --val: nothing was fitted on it
        assert self.validation is not None  # without calibration (checked in __init__)
        mask_input = self.data.mask_input
        if self._reference is None:
            self._reference = stacked_outputs(
                self.model, self.validation, self._runtime, mask_input
            )
        output = stacked_outputs(model, self.validation, self._runtime, mask_input)
        return output_error(self._reference, output, self.validation_targets, self.metric)

    def _quantized_error(self, model: onnx.ModelProto) -> float:
        """The error of ``model`` quantized, by onnxruntime on the held-out rows (or
        ``--val``) against the original."""
        assert self.quantize is not None  # called with a quantization scheme only
        if self._rows is None:
            feeds: Mapping[str, np.ndarray]
            if self.calibration is not None:
                split = split_calibration(
                    self.calibration,
                    self.data.holdout,
                    self.data.seed,
                    self.validation,
                    self.validation_targets,
                )
                feeds, targets = split.holdout, split.targets
            else:
                assert self.validation is not None  # without calibration (checked in __init__)
                feeds, targets = self.validation, self.validation_targets
            reference = stacked_outputs(self.model, feeds, self._runtime, self.data.mask_input)
            self._rows = (feeds, targets, reference)
        feeds, targets, reference = self._rows
        with quantized_copy(model, self.quantize) as (path, _):
            output = stacked_outputs(path, feeds, self._runtime, self.data.mask_input)
        return output_error(reference, output, targets, self.metric)

    def _run(
        self,
        method: Method,
        refine: RefineOptions | bool | None,
        check: CheckOptions,
        warm_start: list | None = None,
    ) -> tuple[onnx.ModelProto, Report]:
        """One pass of the pipeline over the search's model, rows and caches."""
        return run(
            self.model,
            method,
            self.calibration,
            data=self.data,
            refine=refine,
            check=check,
            providers=self.providers,
            metric=self.metric,
            warm_start=warm_start,
            cache=self.data_cache,
        )

    def __call__(self, knob: float) -> Step:
        knob = float(knob)
        if knob in self.cache:
            return self.cache[knob]
        self._check_deadline()
        step = len(self.cache) + 1
        logger.info("step %d: knob %.6g", step, knob)
        stage(f"{self.label} step {step}: knob {knob:.6g}, compressing", log=False)
        started = time.perf_counter()
        method = self.make_method(knob)
        reduced, report = self._run(
            method,
            self._search_refine(method),
            # quantized, the float network's own error is not the one steered by
            CheckOptions(verify=False, measure_holdout=self._refine_steps and not self.quantize),
        )
        point = SweepPoint(
            knob,
            report.params_before,
            report.params_after,
            report.retained,
            self._error(reduced, report),
            time.perf_counter() - started,
        )
        widths = "; ".join(" ".join(map(str, chain)) for chain in report.widths_after)
        summary = point.summary(self.metric)
        logger.info("knob %.6g: %s, hidden widths %s", knob, summary, widths)
        stage(f"{self.label} step {step}: knob {knob:.6g}: {summary}, widths {widths}", log=False)
        if self.progress is not None:
            self.progress(point)
        self.cache[knob] = (reduced if self.keep_models else None, report, point)
        return reduced, report, point

    def hint(
        self, target_params: float, after: Report | None = None, slack: float = 0.0
    ) -> float | None:
        """A knob near the one keeping ``target_params`` of the parameters, from the
        method's cheap estimate (:func:`onnx_lump.search.hints.knob_hint`, with the report of the
        step ``after`` when there is one, and ``slack``; None when it has none, or
        without calibration data). Without caches it reads the chains afresh: the same
        hint, slower."""
        if self.calibration is None:
            return None
        started = time.perf_counter()
        stage(f"{self.label}: estimating the knob for {100 * target_params:.4g}% kept", log=False)
        cache = self.data_cache if self.data_cache is not None else SearchCache(across_calls=False)
        method = self.make_method(0.0)
        knob = knob_hint(
            self.model,
            method,
            target_params,
            self.calibration,
            cache,
            data=self.data,
            providers=self.providers,
            after=after,
            slack=slack,
        )
        if knob is not None:
            logger.info(
                "hint for %.4g%% kept%s: knob %.6g (%.1f s)",
                100 * target_params,
                "" if after is None else ", the later layers as in the last report",
                knob,
                time.perf_counter() - started,
            )
        return knob

    @property
    def probes(self) -> bool:
        """Whether :meth:`probe` gives reports: the method has a cheaper variant and
        there is calibration data."""
        return self.calibration is not None and self.make_method(0.0).probe() is not None

    def probe(self, knob: float) -> Report | None:
        """The report of the method's cheaper variant at ``knob`` (:meth:`Method.probe`:
        for lumping, the merge-only path), whose widths tell a size search how the later
        layers follow the first before it takes a full step; None when the method has no
        such variant or there is no calibration data. Not a step: it is not cached as
        one, but it shares the steps' caches (a step at the same knob reuses its layer
        states)."""
        if not self.probes:
            return None
        self._check_deadline()
        method = self.make_method(float(knob)).probe()
        assert method is not None  # self.probes
        started = time.perf_counter()
        stage(f"{self.label}: probing knob {knob:.6g} ({method.describe()})", log=False)
        _, report = self._run(method, False, CheckOptions(verify=False, measure_holdout=False))
        logger.info(
            "probe at knob %.6g (%s): %.1f%% kept (%.1f s)",
            knob,
            method.describe(),
            100 * report.retained,
            time.perf_counter() - started,
        )
        return report

    def finish(self, knob: float, **verify_options) -> tuple[onnx.ModelProto, Report]:
        """The network to hand to the user at ``knob``: the search step's network,
        refined for the rest of the budget (warm start), and verified with
        ``verify_options`` (``atol``, ``rtol``, ``n_check``, ...)."""
        knob = float(knob)
        stage(f"final network at knob {knob:.6g}")
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
            searched = None if unrefined else self._search_refine(method)
            spent = searched.max_seconds if isinstance(searched, RefineOptions) else 0.0
            work = full.max_work
            if work is not None and isinstance(searched, RefineOptions):
                work -= searched.max_work or 0.0  # the step's share of the chain's work
            refine = dataclasses.replace(
                full,
                max_iters=budget,
                max_work=work,
                # past a deadline, still a short pass: the network handed over is refined
                max_seconds=self._time_left(
                    max(full.max_seconds - spent, 1e-3), FINAL_REFINE_FLOOR_SECONDS
                ),
            )
        final, final_report = self._run(
            method, refine, CheckOptions(**verify_options), warm_start=report.results
        )
        final_report = dataclasses.replace(
            final_report, refine=_merge_refine(report.refine, final_report.refine)
        )
        if self.quantize is not None and not unrefined and knob in self.cache:
            # the budget was judged on the step quantized: the longer refinement may
            # quantize worse, and then the step's network is the one handed over
            step, step_report, step_point = self.cache[knob]
            assert step is not None  # kept: quantize keeps every step's network
            error = self._quantized_error(final)
            if error > step_point.error:
                logger.info(
                    "knob %.6g: the refined network quantizes worse (%s > %s): "
                    "handing over the search step's",
                    knob,
                    format_error(error, self.metric),
                    format_error(step_point.error, self.metric),
                )
                final = step
                handed_over = (
                    f"the network of the search step is handed over: refined further, it "
                    f"quantized worse ({format_error(error, self.metric)} > "
                    f"{format_error(step_point.error, self.metric)})"
                )
                final_report = dataclasses.replace(
                    step_report, notes=[*step_report.notes, handed_over]
                )
        if self.calibration is None:
            final_report = dataclasses.replace(
                final_report, holdout_error=self._error(final, final_report)
            )
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
                budget=first.budget + second.budget,
                work_bound=first.work_bound or second.work_bound,
                fit_before=first.fit_before,
                holdout_before=first.holdout_before,
            )
        )
    return merged
