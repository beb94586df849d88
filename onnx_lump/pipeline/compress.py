"""Stage 2 of the pipeline: each chain in turn is encoded, compressed by the method,
refined onto the original's outputs where that is asked, and rewritten into the graph;
one chain's arrays at a time where the model keeps its weights on disk."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_lump.data.cache import digest
from onnx_lump.data.calibration import chain_inputs, forward_chain, token_mask
from onnx_lump.data.holdout import CalibrationSplit
from onnx_lump.data.reference import original_output
from onnx_lump.data.refine import ChainData, RefineOptions, RefineStats, refine_chain
from onnx_lump.errors import LumpError
from onnx_lump.graph.read.dense import DenseChain
from onnx_lump.graph.weightstats import chain_maxima, chain_weight_ranges
from onnx_lump.graph.write.export import export_model
from onnx_lump.graph.write.importer import release_chain
from onnx_lump.graph.write.rewrite import rewrite_chain
from onnx_lump.graph.write.spill import Spill
from onnx_lump.methods import ChainProblem, Method
from onnx_lump.methods.gated import (
    GatedFFN,
    compress_gated,
    gated_ffn,
    handles_gated,
    original_gated_output,
)
from onnx_lump.ode.encoding import OdeSystem
from onnx_lump.pipeline.keep import keep_on_disk
from onnx_lump.pipeline.prepare import Prepared, chain_encoding
from onnx_lump.pipeline.report import LayerStats
from onnx_lump.progress import stage
from onnx_lump.types import ChainResult

__all__ = [
    "Compressed",
    "compress_chains",
    "default_refine",
    "refine_options_for",
    "refine_result",
]

logger = logging.getLogger("onnx_lump.api")


@dataclass(eq=False)
class Compressed:
    """What stage 2 hands on: per chain its encoding, result, layer statistics and
    refinement (where it ran), the widths before and after, and whether the graph
    changed."""

    systems: list[OdeSystem] = field(default_factory=list)
    results: list[ChainResult] = field(default_factory=list)
    stats: list[LayerStats] = field(default_factory=list)
    refined: list[RefineStats] = field(default_factory=list)
    widths_before: list[list[int]] = field(default_factory=list)
    widths_after: list[list[int]] = field(default_factory=list)
    weight_ranges: list = field(default_factory=list)
    shortcut_params: int = 0
    changed: bool = False
    sequential: bool = False  # the chains after the first were fed by the compressed ones


def default_refine(
    method: Method, with_data: bool, budget: RefineOptions | None = None
) -> RefineOptions | None:
    """The refinement a run that does not ask gets after ``method``: ``budget`` (default
    :class:`RefineOptions`) where the method is refined by default
    (:attr:`Method.refined_by_default`) and calibration inputs are given, else none. The
    one place this rule lives: the pipeline, the search's final step and the CLI's budget
    all read it."""
    if not (with_data and method.refined_by_default):
        return None
    return RefineOptions() if budget is None else budget


def refine_options_for(
    refine: RefineOptions | bool | None, method: Method, split: CalibrationSplit | None
) -> RefineOptions | None:
    """The refinement to run after ``method``, or None: ``refine`` None is the method's
    default (:func:`default_refine`); True or options ask for it."""
    if refine is None:
        return default_refine(method, split is not None)
    if refine is False:
        return None
    if split is None:
        raise LumpError("refinement needs calibration inputs (--calib)")
    if method.lossless:
        raise LumpError(f"method '{method.name}' is lossless on every input: nothing to refine")
    return RefineOptions() if refine is True else refine


def compress_chains(
    prepared: Prepared,
    method: Method,
    refine_options: RefineOptions | None,
    warm_start: Sequence[ChainResult] | None,
) -> Compressed:
    """Compress, refine and rewrite every chain of ``prepared`` in order."""
    scan, split, cache = prepared.scan, prepared.split, prepared.cache
    out = Compressed()
    refine_started = time.perf_counter()
    spill = Spill.for_model(prepared.model)
    out.sequential = prepared.options.sequential and split is not None
    if prepared.options.sequential and spill is not None:
        out.sequential = False
        scan.notes.append("sequential calibration skipped: the model keeps its weights on disk")
    for index, chain in enumerate(scan.chains):
        stage(f"chain {index}: {method.name}, hidden widths {chain.hidden_widths}", log=False)
        memo = None if cache is None else cache.chain(index)
        # the steps of a search share one encoding: its float64 weights are made once
        system = chain_encoding(chain, index, memo if spill is None else None)
        fit_inputs, held_inputs = prepared.fit_inputs[index], prepared.held_inputs[index]
        if out.sequential and out.changed:
            # its rows depend on how the chains before it were compressed: nothing of
            # them is kept for another call
            assert split is not None  # sequential with a split
            partial = export_model(prepared.graph, prepared.model, {})
            fit_rows, held_rows = _sequential_rows(
                partial, chain, split, prepared.run_on, prepared.options.mask_input
            )
            problem = ChainProblem(system, fit_rows, held_rows, None, fit_inputs, held_inputs)
            memo = None
        else:
            problem = ChainProblem(system, fit_inputs, held_inputs, memo)
        if warm_start is not None:
            result = warm_start[index]
        elif chain.gate is not None:  # its own compressor: neurons are (gate, up) pairs
            result = compress_gated(chain, problem, method)
        else:
            result = method.compress(problem)
        # a gated FFN's original, whose output refinement aims at (the encoding has no gate)
        ffn = None if chain.gate is None or refine_options is None else gated_ffn(chain, problem)
        if refine_options is not None and _differs(problem, result, ffn):
            stage(f"chain {index}: refining, widths {_widths(result)}")
            left = refine_options.max_seconds - (time.perf_counter() - refine_started)
            run = functools.partial(
                refine_result,
                problem,
                result,
                method,
                refine_options,
                left / (len(scan.chains) - index),
                index,
                ffn,
                _absent_biases(chain, result),
            )
            if memo is None or not memo.across_calls or spill is not None:
                refined_result, refine_stats = run()
            else:
                # a knob that merges as an earlier one did gives the same network: a search
                # refines it once (the same start and options refine the same way)
                key = ("refined", _result_digest(result), refine_options, method.structured)
                refined_result, refine_stats = memo.get(key, run)
            # the method's notes stay: refinement moves weights, it decides nothing
            result = dataclasses.replace(refined_result, notes=result.notes)
            out.refined.append(refine_stats)
        scan.notes.extend(f"chain {index}: {note}" for note in result.notes)
        if chain.gate is None or handles_gated(method):
            # a gated FFN the method leaves as it is counts as before it was read: not at all
            out.stats += _layer_stats(index, chain, result, method.structured)
        out.shortcut_params += sum(_count(s.weight, method.structured) for s in result.shortcuts)
        maxima = (
            None if memo is None else memo.get("maxima", functools.partial(chain_maxima, chain))
        )
        out.weight_ranges += chain_weight_ranges(chain, result.layers, maxima)
        # One chain in memory at a time when the model lives on disk: what the report
        # keeps and what the rewrite writes go to disk, and the chain's arrays are dropped.
        kept = (system, result) if spill is None else keep_on_disk(spill, chain, system, result)
        out.changed |= rewrite_chain(
            prepared.graph, chain, result.layers, result.shortcuts, spill, result.gate
        )
        release_chain(chain)
        system, result = kept
        del problem, ffn  # they hold the chain's float64 weights
        out.systems.append(system)
        out.results.append(result)
        out.widths_before.append(chain.hidden_widths)
        out.widths_after.append([layer.out_features for layer in result.layers[:-1]])
        logger.info(
            "chain %d: hidden widths %s -> %s", index, out.widths_before[-1], out.widths_after[-1]
        )
    if spill is not None:
        spill.close()
    return out


def _sequential_rows(
    partial: onnx.ModelProto,
    chain: DenseChain,
    split: CalibrationSplit,
    run_on,
    mask_input: str | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``chain``'s input on the fitting and held-out rows in ``partial``, the model whose
    chains before it are compressed already."""
    fit, held = (
        chain_inputs(partial, [chain], feeds, run_on, token_mask(feeds, mask_input))[0]
        for feeds in (split.fit, split.holdout)
    )
    return fit, held


def _widths(result: ChainResult) -> str:
    return " ".join(str(layer.out_features) for layer in result.layers[:-1])


def _differs(problem: ChainProblem, result: ChainResult, ffn: GatedFFN | None = None) -> bool:
    """False when ``result`` is the chain exactly as it was (nothing to refine); ``ffn``:
    the original gated FFN, whose gate counts too."""
    if result.shortcuts:
        return True
    weights = problem.weights
    if ffn is not None:
        assert result.gate is not None, "a gated FFN's result has the gate's parameters"
        weights = [*weights, (ffn.gate.weight, ffn.gate.bias)]
    layers = [*result.layers] if result.gate is None else [*result.layers, result.gate]
    for (weight, bias), new in zip(weights, layers, strict=True):
        if new.weight.shape != weight.shape:
            return True
        if not (np.array_equal(new.weight, weight) and np.array_equal(new.bias, bias)):
            return True
    return False


def refine_result(
    problem: ChainProblem,
    result: ChainResult,
    method: Method,
    options: RefineOptions,
    seconds: float,
    index: int,
    ffn: GatedFFN | None = None,
    fixed_biases: Collection[int] = (),
) -> tuple[ChainResult, RefineStats]:
    """Refine one chain onto the original chain's outputs; the unstructured methods keep
    their zero pattern. ``seconds`` counts from this call: the original chain's outputs
    on the rows (for a wide chain, seconds of work) are within it. ``ffn``: the original
    gated FFN where the chain is one (its gate, up and down are refined together);
    ``fixed_biases``: see :func:`refine_chain`."""
    started = time.perf_counter()
    system = problem.system
    activations = [layer.activation for layer in system.layers]
    # refinement runs with a calibration split: the problem has both sets of rows
    assert problem.calibration is not None and problem.holdout is not None
    if ffn is None:
        targets = [original_output(problem, which) for which in ("fit", "held")]
    else:  # the encoding holds up and down only: the original output needs the gate
        targets = [original_gated_output(problem, ffn, which) for which in ("fit", "held")]
    fit = ChainData(problem.calibration, targets[0], problem.original_calibration)
    held = ChainData(problem.holdout, targets[1])
    masks = None if method.structured else [layer.weight != 0 for layer in result.layers]
    weights = problem.weights

    def teacher(rows: np.ndarray) -> np.ndarray:
        """The original chain's output on jittered rows (float64, as the targets)."""
        if ffn is not None:
            return ffn.output(rows)
        return forward_chain(weights, system, rows)[-1]

    return refine_chain(
        result,
        activations,
        fit,
        held,
        options,
        masks,
        max(seconds - (time.perf_counter() - started), 1e-3),
        f"refine chain {index}",
        teacher,
        fixed_biases,
    )


def _absent_biases(chain: DenseChain, result: ChainResult) -> list[int]:
    """The layers of a gated FFN (``len(layers)``: its gate) that have no bias in the
    model nor in ``result``: refinement keeps them so. A LLaMA MLP is bias-free; biases
    learnt there would add Add nodes and parameters that a size search, which steers on
    unrefined steps, never counted (--target-params 0.5 ended at 50.8%)."""
    if chain.gate is None:
        return []
    assert result.gate is not None, "a gated FFN's result has the gate's parameters"
    pairs = [*zip(chain.layers, result.layers, strict=True), (chain.gate, result.gate)]
    return [
        i for i, (layer, new) in enumerate(pairs) if layer.bias_ref is None and not new.bias.any()
    ]


def _result_digest(result: ChainResult) -> bytes:
    """A key for a chain result's weights, biases, shortcuts and gate."""
    arrays = [a for layer in result.layers for a in (layer.weight, layer.bias)]
    arrays += [s.weight for s in result.shortcuts]
    # the gate last: an ordinary chain's key is as it was
    arrays += [] if result.gate is None else [result.gate.weight, result.gate.bias]
    shape = [(s.source, s.target) for s in result.shortcuts]
    return digest(*arrays, np.asarray(shape, dtype=np.int64))


def _count(weight: np.ndarray, structured: bool) -> int:
    return int(weight.size if structured else np.count_nonzero(weight))


def _layer_stats(
    index: int, chain: DenseChain, result: ChainResult, structured: bool
) -> list[LayerStats]:
    stats = []
    acts = [a.describe() for a in chain.activations] + ["(chain output)"]
    pairs = list(zip(chain.layers, result.layers, acts, strict=True))
    if chain.gate is not None:
        assert result.gate is not None, "a gated FFN's result has the gate's parameters"
        pairs.insert(0, (chain.gate, result.gate, f"{acts[0]} (gate)"))
        pairs[1] = (pairs[1][0], pairs[1][1], f"* {acts[0]}(gate)")
    for layer, new, act in pairs:
        has_bias = layer.bias_ref is not None or bool(new.bias.any())
        stats.append(
            LayerStats(
                chain=index,
                layer=layer.name,
                activation=act,
                width_before=layer.out_features,
                width_after=new.out_features,
                params_before=layer.n_params,
                params_after=_count(new.weight, structured) + (new.out_features if has_bias else 0),
            )
        )
    return stats
