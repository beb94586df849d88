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

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputError:
    """Differences on one graph output; ``max_rel`` is relative to the largest |reference|."""

    name: str
    max_abs: float
    max_rel: float
    rmse: float
    reference_rms: float


@dataclass(frozen=True)
class VerificationResult:
    """Truthy when every output is within the tolerances that were given."""

    outputs: tuple[OutputError, ...]
    n_samples: int
    providers: tuple[str, ...]
    atol: float | None = None
    rtol: float | None = None

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    @property
    def passed(self) -> bool:
        return (self.atol is None or self.max_abs <= self.atol) and (
            self.rtol is None or self.max_rel <= self.rtol
        )

    def __bool__(self) -> bool:
        return self.passed

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
        ref64 = _as_float(ref)
        diff = np.abs(_as_float(actual[name]) - ref64)
        scale = float(np.abs(ref64).max()) if ref64.size else 0.0
        max_abs = float(diff.max()) if diff.size else 0.0
        errors.append(
            OutputError(
                name=name,
                max_abs=max_abs,
                max_rel=max_abs / scale if scale > 0 else max_abs,
                rmse=float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0,
                reference_rms=float(np.sqrt(np.mean(ref64**2))) if ref64.size else 0.0,
            )
        )
    n_samples = int(next(iter(feeds.values())).shape[0]) if feeds else 0
    names = tuple(p if isinstance(p, str) else p[0] for p in providers)
    return VerificationResult(tuple(errors), n_samples, names, atol, rtol)


def _as_float(value) -> np.ndarray:
    """Output values as float64; a sequence of maps (skl2onnx's ZipMap) as one row per map."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = sorted(value[0])
        return np.array([[row[k] for k in keys] for row in value], dtype=np.float64)
    return np.asarray(value, dtype=np.float64)
