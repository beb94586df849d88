"""Loading and saving models, with user-facing errors and atomic writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_model, uses_external_data

from onnx_lump.errors import LumpError

__all__ = ["LoadedModel", "check_output_path", "load_model", "save_model"]


@dataclass
class LoadedModel:
    model: onnx.ModelProto
    path: Path
    external_data: bool  # the input kept its tensors in a separate file; so will the output


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read an ONNX file, its external data included, or raise a one-line LumpError."""
    path = Path(path)
    if not path.is_file():
        raise LumpError(f"input model '{path}' does not exist or is not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types for garbage
        raise LumpError(f"'{path}' is not an ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node:
        raise LumpError(f"'{path}' is not an ONNX model with a graph (no nodes found)")
    external = any(uses_external_data(t) for t in model.graph.initializer)
    if external:
        try:
            load_external_data_for_model(model, str(path.parent))
        except OSError as exc:
            raise LumpError(f"cannot read the external data of '{path}': {exc}") from exc
    return LoadedModel(model, path, external)


def check_output_path(
    output: str | os.PathLike, input_path: str | os.PathLike | None = None
) -> Path:
    """Refuse, before any work, an output that would overwrite the input or cannot be written."""
    output = Path(output)
    if input_path is not None:
        source = Path(input_path)
        if output.resolve() == source.resolve() or (
            output.exists() and source.exists() and os.path.samefile(output, source)
        ):
            raise LumpError(f"output '{output}' is the input model; choose another output path")
    folder = output.resolve().parent
    if not folder.is_dir():
        raise LumpError(f"output folder '{folder}' does not exist or is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LumpError(f"output folder '{folder}' is not writable")
    if output.is_dir():
        raise LumpError(f"output '{output}' is a folder; give a file name")
    return output


def save_model(
    model: onnx.ModelProto, output: str | os.PathLike, external_data: bool = False
) -> None:
    """Write ``model`` so that ``output`` is either the old file or the complete new one.

    The model (and its ``<name>.data`` file when ``external_data``) is written into a
    temporary folder beside ``output`` and then renamed into place.
    """
    output = check_output_path(output)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        staged = staging / output.name
        if external_data:
            data_name = f"{output.name}.data"
            detached = onnx.ModelProto()
            detached.CopyFrom(model)  # saving externally rewrites the tensors it is given
            onnx.save_model(
                detached,
                str(staged),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=0,  # every tensor, as an external-data input expects
            )
            if (staging / data_name).exists():
                os.replace(staging / data_name, output.parent / data_name)
        else:
            onnx.save_model(model, str(staged))
        os.replace(staged, output)
    except OSError as exc:
        raise LumpError(f"cannot write '{output}': {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
