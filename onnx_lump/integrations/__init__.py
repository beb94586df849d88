"""onnx_lump inside other tools' pipelines: the onnx-ir pass
(:mod:`~onnx_lump.integrations.onnx_ir`, :class:`LumpPass`) and the Olive pass
(:mod:`~onnx_lump.integrations.olive`, which needs ``pip install onnx_lump[olive]`` and is
not imported here)."""

from onnx_lump.integrations.onnx_ir import LumpPass

__all__ = ["LumpPass"]
