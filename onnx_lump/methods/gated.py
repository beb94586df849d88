"""Compressing a gated FFN: ``y = (act(x Wg.T + bg) * (x Wu.T + bu)) Wd.T + bd``.

A gated neuron is the pair (gate row i, up row i) with down column i, so every method
here keeps, drops or merges pairs, never a gate or an up row alone:

* data-free (any eps, and eps 0 with data): pairs whose gate rows (bias appended) lie
  within eps of each other and whose up rows do too, once each up row is divided by its
  largest-magnitude entry, merge into their first member, whose down column becomes the
  sum of the group's columns each times its up scale over the kept one's (``c u`` has
  ``c`` times the hidden value of ``u`` for the same gate). Distances are L1, grouped as
  every layer's rows are (:func:`onnx_lump.ode.grouping.group_rows`); at eps 0 only
  rounding-level differences are allowed, so the merge is exact;
* with calibration rows and eps > 0: first the exact merge, then the pairs to keep are
  the pivots of the hidden activations ``h`` on the fitting rows, each column weighted by
  its down column's norm (the span order of :mod:`onnx_lump.ode.span`: eps is the share
  of their centred energy left unexplained, or for ``span-uniform`` the share of pairs
  left out), the rest folded into the kept columns, and the down projection refit by
  least squares onto the original FFN's output where that lowers the held-out residual
  (as :class:`~onnx_lump.methods.Lump` refits).

Refinement (:mod:`onnx_lump.data.refine`) then moves the gate, up and down weights
together onto the original FFN's output (:func:`original_gated_output`), as it does an
ordinary chain's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from onnx_lump.activations import Activation
from onnx_lump.data.compensation import centred_gram, refit_layer, residual
from onnx_lump.data.reference import frozen
from onnx_lump.graph.read.dense import DenseChain
from onnx_lump.methods.base import ChainProblem, Method
from onnx_lump.methods.combined import Sequence
from onnx_lump.methods.lumping import Exact, Lump, Reduction
from onnx_lump.ode.data_similarity import unsupported_constants
from onnx_lump.ode.grouping import Linkage, group_rows
from onnx_lump.ode.span import SpanOrder, next_layer_order, span_order
from onnx_lump.types import ChainResult, ReducedLayer

__all__ = [
    "GatedFFN",
    "compress_gated",
    "gated_ffn",
    "gated_knob_hint",
    "handles_gated",
    "merge_pairs",
    "original_gated_output",
]

# rounding allowed in an exact merge, in units of the weights' precision times the
# largest row's L1 norm: scaled up rows are divided back, which rounds
_ROUNDING_UNITS = 16.0
_ROW_STEP = 4096  # rows of hidden activations formed at a time


@dataclass(frozen=True, eq=False)
class GatedFFN:
    """A gated FFN's parameters in float64, torch ``Linear`` layouts (out x in)."""

    gate: ReducedLayer
    up: ReducedLayer
    down: ReducedLayer
    activation: Activation
    precision: float = float(np.finfo(np.float32).eps)

    @property
    def width(self) -> int:
        return self.up.out_features

    def hidden(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """``act(gate) * up`` on ``rows`` (samples x inputs), float64, a chunk at a time."""
        for start in range(0, rows.shape[0], _ROW_STEP):
            x = np.asarray(rows[start : start + _ROW_STEP], dtype=np.float64)
            gate = self.activation(x @ self.gate.weight.T + self.gate.bias)
            yield gate * (x @ self.up.weight.T + self.up.bias)

    def hidden_all(self, rows: np.ndarray) -> np.ndarray:
        return np.concatenate(list(self.hidden(rows)), axis=0)

    def output(self, rows: np.ndarray) -> np.ndarray:
        return self.hidden_all(rows) @ self.down.weight.T + self.down.bias

    def keep(self, kept: np.ndarray, down: ReducedLayer) -> GatedFFN:
        """The pairs ``kept`` (indices) and a new down projection reading them."""
        return GatedFFN(
            ReducedLayer(self.gate.weight[kept], self.gate.bias[kept]),
            ReducedLayer(self.up.weight[kept], self.up.bias[kept]),
            down,
            self.activation,
            self.precision,
        )

    def output_scaled(self) -> GatedFFN:
        """The same function with each up row times the norm of its down column and the
        column divided by it: hidden values then weigh as much as what they add to the
        output, so a span of them keeps what matters downstream, not merely what is large
        (no down column is zero after :func:`merge_pairs`)."""
        norms = np.linalg.norm(self.down.weight, axis=0)
        norms = np.where(norms > 0, norms, 1.0)
        up = ReducedLayer(self.up.weight * norms[:, None], self.up.bias * norms)
        down = ReducedLayer(self.down.weight / norms, self.down.bias)
        return GatedFFN(self.gate, up, down, self.activation, self.precision)

    def result(self, notes: list[str] | None = None) -> ChainResult:
        return ChainResult([self.up, self.down], notes=list(notes or []), gate=self.gate)


def gated_ffn(chain: DenseChain, problem: ChainProblem) -> GatedFFN:
    """The gated FFN of ``chain`` (a chain with a gate), up and down from the problem's
    float64 encoding."""
    gate = chain.gate
    assert gate is not None, "a gated chain"
    up, down = problem.weights
    return GatedFFN(
        ReducedLayer(np.asarray(gate.weight, dtype=np.float64), gate.bias.astype(np.float64)),
        ReducedLayer(*up),
        ReducedLayer(*down),
        chain.activations[0],
        problem.system.precision,
    )


def merge_pairs(
    ffn: GatedFFN, eps: float = 0.0, linkage: Linkage = Linkage.SINGLE, symmetries: bool = True
) -> GatedFFN:
    """Merge the pairs whose gate rows and (scale-normalised) up rows lie within ``eps``
    in L1 distance, exactly at eps 0 (see the module docstring). Pairs whose up row and
    bias are all zero, or whose down column is, add nothing and go; at least one pair
    stays."""
    up = np.column_stack([ffn.up.weight, ffn.up.bias])
    gate = np.column_stack([ffn.gate.weight, ffn.gate.bias])
    n = up.shape[0]
    pivot = np.argmax(np.abs(up), axis=1)  # the first largest entry
    scale = up[np.arange(n), pivot] if symmetries else np.ones(n)
    alive = np.flatnonzero(np.any(up != 0, axis=1) & np.any(ffn.down.weight != 0, axis=0))
    if alive.size == 0:
        alive = np.arange(1)
    scale = np.where(scale != 0, scale, 1.0)[alive]
    rows = np.column_stack([gate[alive], up[alive] / scale[:, None]])
    l1 = np.abs(rows).sum(axis=1)
    tolerance = _ROUNDING_UNITS * ffn.precision * float(l1.max(initial=0.0))
    labels = group_rows(rows, eps + tolerance, linkage)  # numbered by first row
    first = np.unique(labels, return_index=True)[1]
    factor = scale / scale[first[labels]]  # member's hidden value over the kept one's
    # sparse: a dense (width x groups) membership of an 11,008-wide MLP would take a GB
    membership = sp.csr_matrix(
        (factor, (np.arange(alive.size), labels)), shape=(alive.size, first.size)
    )
    weight = np.asarray((membership.T @ ffn.down.weight[:, alive].T).T)
    down = ReducedLayer(weight, ffn.down.bias.copy())
    return ffn.keep(alive[first], down)


def _lump_of(method: Method) -> Lump | None:
    """The lumping a method applies first (``lump``, ``lump+linear``, ``exact``)."""
    if isinstance(method, Sequence):
        return _lump_of(method.first)
    if isinstance(method, Exact):
        return Lump()
    return method if isinstance(method, Lump) else None


def handles_gated(method: Method) -> bool:
    """Whether ``method`` compresses gated FFNs (the lumpings do); the pipeline leaves
    them out of the other methods' parameter counts, as it did before it read them."""
    return _lump_of(method) is not None


def compress_gated(chain: DenseChain, problem: ChainProblem, method: Method) -> ChainResult:
    """The gated FFN of ``chain`` compressed as ``method`` would (its lumping's eps and
    reduction); methods that are no lumping leave it as it is, and say so."""
    ffn = gated_ffn(chain, problem)
    lump = _lump_of(method)
    if lump is None:
        return ffn.result(
            [f"gated FFN left as it is: {method.name} does not compress gated FFNs yet"]
        )
    options = lump.options
    notes = []
    if isinstance(method, Sequence):
        notes.append(f"gated FFN: only the lumping of {method.name} is applied")
    merged = merge_pairs(ffn, 0.0, options.linkage, options.symmetries)
    if problem.calibration is None or options.eps <= 0:
        if options.eps > 0:
            merged = merge_pairs(ffn, options.eps, options.linkage, options.symmetries)
        return merged.result(notes)
    if not lump.reduction.is_span:
        notes.append(
            "gated FFN: pairs kept by the span of their activations (eps: the share of "
            "their energy left out), not by a partition"
        )
    merged = merged.output_scaled()
    order = _span_order(problem, merged, lump.reduction, (options.linkage, options.symmetries))
    if lump.reduction is Reduction.SPAN_UNIFORM:
        width = max(1, round((1.0 - options.eps) * ffn.width))
    else:
        width = order.width_for(options.eps)
    if width >= merged.width:
        return merged.result(notes)
    # a pair whose gate is off on every fitting row explains nothing and is folded in
    # as its mean; unless the data shows the gate stays off, it may open elsewhere
    silent = _silent_pairs(problem, merged, (options.linkage, options.symmetries))
    selection = order.keep(width).keeping(silent)
    kept = merged.keep(selection.kept, ReducedLayer(*selection.fold(*_layer(merged.down))))
    if not lump.refit:
        return kept.result(notes)
    return _refit_down(problem, ffn, kept, lump, notes).result(notes)


def _layer(layer: ReducedLayer) -> tuple[np.ndarray, np.ndarray]:
    return layer.weight, layer.bias


def _span_order(
    problem: ChainProblem, merged: GatedFFN, reduction: Reduction, setting: tuple
) -> SpanOrder:
    """The pivot order of the exactly merged FFN's hidden activations on the fitting
    rows (SPAN_NEXT: chosen for the down projection), made once per search (it depends
    on no knob; ``setting``: what the merge depends on)."""
    assert problem.calibration is not None, "span on calibration rows"
    rows = problem.calibration
    next_layer = reduction is Reduction.SPAN_NEXT

    def make() -> SpanOrder:
        moments = centred_gram(merged.hidden(rows))
        if next_layer:
            return next_layer_order(*moments, merged.down.weight)
        return span_order(*moments)

    if problem.cache is None:
        return make()
    return problem.cache.get(("gated span order", next_layer, setting), make, pin=True)


def _silent_pairs(problem: ChainProblem, merged: GatedFFN, setting: tuple) -> np.ndarray:
    """The pairs whose gate is constant on the fitting rows but not shown so beyond
    them (kept), made once per search as the pivot order is (``setting``: what the
    exact merge depends on)."""

    assert problem.calibration is not None, "silent pairs on calibration rows"

    def make() -> np.ndarray:
        assert problem.calibration is not None
        return unsupported_constants(
            merged.gate.weight,
            merged.gate.bias,
            merged.activation,
            problem.calibration,
            problem.holdout,
        )

    if problem.cache is None:
        return make()
    return problem.cache.get(("gated unsupported constants", setting), make, pin=True)


def _refit_down(
    problem: ChainProblem, ffn: GatedFFN, kept: GatedFFN, lump: Lump, notes: list[str]
) -> GatedFFN:
    """``kept`` with its down projection refit by least squares onto the original FFN's
    output, where that lowers the residual on the held-out rows (the fitting rows
    without them); a refit from no more rows than kept pairs is skipped unless forced."""
    assert problem.calibration is not None, "a refit on calibration rows"
    fit = problem.calibration
    if fit.shape[0] <= kept.width and not lump.force_refit:
        notes.append(
            f"gated FFN not refit: {fit.shape[0]} fitting rows for {kept.width} kept pairs"
        )
        return kept
    target = original_gated_output(problem, ffn, "fit")
    hidden = kept.hidden_all(fit)
    held_hidden = held_target = None
    judge = (hidden, target)
    if problem.holdout is not None and problem.holdout.shape[0]:
        held_hidden = kept.hidden_all(problem.holdout)
        held_target = original_gated_output(problem, ffn, "held")
        judge = (held_hidden, held_target)
    fitted, _ = refit_layer(hidden, target, lump.ridge, held_hidden, held_target)
    if residual(fitted, *judge) < residual(kept.down, *judge):
        return GatedFFN(kept.gate, kept.up, fitted, kept.activation, kept.precision)
    return kept


def original_gated_output(problem: ChainProblem, ffn: GatedFFN, which: str) -> np.ndarray:
    """The original gated FFN ``ffn``'s output (float64) on the fitting (``which``
    "fit") or held-out ("held") rows, once per search: the targets of the down refit and
    of refinement (the ordinary chain's reference, :mod:`onnx_lump.data.reference`,
    knows no gate)."""

    def make() -> np.ndarray:
        return frozen(ffn.output(_original(problem, which)))

    if problem.cache is None:
        return make()
    return problem.cache.get(("gated original output", which), make, pin=True)


def _original(problem: ChainProblem, which: str) -> np.ndarray:
    """The chain's inputs in the original model (sequential calibration may differ)."""
    if which == "fit":
        source = problem.original_calibration
        rows = problem.calibration
    else:
        source = problem.original_holdout
        rows = problem.holdout
    chosen = source if source is not None else rows
    assert chosen is not None, f"{which} rows"
    return chosen


def gated_knob_hint(
    chain: DenseChain, problem: ChainProblem, method: Method, width_share: float
) -> float | None:
    """The eps at which the gated FFN keeps about ``width_share`` of its pairs (None
    where the method is no lumping or there are no calibration rows)."""
    lump = _lump_of(method)
    if lump is None or problem.calibration is None:
        return None
    ffn = gated_ffn(chain, problem)
    want = max(1, round(width_share * ffn.width))
    if lump.reduction is Reduction.SPAN_UNIFORM:
        return 1.0 - want / ffn.width
    options = lump.options
    merged = merge_pairs(ffn, 0.0, options.linkage, options.symmetries).output_scaled()
    setting = (options.linkage, options.symmetries)
    return _span_order(problem, merged, lump.reduction, setting).eps_for(want)
