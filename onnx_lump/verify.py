"""Stage 6: run the original and the reduced model with onnxruntime and compare outputs."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_lump.errors import LumpError

__all__ = [
    "OutputError",
    "VerificationResult",
    "compare_models",
    "load_inputs",
    "random_inputs",
    "resolve_providers",
    "run_model",
]

logger = logging.getLogger(__name__)

_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}
# The check compares fp32 against fp32: TF32 matmuls on Ampere+ would add ~1e-3 noise.
_PROVIDER_OPTIONS = {"CUDAExecutionProvider": {"use_tf32": "0"}}


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


def resolve_providers(names: Sequence[str]) -> list:
    """onnxruntime provider entries for short or full names; unknown ones are an error."""
    available = ort.get_available_providers()
    providers = []
    for name in names:
        full = _PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            raise LumpError(
                f"execution provider '{name}' is not available here "
                f"(available: {', '.join(available)})"
            )
        options = _PROVIDER_OPTIONS.get(full)
        providers.append((full, options) if options else full)
    return providers


def _session(model: onnx.ModelProto, providers: Sequence) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise LumpError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from exc


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def load_inputs(path: str | Path, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Inputs from ``.npz`` (one array per graph input) or ``.npy`` (single-input models)."""
    path = Path(path)
    if not path.is_file():
        raise LumpError(f"calibration file '{path}' does not exist")
    inputs = _graph_inputs(model)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise LumpError(f"cannot read '{path}' as .npz/.npy: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            raise LumpError(
                f"'{path}' holds one array but the model has {len(inputs)} inputs; use .npz"
            )
        arrays = {inputs[0].name: loaded}
    else:
        arrays = dict(loaded.items())
        if len(inputs) == 1 and len(arrays) == 1 and inputs[0].name not in arrays:
            arrays = {inputs[0].name: next(iter(arrays.values()))}
    feeds = {}
    for value in inputs:
        if value.name not in arrays:
            raise LumpError(f"'{path}' has no array for model input '{value.name}'")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = np.asarray(arrays[value.name]).astype(dtype, copy=False)
    return feeds


def random_inputs(
    model: onnx.ModelProto,
    n: int,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs; a dynamic leading (batch) dimension becomes ``n``,
    other dynamic dimensions must be given in ``shapes``."""
    shapes = dict(shapes or {})
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in _graph_inputs(model):
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if not np.issubdtype(dtype, np.floating):
            raise LumpError(
                f"input '{value.name}' is {dtype}; random checks need --calib data for it"
            )
        if value.name in shapes:
            shape = [int(d) for d in shapes[value.name]]
        else:
            shape = []
            for axis, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    shape.append(dim.dim_value)
                elif axis == 0:
                    shape.append(n)
                else:
                    raise LumpError(
                        f"input '{value.name}' has dynamic dimension {axis}; "
                        f"give its shape with --input-shape {value.name}:d0,d1,..."
                    )
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run_model(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], providers: Sequence
) -> dict[str, np.ndarray]:
    session = _session(model, providers)
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, dict(feeds))
    except Exception as exc:  # bad shapes or dtypes in user data
        raise LumpError(f"onnxruntime failed to run the model: {str(exc).splitlines()[0]}") from exc
    return dict(zip(names, values, strict=True))


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
    errors = []
    for name, ref in expected.items():
        ref64 = np.asarray(ref, dtype=np.float64)
        diff = np.abs(np.asarray(actual[name], dtype=np.float64) - ref64)
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
