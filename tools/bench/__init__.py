"""Benchmark: the paper's eight tasks, every method, Pareto plots, and speed.

    python -m tools.bench --data ../shared/data --out tools/results [--quick]

Protocol (../shared/BENCHMARKS.md):

1. Tasks: four simulated dynamical systems and four UCI sets (``benchdata.py``); a
   missing data file is reported and the other tasks still run.
2. Reference networks per task: 2 x 64 and 3 x 128, tanh and relu, trained with
   scikit-learn's MLPRegressor (Adam, early stopping on a validation split; at most
   ``MAX_TRAIN_ROWS`` training rows). Tanh networks are exported with skl2onnx
   (MatMul + Add), relu networks with the PyTorch TorchScript exporter (Gemm, transB=1)
   when PyTorch is installed, else as the same Gemm graph built with onnx.helper. Cached
   in ``tools/cache``, as is every network's finished sweep per group of methods
   (``tools/cache/points``; refined, onnxsim, baselines), so a rerun or a resumed crash
   does not redo finished work. ``--tasks`` splits a run over processes.
3. Calibration: 2,048 seeded training inputs, the same for every method; labels are never
   used by any method. The test split is only used to measure.
4. Methods, each swept over its knob and always measured through the serialized
   compressed ONNX model in onnxruntime: ``lump`` data-free, ``lump+refit``
   (compensation), ``lump+refit+data`` (the data similarity, lumping's default with
   calibration), ``exact``, ``magnitude``, ``wanda``, ``ec``, ``linear``, ``scratch``
   (the architecture retrained at smaller widths), and, refined onto the original's
   outputs on the calibration inputs: ``lump+refine`` (lumping with data-aware
   compensation, then onnx_lump's refine stage), ``distill`` (random weights at exactly
   lump+refine's widths, the same refine budget) and ``onnxsim`` (the peer's structured
   Wanda channel removal, ridge refit and whole-chain Adam distillation, through its
   public API; Adam at 3e-2, and at sparsities <= 0.5 also at 1e-3, both points
   counting; skipped with a message when onnxsim is not importable). The refined sizes
   go smallest first and each method stops at its first point within dRMSE 1%: larger
   sizes cannot change either headline number.
5. Metrics: GRP% = 100 x dense parameters after / before (non-zero weights + biases for
   the unstructured methods, whose graph does not shrink); test RMSE on standardised
   targets; dRMSE% against the uncompressed network; fidelity = RMSE of the output change
   on the test inputs / standard deviation of the original's test outputs; refinement
   wall time.
6. Speed: compression time of a 4 x 4096 model against onnx.load + onnx.save,
   onnxruntime latency (one intra-op thread) of original vs compressed models, and
   refine + search time on a 3 x 128 network with 2,048 calibration inputs.

Writes ``points.csv``/``points.json`` (every sweep point), ``<task>.md`` and ``<task>.png``
per task, ``references.md``, ``speed.md``, ``refine.md`` and ``summary.md`` into ``--out``.
"""

from __future__ import annotations

from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent

__all__ = ["ROOT", "TOOLS"]
