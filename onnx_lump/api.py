"""The pass as one call: read chains, encode, compress with a method, rewrite, verify."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TypedDict

import numpy as np
import onnx

from onnx_lump._version import __version__
from onnx_lump.data.cache import SearchCache, digest
from onnx_lump.data.calibration import (
    AUTO_MASK_INPUT,
    chain_inputs,
    check_feeds,
    forward_chain,
    random_inputs,
    random_inputs_note,
    token_mask,
)
from onnx_lump.data.holdout import (
    DEFAULT_HOLDOUT,
    CalibrationSplit,
    check_metric,
    output_error,
    split_calibration,
    stack_outputs,
)
from onnx_lump.data.reference import original_output
from onnx_lump.data.refine import ChainData, RefineOptions, RefineStats, refine_chain
from onnx_lump.errors import LumpError
from onnx_lump.graph.chains import DenseChain, scan_graph
from onnx_lump.graph.export import export_model
from onnx_lump.graph.importer import import_graph, release_chain
from onnx_lump.graph.modelsource import to_model_proto
from onnx_lump.graph.rewrite import rewrite_chain
from onnx_lump.graph.saving import check_model
from onnx_lump.graph.spill import Spill
from onnx_lump.graph.tensordata import stored_parameters
from onnx_lump.graph.weightstats import (
    chain_maxima,
    chain_weight_ranges,
    weight_range_warnings,
)
from onnx_lump.methods import ChainProblem, Lump, Method
from onnx_lump.methods.gated import compress_gated, gated_knob_hint, handles_gated
from onnx_lump.methods.lumping import DEFAULT_RIDGE, DEFAULT_SIMILARITY_WITH_DATA
from onnx_lump.ode.encoding import OdeSystem, encode_chain
from onnx_lump.ode.grouping import Linkage
from onnx_lump.ode.partition import Equivalence, PartitionOptions, Similarity
from onnx_lump.pipeline.report import LayerStats, Report
from onnx_lump.pipeline.verify import compare_outputs
from onnx_lump.progress import stage
from onnx_lump.runtime import resolve_providers, run_model
from onnx_lump.types import RMSE, ChainResult

__all__ = [
    "DataOptions",
    "compress",
    "knob_hint",
    "lump",
    "refine_result",
    "refines_by_default",
    "uniform_width_share",
]

logger = logging.getLogger(__name__)


class DataOptions(TypedDict, total=False):
    """The options of :func:`compress` and :func:`knob_hint` about the data and where
    the model runs, as a search passes them to every step."""

    holdout: float
    seed: int
    validation: Mapping[str, np.ndarray] | None
    validation_targets: np.ndarray | None
    providers: Sequence[str]
    mask_input: str | None


def lump(
    model: onnx.ModelProto,
    eps: float = 0.0,
    *,
    equivalence: str | Equivalence = Equivalence.BACKWARD,
    linkage: str | Linkage = Linkage.SINGLE,
    symmetries: bool = True,
    similarity: str | Similarity | None = None,
    calibration: Mapping[str, np.ndarray] | None = None,
    refit: bool = True,
    ridge: float | None = DEFAULT_RIDGE,
    **kwargs,
) -> tuple[onnx.ModelProto, Report]:
    """Merge epsilon-equivalent neurons of every dense chain of ``model``.

    Data-free unless ``calibration`` inputs are given; then each next layer is refit in
    closed form (unless ``refit`` is False) and ``similarity`` defaults to
    ``DEFAULT_SIMILARITY_WITH_DATA``. Other keyword arguments go to
    :func:`compress`. Returns a new model (``model`` is not modified) and a Report.
    """
    model = to_model_proto(model)
    if similarity is None:
        similarity = Similarity.WEIGHTS if calibration is None else DEFAULT_SIMILARITY_WITH_DATA
    options = PartitionOptions(
        float(eps),
        Equivalence(equivalence),
        Linkage(linkage),
        bool(symmetries),
        Similarity(similarity),
    )
    return compress(
        model, Lump(options, refit=refit, ridge=ridge), calibration=calibration, **kwargs
    )


def compress(
    model: onnx.ModelProto,
    method: Method,
    *,
    calibration: Mapping[str, np.ndarray] | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    validation: Mapping[str, np.ndarray] | None = None,
    validation_targets: np.ndarray | None = None,
    refine: RefineOptions | bool | None = None,
    warm_start: Sequence[ChainResult] | None = None,
    cache: SearchCache | None = None,
    verify: bool = True,
    measure_holdout: bool = True,
    inputs: Mapping[str, np.ndarray] | None = None,
    n_check: int = 64,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    providers: Sequence[str] = ("cpu",),
    atol: float | None = None,
    rtol: float | None = None,
    mask_input: str | None = AUTO_MASK_INPUT,
    sequential: bool = False,
    metric: str = RMSE,
) -> tuple[onnx.ModelProto, Report]:
    """Compress every dense chain of ``model`` with ``method``.

    With ``calibration``, a seeded ``holdout`` share of its rows (or ``validation``,
    with optional reference ``validation_targets``) is set aside: the method and the
    refinement fit on the rest, and ``report.holdout_error`` is measured on the held-out
    rows by onnxruntime (unless ``measure_holdout`` is False: it then stays None).
    ``refine`` is None for the default (refine after every structured method that is not
    lossless, when calibration is given), False for never, or the options to refine
    with. ``warm_start`` (one ChainResult per chain, e.g. ``report.results`` of an
    earlier call with the same method) replaces the method's own result as the starting
    point. ``cache`` keeps what does not depend on the method's knob between calls on
    the same model and calibration (see :mod:`onnx_lump.data.cache`). With ``verify``,
    both models run in onnxruntime on ``inputs`` (else the held-out rows, else
    ``n_check`` seeded random inputs) and ``report.verification`` holds the output
    errors, judged against ``atol``/``rtol``.

    ``mask_input`` names the calibration input whose zeros mark padding (by default
    ``attention_mask`` where the model has it; None for none): the chain rows of those
    positions are left out of every fit. With ``sequential``, each chain after the first
    is fitted on its inputs in the model whose earlier chains are already compressed,
    onto the original chain's outputs on the original inputs, so that it corrects what
    the chains before it changed (GPTQ's sequential mode).

    ``metric`` is how ``report.holdout_error`` measures a float output: ``"rmse"`` (the
    relative RMSE of the output change) or ``"cosine"`` (the mean 1 - cosine of its
    rows, the last axis, padding positions of ``mask_input`` left out; see
    :mod:`onnx_lump.data.holdout`). Refinement keeps its own chain-level loss.
    """
    check_metric(metric)
    model = to_model_proto(model)
    if method.needs_data and calibration is None:
        raise LumpError(f"method '{method.name}' needs calibration inputs (--calib)")
    started = time.perf_counter()
    run_on = resolve_providers(providers)
    graph = import_graph(model)  # lazy constants; nodes tagged for export_model
    scan = scan_graph(graph)
    if not scan.chains:
        raise LumpError(
            "no dense chain found: need two or more Gemm/MatMul(+Add) layers with constant "
            "weights joined by element-wise activations or nothing" + scan.why_no_chain()
        )
    if warm_start is not None and len(warm_start) != len(scan.chains):
        raise LumpError(f"warm start has {len(warm_start)} chains, the model {len(scan.chains)}")
    split = None
    fit_inputs: Sequence[np.ndarray | None] = [None] * len(scan.chains)
    held_inputs: Sequence[np.ndarray | None] = fit_inputs
    if calibration is not None:
        calibration = check_feeds(calibration, model, "calibration")
        if validation is not None:
            validation = check_feeds(validation, model, "validation")
        if cache is None:
            cache = SearchCache(across_calls=False)  # one call: nothing is kept beyond it
        split, fit_inputs, held_inputs = _chain_rows(
            model, scan.chains, calibration, holdout, seed, validation, validation_targets,
            cache, run_on, mask_input,
        )  # fmt: skip
        # once per search (the cache's lifetime): its steps all have the same rows
        scan.notes.extend(
            cache.get(
                "small calibration", lambda: _small_calibration_notes(scan.chains, fit_inputs)
            )
        )
    refine_options = _refine_options(refine, method, split)
    refine_started = time.perf_counter()
    stats, systems, results, refined = [], [], [], []
    widths_before, widths_after, shortcut_params, changed = [], [], 0, False
    spill, ranges = Spill.for_model(model), []
    follow = sequential and split is not None
    if sequential and spill is not None:
        follow = False
        scan.notes.append("sequential calibration skipped: the model keeps its weights on disk")
    for index, chain in enumerate(scan.chains):
        stage(f"chain {index}: {method.name}, hidden widths {chain.hidden_widths}", log=False)
        memo = None if cache is None else cache.chain(index)
        # the steps of a search share one encoding: its float64 weights are made once
        system = _encoding(chain, index, memo if spill is None else None)
        if follow and changed:
            # its rows depend on how the chains before it were compressed: nothing of
            # them is kept for another call
            assert split is not None  # follow: sequential with a split
            fit_rows, held_rows = _sequential_rows(
                export_model(graph, model, {}), chain, split, run_on, mask_input
            )
            problem = ChainProblem(
                system, fit_rows, held_rows, None, fit_inputs[index], held_inputs[index]
            )
            memo = None
        else:
            problem = ChainProblem(system, fit_inputs[index], held_inputs[index], memo)
        if warm_start is not None:
            result = warm_start[index]
        elif chain.gate is not None:  # its own compressor: neurons are (gate, up) pairs
            result = compress_gated(chain, problem, method)
        else:
            result = method.compress(problem)
        if refine_options is not None and chain.gate is not None:
            skipped = (
                "refinement skipped: gated FFNs are not refined yet (their down projection is "
                "refit by least squares instead)"
            )
            result = dataclasses.replace(result, notes=[*result.notes, skipped])
        elif refine_options is not None and _differs(problem, result):
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
            )
            if memo is None or not memo.across_calls or spill is not None:
                result, refine_stats = run()
            else:
                # a knob that merges as an earlier one did gives the same network: a search
                # refines it once (the same start and options refine the same way)
                key = ("refined", _result_digest(result), refine_options, method.structured)
                refined_result, refine_stats = memo.get(key, run)
                result = dataclasses.replace(refined_result, notes=result.notes)
            refined.append(refine_stats)
        scan.notes.extend(f"chain {index}: {note}" for note in result.notes)
        if chain.gate is None or handles_gated(method):
            # a gated FFN the method leaves as it is counts as before it was read: not at all
            stats += _layer_stats(index, chain, result, method.structured)
        shortcut_params += sum(_count(s.weight, method.structured) for s in result.shortcuts)
        maxima = (
            None if memo is None else memo.get("maxima", functools.partial(chain_maxima, chain))
        )
        ranges += chain_weight_ranges(chain, result.layers, maxima)
        # One chain in memory at a time when the model lives on disk: what the report
        # keeps and what the rewrite writes go to disk, and the chain's arrays are dropped.
        kept = (system, result) if spill is None else spill.keep(chain, system, result)
        changed |= rewrite_chain(graph, chain, result.layers, result.shortcuts, spill, result.gate)
        release_chain(chain)
        system, result = kept
        del problem  # its system holds the chain's float64 weights
        systems.append(system)
        results.append(result)
        widths_before.append(chain.hidden_widths)
        widths_after.append([layer.out_features for layer in result.layers[:-1]])
        logger.info("chain %d: hidden widths %s -> %s", index, widths_before[-1], widths_after[-1])
    metadata = {
        "pkg.onnx_lump.version": __version__,
        "pkg.onnx_lump.method": method.describe(),
        "pkg.onnx_lump.widths_before": json.dumps(widths_before),
        "pkg.onnx_lump.widths_after": json.dumps(widths_after),
    }
    if isinstance(method, Lump):
        metadata["pkg.onnx_lump.eps"] = repr(method.options.eps)
        metadata["pkg.onnx_lump.ode.equivalence"] = method.options.equivalence.value
        metadata["pkg.onnx_lump.linkage"] = method.options.linkage.value
    if follow:
        metadata["pkg.onnx_lump.sequential"] = "1"
    if refined:
        metadata["pkg.onnx_lump.refine_iterations"] = json.dumps([r.iterations for r in refined])
    if spill is not None:
        spill.close()
    reduced_model = export_model(graph if changed else None, model, metadata)
    if changed:  # else the graph is the input's own: nothing of ours to check
        check_model(reduced_model)  # any size, external data included
    report = Report(
        method.describe(),
        method.structured,
        stats,
        scan.notes,
        time.perf_counter() - started,
        shortcut_params,
        systems=systems,
        results=results,
        refine=refined,
        widths_after=widths_after,
        metric=metric,
        model_params_before=stored_parameters(model),
        model_params_after=stored_parameters(reduced_model),
    )
    if changed:
        report.weight_ranges = ranges
        report.notes.extend(weight_range_warnings(report.weight_ranges))
    if split is not None:
        report.holdout = split.description
        report.holdout_rows = split.n_holdout
    # Each model runs once on the held-out rows, for the error and the verification both
    # (the original once per search).
    expected = actual = None
    if split is not None and (measure_holdout or (verify and inputs is None)):
        assert cache is not None  # made with the split
        expected = cache.held_out_reference(model, split, run_on)
        actual = run_model(reduced_model, split.holdout, run_on)
        if measure_holdout:
            mask = token_mask(split.holdout, mask_input)
            report.holdout_error = output_error(
                stack_outputs(expected, mask), stack_outputs(actual, mask), split.targets, metric
            )
    if verify:
        feeds = inputs if inputs is not None else (split.holdout if split else None)
        if feeds is None:
            feeds = random_inputs(model, n_check, input_shapes)
            note = random_inputs_note(model, n_check, input_shapes)
            if note:
                report.notes.append(note)
        if expected is None or actual is None or split is None or feeds is not split.holdout:
            expected = run_model(model, feeds, run_on)
            actual = run_model(reduced_model, feeds, run_on)
        report.verification = compare_outputs(expected, actual, feeds, run_on, atol, rtol)
    return reduced_model, report


def knob_hint(
    model: onnx.ModelProto,
    method: Method,
    target_params: float,
    calibration: Mapping[str, np.ndarray],
    cache: SearchCache,
    *,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    validation: Mapping[str, np.ndarray] | None = None,
    validation_targets: np.ndarray | None = None,
    providers: Sequence[str] = ("cpu",),
    after: Report | None = None,
    slack: float = 0.0,
    mask_input: str | None = AUTO_MASK_INPUT,
) -> float | None:
    """A knob of ``method`` near the one keeping ``target_params`` (a fraction) of the
    dense chains' parameters, for a size search to start from (None when the method has
    no cheap estimate): the knob at which each chain's first hidden layer keeps the
    share of its neurons that meets the target when every hidden layer keeps as much
    (or, given the report of a step ``after``, when the later layers follow the first
    as they did there: :func:`width_ratios`; ``slack``: the share of that width it may
    fall short by, for a rough hint), from :func:`uniform_width_share`, averaged
    over chains in log space, weighted by their parameters. It reads the chains and
    calibration rows through ``cache`` (the search's own), as :func:`compress` does, so
    the steps reuse them. A model that keeps its weights on disk is read one chain at a
    time, as compress reads it."""
    model = to_model_proto(model)
    on_disk = Spill.for_model(model) is not None
    run_on = resolve_providers(providers)
    scan = scan_graph(import_graph(model))
    if not scan.chains:
        return None
    _, fit_inputs, held_inputs = _chain_rows(
        model, scan.chains, calibration, holdout, seed, validation, validation_targets,
        cache, run_on, mask_input,
    )  # fmt: skip
    ratios = None if after is None else width_ratios(after, scan.chains)
    share = uniform_width_share(scan.chains, target_params, ratios)
    logs, weights = [], []
    for index, chain in enumerate(scan.chains):
        if chain.gate is not None and not handles_gated(method):
            continue  # left as it is, and out of the counts
        memo = cache.chain(index)
        system = _encoding(chain, index, None if on_disk else memo)
        problem = ChainProblem(system, fit_inputs[index], held_inputs[index], memo)
        if chain.gate is not None:
            hint = gated_knob_hint(chain, problem, method, share)
        else:
            hint = method.knob_hint(problem, share, slack)
        del problem
        del system
        release_chain(chain)
        if hint is None or hint <= 0:
            return None
        logs.append(np.log(hint))
        weights.append(chain.n_params)
    if not logs:
        return None
    return float(np.exp(np.average(logs, weights=weights)))


def uniform_width_share(
    chains: Sequence[DenseChain],
    target_params: float,
    ratios: Sequence[Sequence[float] | None] | None = None,
) -> float:
    """The share f of its neurons every chain's first hidden layer would keep for the
    chains to keep ``target_params`` of their parameters, when each hidden layer keeps
    f times its ``ratios`` entry (per chain, per hidden layer; 1 for all when None):
    the positive root of B f^2 + A f + C = target x total, where B counts the weights
    between two hidden layers, A those between a hidden layer and a chain's input or
    output plus the hidden biases, and C the output biases (each count weighted by the
    ratios of the hidden layers it joins)."""
    quadratic = linear = constant = total = 0.0
    for index, chain in enumerate(chains):
        hidden = len(chain.layers) - 1
        ratio = (ratios[index] if ratios is not None else None) or [1.0] * hidden
        for position, layer in enumerate(chain.layers):
            total += layer.n_params
            bias = layer.n_params - layer.in_features * layer.out_features
            inner, outer = position > 0, position < hidden
            weights = layer.in_features * layer.out_features
            into = ratio[position - 1] if inner else 1.0
            out = ratio[position] if outer else 1.0
            if inner and outer:
                quadratic += weights * into * out
            else:
                linear += weights * (into if inner else out)
            if outer:
                linear += bias * out
            else:
                constant += bias
        gate = getattr(chain, "gate", None)  # anything with layers will do (no gate)
        if gate is not None:  # the gate's rows go with the up rows
            total += gate.n_params
            linear += gate.n_params * ratio[0]
    goal = target_params * total - constant
    if goal <= 0 or quadratic + linear == 0:
        return 0.0
    if quadratic == 0:
        return min(1.0, goal / linear)
    root = (-linear + np.sqrt(linear * linear + 4.0 * quadratic * goal)) / (2.0 * quadratic)
    return float(min(1.0, root))


def width_ratios(report: Report, chains: Sequence[DenseChain]) -> list[list[float] | None]:
    """Per chain, the share of its neurons each hidden layer kept in ``report`` over the
    share the first kept (None for a chain the report does not describe, or whose
    first layer kept nothing): how the later layers followed the first."""
    ratios: list[list[float] | None] = []
    for index, chain in enumerate(chains):
        stats = [s for s in report.layers if s.chain == index]
        if len(stats) != len(chain.layers) or len(stats) < 2 or stats[0].width_after <= 0:
            ratios.append(None)
            continue
        shares = [s.width_after / max(s.width_before, 1) for s in stats[:-1]]
        ratios.append([share / shares[0] for share in shares])
    return ratios


def _widths(result: ChainResult) -> str:
    return " ".join(str(layer.out_features) for layer in result.layers[:-1])


def _chain_rows(
    model,
    chains,
    calibration,
    holdout,
    seed,
    validation,
    validation_targets,
    cache,
    run_on,
    mask_input,
) -> tuple[CalibrationSplit, list[np.ndarray], list[np.ndarray]]:
    """The calibration split and every chain's input on its fitting and held-out rows
    (padding left out, see :func:`token_mask`), computed once per ``cache``."""
    cache.bind(
        model, calibration, holdout, seed, id(validation), id(validation_targets), mask_input
    )
    split = cache.get(
        "split",
        lambda: split_calibration(calibration, holdout, seed, validation, validation_targets),
    )

    def collect(rows, which: str):
        count = int(next(iter(rows.values())).shape[0]) if rows else 0
        stage(f"collecting the chains' inputs on the {count} {which} rows")
        return chain_inputs(model, chains, rows, run_on, token_mask(rows, mask_input))

    fit = cache.get(("fit", str(run_on)), lambda: collect(split.fit, "fitting"))
    held = cache.get(("held", str(run_on)), lambda: collect(split.holdout, "held-out"))
    return split, fit, held


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


def _encoding(chain: DenseChain, index: int, memo) -> OdeSystem:
    """The chain's ODE encoding, made once per ``memo`` (a search's chain cache) when
    there is one."""
    encode = functools.partial(encode_chain, chain, name=f"chain{index}")
    return encode() if memo is None else memo.get("system", encode, pin=True)


def _small_calibration_notes(chains, fit_inputs) -> list[str]:
    """A warning per chain whose fitting rows cannot pin down its widest layer: a refit
    (or refinement) from fewer rows than a layer's inputs interpolates the rows."""
    notes = []
    for index, (chain, rows) in enumerate(zip(chains, fit_inputs, strict=True)):
        widest = max(layer.in_features for layer in chain.layers)
        if rows.shape[0] <= widest:
            message = (
                f"chain {index}: only {rows.shape[0]} fitting rows for layers with up to "
                f"{widest} inputs; give at least {widest + 1} calibration rows (more is better)"
            )
            logger.warning(message)
            notes.append(message)
    return notes


def refines_by_default(method: Method) -> bool:
    """Whether ``compress`` refines after ``method`` when calibration inputs are given and
    ``refine`` is left at None: structured methods that do not promise losslessness."""
    return method.structured and not method.lossless


def _refine_options(
    refine: RefineOptions | bool | None, method: Method, split: CalibrationSplit | None
) -> RefineOptions | None:
    """The refinement to run after ``method``, or None."""
    if refine is False or (refine is None and not refines_by_default(method)):
        return None
    if split is None:
        if refine is None:
            return None
        raise LumpError("refinement needs calibration inputs (--calib)")
    if method.lossless:
        raise LumpError(f"method '{method.name}' is lossless on every input: nothing to refine")
    return RefineOptions() if refine is None or refine is True else refine


def _differs(problem: ChainProblem, result: ChainResult) -> bool:
    """False when ``result`` is the chain exactly as it was (nothing to refine)."""
    if result.shortcuts:
        return True
    for (weight, bias), new in zip(problem.weights, result.layers, strict=True):
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
) -> tuple[ChainResult, RefineStats]:
    """Refine one chain onto the original chain's outputs; the unstructured methods keep
    their zero pattern. ``seconds`` counts from this call: the original chain's outputs
    on the rows (for a wide chain, seconds of work) are within it."""
    started = time.perf_counter()
    system = problem.system
    activations = [layer.activation for layer in system.layers]
    # refinement runs with a calibration split: the problem has both sets of rows
    assert problem.calibration is not None and problem.holdout is not None
    fit = ChainData(
        problem.calibration, original_output(problem, "fit"), problem.original_calibration
    )
    held = ChainData(problem.holdout, original_output(problem, "held"))
    masks = None if method.structured else [layer.weight != 0 for layer in result.layers]
    weights = problem.weights

    def teacher(rows: np.ndarray) -> np.ndarray:
        """The original chain's output on jittered rows (float64, as the targets)."""
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
    )


def _result_digest(result: ChainResult) -> bytes:
    """A key for a chain result's weights, biases and shortcuts."""
    arrays = [a for layer in result.layers for a in (layer.weight, layer.bias)]
    arrays += [s.weight for s in result.shortcuts]
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
