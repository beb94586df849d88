"""The pass as one call: read chains, encode, compress with a method, rewrite, verify."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_lump import __version__
from onnx_lump.data.cache import SearchCache
from onnx_lump.data.calibration import chain_inputs, random_inputs
from onnx_lump.data.holdout import (
    DEFAULT_HOLDOUT,
    CalibrationSplit,
    output_error,
    split_calibration,
    stack_outputs,
)
from onnx_lump.data.refine import ChainData, RefineOptions, RefineStats, refine_chain
from onnx_lump.errors import LumpError
from onnx_lump.graph.chains import DenseChain, scan_graph
from onnx_lump.graph.modelio import check_model
from onnx_lump.graph.modelsource import to_model_proto
from onnx_lump.graph.rewrite import export_model, import_graph, release_chain, rewrite_chain
from onnx_lump.graph.spill import Spill
from onnx_lump.graph.weightstats import (
    WeightRange,
    chain_maxima,
    chain_weight_ranges,
    weight_range_warnings,
)
from onnx_lump.methods import ChainProblem, ChainResult, Lump, Method
from onnx_lump.methods.lumping import DEFAULT_RIDGE, DEFAULT_SIMILARITY_WITH_DATA, original_output
from onnx_lump.ode.encoding import OdeSystem, encode_chain
from onnx_lump.ode.equivalence import Equivalence, PartitionOptions, Similarity
from onnx_lump.ode.grouping import Linkage
from onnx_lump.runtime import resolve_providers, run_model
from onnx_lump.verify import VerificationResult, compare_outputs

__all__ = ["LayerStats", "Report", "compress", "lump", "refines_by_default"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerStats:
    """Width and parameter count (weights + biases) of one dense layer, before and after;
    for unstructured methods ``params_after`` counts non-zero weights."""

    chain: int
    layer: str
    activation: str
    width_before: int
    width_after: int
    params_before: int
    params_after: int


@dataclass
class Report:
    """What the pass did; ``verification`` is truthy when the outputs matched."""

    method: str
    structured: bool
    layers: list[LayerStats]
    notes: list[str]
    seconds: float
    shortcut_params: int = 0
    verification: VerificationResult | None = None
    systems: list[OdeSystem] = field(default_factory=list, repr=False)
    results: list[ChainResult] = field(default_factory=list, repr=False)
    refine: list[RefineStats] = field(default_factory=list)
    widths_after: list[list[int]] = field(default_factory=list)
    holdout: str | None = None  # which inputs holdout_error was measured on
    holdout_rows: int = 0
    holdout_error: float | None = None
    weight_ranges: list[WeightRange] = field(default_factory=list)

    @property
    def params_before(self) -> int:
        return sum(s.params_before for s in self.layers)

    @property
    def params_after(self) -> int:
        return sum(s.params_after for s in self.layers) + self.shortcut_params

    @property
    def retained(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "structured": self.structured,
            "shortcut_params": self.shortcut_params,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "retained": self.retained,
            "seconds": self.seconds,
            "layers": [vars(s) for s in self.layers],
            "notes": self.notes,
            "verification": None if self.verification is None else self.verification.to_dict(),
            "widths_after": self.widths_after,
            "refine": [vars(r) for r in self.refine],
            "holdout": self.holdout,
            "holdout_rows": self.holdout_rows,
            "holdout_error": self.holdout_error,
            "weight_ranges": [vars(w) for w in self.weight_ranges],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """A table of widths and parameters per layer, then the error and the notes."""
        kind = "" if self.structured else "  (unstructured: non-zero weights; graph not smaller)"
        lines = [
            f"method: {self.method}  time={self.seconds:.3f}s{kind}",
            f"{'chain':>5}  {'layer':<28} {'activation':<18} {'width':>13} {'params':>19}",
        ]
        for s in self.layers:
            lines.append(
                f"{s.chain:>5}  {s.layer[:28]:<28} {s.activation:<18} "
                f"{s.width_before:>6}->{s.width_after:<6} {s.params_before:>9}->{s.params_after:<9}"
            )
        if self.shortcut_params:
            label = "linear shortcuts"
            lines.append(f"{'':>5}  {label:<28} {'':<18} {'':>13} {'':>9}+{self.shortcut_params}")
        lines.append(
            f"{'total':>5}  {'':<28} {'':<18} {'':>13} "
            f"{self.params_before:>9}->{self.params_after:<9} ({100 * self.retained:.1f}% kept)"
        )
        for index, r in enumerate(self.refine):
            lines.append(
                f"refine: {r.iterations} L-BFGS iterations in {r.seconds:.2f}s, held-out error "
                f"{100 * r.holdout_before:.3g}% -> {100 * r.holdout_after:.3g}%"
                + ("" if r.improved else " (no gain: kept the unrefined weights)")
                + (f" [chain {index}]" if len(self.refine) > 1 else "")
            )
        if self.weight_ranges:
            before = max(w.weight_before for w in self.weight_ranges)
            after = max(w.weight_after for w in self.weight_ranges)
            lines.append(f"max |weight|: {before:.3g} -> {after:.3g}")
        if self.holdout_error is not None:
            lines.append(f"error {100 * self.holdout_error:.3g}% on {self.holdout}")
        if self.verification is not None:
            v = self.verification
            for out in v.outputs:
                lines.append(
                    f"output '{out.name}': max abs {out.max_abs:.3g}, max rel {out.max_rel:.3g}, "
                    f"rmse {out.rmse:.3g} (reference rms {out.reference_rms:.3g}; "
                    f"{v.n_samples} samples, {', '.join(v.providers)})"
                )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


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
    ridge: float = DEFAULT_RIDGE,
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
    """
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
            "weights joined by element-wise activations or nothing"
        )
    if warm_start is not None and len(warm_start) != len(scan.chains):
        raise LumpError(f"warm start has {len(warm_start)} chains, the model {len(scan.chains)}")
    split = None
    fit_inputs = held_inputs = [None] * len(scan.chains)
    if calibration is not None:
        if cache is None:
            cache = SearchCache(across_calls=False)  # one call: nothing is kept beyond it
        cache.bind(model, calibration, holdout, seed, id(validation), id(validation_targets))
        split = cache.get(
            "split",
            lambda: split_calibration(calibration, holdout, seed, validation, validation_targets),
        )
        fit_inputs = cache.get(
            ("fit", str(run_on)), lambda: chain_inputs(model, scan.chains, split.fit, run_on)
        )
        held_inputs = cache.get(
            ("held", str(run_on)), lambda: chain_inputs(model, scan.chains, split.holdout, run_on)
        )
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
    for index, chain in enumerate(scan.chains):
        memo = None if cache is None else cache.chain(index)
        encode = functools.partial(encode_chain, chain, name=f"chain{index}")
        # the steps of a search share one encoding: its float64 weights are made once
        shared = memo is not None and spill is None
        system = memo.get("system", encode, pin=True) if shared else encode()
        problem = ChainProblem(system, fit_inputs[index], held_inputs[index], memo)
        result = warm_start[index] if warm_start is not None else method.compress(problem)
        if refine_options is not None and _differs(problem, result):
            left = refine_options.max_seconds - (time.perf_counter() - refine_started)
            result, refine_stats = _refine(
                problem, result, method, refine_options, left / (len(scan.chains) - index), index
            )
            refined.append(refine_stats)
        scan.notes.extend(f"chain {index}: {note}" for note in result.notes)
        stats += _layer_stats(index, chain, result, method.structured)
        shortcut_params += sum(_count(s.weight, method.structured) for s in result.shortcuts)
        maxima = (
            None if memo is None else memo.get("maxima", functools.partial(chain_maxima, chain))
        )
        ranges += chain_weight_ranges(chain, result.layers, maxima)
        # One chain in memory at a time when the model lives on disk: what the report
        # keeps and what the rewrite writes go to disk, and the chain's arrays are dropped.
        kept = (system, result) if spill is None else spill.keep(chain, system, result)
        changed |= rewrite_chain(graph, chain, result.layers, result.shortcuts, spill)
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
        expected = cache.held_out_reference(model, split, run_on)
        actual = run_model(reduced_model, split.holdout, run_on)
    if split is not None and measure_holdout:
        report.holdout_error = output_error(
            stack_outputs(expected), stack_outputs(actual), split.targets
        )
    if verify:
        feeds = inputs if inputs is not None else (split.holdout if split else None)
        if feeds is None:
            feeds = random_inputs(model, n_check, input_shapes)
        if expected is None or feeds is not split.holdout:
            expected = run_model(model, feeds, run_on)
            actual = run_model(reduced_model, feeds, run_on)
        report.verification = compare_outputs(expected, actual, feeds, run_on, atol, rtol)
    return reduced_model, report


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


def _refine(
    problem: ChainProblem,
    result: ChainResult,
    method: Method,
    options: RefineOptions,
    seconds: float,
    index: int,
) -> tuple[ChainResult, RefineStats]:
    """Refine one chain onto the original chain's outputs; the unstructured methods keep
    their zero pattern."""
    system = problem.system
    activations = [layer.activation for layer in system.layers]
    fit = ChainData(problem.calibration, original_output(problem, "fit"))
    held = ChainData(problem.holdout, original_output(problem, "held"))
    masks = None if method.structured else [layer.weight != 0 for layer in result.layers]
    return refine_chain(
        result, activations, fit, held, options, masks, max(seconds, 1e-3), f"refine chain {index}"
    )


def _count(weight: np.ndarray, structured: bool) -> int:
    return int(weight.size if structured else np.count_nonzero(weight))


def _layer_stats(
    index: int, chain: DenseChain, result: ChainResult, structured: bool
) -> list[LayerStats]:
    stats = []
    acts = [a.describe() for a in chain.activations] + ["(chain output)"]
    for layer, new, act in zip(chain.layers, result.layers, acts, strict=True):
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
