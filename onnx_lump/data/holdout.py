"""Calibration inputs split into a fitting share and a held-out share, and the error
measured on the held-out share.

Every fit the pass makes from data (refit, refine, constant-neuron detection, data
similarity) sees only ``fit``; every error it prints, searches on or judges a tolerance
by is measured on ``holdout``, which it never fitted. ``holdout`` is a seeded random
share of the calibration rows, or the user's own validation inputs (``--val``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_lump.errors import LumpError
from onnx_lump.runtime import run_model

__all__ = [
    "DEFAULT_HOLDOUT",
    "MIN_HOLDOUT_ROWS",
    "CalibrationSplit",
    "holdout_error",
    "output_error",
    "split_calibration",
    "stack_outputs",
    "stacked_outputs",
]

DEFAULT_HOLDOUT = 0.2
# Fewer held-out rows than this give an error estimate too noisy to search on.
MIN_HOLDOUT_ROWS = 8


@dataclass(frozen=True, eq=False)
class CalibrationSplit:
    """Feeds to fit on and feeds to measure on (rows on axis 0 of every input);
    ``targets`` are reference outputs for the held-out rows when the user gave them."""

    fit: dict[str, np.ndarray]
    holdout: dict[str, np.ndarray]
    description: str
    targets: np.ndarray | None = None

    @property
    def n_fit(self) -> int:
        return _rows(self.fit)

    @property
    def n_holdout(self) -> int:
        return _rows(self.holdout)


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


def split_calibration(
    calibration: Mapping[str, np.ndarray],
    share: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    validation: Mapping[str, np.ndarray] | None = None,
    targets: np.ndarray | None = None,
) -> CalibrationSplit:
    """Hold out ``share`` of the calibration rows (seeded), or measure on ``validation``
    (then every calibration row is fitted on) with optional ``targets``."""
    rows = _rows(calibration)
    if any(np.asarray(v).shape[:1] != (rows,) for v in calibration.values()):
        raise LumpError("every calibration input must have the same number of rows (axis 0)")
    if validation is not None:
        n_val = _rows(validation)
        if n_val == 0:
            raise LumpError("the validation inputs (--val) hold no rows")
        if targets is not None and np.asarray(targets).shape[:1] != (n_val,):
            raise LumpError(
                f"the validation targets have {np.asarray(targets).shape[0]} rows, "
                f"the validation inputs {n_val}"
            )
        return CalibrationSplit(
            dict(calibration), dict(validation), f"{n_val} rows of --val", targets
        )
    if not 0.0 < share < 1.0:
        raise LumpError(f"the held-out share must be in (0, 1), got {share}")
    n_holdout = round(share * rows)
    if n_holdout < MIN_HOLDOUT_ROWS or rows - n_holdout < MIN_HOLDOUT_ROWS:
        raise LumpError(
            f"{rows} calibration rows are too few to hold out {100 * share:g}% and still fit: "
            f"need at least {MIN_HOLDOUT_ROWS} rows on each side (give more rows or --val)"
        )
    order = np.random.default_rng(seed).permutation(rows)
    held, kept = np.sort(order[:n_holdout]), np.sort(order[n_holdout:])
    return CalibrationSplit(
        {k: np.asarray(v)[kept] for k, v in calibration.items()},
        {k: np.asarray(v)[held] for k, v in calibration.items()},
        f"{n_holdout} held-out calibration rows ({100 * share:g}%, seed {seed}), "
        f"fitted on the other {rows - n_holdout}",
    )


def output_error(
    reference: np.ndarray, output: np.ndarray, targets: np.ndarray | None = None
) -> float:
    """The error the tool reports: with ``targets``, the relative increase of the RMSE
    against them (dRMSE); otherwise the RMSE of the output change relative to the
    standard deviation of the reference outputs (0 = identical, 1 = no better than
    their mean)."""
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    output = np.asarray(output, np.float64).reshape(reference.shape)
    if targets is not None:
        targets = np.asarray(targets, np.float64).reshape(reference.shape)
        base = float(np.sqrt(np.mean((reference - targets) ** 2)))
        now = float(np.sqrt(np.mean((output - targets) ** 2)))
        return (now - base) / base if base > 0 else now
    spread = float(reference.std()) or 1.0
    return float(np.sqrt(np.mean((output - reference) ** 2))) / spread


def stacked_outputs(model, feeds: Mapping[str, np.ndarray], providers: Sequence) -> np.ndarray:
    """Every output of ``model`` on ``feeds`` from onnxruntime, as one (rows x values)
    float64 array."""
    return stack_outputs(run_model(model, feeds, providers))


def stack_outputs(values: Mapping[str, np.ndarray]) -> np.ndarray:
    """Outputs by name (as :func:`onnx_lump.runtime.run_model` returns them) as one
    (rows x values) float64 array."""
    return np.concatenate(
        [np.asarray(v, np.float64).reshape(len(v), -1) for v in values.values()], axis=1
    )


def holdout_error(
    original: onnx.ModelProto, reduced, split: CalibrationSplit, providers: Sequence
) -> float:
    """:func:`output_error` of ``reduced`` against ``original`` on the held-out rows,
    both run by onnxruntime (``reduced`` may be a model or the path of a written file)."""
    reference = stacked_outputs(original, split.holdout, providers)
    return output_error(
        reference, stacked_outputs(reduced, split.holdout, providers), split.targets
    )
