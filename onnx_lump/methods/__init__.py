"""Compression methods behind one interface (:class:`Method`), so the CLI, the API and
the benchmark treat them alike: lumping (``lump``, ``exact``), unstructured pruning
(``magnitude``, ``wanda``, ``ec``) and linearity-based folding (``linear``)."""

from onnx_lump.methods.base import ChainProblem, ChainResult, Method, Shortcut
from onnx_lump.methods.combined import Sequence
from onnx_lump.methods.linear import LinearFolding
from onnx_lump.methods.lumping import Exact, Lump
from onnx_lump.methods.pruning import EliminationCompensation, Magnitude, Scope, Wanda

__all__ = [
    "ChainProblem",
    "ChainResult",
    "EliminationCompensation",
    "Exact",
    "LinearFolding",
    "Lump",
    "Magnitude",
    "Method",
    "Scope",
    "Sequence",
    "Shortcut",
    "Wanda",
]
