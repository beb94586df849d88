"""Loading models without harming anything the user owns.

Loading keeps external data on disk: tensors stay references into the input's data files
and are read one at a time when the pass needs them
(:func:`~onnx_lump.graph.io.tensordata.tensor_array`), so a model of any size loads in the
memory of its graph. Tensor access lives in
:mod:`onnx_lump.graph.io.tensordata`, path checks in :mod:`onnx_lump.graph.io.paths` and staged
atomic saving in :mod:`onnx_lump.graph.io.save` (the bytes it writes in
:mod:`onnx_lump.graph.io.serialize`); callers import those names from there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

from onnx_lump.errors import LumpError
from onnx_lump.graph.io.tensordata import (
    EXTERNAL_DIR_KEY,
    all_tensors,
    external_info,
    parse_model_file,
    tensor_nbytes,
)

__all__ = ["LoadedModel", "load_model"]

logger = logging.getLogger("onnx_lump.graph.modelio")  # the notes keep their name


@dataclass
class LoadedModel:
    model: onnx.ModelProto
    path: Path
    external_data: bool  # the input kept its tensors in a separate file; so will the output


# -- reading -------------------------------------------------------------------------


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read an ONNX file or raise a one-line LumpError; external data stays on disk.

    The returned model refers to its data files by location; :func:`tensor_array`,
    onnxruntime (through :mod:`onnx_lump.runtime`) and :func:`save_model` read them.
    """
    path = Path(path)
    if not path.is_file():
        raise LumpError(f"input model '{path}' does not exist or is not a file")
    try:
        model = parse_model_file(path)
    except Exception as exc:  # protobuf raises several unrelated types for garbage
        raise LumpError(f"'{path}' is not an ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node:
        raise LumpError(f"'{path}' is not an ONNX model with a graph (no nodes found)")
    base = path.resolve().parent
    external = False
    for tensor in all_tensors(model):
        if uses_external_data(tensor):
            external = True
            _check_external(tensor, base, path)
    if external:
        _set_prop(model, EXTERNAL_DIR_KEY, str(base))
    return LoadedModel(model, path, external)


def _check_external(tensor: onnx.TensorProto, base: Path, model_path: Path) -> None:
    info = external_info(tensor)
    location = info.get("location", "")
    target = (base / location).resolve()
    if not location or Path(location).is_absolute() or base not in target.parents:
        raise LumpError(
            f"external data of tensor '{tensor.name}' in '{model_path}' points outside the "
            f"model's folder ('{location}')"
        )
    if not target.is_file():
        raise LumpError(
            f"external data file '{location}' of '{model_path}' is missing "
            f"(tensor '{tensor.name}'); keep it next to the model"
        )
    end = int(info.get("offset", 0)) + tensor_nbytes(tensor)
    if target.stat().st_size < end:
        raise LumpError(
            f"external data file '{location}' of '{model_path}' is too short for tensor "
            f"'{tensor.name}' ({target.stat().st_size} bytes, needs {end})"
        )


def _set_prop(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)
