"""The methods' points on the task: lumping and lump+refine, the pruning baselines,
linearity folding and the peer's (onnxsim) structured stack."""

from __future__ import annotations

import time

import numpy as np
import onnx

from onnx_lump import compress
from onnx_lump.data.refine import RefineOptions
from onnx_lump.graph.read.chains import scan_graph
from onnx_lump.graph.write.importer import import_graph
from onnx_lump.methods import (
    EliminationCompensation,
    LinearFolding,
    Lump,
    Magnitude,
    Scope,
    Wanda,
)
from onnx_lump.ode.partition import PartitionOptions, Similarity
from tools.bench.common import onnxsim_stack
from tools.transformer_bench.common import ONNXSIM_BATCH, ONNXSIM_LEARNING_RATE, Point, log
from tools.transformer_bench.task import Task

__all__ = ["linear_points", "lump_points", "onnxsim_points", "pruning_points"]


def _lump(eps: float) -> Lump:
    return Lump(PartitionOptions(eps, similarity=Similarity.DATA))


def lump_points(task: Task, eps_values, refine: RefineOptions, max_refined: int) -> list[Point]:
    """Lumping (data similarity, refit, no refinement) at each eps, then lump+refine warm
    started from the lumping at up to ``max_refined`` of those eps whose size lies
    between 5% and 95%. Seconds of lump+refine include its lumping's."""
    points, runs = [], []
    for eps in eps_values:
        started = time.perf_counter()
        model, report = compress(
            task.model, _lump(eps), calibration=task.calibration, refine=False, verify=False
        )
        seconds = time.perf_counter() - started
        widths = [w for ws in report.widths_after for w in ws]
        points.append(
            task.measure("lump", eps, model, report.params_after, True, seconds, widths=widths)
        )
        runs.append((eps, report, seconds))
        if report.retained < 0.05:
            break  # larger eps only shrink further
    useful = [r for r in runs if 0.05 <= r[1].retained <= 0.95]
    if len(useful) > max_refined:  # spread the refined points over the sizes
        picks = np.linspace(0, len(useful) - 1, max_refined).round().astype(int)
        useful = [useful[i] for i in sorted(set(picks))]
    for eps, report, seconds in useful:
        started = time.perf_counter()
        model, refined = compress(
            task.model,
            _lump(eps),
            calibration=task.calibration,
            refine=refine,
            warm_start=report.results,
            verify=False,
        )
        refine_seconds = time.perf_counter() - started
        widths = [w for ws in refined.widths_after for w in ws]
        points.append(
            task.measure(
                "lump+refine",
                eps,
                model,
                refined.params_after,
                True,
                seconds + refine_seconds,
                widths=widths,
                refine_seconds=refine_seconds,
            )
        )
    return points


def pruning_points(task: Task, sparsities, names=("magnitude", "wanda")) -> list[Point]:
    points = []
    makers = {
        "magnitude": lambda s: Magnitude(s, Scope.LAYER),
        "wanda": Wanda,
        "ec": lambda s: EliminationCompensation(s, Scope.GLOBAL),
    }
    for name in names:
        make = makers[name]
        for sparsity in sparsities:
            started = time.perf_counter()
            try:
                model, report = compress(
                    task.model, make(sparsity), calibration=task.calibration, verify=False
                )
            except Exception as exc:  # a baseline's failure is a result, not a crash
                log(f"  {name} failed at sparsity {sparsity}: {type(exc).__name__}: {exc}")
                continue
            seconds = time.perf_counter() - started
            points.append(task.measure(name, sparsity, model, report.params_after, False, seconds))
    return points


def linear_points(task: Task) -> list[Point]:
    started = time.perf_counter()
    model, report = compress(
        task.model, LinearFolding(1.0), calibration=task.calibration, verify=False
    )
    seconds = time.perf_counter() - started
    return [task.measure("linear", 0.0, model, report.params_after, True, seconds)]


def _ffn_params(model: onnx.ModelProto) -> tuple[int, list[int]]:
    chains = scan_graph(import_graph(model)).chains
    return sum(c.n_params for c in chains), [w for c in chains for w in c.hidden_widths]


def _other_params(model: onnx.ModelProto) -> int:
    """Stored parameters outside the FFN chains (must not change: FFN blocks only)."""
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return total - _ffn_params(model)[0]


def onnxsim_points(task: Task, sparsities, steps: int) -> list[Point]:
    """onnxsim's structured stack at each channel sparsity, public API only.

    ``onnxsim-ridge``: Wanda channel removal and its closed-form ridge refit of the
    surviving layers, on the dynamo export. ``onnxsim``: the same, then Adam distillation
    of each FFN block (LayerNorm output to FFN output) onto the original's; onnxsim 0.8
    cannot differentiate the ``Gelu`` op, so this runs on the TorchScript opset-17 export
    of the same weights (GELU written with ``Erf``, which it can). Same calibration."""
    onnxsim = onnxsim_stack(log)
    if onnxsim is None:
        return []
    feeds = [task.calibration]
    points = []
    scripted = task.path.with_name("charlm_2x128_ts.onnx")
    sources = [("onnxsim-ridge", task.model, False)]
    if scripted.is_file():
        sources.append(("onnxsim", onnx.load(str(scripted)), True))
    for name, original, distill in sources:
        chains = scan_graph(import_graph(original)).chains
        blocks = [(c.layers[0].input.name, c.layers[-1].output.name) for c in chains]
        others = _other_params(original)
        for sparsity in sparsities:
            started = time.perf_counter()
            try:
                pruned = onnxsim.apply_structured_wanda_pruning(
                    _copy(original), calibration_data=feeds, sparsity=float(sparsity)
                )
                model = onnxsim.apply_pruning_finetune(
                    _copy(original), pruned, calibration_data=feeds
                )
                for block_in, block_out in blocks if distill else []:
                    model = onnxsim.apply_block_finetune(
                        _copy(original),
                        model,
                        block_in,
                        block_out,
                        calibration_data=feeds,
                        num_iterations=steps,
                        learning_rate=ONNXSIM_LEARNING_RATE,
                        batch_size=ONNXSIM_BATCH,
                    )
            except Exception as exc:  # the peer's failure is a result to report, not a crash
                log(f"  {name} failed at sparsity {sparsity}: {type(exc).__name__}: {exc}"[:400])
                continue
            seconds = time.perf_counter() - started
            ffn, widths = _ffn_params(model)
            if _other_params(model) != others:
                log(f"  {name} at sparsity {sparsity} also pruned outside the FFNs; left out")
                continue
            points.append(task.measure(name, sparsity, model, ffn, True, seconds, widths=widths))
    return points


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
