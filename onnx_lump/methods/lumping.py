"""Neuron lumping by epsilon differential equivalence, data-free or with compensation."""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from onnx_lump.data.cache import ChainCache, digest
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
from onnx_lump.ode.encoding import Lumping, aggregate
from onnx_lump.ode.equivalence import (
    Equivalence,
    PartitionOptions,
    Similarity,
    backward_lumping,
    compute_partition,
)
from onnx_lump.ode.grouping import Linkage
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
            lumping = _layer_lumping(
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
                lumping = _layer_lumping(
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
                    prefix = (*prefix, _lumping_digest(lumping))
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


# Weight-row L1 norms this close (relative to the largest) to an eps already seen may
# sit on either side of the constant-row test, whatever its rounding allowance.
_CONSTANT_SLACK = 1e-4


def _layer_lumping(
    problem: ChainProblem,
    index: int,
    weight: np.ndarray,
    bias: np.ndarray,
    inputs: np.ndarray,
    held_inputs: np.ndarray | None,
    options: PartitionOptions,
    forward: tuple[Lumping, ...] | None,
    state: tuple,
) -> Lumping:
    """The lumping of hidden layer ``index`` from its (aggregated or refit) weights and
    its inputs on the data, in layer state ``state`` (the setting and the lumpings before
    it; ``()`` for the first layer), through the cache when there is one."""
    memo = problem.cache
    layer = problem.system.hidden[index]
    # only another eps reuses a comparison: within one call it is not kept
    remember = _data_memo(memo, options, state) if memo is not None and memo.across_calls else None

    def partition() -> Lumping:
        if forward is not None:
            return _with_data_constants(forward[index], weight, bias, layer, inputs)
        return backward_lumping(
            weight,
            bias,
            layer.activation,
            options,
            problem.system.precision,
            inputs,
            held_inputs,
            remember=remember,
        )

    if memo is None:
        return partition()
    return _remembered_lumping(memo, options, forward is not None, state, weight, partition)


def _remembered_lumping(
    memo: ChainCache,
    options: PartitionOptions,
    forward: bool,
    state: tuple,
    weight: np.ndarray,
    partition: Callable[[], Lumping],
) -> Lumping:
    """``partition()`` for this layer state and options, or a lumping found earlier that
    it must equal.

    With single linkage and backward equivalence, a layer's lumping depends on eps only
    through the groups at eps (coarser as eps grows), the rows within eps of zero (more
    as eps grows) and whether eps > 0 (data similarity). So when the nearest values
    a < eps < b already seen gave the same lumping and no weight row's L1 norm lies
    between them (the same rows were constant), eps gives that lumping too: a search step
    inside such an interval is not recomputed.
    """
    exact = ("lumping", options, forward, state)
    eps = options.eps
    if (
        eps <= 0
        or options.linkage is not Linkage.SINGLE
        or options.equivalence is not Equivalence.BACKWARD
    ):
        return memo.get(exact, partition)
    seen = memo.get(("lumpings", dataclasses.replace(options, eps=0.0), state), dict, pin=True)
    if eps in seen:
        return seen[eps][0]
    below = max((e for e in seen if e < eps), default=None)
    above = min((e for e in seen if e > eps), default=None)
    if below is not None and above is not None and seen[below][1] == seen[above][1]:
        l1 = memo.get(("row l1", state), lambda: np.abs(weight).sum(axis=1, dtype=np.float64))
        slack = _CONSTANT_SLACK * float(l1.max(initial=0.0))
        if not np.any((l1 >= below) & (l1 <= above + slack)):
            seen[eps] = seen[below]
            return seen[eps][0]
    lumping = partition()
    seen[eps] = (lumping, _lumping_digest(lumping))
    return lumping


def _data_memo(memo: ChainCache, options: PartitionOptions, state: tuple):
    """``remember`` for :func:`backward_lumping`: a layer state's comparison on the data,
    kept under the state, the options but eps, and the rows constant at eps."""
    without_eps = dataclasses.replace(options, eps=0.0)

    def remember(constant: np.ndarray, compute: Callable):
        key = ("data rows", without_eps, state, digest(constant))
        return memo.get(key, lambda: _frozen_data(*compute()))

    return remember


def _frozen_data(rows, *statistics: np.ndarray) -> tuple:
    """A comparison on the data, read-only: it is cached."""
    if rows is not None:
        frozen(rows.rows)
    return (rows, *(frozen(a) for a in statistics))


def _lumping_digest(lumping: Lumping) -> bytes:
    return digest(lumping.block, lumping.scale, lumping.offset, lumping.representative)


# eps_for_width looks up and down from 1 by this factor, then narrows (in log eps) to
# this relative resolution (the search's own); below _HINT_FLOOR eps is as good as 0.
_HINT_FACTOR = 16.0
_HINT_RESOLUTION = 1e-6
_HINT_WIDTH_SLACK = 0.0
_HINT_FLOOR = 1e-12
_HINT_CEILING = 1e6
# An interpolated eps stays this share of the (log) interval away from either end.
_HINT_MARGIN = 0.05


def eps_for_width(
    width: Callable[[float], int], want: int, known: dict[float, int] | None = None
) -> float | None:
    """The smallest eps (to :data:`_HINT_RESOLUTION`, or where the width is within
    :data:`_HINT_WIDTH_SLACK` of ``want``) at which ``width(eps)``, the non-increasing
    width of a layer, is at most ``want``: 0 when eps down to :data:`_HINT_FLOOR` do,
    None when no eps up to :data:`_HINT_CEILING` does.

    ``known`` (eps -> width, filled in as widths are measured) keeps the widths across
    calls: a second hint for another width measures only the eps its own path adds (the
    path does not depend on ``known``, so a search finds the same hints without its
    caches). Between the ends the log width is interpolated, linear in log eps, while
    that halves the interval; else the middle is taken."""
    known = {} if known is None else known

    def measure(eps: float) -> int:
        if eps not in known:
            known[eps] = width(eps)
        return known[eps]

    high = 1.0
    while measure(high) > want:
        high *= _HINT_FACTOR
        if high > _HINT_CEILING:
            return None
    low = high / _HINT_FACTOR
    while measure(low) <= want:
        high, low = low, low / _HINT_FACTOR
        if low < _HINT_FLOOR:
            return 0.0
    # a width within _HINT_WIDTH_SLACK of ``want`` is close enough, whatever the eps interval
    close = want - round(_HINT_WIDTH_SLACK * want)
    interpolate = True
    while high > low * (1.0 + _HINT_RESOLUTION) and measure(high) < close:
        span = np.log(high / low)
        share = 0.5
        wide, narrow = known[low], known[high]
        if interpolate and narrow > 0:
            share = np.log(wide / want) / np.log(wide / narrow)
            share = min(max(share, _HINT_MARGIN), 1.0 - _HINT_MARGIN)
        middle = float(low * np.exp(share * span))
        if measure(middle) > want:
            low = middle
        else:
            high = middle
        # interpolation that does not halve the interval gives way to one middle step
        interpolate = not interpolate or np.log(high / low) <= 0.5 * span
    return high


def _with_data_constants(lumping: Lumping, weight, bias, layer, inputs) -> Lumping:
    """A forward lumping whose removed neurons are replaced by their mean activation on
    the calibration data (exact for constant neurons, the best constant otherwise)."""
    removed = lumping.block < 0
    if not removed.any():
        return lumping
    mean = layer.activation(inputs @ weight.T + bias).mean(axis=0)
    return Lumping(
        lumping.block, lumping.scale, np.where(removed, mean, lumping.offset), lumping.n_blocks
    )


@dataclass
class Exact(Method):
    """The exact, data-free lumping of Ressi et al.: eps = 0 backward equivalence, where
    Relu/LeakyRelu neurons with positively proportional rows (over earlier layers'
    blocks) merge with the scale folded into the outgoing weights. Lossless."""

    name: str = "exact"
    lossless: bool = True

    def compress(self, problem: ChainProblem) -> ChainResult:
        return Lump(PartitionOptions(eps=0.0)).compress(ChainProblem(problem.system))
