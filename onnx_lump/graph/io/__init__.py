"""Models in and out of files: load keeping external data on disk (``load``), save
atomically (``save``, the bytes in ``serialize``), refuse outputs that would harm an
input (``paths``), read tensors as the model stores them (``tensordata``) and accept a
model from anywhere (``source``)."""

from onnx_lump.graph.io.load import load_model
from onnx_lump.graph.io.paths import check_paths
from onnx_lump.graph.io.save import save_model, stage_model
from onnx_lump.graph.io.source import to_model_proto

__all__ = ["check_paths", "load_model", "save_model", "stage_model", "to_model_proto"]
