"""onnxruntime sessions: execution providers by short name, and one-call model runs.

A model is given as a path (onnxruntime reads the file and its external data itself,
whatever its size) or as a ModelProto. A ModelProto that refers to external data on
disk (loaded by :func:`onnx_lump.graph.io.load.load_model`) runs with that folder as its data
folder; one too large to serialize, or one that refers to tensors the pass spilled to
disk (absolute locations, which onnxruntime refuses), is staged as a file first.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_lump.errors import LumpError
from onnx_lump.graph.io.save import save_model
from onnx_lump.graph.io.serialize import PROTO_LIMIT
from onnx_lump.graph.io.tensordata import all_tensors, external_data_dir, is_spilled, uses_external

__all__ = [
    "check_versions",
    "resolve_providers",
    "run_model",
    "run_session",
    "session",
    "too_new_message",
]

# onnxruntime's key for the folder of external data when the model comes as bytes.
_DATA_FOLDER_KEY = "session.model_external_initializers_file_folder_path"

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


def session(
    model: onnx.ModelProto | str | os.PathLike, providers: Sequence
) -> ort.InferenceSession:
    """An onnxruntime session on a file path or a ModelProto (see the module doc)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        if isinstance(model, (str, os.PathLike)):
            return ort.InferenceSession(str(model), options, providers=list(providers))
        folder = external_data_dir(model)
        if folder is not None and uses_external(model):
            options.add_session_config_entry(_DATA_FOLDER_KEY, str(folder))
        elif folder is None and uses_external(model):
            raise LumpError("the model refers to external data but its folder is unknown")
        if model.ByteSize() > PROTO_LIMIT or any(is_spilled(t) for t in all_tensors(model)):
            return _session_from_file(model, options, providers)
        return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    except LumpError:
        raise
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        too_new = too_new_message(str(exc))
        if too_new is not None:
            raise LumpError(too_new) from exc
        raise LumpError(f"onnxruntime cannot load the model: {_first_line(exc)}") from exc


# onnxruntime's words for a model stamped newer than it supports (a paragraph, with the
# C++ function that raised it): the opset of a domain, and the IR version.
_OPSET_TOO_NEW = re.compile(r"Opset (\d+) is under development")
_OPSET_MAX = re.compile(r"support for domain (\S+?) is till opset (\d+)")
_IR_TOO_NEW = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def check_versions(ir_version: int, opset_imports: Mapping[str, int]) -> None:
    """Refuse a model stamped with an IR version or opset newer than onnxruntime supports
    before any work, not when the written file is first run: open a one-node model with
    the same IR version and standard opset imports (a millisecond). onnx.checker accepts
    any opset, so this is the first place it shows."""
    imports = {}
    for domain, version in opset_imports.items():
        if domain in ("", "ai.onnx", "ai.onnx.ml"):
            imports["" if domain == "ai.onnx" else domain] = version
    if "" not in imports:  # the probe's Identity needs the default domain
        return
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "opset_probe",
        [value("x", onnx.TensorProto.FLOAT, [1])],
        [value("y", onnx.TensorProto.FLOAT, [1])],
    )
    probe = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in imports.items()]
    )
    probe.ir_version = ir_version
    session(probe, ["CPUExecutionProvider"])  # a LumpError in one line where it fails


def too_new_message(text: str) -> str | None:
    """One line for onnxruntime's refusal of a model newer than it supports, else None."""
    if match := _IR_TOO_NEW.search(text):
        return f"IR version {match[1]} is newer than this onnxruntime supports (max {match[2]})"
    if not (match := _OPSET_TOO_NEW.search(text)):
        return None
    if limit := _OPSET_MAX.search(text):
        domain = "" if limit[1] in ("ai.onnx", "") else f"{limit[1]} "
        return f"{domain}opset {match[1]} is newer than this onnxruntime supports (max {limit[2]})"
    return (
        f"opset {match[1]} is newer than this onnx/onnxruntime supports "
        f"(onnx knows up to {onnx.defs.onnx_opset_version()})"
    )


def _session_from_file(model: onnx.ModelProto, options, providers) -> ort.InferenceSession:
    options = ort.SessionOptions()  # the staged file's data lies beside it, not in IN's folder
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="onnx_lump_") as folder:
        path = Path(folder) / "model.onnx"
        save_model(model, path, external_data=True)
        # onnxruntime has read every initializer once the session exists
        return ort.InferenceSession(str(path), options, providers=list(providers))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_model(
    model: onnx.ModelProto | str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    providers: Sequence,
) -> dict[str, np.ndarray]:
    """Outputs of ``model`` (a ModelProto or a file path) on ``feeds``, by name."""
    return run_session(session(model, providers), feeds)


# Feeds of more values than this run a share of their rows at a time (each batch about
# this many values): a transformer's intermediate tensors on all of them at once would
# take hundreds of MB that onnxruntime then keeps. Smaller feeds (every tabular model's
# calibration) run whole, as before.
BATCH_VALUES = 1 << 18


def run_session(runner: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> dict:
    """Every output of an open session on ``feeds``, by name; large feeds in batches of
    rows (axis 0) where every output is a tensor with the batch's rows on axis 0 (else
    whole)."""
    names = [o.name for o in runner.get_outputs()]
    arrays = {name: np.asarray(value) for name, value in feeds.items()}
    batched = _batched(runner, names, arrays)
    if batched is not None:
        return batched
    return dict(zip(names, _run(runner, names, arrays), strict=True))


def _batched(runner, names: list[str], arrays: dict[str, np.ndarray]) -> dict | None:
    """:func:`run_session` a batch of rows at a time, or None where it does not apply."""
    rows = {value.shape[0] if value.ndim else -1 for value in arrays.values()}
    size = sum(value.size for value in arrays.values())
    if size <= BATCH_VALUES or len(rows) != 1 or (n := rows.pop()) <= 1:
        return None
    step = max(1, n * BATCH_VALUES // size)
    parts = []
    for start in range(0, n, step):
        count = min(step, n - start)
        try:
            values = runner.run(names, {k: v[start : start + count] for k, v in arrays.items()})
        except Exception:  # a batch size fixed at export: run whole
            return None
        if not all(isinstance(v, np.ndarray) and v.ndim and len(v) == count for v in values):
            return None
        parts.append(values)
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}


def _run(runner: ort.InferenceSession, names: list[str], feeds: dict) -> list:
    try:
        return runner.run(names, feeds)
    except Exception as exc:  # bad shapes or dtypes in user data
        raise LumpError(f"onnxruntime failed to run the model: {_first_line(exc)}") from exc
