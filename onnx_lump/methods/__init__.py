"""Compression methods behind one interface (:class:`Method`), so the CLI, the API and
the benchmark treat them alike: lumping (``lump``, ``exact``), unstructured pruning
(``magnitude``, ``wanda``, ``ec``), linearity-based folding (``linear``) and random
weights at given widths (``distill``, the ablation of refinement)."""

from onnx_lump.methods.base import ChainProblem, Method
from onnx_lump.methods.combined import Sequence
from onnx_lump.methods.linear import LinearFolding
from onnx_lump.methods.lumping import Exact, Lump, Reduction
from onnx_lump.methods.pruning import EliminationCompensation, Magnitude, Scope, Wanda
from onnx_lump.methods.random_init import RandomInit
from onnx_lump.types import ChainResult, Shortcut

__all__ = [
    "ChainProblem",
    "ChainResult",
    "EliminationCompensation",
    "Exact",
    "LinearFolding",
    "Lump",
    "Magnitude",
    "Method",
    "RandomInit",
    "Reduction",
    "Scope",
    "Sequence",
    "Shortcut",
    "Wanda",
]
