"""Neuron lumping by epsilon differential equivalence, data-free or with compensation."""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

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
    """Merge epsilon-equivalent neurons; with calibration data, refit each next layer.

    Data-aware mode goes front to back: partition layer l (on its current rows, or on
    its pre-activations with data similarity), keep one neuron a block, compute the
    kept neurons' activations on the calibration inputs, then refit layer l + 1 by
    ridge regression onto the original network's pre-activations of layer l + 1. With
    held-out rows, the ridge strength is the one that predicts them best, a refit is
    kept only where it lowers that layer's held-out residual, and the whole result only
    where it lowers the held-out output error against the same merge without refits; so
    eps = 0 stays exact. A layer with fewer fitting rows than inputs is not refit
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
        merged, _, merged_key = self._with_data(problem, fit, held, forward, refit=False)
        if not self.refit:
            return ChainResult(merged)
        refitted, notes, refitted_key = self._with_data(problem, fit, held, forward, refit=True)
        if refitted_key is not None and refitted_key == merged_key:
            return ChainResult(merged, notes=notes)  # no layer could be refit: the same layers
        judge = held if held is not None else fit

        def error(layers: list[ReducedLayer], key) -> float:
            measure = functools.partial(reference_error, problem.system, layers, judge)
            if key is None or problem.cache is None:
                return measure()
            return problem.cache.get(("error", key), measure)

        # the refit path first on ties, as min() did before
        best = min(((refitted, refitted_key), (merged, merged_key)), key=lambda pair: error(*pair))[
            0
        ]
        return ChainResult(best, notes=notes)

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

        return eps_for_width(width, want)

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
    ) -> tuple[list[ReducedLayer], list[str], tuple | None]:
        """The reduced layers, the notes, and a key for their contents (None when
        nothing is cached).

        With a cache (``problem.cache``), what enters layer l + 1 (its inputs on the
        fitting and held-out rows, its aggregated or refit weights) is kept under the
        lumpings of layers 0..l, which fix it: a search step whose first layers merge as
        an earlier step's did reuses them instead of recomputing forward passes and
        refits. Each lumping is kept under its layer's state and the options, which fix
        it too."""
        system, options = problem.system, self.options
        memo = problem.cache
        inputs = fit.inputs
        held_inputs = None if held is None else held.inputs
        # the refit targets, front to back (stored, or recomputed a layer at a time)
        fit_targets = fit.targets() if refit else None
        held_targets = held.targets() if refit and held is not None else None
        weight, bias = problem.weights[0]
        reduced, notes = [], []
        span = self.reduction is Reduction.SPAN and options.eps > 0
        setting = self._setting(refit)
        # Until a layer is refit, the refit path's states are the merge-only path's: they
        # are kept under its setting, so that a search step computes them once.
        unrefit = self._setting(False)
        refitting = False  # whether a layer before this one was refit
        prefix: tuple = ()  # digests of the lumpings so far
        for index, layer in enumerate(system.hidden):
            selection = rebased = None
            if span:
                selection = select_span(layer.activation(inputs @ weight.T + bias), options.eps)
                kept = ReducedLayer(weight[selection.kept], bias[selection.kept])
            else:
                # the first layer's state is the chain's own, whatever the setting
                state = ((setting if refitting else unrefit), prefix) if prefix else ()
                lumping = _layer_lumping(
                    problem, index, weight, bias, inputs, held_inputs, options, forward, state
                )
                kept, rebased = reduce_layer(weight, bias, lumping, layer.activation)
            reduced.append(kept)
            attempt = refit and self._refits(kept.weight.shape[0], inputs.shape[0])
            if refit and not attempt:
                notes.append(
                    f"layer {index + 1} not refit: {inputs.shape[0]} fitting rows for "
                    f"{kept.weight.shape[0]} inputs (give more --calib rows, or --force-refit)"
                )
            advance = functools.partial(
                self._advance,
                problem,
                None if fit_targets is None else next(fit_targets),
                None if held_targets is None else next(held_targets),
                index,
                kept,
                selection,
                rebased,
                inputs,
                held_inputs,
                attempt,
            )
            if memo is None or span:
                state_values = advance()
            else:
                prefix = (*prefix, _lumping_digest(lumping))
                key_setting = setting if refitting or attempt else unrefit
                state_values = memo.get(("state", key_setting, prefix), advance)
            inputs, held_inputs, weight, bias, applied = state_values
            refitting = refitting or applied
        reduced.append(ReducedLayer(weight, bias))
        key = None if memo is None or span else ((setting if refitting else unrefit), prefix)
        return reduced, notes, key

    def _refits(self, n_inputs: int, n_rows: int) -> bool:
        """Whether a layer with ``n_inputs`` inputs is refit from ``n_rows`` fitting rows:
        with no more rows than inputs a refit would interpolate the rows, not the
        function (unless ``force_refit``)."""
        return n_rows > n_inputs or self.force_refit

    def _advance(
        self,
        problem: ChainProblem,
        target: np.ndarray | None,
        held_target: np.ndarray | None,
        index: int,
        kept: ReducedLayer,
        selection,
        rebased: Lumping | None,
        inputs: np.ndarray,
        held_inputs: np.ndarray | None,
        refit: bool,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, bool]:
        """What enters layer ``index + 1`` once layer ``index`` is reduced to ``kept``:
        its inputs on the fitting and held-out rows (float32), its weights and bias
        (aggregated over the lumping, then, with ``refit``, refit onto the original
        pre-activations ``target`` / ``held_target`` where that lowers the held-out
        residual), and whether it was refit. The arrays are read-only: they may be cached."""
        layer = problem.system.hidden[index]
        inputs = layer_inputs(inputs, kept, layer.activation)
        if held_inputs is not None:
            held_inputs = layer_inputs(held_inputs, kept, layer.activation)
        following = problem.system.layers[index + 1]
        if selection is not None:
            weight, bias = selection.fold(following.coefficients, following.bias)
        else:
            weight, bias = aggregate(following, rebased)
        applied = False
        if refit:
            fitted, _ = refit_layer(inputs, target, self.ridge, held_inputs, held_target)
            judge_inputs, judge_target = (
                (inputs, target) if held_inputs is None else (held_inputs, held_target)
            )
            naive = ReducedLayer(weight, bias)
            if residual(fitted, judge_inputs, judge_target) < residual(
                naive, judge_inputs, judge_target
            ):
                weight, bias, applied = fitted.weight, fitted.bias, True
        return (*(frozen(a) for a in (inputs, held_inputs, weight, bias)), applied)


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


# eps_for_width looks up and down from 1 by this factor, then bisects (in log eps) to
# this relative resolution (the search's own); below _HINT_FLOOR eps is as good as 0.
_HINT_FACTOR = 16.0
_HINT_RESOLUTION = 1e-4
_HINT_WIDTH_SLACK = 0.002
_HINT_FLOOR = 1e-12
_HINT_CEILING = 1e6


def eps_for_width(width: Callable[[float], int], want: int) -> float | None:
    """The smallest eps (to :data:`_HINT_RESOLUTION`, or where the width is within
    :data:`_HINT_WIDTH_SLACK` of ``want``) at which ``width(eps)``, the non-increasing
    width of a layer, is at most ``want``: 0 when eps down to :data:`_HINT_FLOOR` do,
    None when no eps up to :data:`_HINT_CEILING` does."""
    high = 1.0
    while width(high) > want:
        high *= _HINT_FACTOR
        if high > _HINT_CEILING:
            return None
    low = high / _HINT_FACTOR
    while width(low) <= want:
        high, low = low, low / _HINT_FACTOR
        if low < _HINT_FLOOR:
            return 0.0
    # a width within _HINT_WIDTH_SLACK of ``want`` is close enough, whatever the eps interval
    close = want - max(1, round(_HINT_WIDTH_SLACK * want))
    while high > low * (1.0 + _HINT_RESOLUTION) and width(high) < close:
        middle = float(np.sqrt(low * high))
        if width(middle) > want:
            low = middle
        else:
            high = middle
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
