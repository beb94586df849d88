"""Everything that defines or recognises an element-wise activation.

:mod:`~onnx_lump.activations.registry` holds the table (the kinds, :class:`Activation`,
the specs); :mod:`~onnx_lump.activations.forms` the numpy forwards and symmetry rules
behind it; :mod:`~onnx_lump.activations.expressions` the canonical expressions of a
decomposed subgraph, :mod:`~onnx_lump.activations.patterns` the matchers over them and
:mod:`~onnx_lump.activations.matching` the match against the registry.
"""

from onnx_lump.activations.matching import evaluate, hint_for_ops, match_expression
from onnx_lump.activations.registry import (
    BIAS_ACTIVATION_OPS,
    IDENTITY,
    REGISTRY,
    SPECS,
    SUPPORTED_ACTIVATION_OPS,
    Activation,
    ActivationKind,
    ActivationSpec,
)

__all__ = [
    "BIAS_ACTIVATION_OPS",
    "IDENTITY",
    "REGISTRY",
    "SPECS",
    "SUPPORTED_ACTIVATION_OPS",
    "Activation",
    "ActivationKind",
    "ActivationSpec",
    "evaluate",
    "hint_for_ops",
    "match_expression",
]
