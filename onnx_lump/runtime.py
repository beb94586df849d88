"""onnxruntime sessions: execution providers by short name, and one-call model runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnx_lump.errors import LumpError

__all__ = ["resolve_providers", "run_model"]

_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}
# The check compares fp32 against fp32: TF32 matmuls on Ampere+ would add ~1e-3 noise.
_PROVIDER_OPTIONS = {"CUDAExecutionProvider": {"use_tf32": "0"}}


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
