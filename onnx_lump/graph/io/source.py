"""One entry point for the model argument of the Python API: a ModelProto, an onnx-ir
``ir.Model`` or a path to an ``.onnx`` file all become a ``onnx.ModelProto``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import onnx
from onnx.external_data_helper import load_external_data_for_model

from onnx_lump.errors import LumpError

__all__ = ["ModelSource", "ir_to_proto", "to_model_proto"]

# ``ir.Model`` is accepted too; it is not named here so that onnx-ir stays optional.
ModelSource = onnx.ModelProto | str | os.PathLike


def to_model_proto(model: Any) -> onnx.ModelProto:
    """``model`` as a ModelProto with every tensor's data in memory.

    A ModelProto is returned as it is (not copied: the pass never modifies its input). A path
    is read with its external data, resolved relative to the file. An ``ir.Model`` is
    serialized with its external tensors loaded; the ``ir.Model`` itself is not changed.
    """
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, str | os.PathLike):
        return _load_path(Path(model))
    if _is_ir_model(model):
        return ir_to_proto(model)
    raise LumpError(
        f"expected an onnx.ModelProto, an onnx_ir.Model or a path to an .onnx file, "
        f"got {type(model).__name__}"
    )


def ir_to_proto(model: Any) -> onnx.ModelProto:
    """Serialize an ``ir.Model`` with the data of its external tensors inlined.

    The model is cloned first (a clone shares the tensors but not the values holding
    them), so loading the external data does not turn the caller's memory-mapped
    initializers into in-memory copies.
    """
    import onnx_ir as ir

    clone = model.clone()
    ir.external_data.load_to_model(clone)
    proto = ir.to_proto(clone)
    _refuse_external_attributes(proto)
    return proto


def _refuse_external_attributes(proto: onnx.ModelProto) -> None:
    """onnx-ir loads initializers only; a Constant node's tensor kept in a file is rare
    enough to refuse with a clear message rather than guess where its file lies."""
    from onnx.external_data_helper import uses_external_data

    for node in proto.graph.node:
        for attr in node.attribute:
            for tensor in [attr.t] if attr.HasField("t") else list(attr.tensors):
                if uses_external_data(tensor):
                    raise LumpError(
                        f"node '{node.name}' holds a tensor in external data; load it into "
                        "memory (onnx.load with load_external_data=True) and pass the ModelProto"
                    )


def _load_path(path: Path) -> onnx.ModelProto:
    """The whole model in memory, external data read relative to the file."""
    if not path.is_file():
        raise LumpError(f"input model '{path}' does not exist or is not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types for garbage
        raise LumpError(f"'{path}' is not an ONNX model ({type(exc).__name__})") from exc
    try:
        load_external_data_for_model(model, str(path.resolve().parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise LumpError(f"cannot read the external data of '{path}': {exc}") from exc
    return model


def _is_ir_model(model: Any) -> bool:
    ir = sys.modules.get("onnx_ir")  # an ir.Model can only exist once onnx_ir is imported
    return ir is not None and isinstance(model, ir.Model)
