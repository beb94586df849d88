"""Choosing a method's knob: sweeps, and bisection to a size or an error target.

Every method has one knob that trades size for accuracy, larger meaning smaller: epsilon
for lumping, sparsity for pruning, 1 - tau for linear folding. A point of the trade-off
is measured by running the compressed model in onnxruntime on the calibration inputs (or
on separate validation inputs): the error is the relative RMSE increase against targets
when the data carries them, otherwise the RMSE of the output change relative to the
spread (standard deviation) of the original outputs.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from onnx_lump.api import Report, compress
from onnx_lump.errors import LumpError
from onnx_lump.methods import Method
from onnx_lump.runtime import resolve_providers, run_model

__all__ = ["Evaluator", "SweepPoint", "bisect", "parse_knobs", "sweep", "write_table"]

_MAX_DOUBLINGS = 40


@dataclass(frozen=True)
class SweepPoint:
    knob: float
    params_before: int
    params_after: int
    retained: float
    error: float
    seconds: float


class Evaluator:
    """Compress with the method a knob value builds, and measure size and error."""

    def __init__(
        self,
        model: onnx.ModelProto,
        make_method: Callable[[float], Method],
        calibration: Mapping[str, np.ndarray] | None,
        evaluation: Mapping[str, np.ndarray],
        targets: np.ndarray | None = None,
        providers: Sequence[str] = ("cpu",),
    ) -> None:
        self.model = model
        self.make_method = make_method
        self.calibration = calibration
        self.evaluation = evaluation
        self.targets = targets
        self.providers = list(providers)
        self._runtime = resolve_providers(self.providers)
        self._reference = self._outputs(model)

    def _outputs(self, model: onnx.ModelProto) -> np.ndarray:
        values = run_model(model, self.evaluation, self._runtime)
        return np.concatenate(
            [np.asarray(v, np.float64).reshape(len(v), -1) for v in values.values()], axis=1
        )

    def error(self, model: onnx.ModelProto) -> float:
        output = self._outputs(model)
        if self.targets is not None:
            targets = np.asarray(self.targets, np.float64).reshape(output.shape)
            base = float(np.sqrt(np.mean((self._reference - targets) ** 2)))
            now = float(np.sqrt(np.mean((output - targets) ** 2)))
            return (now - base) / base if base > 0 else now
        spread = float(self._reference.std()) or 1.0
        return float(np.sqrt(np.mean((output - self._reference) ** 2))) / spread

    def __call__(self, knob: float) -> tuple[onnx.ModelProto, Report, SweepPoint]:
        started = time.perf_counter()
        reduced, report = compress(
            self.model,
            self.make_method(knob),
            calibration=self.calibration,
            verify=False,
            providers=self.providers,
        )
        seconds = time.perf_counter() - started
        point = SweepPoint(
            knob,
            report.params_before,
            report.params_after,
            report.retained,
            self.error(reduced),
            seconds,
        )
        return reduced, report, point


def parse_knobs(spec: str) -> list[float]:
    """``0,0.1,0.5`` or ``start:stop:step`` (stop included) as a list of values."""
    try:
        if ":" in spec:
            start, stop, step = (float(v) for v in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            return [round(start + i * step, 12) for i in range(count)]
        return [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise LumpError(
            f"--sweep '{spec}' is not a list 'a,b,c' or a range 'start:stop:step'"
        ) from None


def sweep(evaluate: Evaluator, knobs: Sequence[float]) -> list[SweepPoint]:
    return [evaluate(k)[2] for k in knobs]


def bisect(
    evaluate: Evaluator,
    upper_limit: float | None,
    target_params: float | None = None,
    max_error: float | None = None,
    steps: int = 24,
) -> tuple[onnx.ModelProto, Report, SweepPoint, bool]:
    """The knob meeting the targets: with ``max_error``, the largest knob whose error is
    within it; else with ``target_params`` (a fraction), the smallest knob keeping at
    most that share of the parameters. Returns the model, report, point, and whether
    every target given is met."""
    if target_params is None and max_error is None:
        raise LumpError("give --target-params or --max-error")

    def good(point: SweepPoint) -> bool:
        if max_error is not None:
            return point.error <= max_error
        return point.retained > target_params  # still too big: go further

    low = evaluate(0.0)
    if not good(low[2]):  # knob 0 already fails the error target, or meets the size target
        return *low, max_error is None
    high_knob = _bracket(evaluate, good, upper_limit)
    if high_knob is None:  # nothing fails the test up to the limit
        result = evaluate(upper_limit if upper_limit is not None else 0.0)
    else:
        lo, hi = 0.0, high_knob
        best_good, best_bad = low, evaluate(hi)
        for _ in range(steps):
            mid = evaluate(0.5 * (lo + hi))
            if good(mid[2]):
                lo, best_good = mid[2].knob, mid
            else:
                hi, best_bad = mid[2].knob, mid
        result = best_good if max_error is not None else best_bad
    met = True
    point = result[2]
    if max_error is not None and point.error > max_error:
        met = False
    if target_params is not None and point.retained > target_params:
        met = False
    return *result, met


def _bracket(evaluate: Evaluator, good, upper_limit: float | None) -> float | None:
    """A knob value where ``good`` fails: the limit, or doubling from 1 when unbounded."""
    if upper_limit is not None:
        return None if good(evaluate(upper_limit)[2]) else upper_limit
    knob = 1.0
    for _ in range(_MAX_DOUBLINGS):
        if not good(evaluate(knob)[2]):
            return knob
        knob *= 2.0
    return None


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
