"""Neuron lumping by epsilon differential equivalence, data-free or with compensation."""

from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass, field

import numpy as np

from onnx_lump.data.compensation import centred_gram, refit_layer, residual
from onnx_lump.data.reference import (
    ReferenceRows,
    frozen,
    layer_input_chunks,
    layer_inputs,
    original_rows,
    reference_error,
)
from onnx_lump.errors import LumpError
from onnx_lump.methods.base import ChainProblem, Method
from onnx_lump.methods.layer_lumping import eps_for_width, layer_lumping, lumping_digest
from onnx_lump.ode.data_similarity import unsupported_constants
from onnx_lump.ode.encoding import Lumping, aggregate
from onnx_lump.ode.equivalence import compute_partition
from onnx_lump.ode.grouping import Linkage
from onnx_lump.ode.partition import Equivalence, PartitionOptions, Similarity
from onnx_lump.ode.reduction import reduce_layer, reduce_system
from onnx_lump.ode.span import SpanOrder, next_layer_order, span_order
from onnx_lump.progress import stage
from onnx_lump.types import ChainResult, ReducedLayer

__all__ = [
    "DEFAULT_REDUCTION_WITH_DATA",
    "DEFAULT_RIDGE",
    "DEFAULT_SIMILARITY_WITH_DATA",
    "Exact",
    "Lump",
    "LumpOptions",
    "Reduction",
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
    # as many neurons kept as SPAN keeps, chosen to explain the next layer's inputs
    SPAN_NEXT = "span-next"
    # the same, keeping the same share of every layer's neurons (eps: the share left out)
    SPAN_UNIFORM = "span-uniform"

    @property
    def is_span(self) -> bool:
        return self is not Reduction.PARTITION

    @property
    def eps_limit(self) -> float | None:
        """The largest eps: a span reduction's is a share (1); a partition's L1
        tolerance has none."""
        return 1.0 if self.is_span else None


# The reduction lumping uses when calibration data is given (LumpOptions' default). Over
# the benchmark's 32 networks at the sizes that decide its headline, both refined alike,
# span gave the better test fidelity in 54 of 64 comparisons and was within dRMSE 5% in
# 15 where partitions were not (partitions alone in 5) (tools/results/span.md). What held
# it back, its refit growing the last layer's weights until int8 broke them (Tanh demo:
# 49% error after quantizing), went with the ridge rule of data.compensation.RIDGE_SLACK.
DEFAULT_REDUCTION_WITH_DATA = Reduction.SPAN


@dataclass(frozen=True)
class LumpOptions:
    """Every lumping option but eps, in one place: ``lump()``, ``LumpPass``, the Olive
    pass and the CLI all build their :class:`Lump` from one of these (strings are read
    as the enums' values, so a config file can spell them). ``similarity`` and
    ``reduction`` None are the defaults of the data at hand: without calibration, weight
    similarity and partitions; with it, :data:`DEFAULT_SIMILARITY_WITH_DATA` and
    :data:`DEFAULT_REDUCTION_WITH_DATA` (partitions where a similarity is given)."""

    # each field's "help" is what a config schema (the Olive pass) says of it
    equivalence: Equivalence = field(
        default=Equivalence.BACKWARD,
        metadata={"help": "'backward' (match incoming dynamics) or 'forward'."},
    )
    linkage: Linkage = field(
        default=Linkage.SINGLE,
        metadata={"help": "'single' (connected components) or 'complete' (all pairs)."},
    )
    symmetries: bool = field(
        default=True, metadata={"help": "Use scale/sign canonical forms and proportional merges."}
    )
    similarity: Similarity | None = field(
        default=None,
        metadata={
            "help": f"One of {[s.value for s in Similarity]}; all but 'weights' need "
            "calibration (default: weights, or the data default with data)."
        },
    )
    refit: bool = field(default=True, metadata={"help": "Refit after merges (with data)."})
    ridge: float | None = field(
        default=DEFAULT_RIDGE,
        metadata={"help": "Ridge of the refit (default: chosen by the held-out rows)."},
    )
    reduction: Reduction | None = field(
        default=None,
        metadata={
            "help": f"One of {[r.value for r in Reduction]} (with data; default: span, or "
            "partition where a similarity is given)."
        },
    )
    force_refit: bool = field(
        default=False,
        metadata={"help": "Refit a layer even from fewer fitting rows than it has inputs."},
    )

    def __post_init__(self) -> None:
        for name, kind in (
            ("equivalence", Equivalence),
            ("linkage", Linkage),
            ("similarity", Similarity),
            ("reduction", Reduction),
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    known = ", ".join(repr(k.value) for k in kind)
                    raise LumpError(f"{name} must be one of {known}, got {value!r}") from None
        if self.ridge is not None and not (np.isfinite(self.ridge) and self.ridge >= 0):
            raise LumpError(f"ridge must be a finite number >= 0 (or None), got {self.ridge}")
        object.__setattr__(self, "symmetries", bool(self.symmetries))
        object.__setattr__(self, "refit", bool(self.refit))
        object.__setattr__(self, "force_refit", bool(self.force_refit))

    @classmethod
    def take(cls, kwargs: dict) -> LumpOptions:
        """The options named in ``kwargs``, removed from it (the rest are someone
        else's: :func:`onnx_lump.compress`'s keywords)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: kwargs.pop(name) for name in names if name in kwargs})

    def method(self, eps: float, with_data: bool) -> Lump:
        """The lumping method at ``eps`` for a run with (``with_data``) or without
        calibration inputs."""
        similarity = self.similarity
        if similarity is None:
            similarity = DEFAULT_SIMILARITY_WITH_DATA if with_data else Similarity.WEIGHTS
        partition = PartitionOptions(
            float(eps), self.equivalence, self.linkage, self.symmetries, similarity
        )
        return Lump(
            partition,
            refit=self.refit,
            ridge=self.ridge,
            reduction=self.reduction_for(with_data),
            force_refit=self.force_refit,
        )

    def reduction_for(self, with_data: bool) -> Reduction:
        """The reduction a run with (``with_data``) or without calibration inputs uses:
        span needs the activations on data."""
        if self.reduction is not None:
            return self.reduction
        # A similarity says how to group neurons into blocks: it asks for partitions.
        if not with_data or self.similarity is not None:
            return Reduction.PARTITION
        return DEFAULT_REDUCTION_WITH_DATA


@dataclass
class Lump(Method):
    """Merge epsilon-equivalent neurons; with calibration data, refit each next layer.

    Data-aware mode goes front to back: partition layer l (on its current rows, or on
    its pre-activations with data similarity), keep one neuron a block, compute the
    kept neurons' activations on the calibration inputs, then refit layer l + 1 by
    ridge regression onto the original network's pre-activations of layer l + 1. With
    held-out rows, the ridge strength is the strongest that predicts them within 10% of
    the best, a refit is
    kept only where it lowers that layer's held-out residual, and the whole result only
    where it lowers the held-out output error against the same merge without refits; so
    eps = 0 stays exact. A layer with fewer fitting rows than inputs is not refit
    (unless ``force_refit``): its refit would interpolate the rows, not the function.

    With ``reduction`` SPAN and eps > 0, the kept neurons are chosen by the span of the
    layer's activations instead (see :mod:`onnx_lump.ode.span`); eps is then the share of
    their energy left unexplained. SPAN_NEXT keeps as many, chosen to explain the next
    layer's pre-activations instead. SPAN_UNIFORM keeps the first pivots of every layer
    up to the same share of its neurons: eps is the share left out.
    """

    options: PartitionOptions = field(default_factory=PartitionOptions)
    refit: bool = True
    ridge: float | None = DEFAULT_RIDGE
    reduction: Reduction = Reduction.PARTITION
    force_refit: bool = False
    name: str = "lump"

    def __post_init__(self) -> None:
        # An L1 tolerance given to a span reduction (the default with data) would
        # silently leave every neuron but one out.
        limit = self.reduction.eps_limit
        if limit is not None and not 0.0 <= self.options.eps <= limit:
            raise LumpError(
                f"with the {self.reduction.value} reduction (the default with calibration "
                f"data) eps is a share from 0 to 1, got {self.options.eps:g}; for an L1 "
                "tolerance between neurons use reduction 'partition' (--reduction partition)"
            )

    def describe(self) -> str:
        o = self.options
        parts = [f"eps={o.eps:g}", o.equivalence.value, o.linkage.value]
        if self.reduction is Reduction.SPAN:
            parts = [f"eps={o.eps:g}", "span reduction"]
        elif self.reduction is Reduction.SPAN_NEXT:
            parts = [f"eps={o.eps:g}", "span reduction, next-layer pivots"]
        elif self.reduction is Reduction.SPAN_UNIFORM:
            parts = [f"eps={o.eps:g}", "span reduction, uniform widths"]
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

    def knob_hint(
        self, problem: ChainProblem, width_share: float, slack: float = 0.0
    ) -> float | None:
        """The eps at which the chain's first hidden layer, whose inputs no other layer's
        merges change, keeps about ``width_share`` of its neurons (or down to ``slack`` of
        it fewer): bisection on that layer alone, through the search's cache (a step at
        that eps reuses the lumping); for span, the pivot order's share left unexplained
        at that width. Only for backward partitions and span on data; None otherwise."""
        calibration = problem.calibration
        if calibration is None:
            return None
        first = problem.system.layers[0]  # not problem.weights: float64 copies of every layer
        weight, bias = first.coefficients, first.bias
        want = max(1, round(width_share * weight.shape[0]))
        if self.reduction is Reduction.SPAN_UNIFORM:
            return 1.0 - want / weight.shape[0]
        if self.reduction in (Reduction.SPAN, Reduction.SPAN_NEXT):  # the order answers it
            return self._span_order(problem, 0, weight, bias, calibration).eps_for(want)
        if self.options.equivalence is not Equivalence.BACKWARD:
            return None

        def width(eps: float) -> int:
            options = dataclasses.replace(self.options, eps=eps)
            lumping = layer_lumping(
                problem, 0, weight, bias, calibration, problem.holdout, options, None, ()
            )
            return lumping.n_blocks

        return eps_for_width(width, want, int(slack * want))

    def probe(self) -> Lump | None:
        """The same lumping without refits: the merge-only path of :meth:`compress`, whose
        layer states a step at the same knob then takes from the search's cache. Its
        widths follow the refit path's closely where the refits reproduce the original
        pre-activations (on the 4 x 4096 benchmark model within a neuron a layer)."""
        if not self.refit or self.reduction.is_span:
            return None
        return dataclasses.replace(self, refit=False)

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
        span = self.reduction.is_span and options.eps > 0
        setting = self._setting(refit)
        # Until a layer is refit, the refit path's states are the merge-only path's: they
        # are kept under its setting, so that a search step computes them once.
        unrefit = self._setting(False)
        refitting = False  # whether a layer before this one was refit
        prefix: tuple = ()  # digests of the lumpings so far
        for index, layer in enumerate(system.hidden):
            stage(
                f"{'refit' if refit else 'merge-only'} path: layer {index + 1} of "
                f"{len(system.hidden)}"
            )
            selection = rebased = None
            if span:
                order = self._span_order(problem, index, weight, bias, inputs)
                if self.reduction is Reduction.SPAN_UNIFORM:
                    selection = order.keep(max(1, round((1.0 - options.eps) * order.width)))
                else:
                    selection = order.select(options.eps)
                # a neuron silent on the fitting rows explains nothing and is explained
                # by its mean; unless the data shows it stays so, it may fire elsewhere
                selection = selection.keeping(
                    self._unsupported(problem, index, weight, bias, inputs, held_inputs)
                )
                kept = ReducedLayer(weight[selection.kept], bias[selection.kept])
            else:
                # the first layer's state is the chain's own, whatever the setting
                state = ((setting if refitting else unrefit), prefix) if prefix else ()
                lumping = layer_lumping(
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
                prefix = (*prefix, lumping_digest(lumping))
                key_setting = setting if refitting or attempt else unrefit
                state_values = memo.get(("state", key_setting, prefix), advance)
            inputs, held_inputs, weight, bias, applied = state_values
            refitting = refitting or applied
        reduced.append(ReducedLayer(weight, bias))
        key = None if memo is None or span else ((setting if refitting else unrefit), prefix)
        return reduced, notes, key

    def _span_order(
        self, problem: ChainProblem, index: int, weight: np.ndarray, bias: np.ndarray, inputs
    ) -> SpanOrder:
        """Layer ``index``'s pivot order on its activations (float32 rows, float64
        moments; with SPAN_NEXT, chosen for the next layer's weights); the first layer's,
        whose inputs are the chain's own, is made once per search (``problem.cache``):
        every eps and width reads it."""

        def make() -> SpanOrder:
            activation = problem.system.hidden[index].activation
            rows = layer_input_chunks(inputs, ReducedLayer(weight, bias), activation)
            if self.reduction is Reduction.SPAN_NEXT:
                readout = problem.system.layers[index + 1].coefficients
                return next_layer_order(*centred_gram(rows), readout)
            return span_order(*centred_gram(rows))

        if index or problem.cache is None:
            return make()
        next_layer = self.reduction is Reduction.SPAN_NEXT
        return problem.cache.get(("span order", next_layer, 0), make, pin=True)

    def _unsupported(
        self,
        problem: ChainProblem,
        index: int,
        weight: np.ndarray,
        bias: np.ndarray,
        inputs: np.ndarray,
        held_inputs: np.ndarray | None,
    ) -> np.ndarray:
        """Layer ``index``'s neurons that are constant on the fitting rows but not shown
        so beyond them (they are kept); the first layer's, which depend on no knob, once
        per search (``problem.cache``), like its pivot order: on all-MiniLM-L6-v2 this
        pass over every token row took a quarter of a --max-error search."""

        def make() -> np.ndarray:
            activation = problem.system.hidden[index].activation
            return unsupported_constants(weight, bias, activation, inputs, held_inputs)

        if index or problem.cache is None:
            return make()
        return problem.cache.get(("unsupported constants", 0), make, pin=True)

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
            assert rebased is not None, "a layer not selected from is rebased"
            weight, bias = aggregate(following, rebased)
        applied = False
        if refit:
            assert target is not None, "a refit has its targets"
            fitted, _ = refit_layer(inputs, target, self.ridge, held_inputs, held_target)
            judge_inputs, judge_target = inputs, target
            if held_inputs is not None:
                assert held_target is not None, "held-out rows come with their targets"
                judge_inputs, judge_target = held_inputs, held_target
            naive = ReducedLayer(weight, bias)
            if residual(fitted, judge_inputs, judge_target) < residual(
                naive, judge_inputs, judge_target
            ):
                weight, bias, applied = fitted.weight, fitted.bias, True
        return frozen(inputs), frozen(held_inputs), frozen(weight), frozen(bias), applied


@dataclass
class Exact(Method):
    """The exact, data-free lumping of Ressi et al.: eps = 0 backward equivalence, where
    Relu/LeakyRelu neurons with positively proportional rows (over earlier layers'
    blocks) merge with the scale folded into the outgoing weights. Lossless."""

    name: str = "exact"
    lossless: bool = True

    def compress(self, problem: ChainProblem) -> ChainResult:
        return Lump(PartitionOptions(eps=0.0)).compress(ChainProblem(problem.system))
