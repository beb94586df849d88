"""Stage 6: run the original and the reduced model with onnxruntime and compare outputs.

What the CLI trusts is onnxruntime run on the path of the file that was written (so what
is verified is what the user gets, external data and all), one session at a time so that
memory holds one model, not two: :func:`compare_files` does that for one set of inputs,
and :func:`compare_outputs` compares outputs already run (the CLI runs each model once on
the held-out rows, for the error and the verification both).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from onnx_lump.errors import LumpError
from onnx_lump.runtime import run_model

__all__ = [
    "OutputError",
    "VerificationResult",
    "compare_files",
    "compare_models",
    "compare_outputs",
]

logger = logging.getLogger("onnx_lump.verify")  # the notes keep their name


@dataclass(frozen=True)
class OutputError:
    """Differences on one graph output; ``max_rel`` is relative to the largest |reference|.

    A label output (integer, boolean or text tensor) has ``kind`` "label" and ``changed``,
    the number of rows whose label changed; its differences (text labels: 1 where a label
    changed) are kept here but left out of :class:`VerificationResult`'s maxima and
    tolerances while the model has a float output."""

    name: str
    max_abs: float
    max_rel: float
    rmse: float
    reference_rms: float
    kind: str = "float"
    changed: int | None = None
    rows: int | None = None


@dataclass(frozen=True)
class VerificationResult:
    """Truthy when every output is within the tolerances that were given."""

    outputs: tuple[OutputError, ...]
    n_samples: int
    providers: tuple[str, ...]
    atol: float | None = None
    rtol: float | None = None

    @property
    def graded(self) -> tuple[OutputError, ...]:
        """The outputs the maxima and the tolerances are taken over: the float ones, or
        every output when the model has none."""
        floats = tuple(o for o in self.outputs if o.kind != "label")
        return floats or self.outputs

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.graded), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.graded), default=0.0)

    @property
    def label_changed(self) -> float | None:
        """The largest share of rows whose label changed, over the label outputs."""
        shares = [o.changed / o.rows for o in self.outputs if o.changed is not None and o.rows]
        return max(shares) if shares else None

    @property
    def passed(self) -> bool:
        return (self.atol is None or self.max_abs <= self.atol) and (
            self.rtol is None or self.max_rel <= self.rtol
        )

    def __bool__(self) -> bool:
        return self.passed

    def miss(self) -> str:
        """The outputs' largest errors beside the tolerances they are judged by."""
        return (
            f"outputs differ beyond the tolerance (max abs {self.max_abs:.3g}, "
            f"max rel {self.max_rel:.3g}; atol {self.atol}, rtol {self.rtol})"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def compare_models(
    original: onnx.ModelProto,
    reduced: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    providers: Sequence = ("CPUExecutionProvider",),
    atol: float | None = None,
    rtol: float | None = None,
) -> VerificationResult:
    """Run both models on ``feeds`` and measure the output differences."""
    expected = run_model(original, feeds, providers)
    actual = run_model(reduced, feeds, providers)
    return _compare(expected, actual, feeds, providers, atol, rtol)


def compare_files(
    reference: onnx.ModelProto | str | os.PathLike,
    candidate_path: str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    providers: Sequence = ("CPUExecutionProvider",),
    atol: float | None = None,
    rtol: float | None = None,
) -> VerificationResult:
    """Run ``reference`` (a model or a path) and the model file at ``candidate_path``
    (loaded by onnxruntime from disk, never from bytes) on ``feeds`` and compare."""
    expected = run_model(reference, feeds, providers)  # its session is gone before the next
    actual = run_model(Path(candidate_path), feeds, providers)
    return compare_outputs(expected, actual, feeds, providers, atol, rtol)


def compare_outputs(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    feeds: Mapping[str, np.ndarray],
    providers: Sequence = ("CPUExecutionProvider",),
    atol: float | None = None,
    rtol: float | None = None,
) -> VerificationResult:
    """:func:`compare_files` on outputs already run (by name) on ``feeds``."""
    missing = [name for name in expected if name not in actual]
    if missing:
        raise LumpError(f"the written model lacks the output(s) {', '.join(missing)}")
    return _compare(expected, actual, feeds, providers, atol, rtol)


def _compare(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    feeds: Mapping[str, np.ndarray],
    providers: Sequence,
    atol: float | None,
    rtol: float | None,
) -> VerificationResult:
    errors = []
    for name, ref in expected.items():
        label = _is_label(ref)
        if label and np.asarray(ref).dtype.kind not in "biu":  # text: 1 where it changed
            changed_at = np.asarray(actual[name]) != np.asarray(ref)
            ref64, diff = np.zeros(changed_at.shape), changed_at.astype(np.float64)
        else:
            ref64 = _as_float(ref)
            actual64 = _as_float(actual[name])
            changed_at = actual64 != ref64
            diff = np.abs(actual64 - ref64)
        scale = float(np.abs(ref64).max()) if ref64.size else 0.0
        max_abs = float(diff.max()) if diff.size else 0.0
        changed = rows = None
        if label:  # a row changed where any of its labels did
            by_value = np.atleast_1d(changed_at)
            rows = len(by_value)
            changed = int(by_value.reshape(rows, -1).any(axis=1).sum()) if by_value.size else 0
        errors.append(
            OutputError(
                name=name,
                max_abs=max_abs,
                max_rel=max_abs / scale if scale > 0 else max_abs,
                rmse=float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0,
                reference_rms=float(np.sqrt(np.mean(ref64**2))) if ref64.size else 0.0,
                kind="label" if label else "float",
                changed=changed,
                rows=rows,
            )
        )
    n_samples = int(next(iter(feeds.values())).shape[0]) if feeds else 0
    names = tuple(p if isinstance(p, str) else p[0] for p in providers)
    return VerificationResult(tuple(errors), n_samples, names, atol, rtol)


def _is_label(value) -> bool:
    """An integer, boolean or text tensor: compared as labels."""
    return not isinstance(value, (list, dict)) and np.asarray(value).dtype.kind in "biuUSO"


def _as_float(value) -> np.ndarray:
    """Output values as float64; a sequence of maps (skl2onnx's ZipMap) as one row per map."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = sorted(value[0])
        return np.array([[row[k] for k in keys] for row in value], dtype=np.float64)
    return np.asarray(value, dtype=np.float64)
