"""Neuron lumping by epsilon differential equivalence, data-free or with compensation."""

from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from onnx_lump.data.compensation import refit_layer, residual
from onnx_lump.data.reference import (
    ReferenceRows,
    frozen,
    layer_inputs,
    original_output,
    original_rows,
    reference_error,
)
from onnx_lump.methods.base import ChainProblem, ChainResult, Method
from onnx_lump.methods.layer_lumping import eps_for_width, layer_lumping, lumping_digest
from onnx_lump.ode.encoding import Lumping, aggregate
from onnx_lump.ode.equivalence import (
    Equivalence,
    PartitionOptions,
    Similarity,
    compute_partition,
)
from onnx_lump.ode.reduction import ReducedLayer, reduce_layer, reduce_system
from onnx_lump.ode.span import select_span

__all__ = [
    "DEFAULT_RIDGE",
    "DEFAULT_SIMILARITY_WITH_DATA",
    "Exact",
    "Lump",
    "Reduction",
    "original_output",
    "original_rows",
]

# Which similarity lumping uses when calibration data is given, chosen on the benchmark:
# over its 32 networks, data similarity kept 64.5% of the parameters on average at
# dRMSE <= 5% against 69.6% (weights) and 73.5% (affine) (tools/results/summary.md).
DEFAULT_SIMILARITY_WITH_DATA = Similarity.DATA
DEFAULT_RIDGE = None  # chosen per layer by the held-out rows (compensation.RIDGE_GRID)


class Reduction(enum.Enum):
    """How a layer's neurons are replaced once eps is chosen."""

    PARTITION = "partition"  # blocks of equivalent neurons, one neuron a block
    SPAN = "span"  # kept neurons by pivoted QR of the activations, the rest a linear map


@dataclass
class Lump(Method):
    """Merge epsilon-equivalent neurons; with calibration data, refit the kept ones.

    Data-aware mode goes front to back: partition layer l (its weights aggregated over
    layer l - 1's blocks, on its current rows, or on its pre-activations on the data
    with data similarity), keep one neuron a block, refit the kept neurons by ridge
    regression onto the original network's pre-activations they stand for, then
    compute their activations on the calibration inputs: layer l + 1's inputs. With
    held-out rows, the ridge strength is the one that predicts them best, a refit is
    kept only where it lowers that layer's held-out residual, and the whole result only
    where it lowers the held-out output error against the same lumpings without refits;
    so eps = 0 stays exact. A layer with fewer fitting rows than inputs is not refit
    (unless ``force_refit``): its refit would interpolate the rows, not the function.

    With ``reduction`` SPAN and eps > 0, the kept neurons are chosen by the span of the
    layer's activations instead (see :mod:`onnx_lump.ode.span`); eps is then the share of
    their energy left unexplained.
    """

    options: PartitionOptions = field(default_factory=PartitionOptions)
    refit: bool = True
    ridge: float | None = DEFAULT_RIDGE
    reduction: Reduction = Reduction.PARTITION
    force_refit: bool = False
    name: str = "lump"

    def describe(self) -> str:
        o = self.options
        parts = [f"eps={o.eps:g}", o.equivalence.value, o.linkage.value]
        if self.reduction is Reduction.SPAN:
            parts = [f"eps={o.eps:g}", "span reduction"]
        elif o.similarity.value != "weights":
            parts.append(f"{o.similarity.value} similarity")
        if not o.symmetries:
            parts.append("no symmetries")
        return f"lump ({', '.join(parts)})"

    def compress(self, problem: ChainProblem) -> ChainResult:
        if problem.calibration is None:
            partition = compute_partition(problem.system, self.options)
            return ChainResult(reduce_system(problem.system, partition))
        fit = original_rows(problem, "fit")
        held = original_rows(problem, "held") if problem.holdout is not None else None
        forward = None
        if self.options.equivalence is Equivalence.FORWARD:
            forward = compute_partition(problem.system, self.options).lumpings
        path = self._with_data(problem, fit, held, forward, refit=self.refit)
        if not path.refitted:  # no refit lowered a held-out residual: the merge alone
            return ChainResult(path.merged, notes=path.notes)
        judge = held if held is not None else fit

        def error(layers: list[ReducedLayer], key) -> float:
            measure = functools.partial(reference_error, problem.system, layers, judge)
            if key is None or problem.cache is None:
                return measure()
            return problem.cache.get(key, measure)

        keyed = path.key is not None
        refitted = (path.layers, ("error", path.key) if keyed else None)
        merged = (path.merged, ("error, merged", path.key) if keyed else None)
        # the refit first on ties
        best = min((refitted, merged), key=lambda pair: error(*pair))[0]
        return ChainResult(best, notes=path.notes)

    def knob_hint(self, problem: ChainProblem, width_share: float) -> float | None:
        """The eps at which the chain's first hidden layer, whose inputs no other layer's
        merges change, keeps about ``width_share`` of its neurons: bisection on that layer
        alone, through the search's cache (a step at that eps reuses the lumping). Only
        for backward partitions on data; None otherwise."""
        if (
            problem.calibration is None
            or self.reduction is Reduction.SPAN
            or self.options.equivalence is not Equivalence.BACKWARD
        ):
            return None
        weight, bias = problem.weights[0]
        want = max(1, round(width_share * weight.shape[0]))

        def width(eps: float) -> int:
            options = dataclasses.replace(self.options, eps=eps)
            lumping = layer_lumping(
                problem, 0, weight, bias, problem.calibration, problem.holdout, options, None, ()
            )
            return lumping.n_blocks

        known = None  # the widths measured by earlier hints of the search
        if problem.cache is not None:
            key = ("first widths", dataclasses.replace(self.options, eps=0.0))
            known = problem.cache.get(key, dict, pin=True)
        return eps_for_width(width, want, known)

    def _setting(self, refit: bool) -> tuple:
        """Everything but the lumpings that a layer's inputs and refit weights depend on."""
        options = dataclasses.replace(self.options, eps=0.0)
        return (options, refit, self.ridge, self.reduction, self.force_refit)

    def _with_data(
        self,
        problem: ChainProblem,
        fit: ReferenceRows,
        held: ReferenceRows | None,
        forward: tuple[Lumping, ...] | None,
        refit: bool,
    ) -> _DataPath:
        """The chain reduced front to back on the data: each hidden layer lumped on its
        inputs (the reduced layers' activations before it) and its weights aggregated
        over the previous layer's blocks; then, with ``refit``, its kept neurons refit
        onto what they stand for in the original network (see :func:`_kept_targets`).

        Refitting after the grouping, not before, fits only the kept neurons (a fifth
        of a wide layer at 5% of the parameters) instead of every neuron of the layer,
        and the merge alone is the same lumpings with the aggregated weights: no second
        grouping of each layer.

        With a cache (``problem.cache``), each step (a layer's kept neurons and what
        enters the next layer) is kept under the lumpings so far, which fix it: a search
        step whose first layers merge as an earlier step's did reuses them. Each
        lumping is kept under its layer's state and the options, which fix it too."""
        system, options = problem.system, self.options
        memo = problem.cache
        inputs = fit.inputs
        held_inputs = None if held is None else held.inputs
        # the original pre-activations of layers 1, 2, ..., the output (stored, or
        # recomputed a layer at a time)
        fit_targets = fit.targets() if refit else None
        held_targets = held.targets() if refit and held is not None else None
        weight, bias = problem.weights[0]
        path = _DataPath()
        span = self.reduction is Reduction.SPAN and options.eps > 0
        setting = self._setting(refit)
        # Until a layer is refit, the refit path's states are the merge-only path's: they
        # are kept under its setting, so that either computes them once.
        unrefit = self._setting(False)
        prefix: tuple = ()  # digests of the lumpings so far
        for index, layer in enumerate(system.layers):
            target = held_target = None
            if refit and index:
                target = next(fit_targets)
                held_target = None if held_targets is None else next(held_targets)
            # the first layer's inputs are the chain's own: a refit would give its rows back
            attempt = refit and index > 0 and self._refits(inputs.shape[1], inputs.shape[0])
            if refit and index and not attempt:
                path.notes.append(
                    f"layer {index + 1} not refit: {inputs.shape[0]} fitting rows for "
                    f"{inputs.shape[1]} inputs (give more --calib rows, or --force-refit)"
                )
            lumping = selection = None
            if index == len(system.hidden):
                pass  # the output layer keeps its neurons
            elif span:
                selection = select_span(layer.activation(inputs @ weight.T + bias), options.eps)
            else:
                # the first layer's state is the chain's own, whatever the setting
                state = ((setting if path.refitted else unrefit), prefix) if prefix else ()
                lumping = layer_lumping(
                    problem, index, weight, bias, inputs, held_inputs, options, forward, state
                )
            step = functools.partial(
                self._step,
                problem,
                index,
                _LayerState(weight, bias, inputs, held_inputs),
                lumping,
                selection,
                target,
                held_target,
                attempt,
            )
            if memo is None or span:
                values = step()
            else:
                if lumping is not None:
                    prefix = (*prefix, lumping_digest(lumping))
                key_setting = setting if path.refitted or attempt else unrefit
                values = memo.get(("step", key_setting, prefix, index), step)
            kept, merged, following, applied = values
            path.layers.append(kept)
            path.merged.append(merged)
            path.refitted = path.refitted or applied
            if following is not None:
                weight, bias, inputs, held_inputs = following
        if memo is not None and not span:
            path.key = ((setting if path.refitted else unrefit), prefix)
        return path

    def _refits(self, n_inputs: int, n_rows: int) -> bool:
        """Whether a layer with ``n_inputs`` inputs is refit from ``n_rows`` fitting rows:
        with no more rows than inputs a refit would interpolate the rows, not the
        function (unless ``force_refit``)."""
        return n_rows > n_inputs or self.force_refit

    def _step(
        self,
        problem: ChainProblem,
        index: int,
        entering: _LayerState,
        lumping: Lumping | None,
        selection,
        target: np.ndarray | None,
        held_target: np.ndarray | None,
        refit: bool,
    ) -> tuple[ReducedLayer, ReducedLayer, _LayerState | None, bool]:
        """Layer ``index`` reduced by ``lumping`` (or the span ``selection``; neither for
        the output layer): its kept neurons (refit onto ``target`` / ``held_target``,
        the original pre-activations, where that lowers the held-out residual), the same
        neurons with the aggregated weights, what enters the next layer (None after the
        output layer) and whether the refit was kept. The arrays are read-only: they
        may be cached."""
        system = problem.system
        layer = system.layers[index]
        weight, bias, inputs, held_inputs = entering
        rebased = None
        if selection is not None:
            merged = ReducedLayer(weight[selection.kept], bias[selection.kept])
        elif lumping is not None:
            merged, rebased = reduce_layer(weight, bias, lumping, layer.activation)
        else:
            merged = ReducedLayer(weight, bias)
        kept, applied = merged, False
        if refit:
            reduce_targets = functools.partial(
                _kept_targets, lumping=lumping, selection=selection, activation=layer.activation
            )
            fit_target = reduce_targets(target)
            held_kept = None if held_target is None else reduce_targets(held_target)
            fitted, _ = refit_layer(inputs, fit_target, self.ridge, held_inputs, held_kept)
            judge_inputs, judge_target = (
                (inputs, fit_target) if held_inputs is None else (held_inputs, held_kept)
            )
            if residual(fitted, judge_inputs, judge_target) < residual(
                merged, judge_inputs, judge_target
            ):
                kept, applied = fitted, True
        kept, merged = (ReducedLayer(frozen(a.weight), frozen(a.bias)) for a in (kept, merged))
        if index + 1 == len(system.layers):
            return kept, merged, None, applied
        next_inputs = layer_inputs(inputs, kept, layer.activation)
        next_held = (
            None if held_inputs is None else layer_inputs(held_inputs, kept, layer.activation)
        )
        following = system.layers[index + 1]
        if selection is not None:
            next_weight, next_bias = selection.fold(following.coefficients, following.bias)
        else:
            next_weight, next_bias = aggregate(following, rebased)
        arrays = (frozen(a) for a in (next_weight, next_bias, next_inputs, next_held))
        return kept, merged, _LayerState(*arrays), applied


class _LayerState(NamedTuple):
    """What enters a layer on the data path: its (aggregated or folded) weights and bias
    and its inputs on the fitting and held-out rows (float32)."""

    weight: np.ndarray
    bias: np.ndarray
    inputs: np.ndarray
    held_inputs: np.ndarray | None


@dataclass
class _DataPath:
    """A chain reduced on the data: its layers with the refits kept (``layers``), the
    same lumpings with the aggregated weights alone (``merged``), the notes, whether
    any refit was kept, and a key for the contents (None when nothing is cached)."""

    layers: list[ReducedLayer] = field(default_factory=list)
    merged: list[ReducedLayer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    refitted: bool = False
    key: tuple | None = None


def _kept_targets(
    target: np.ndarray, *, lumping: Lumping | None, selection, activation
) -> np.ndarray:
    """The original pre-activations (rows x neurons) that the kept neurons stand for:
    for a block, the mean of its members' canonical pre-activations in the anchor's
    units, as :func:`reduce_layer` forms the kept neuron's row from their rows. A
    ridge refit is linear in its targets, column by column, so refitting these is
    refitting every neuron of the layer and then merging the refit rows as the lumping
    says, at the cost of the kept neurons alone."""
    if selection is not None:
        return target[:, selection.kept]
    if lumping is None:
        return target
    rows = np.zeros(target.shape[1])
    reduced, _ = reduce_layer(target.T, rows, lumping, activation)
    return (reduced.weight + reduced.bias[:, None].astype(reduced.weight.dtype)).T


@dataclass
class Exact(Method):
    """The exact, data-free lumping of Ressi et al.: eps = 0 backward equivalence, where
    Relu/LeakyRelu neurons with positively proportional rows (over earlier layers'
    blocks) merge with the scale folded into the outgoing weights. Lossless."""

    name: str = "exact"
    lossless: bool = True

    def compress(self, problem: ChainProblem) -> ChainResult:
        return Lump(PartitionOptions(eps=0.0)).compress(ChainProblem(problem.system))
