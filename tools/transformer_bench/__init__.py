"""Benchmark, transformer task: compress the FFN blocks of the character model and report
FFN parameters kept against the held-out loss and accuracy.

The model, calibration windows and held-out windows come from ``tools/train_transformer.py``
(``tools/cache/transformer/``; run it first). Only the FFN blocks are compressed: they are
the model's only dense chains (``MatMul+Add -> Gelu -> MatMul+Add``; the attention and the
head are not chains), which the script checks. Calibration is the 256 training-text
windows in ``calib.npz`` (the library holds out 20% of them itself); every number below
is measured by onnxruntime on the written model over the 512 held-out windows (32,768
next-character predictions from files never trained on).

Methods: ``lump`` (data-aware lumping with data similarity and refit, no refinement) on a
grid of eps; ``lump+refine`` (the same lumping, warm
started, then L-BFGS refinement of each FFN onto the original FFN's outputs); the
unstructured ``magnitude``, ``wanda`` and ``ec`` (their dense graph does not shrink: the
size is non-zero weights plus biases); ``linear`` (linearity folding: GELU is not
positively homogeneous, so it folds nothing); ``onnxsim-ridge`` and ``onnxsim`` (the peer's
structured Wanda channel removal and ridge refit, then for ``onnxsim`` its block
distillation of each FFN, public API; see :func:`transformer_bench.methods.onnxsim_points`).

Writes ``tools/results/transformer.md``, ``transformer.json`` and ``transformer.png``.
Run from the project root (about 20 to 40 minutes on 2 shared cores)::

    python -m tools.transformer_bench [--cache tools/cache/transformer] [--quick]

Modules: ``common`` (the protocol's constants, :class:`Point`, logging), ``task`` (the
model, its feeds and the held-out scorer), ``methods`` (each method's points),
``report`` (markdown and plot) and ``__main__`` (the command line).
"""

from __future__ import annotations

from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent

__all__ = ["ROOT", "TOOLS"]
