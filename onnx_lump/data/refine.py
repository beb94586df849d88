"""Stage 4b: refine a reduced chain so it copies the original chain on calibration inputs.

After reduction (and any closed-form refit) the reduced chain is a warm start. Refinement
minimises the mean squared difference between its outputs and the original chain's
outputs on the fitting share of the calibration inputs, over every weight and bias of
the reduced chain (shortcut layers and a gated FFN's gate included), on analytic
gradients: with L-BFGS in float64, or, where the products are large (a transformer's
FFN over token rows), with Adam on mini-batches in float32 (the loss summed in float64;
the fitting rows capped at ``max_rows``, a seeded subset), where one L-BFGS line search
would take the whole budget. No labels are used: the target is the original network itself.

Where the original chain is at hand (``teacher``), the fitting rows may be joined by
jittered copies: each fitting row plus Gaussian noise of a few hundredths of each input
column's spread, labelled by the original chain itself. On small, nearly noise-free
networks refinement otherwise copies the original on the ~1,600 fitting rows and not
between them. The strength (none included) is chosen on the held-out rows: every
strength gets a short probe from the same start, the best one the rest of the budget.

The budget is counted in iterations (the same result on a busy machine as on an idle
one): at most ``max_iters``, and on a wide chain fewer, as many as ``max_work``
multiply-adds allow (a count from the chain's shapes and rows, not a clock); a wall-time
cap is a safety net, and reported when it binds. The held-out share
decides when to stop (no improvement for ``patience`` iterations, no gain of
``stall_gain`` for ``stall_share`` of the iteration budget, or the budget spent) and
which weights to return: those with the lowest held-out error seen, and the unrefined
ones unless refinement lowered it. Weights that a method set to zero (the unstructured
ones) stay zero.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import scipy.optimize
import threadpoolctl

from onnx_lump.activations import Activation
from onnx_lump.errors import LumpError
from onnx_lump.types import ChainResult, ReducedLayer, Shortcut

__all__ = [
    "JITTER_STRENGTHS",
    "REFINE_ITERS",
    "REFINE_WORK",
    "ChainData",
    "ChainNetwork",
    "Jitter",
    "RefineOptions",
    "RefineStats",
    "blas_threads",
    "chain_loss",
    "iteration_budget",
    "iteration_work",
    "refine_chain",
]

logger = logging.getLogger(__name__)

# A held-out error below this is float rounding: the chain is exact, nothing to refine.
_EXACT = 1e-7


# The iteration budget of one chain's refinement, the command line's and the benchmark's.
REFINE_ITERS = 1000
# Multiply-adds one chain's refinement may spend (:func:`iteration_work` an iteration):
# the budget of a wide chain, where REFINE_ITERS iterations would take minutes: 45-61
# Adam iterations on an all-MiniLM-L6-v2 FFN at half width over 8,772 token rows (6-7 s a
# block on two cores; the 60 s cap this replaced left each of its 6 blocks 43-59), and
# 1,024 L-BFGS iterations on the benchmark's widest chain (3 x 128, 22 inputs, 1,638 rows
# and a jittered copy), so that the benchmark keeps its REFINE_ITERS (a test checks).
REFINE_WORK = 4e11
# Jitter strengths tried, in standard deviations of each input column; 0 is no jitter.
JITTER_STRENGTHS = (0.0, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class RefineOptions:
    """The budget of one refinement: at most ``max_iters`` iterations per chain, fewer
    on a chain where they would cost more than ``max_work`` multiply-adds (None: no
    such bound), and, as a safety net, ``max_seconds`` of wall time (shared by the
    chains of one model). It
    stops early after ``patience`` iterations without a lower held-out error, or once
    the held-out error has not dropped by ``stall_gain`` (relative) for ``stall_share``
    of the iteration budget (a wide network went on 44 s after its last 0.5% gain).

    ``jitter`` are the strengths tried (standard deviations of each input column; the
    lowest held-out error wins, ties to the earlier one), each with ``jitter_copies``
    noisy copies of the fitting rows (at most ``max_rows`` rows in all), for a probe of
    ``probe_share`` of the iterations; the winner goes on for the rest."""

    max_iters: int = REFINE_ITERS
    max_seconds: float = 300.0
    max_work: float | None = REFINE_WORK
    patience: int = 100
    progress: bool = False
    stall_gain: float = 1e-3
    stall_share: float = 0.25
    max_rows: int = 32768
    jitter: tuple[float, ...] = JITTER_STRENGTHS
    jitter_copies: int = 1
    probe_share: float = 0.1

    def __post_init__(self) -> None:
        if self.max_iters < 0:
            raise LumpError(f"refine iterations must be >= 0, got {self.max_iters}")
        if not self.max_seconds > 0:
            raise LumpError(f"refine seconds must be > 0, got {self.max_seconds}")
        if self.max_work is not None and not self.max_work > 0:
            raise LumpError(f"refine work must be > 0 multiply-adds, got {self.max_work}")
        if not (0 <= self.stall_gain < 1 and 0 < self.stall_share <= 1):
            raise LumpError("refine stall_gain must be in [0, 1) and stall_share in (0, 1]")
        if self.max_rows < 1:
            raise LumpError(f"refine max_rows must be >= 1, got {self.max_rows}")
        jitter = tuple(float(j) for j in self.jitter)
        if not jitter or not all(np.isfinite(j) and j >= 0 for j in jitter):
            raise LumpError(f"refine jitter strengths must be finite and >= 0, got {jitter}")
        object.__setattr__(self, "jitter", jitter)  # hashable, whatever sequence came in
        if self.jitter_copies < 0:
            raise LumpError(f"refine jitter_copies must be >= 0, got {self.jitter_copies}")
        if not 0 < self.probe_share <= 1:
            raise LumpError(f"refine probe_share must be in (0, 1], got {self.probe_share}")


@dataclass(frozen=True, eq=False)
class ChainData:
    """Inputs of a chain (samples x features) and the original chain's outputs on them;
    ``source``: the original chain's inputs on the same rows where they differ from
    ``inputs`` (sequential calibration), which jittered targets are computed from."""

    inputs: np.ndarray
    targets: np.ndarray
    source: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        return int(self.inputs.shape[0])


@dataclass(frozen=True)
class RefineStats:
    """What one refinement did; errors are RMSE relative to the spread of the original
    chain's outputs, on the fitting and on the held-out rows."""

    iterations: int
    seconds: float
    fit_before: float
    fit_after: float
    holdout_before: float
    holdout_after: float
    n_fit: int
    n_holdout: int
    # the jitter strength chosen on the held-out rows (0: none), the iterations the other
    # strengths' probes took (``iterations`` are the chosen one's), and whether the time
    # cap, not the iteration budget or the held-out rows, ended it
    jitter: float = 0.0
    trial_iterations: int = 0
    time_capped: bool = False
    # the iteration budget this chain had: max_iters, or fewer where max_work bound it
    budget: int = 0
    work_bound: bool = False

    @property
    def improved(self) -> bool:
        return self.holdout_after < self.holdout_before


# Rows a chunk of the loss without gradient (the held-out checks).
_LOSS_ROWS = 4096


class ChainNetwork:
    """A reduced chain as a flat parameter vector with a forward pass and its gradient.

    A gated FFN (``result.gate`` set) has ``act(x Wg.T + bg) * (x Wu.T + bu)`` as its
    first hidden layer: ``activations[0]`` opens the gate, the up projection (layer 0)
    stays linear. The gate's weight and bias come last in the vector, so that the
    layers' and shortcuts' places are those of an ordinary chain.

    ``masks`` (per layer) mark the weights that may move; ``fixed_biases`` the layers
    (``n_layers``: the gate) whose biases may not."""

    def __init__(
        self,
        result: ChainResult,
        activations: Sequence[Activation],
        masks: Sequence[np.ndarray | None] | None,
        dtype=np.float64,
        fixed_biases: Collection[int] = (),
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.activations = list(activations)
        self.shortcuts = list(result.shortcuts)
        self.gated = result.gate is not None
        arrays = []
        for layer in result.layers:
            arrays += [layer.weight, layer.bias]
        arrays += [s.weight for s in self.shortcuts]
        if result.gate is not None:
            arrays += [result.gate.weight, result.gate.bias]
        self.shapes = [a.shape for a in arrays]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.n_layers = len(result.layers)
        self.theta0 = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
        self.mask = None
        masked = masks is not None and any(m is not None for m in masks)
        if masked or fixed_biases:
            flat = [np.ones(n, dtype=bool) for n in self.sizes]
            for index, mask in enumerate(masks if masked and masks is not None else ()):
                if mask is not None:
                    flat[2 * index] = np.asarray(mask, dtype=bool).ravel()
            if masked and result.gate is not None:
                # the gate's zeros are kept as the layers' are (its rows pair with up's)
                flat[-2] = np.asarray(result.gate.weight != 0).ravel()
            for index in fixed_biases:
                flat[-1 if index == self.n_layers else 2 * index + 1][:] = False
            self.mask = np.concatenate(flat)

    @property
    def products_per_row(self) -> int:
        """Multiply-adds of one row's forward pass: the sizes of every weight matrix
        (layers, shortcuts and a gated FFN's gate)."""
        return sum(int(np.prod(shape)) for shape in self.shapes if len(shape) == 2)

    def _shortcut_arrays(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        start = 2 * self.n_layers
        return arrays[start : start + len(self.shortcuts)]

    def unpack(self, theta: np.ndarray) -> list[np.ndarray]:
        if self.dtype != theta.dtype:
            theta = theta.astype(self.dtype)
        return [
            theta[start:stop].reshape(shape)
            for start, stop, shape in zip(
                self.offsets[:-1], self.offsets[1:], self.shapes, strict=False
            )
        ]

    def result(self, theta: np.ndarray) -> ChainResult:
        arrays = [
            np.ascontiguousarray(theta[start:stop].reshape(shape))
            for start, stop, shape in zip(
                self.offsets[:-1], self.offsets[1:], self.shapes, strict=False
            )
        ]
        layers = [ReducedLayer(arrays[2 * i], arrays[2 * i + 1]) for i in range(self.n_layers)]
        shortcuts = [
            Shortcut(s.source, s.target, w)
            for s, w in zip(self.shortcuts, self._shortcut_arrays(arrays), strict=True)
        ]
        gate = ReducedLayer(arrays[-2], arrays[-1]) if self.gated else None
        return ChainResult(layers, shortcuts, gate=gate)

    def _forward(self, arrays, inputs):
        """[inputs, hidden values..., output], the layers' pre-activations, and for a
        gated FFN (gate pre-activation, opened gate), else None."""
        values, pres, gate = [inputs], [], None
        single = self.dtype == np.float32
        shortcut_arrays = self._shortcut_arrays(arrays)
        for index in range(self.n_layers):
            weight, bias = arrays[2 * index], arrays[2 * index + 1]
            pre = values[-1] @ weight.T + bias
            for shortcut, s_weight in zip(self.shortcuts, shortcut_arrays, strict=True):
                if shortcut.target == index:
                    pre += values[shortcut.source] @ s_weight.T
            pres.append(pre)
            activation = self.activations[index]
            if index == 0 and self.gated:
                gate_pre = inputs @ arrays[-2].T + arrays[-1]
                opened = activation.float32(gate_pre) if single else activation(gate_pre)
                gate = (gate_pre, opened)
                values.append(opened * pre)
            else:
                values.append(activation.float32(pre) if single else activation(pre))
        return values, pres, gate

    def output(self, theta: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        return self._forward(self.unpack(theta), inputs)[0][-1]

    def loss(self, theta: np.ndarray, data: ChainData, scale: float) -> float:
        """Root mean of ((output - target) / scale)^2 (no gradient), a chunk of
        :data:`_LOSS_ROWS` rows at a time (no activations of every row at once)."""
        arrays, squares = self.unpack(theta), 0.0
        for start in range(0, data.n_samples, _LOSS_ROWS):
            rows = slice(start, start + _LOSS_ROWS)
            residual = self._forward(arrays, data.inputs[rows])[0][-1] - data.targets[rows]
            squares += float(np.einsum("ij,ij->", residual, residual, dtype=np.float64))
        return float(np.sqrt(squares / max(data.targets.size, 1))) / scale

    def loss_and_gradient(
        self, theta: np.ndarray, data: ChainData, scale: float
    ) -> tuple[float, np.ndarray]:
        """Mean of ((output - target) / scale)^2 and its gradient in ``theta``."""
        arrays = self.unpack(theta)
        values, pres, gate = self._forward(arrays, data.inputs)
        residual = values[-1] - data.targets
        count = residual.size * scale * scale
        loss = float(np.einsum("ij,ij->", residual, residual, dtype=np.float64)) / count
        grads: list[np.ndarray | None] = [None] * len(arrays)
        upstream: list[np.ndarray | None] = [None] * (self.n_layers + 1)  # d loss / d values[i]
        upstream[-1] = (2.0 / count) * residual
        shortcut_arrays = self._shortcut_arrays(arrays)
        for index in reversed(range(self.n_layers)):
            activation = self.activations[index]
            slope_of = (
                activation.derivative_float32 if self.dtype == np.float32 else activation.derivative
            )
            if index == 0 and gate is not None:
                # h = act(g) * u: du = dh * act(g), dg = dh * u * act'(g)
                gate_pre, opened = gate
                delta = upstream[1] * opened
                gate_delta = upstream[1] * pres[0] * slope_of(gate_pre)
                grads[-2] = gate_delta.T @ values[0]
                grads[-1] = gate_delta.sum(axis=0)
            else:
                delta = upstream[index + 1] * slope_of(pres[index])
            weight = arrays[2 * index]
            grads[2 * index] = delta.T @ values[index]
            grads[2 * index + 1] = delta.sum(axis=0)
            if index:  # the chain's input needs no gradient
                back = delta @ weight
                upstream[index] = back if upstream[index] is None else upstream[index] + back
            for k, (shortcut, s_weight) in enumerate(
                zip(self.shortcuts, shortcut_arrays, strict=True)
            ):
                if shortcut.target == index:
                    grads[2 * self.n_layers + k] = delta.T @ values[shortcut.source]
                    via = delta @ s_weight
                    source = shortcut.source
                    upstream[source] = via if upstream[source] is None else upstream[source] + via
        filled = [g for g in grads if g is not None]
        assert len(filled) == len(grads), "every array has a gradient"
        gradient = np.concatenate([g.ravel() for g in filled]).astype(np.float64, copy=False)
        if self.mask is not None:
            gradient[~self.mask] = 0.0
        return loss, gradient


def chain_loss(
    result: ChainResult,
    activations: Sequence[Activation],
    data: ChainData,
    scale: float | None = None,
) -> float:
    """Relative RMSE of ``result``'s outputs against ``data.targets``."""
    network = ChainNetwork(result, activations, None)
    return network.loss(network.theta0, data, _spread(data.targets) if scale is None else scale)


def _spread(targets: np.ndarray) -> float:
    return float(np.std(targets)) or 1.0


def iteration_work(network: ChainNetwork, n_fit: int, n_holdout: int) -> float:
    """Multiply-adds of one refinement iteration: the products of a forward and a
    backward pass (three per weight and row) over the rows a step visits (every fitting
    row for L-BFGS, the mini-batches of an Adam iteration), and a forward pass over the
    held-out rows (the check after every iteration); each row's inputs and outputs count
    :data:`_ROW_VALUE_WORK` more apiece, the elementwise passes over them. An estimate
    from shapes and row counts only, so that a budget in work is the same on every
    machine."""
    weights = [shape for shape in network.shapes if len(shape) == 2]
    # the chain's input and output widths: the first layer's columns, the last one's rows
    widths = weights[0][1] + weights[network.n_layers - 1][0]
    per_row = network.products_per_row + _ROW_VALUE_WORK * widths
    adam = network.dtype == np.float32
    stepped = _ADAM_ITERATION * min(_ADAM_BATCH, n_fit) if adam else n_fit
    return float(per_row) * (3 * stepped + n_holdout)


# Multiply-adds an input or output value of a row costs an iteration besides the products:
# the loss, residual and gradient passes over rows x outputs, memory-bound. A chain of
# width 1 between MiniLM's 384-wide sides took 164 ms a float64 gradient on 17,544 rows
# (a width of 256: 507 ms), about 40 multiply-adds of the products' pace a value.
_ROW_VALUE_WORK = 40


def iteration_budget(options: RefineOptions, work: float) -> int:
    """``options.max_iters``, or fewer (at least one) where that many iterations of
    ``work`` multiply-adds each would pass ``options.max_work``."""
    if options.max_work is None or options.max_iters == 0 or work <= 0:
        return options.max_iters
    return min(options.max_iters, max(1, int(options.max_work // work)))


def refine_chain(
    result: ChainResult,
    activations: Sequence[Activation],
    fit: ChainData,
    holdout: ChainData,
    options: RefineOptions,
    masks: Sequence[np.ndarray | None] | None = None,
    seconds: float | None = None,
    label: str = "refine",
    teacher: Callable[[np.ndarray], np.ndarray] | None = None,
    fixed_biases: Collection[int] = (),
) -> tuple[ChainResult, RefineStats]:
    """Refine ``result`` (the reduced chain; ``activations[i]`` follows layer i, identity
    for the last; for a gated FFN ``activations[0]`` opens its gate) onto ``fit`` and
    return the weights with the lowest error on ``holdout``, which are ``result`` itself
    unless refinement lowered it. ``masks`` (one per layer, or None; a gated FFN's gate
    keeps its zeros where they are given) mark the weights that may change; ``seconds``
    overrides ``options.max_seconds``; ``teacher`` (the original chain: chain inputs to outputs)
    labels jittered copies of the fitting rows, none without it; ``fixed_biases``: the
    layers (``len(result.layers)``: a gated FFN's gate) whose biases stay as they are."""
    started = time.perf_counter()
    clock = _Clock(started + (options.max_seconds if seconds is None else seconds))
    fit = _capped(fit, options.max_rows)
    dtype = _precision(result, fit.n_samples)
    network = ChainNetwork(result, activations, masks, dtype, fixed_biases)
    scale = _spread(fit.targets)
    holdout_scale = _spread(holdout.targets)
    jitter = _jitter(network, fit, options, dtype, teacher)
    fit, holdout = _as(fit, dtype), _as(holdout, dtype)

    def holdout_error(theta: np.ndarray) -> float:
        return network.loss(theta, holdout, holdout_scale)

    fit_before = network.loss(network.theta0, fit, scale)
    before = holdout_error(network.theta0)
    strengths = options.jitter if jitter is not None else (0.0,)
    rows = fit.n_samples * (1 + (jitter.copies if jitter is not None else 0))
    budget = iteration_budget(options, iteration_work(network, rows, holdout.n_samples))
    probe = max(1, round(options.probe_share * budget)) if len(strengths) > 1 else 0
    bar = _progress(options, label, budget + probe * (len(strengths) - 1))
    logged = [time.perf_counter()]
    # Adam's steps are noisy: it stalls only after a few iterations
    least = _ADAM_STALL_ITERATIONS if dtype == np.float32 else 0
    window = max(least, int(np.ceil(options.stall_share * budget)))
    logger.info(
        "%s: up to %d iterations%s on %d fitting rows%s, %.0f s left",
        label,
        budget,
        f" (of {options.max_iters}: the work bound)" if budget < options.max_iters else "",
        fit.n_samples,
        f" (+{jitter.copies} jittered copies)" if jitter is not None else "",
        clock.deadline - time.perf_counter(),
    )

    def leg(strength: float, run: _Run | None, iterations: int) -> _Run:
        """``iterations`` more of ``run`` (a new one from the start if None) on the
        fitting rows jittered at ``strength``."""
        run = run or _Run(network.theta0, before, strength)
        run.limit = run.iterations + iterations
        if strength == 0:
            data = fit
        else:
            assert jitter is not None  # strengths other than 0 come from the jitter
            data = jitter.data(strength)
        clock.lap()

        def callback(intermediate_result) -> None:
            run.step(intermediate_result.x, holdout_error(intermediate_result.x), options, window)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"held-out error {100 * run.best_error:.3g}%")
            elif time.perf_counter() >= logged[0] + PROGRESS_LOG_SECONDS:
                # off a terminal: a line every few seconds (shown with -v)
                logged[0] = time.perf_counter()
                logger.info(
                    "%s: %d iterations%s in %.0f s, held-out error %.4g -> %.4g so far",
                    label,
                    run.iterations,
                    f" at jitter {strength:g}" if probe else "",
                    logged[0] - started,
                    before,
                    run.best_error,
                )
            if run.ended or run.iterations >= run.limit or clock.out():
                raise StopIteration

        optimise = _adam if dtype == np.float32 else _minimize
        optimise(network, data, scale, run.last, run.limit - run.iterations, callback)
        return run

    runs: list[_Run] = []
    if before > _EXACT and budget > 0 and fit.n_samples > 0 and network.theta0.size:
        with blas_threads(network, rows):
            if probe:
                # a short probe per strength, from the same start, while time is left
                for strength in strengths:
                    if clock.capped:
                        break
                    runs.append(leg(strength, None, probe))
                chosen = min(runs, key=lambda run: run.best_error)
                # the winner goes on unless its probe ended it (or the time cap did)
                if chosen.iterations == probe < budget and not (chosen.ended or clock.capped):
                    leg(chosen.strength, chosen, budget - probe)
            else:
                runs.append(leg(strengths[0], None, budget))
    if bar is not None:
        bar.close()
    chosen = min(runs, key=lambda run: run.best_error) if runs else _Run(network.theta0, before)
    improved = chosen.best_error < before and np.isfinite(chosen.best_error)
    refined = network.result(chosen.best_theta) if improved else result
    theta = chosen.best_theta if improved else network.theta0
    stats = RefineStats(
        iterations=chosen.iterations,
        seconds=time.perf_counter() - started,
        fit_before=float(fit_before),
        fit_after=network.loss(theta, fit, scale),
        holdout_before=before,
        holdout_after=chosen.best_error if improved else before,
        n_fit=fit.n_samples,
        n_holdout=holdout.n_samples,
        jitter=chosen.strength if improved else 0.0,
        trial_iterations=sum(run.iterations for run in runs if run is not chosen),
        time_capped=clock.capped,
        budget=budget,
        work_bound=budget < options.max_iters,
    )
    logger.info(
        "%s: %d iterations in %.2fs%s, held-out error %.4g -> %.4g%s%s",
        label,
        stats.iterations,
        stats.seconds,
        f" (jitter {stats.jitter:g} of {strengths}, +{stats.trial_iterations} probing)"
        if probe
        else "",
        stats.holdout_before,
        stats.holdout_after,
        "" if improved else " (kept the unrefined weights)",
        " [stopped by the time cap]" if clock.capped else "",
    )
    return refined, stats


class _Clock:
    """The wall-time cap, a safety net: ``capped`` once it was found spent, or once the
    next iteration, as long as the last one, would end past it (an iteration of a wide
    network can take seconds: the cap is kept, not overrun by one)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.capped = False
        self._tick: float | None = None  # when out() was last asked (an iteration ended)

    def lap(self) -> None:
        """An iteration starts now (the first of a leg: its length is measured too)."""
        self._tick = time.perf_counter()

    def out(self) -> bool:
        now = time.perf_counter()
        last = 0.0 if self._tick is None else now - self._tick
        self._tick = now
        self.capped = self.capped or now + last >= self.deadline
        return self.capped


class _Run:
    """One optimisation on one jitter strength: its iterations, the weights it is at, the
    lowest held-out error it saw (and those weights), and whether the held-out rows
    ended it (``patience`` iterations without a lower error, or ``window`` without a
    gain of ``stall_gain``)."""

    def __init__(self, theta: np.ndarray, error: float, strength: float = 0.0) -> None:
        self.strength = strength
        self.last = theta
        self.best_theta, self.best_error, self.best_at = theta, error, 0
        self.gain_error, self.gain_at = error, 0
        self.iterations = self.limit = 0
        self.ended = False

    def step(self, theta: np.ndarray, error: float, options: RefineOptions, window: int) -> None:
        self.iterations += 1
        self.last = theta.copy()
        if error < self.best_error:
            self.best_theta, self.best_error, self.best_at = self.last, error, self.iterations
        if error < self.gain_error * (1.0 - options.stall_gain):
            self.gain_error, self.gain_at = error, self.iterations
        self.ended = (
            self.iterations - self.best_at >= options.patience
            or self.iterations - self.gain_at >= window
        )


class Jitter:
    """The fitting rows and ``copies`` noisy copies of them, labelled by ``teacher`` (the
    original chain): one seeded draw of standard normal noise times each input column's
    spread, scaled by the strength (the same draw for every strength, so that their
    comparison is not noise)."""

    def __init__(
        self, fit: ChainData, teacher: Callable[[np.ndarray], np.ndarray], copies: int, seed=0
    ) -> None:
        inputs = np.asarray(fit.inputs, np.float64)
        rng = np.random.default_rng(seed)
        self.fit, self.teacher, self.copies = fit, teacher, copies
        self.noise = rng.standard_normal((copies * fit.n_samples, inputs.shape[1]))
        self.noise *= inputs.std(axis=0)

    def data(self, strength: float) -> ChainData:
        """The fitting rows, then their copies jittered at ``strength``, in float64."""
        fit, shift = self.fit, strength * self.noise
        inputs = np.asarray(fit.inputs, np.float64)
        moved = np.tile(inputs, (self.copies, 1)) + shift
        # sequential calibration: the original chain sees its own inputs, equally moved
        source = moved if fit.source is None else np.tile(fit.source, (self.copies, 1)) + shift
        labels = [
            self.teacher(source[start : start + _LOSS_ROWS])
            for start in range(0, source.shape[0], _LOSS_ROWS)
        ]
        return ChainData(
            np.concatenate([inputs, moved]),
            np.concatenate([np.asarray(fit.targets, np.float64), *labels]),
        )


def _jitter(
    network: ChainNetwork, fit: ChainData, options: RefineOptions, dtype, teacher
) -> Jitter | None:
    """The jitter of this refinement, or None: no teacher, no strength but 0, the float32
    path (a transformer's FFN over token rows: many rows already, and no time to spare),
    or no room for a copy within ``max_rows`` rows and the float64 path's products (a
    step on the jittered rows costs at most what the largest float64 chain's does)."""
    if teacher is None or dtype != np.float64 or not any(options.jitter) or not fit.n_samples:
        return None
    rows = min(options.max_rows, int(FLOAT32_PRODUCTS // max(network.products_per_row, 1)))
    copies = min(options.jitter_copies, rows // fit.n_samples - 1)
    return Jitter(fit, teacher, copies) if copies >= 1 else None


# Multiply-adds of one forward pass over the fitting rows from which refinement runs in
# float32: there a step's products dominate its time and float32 halves them, while the
# loss, summed in float64, stays smooth enough for L-BFGS's line search (a transformer FFN
# of 384 x 1536 on 10,000 token rows: 6e9). The benchmark's networks (at most 3e7) stay in
# float64.
FLOAT32_PRODUCTS = 1e9


def _precision(result: ChainResult, n_samples: int):
    weights = [layer.weight for layer in result.layers]
    weights += [] if result.gate is None else [result.gate.weight]
    products = n_samples * sum(w.size for w in weights)
    return np.float32 if products >= FLOAT32_PRODUCTS else np.float64


def _capped(data: ChainData, max_rows: int) -> ChainData:
    """At most ``max_rows`` of ``data``'s rows, a seeded subset in their order."""
    if data.n_samples <= max_rows:
        return data
    rows = np.sort(np.random.default_rng(0).choice(data.n_samples, max_rows, replace=False))
    source = None if data.source is None else data.source[rows]
    return ChainData(data.inputs[rows], data.targets[rows], source)


def _as(data: ChainData, dtype) -> ChainData:
    if data.inputs.dtype == dtype and data.targets.dtype == dtype:
        return data
    return ChainData(np.asarray(data.inputs, dtype), np.asarray(data.targets, dtype), data.source)


def _minimize(
    network: ChainNetwork,
    fit: ChainData,
    scale: float,
    theta: np.ndarray,
    iterations: int,
    callback,
):
    """At most ``iterations`` L-BFGS iterations from ``theta``."""
    scipy.optimize.minimize(
        network.loss_and_gradient,
        theta.copy(),
        args=(fit, scale),
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={
            "maxiter": iterations,
            "maxfun": 4 * iterations,
            "ftol": 1e-14,
            "gtol": 1e-10,
        },
    )


# Adam on large chains (the float32 path): rows a step, and the step size. A transformer's
# reduced FFN from its closed-form start: L-BFGS spent its 10 s budget in its first line
# search (one iteration, -0.1% held-out error), Adam at 1e-3 on 1,024 rows a step took
# 13 s to -6.5% (1e-4: -4%, 3e-3: -2.5%; MiniLM's chain 1 at 54%).
_ADAM_BATCH = 1024
_ADAM_STEP = 1e-3
_ADAM_ITERATION = 4  # batches
_ADAM_STALL_ITERATIONS = 5


def _adam(
    network: ChainNetwork,
    fit: ChainData,
    scale: float,
    theta: np.ndarray,
    iterations: int,
    callback,
):
    """At most ``iterations`` of Adam from ``theta`` over seeded mini-batches of the
    fitting rows; ``callback`` sees the weights every :data:`_ADAM_ITERATION` batches
    (an iteration, the unit of the budget and of the held-out checks) and stops it by
    raising StopIteration."""
    theta = theta.astype(np.float32)
    first, second = np.zeros_like(theta), np.zeros_like(theta)
    rng = np.random.default_rng(0)
    batches = _mini_batches(fit.n_samples, rng)
    for step in range(1, _ADAM_ITERATION * iterations + 1):
        rows = next(batches)
        _, gradient = network.loss_and_gradient(
            theta, ChainData(fit.inputs[rows], fit.targets[rows]), scale
        )
        first += 0.1 * (gradient - first)
        second += 0.001 * (gradient * gradient - second)
        correction = np.sqrt(1.0 - 0.999**step) / (1.0 - 0.9**step)
        theta -= (_ADAM_STEP * correction) * first / (np.sqrt(second) + 1e-8)
        if step % _ADAM_ITERATION == 0:
            try:
                callback(SimpleNamespace(x=theta.astype(np.float64)))
            except StopIteration:
                return


def _mini_batches(n_rows: int, rng: np.random.Generator):
    """Row indices of :data:`_ADAM_BATCH` rows at a time, a new permutation each pass."""
    while True:
        order = rng.permutation(n_rows)
        for start in range(0, n_rows, _ADAM_BATCH):
            yield order[start : start + _ADAM_BATCH]


# Multiply-adds of one forward pass over the fitting rows above which the matrix products
# outweigh L-BFGS's vector work: every BLAS thread then helps (4 reduced layers of ~900
# on 1,638 rows, 4e9: 1.8x faster on two cores); below, one thread.
_THREADED_PRODUCTS = 1e8


def blas_threads(network: ChainNetwork, n_samples: int):
    """One BLAS thread for small networks: L-BFGS's many small vector operations lose
    more to waking BLAS threads than the matrix products gain from them (6x slower on
    two busy cores); wide ones keep every thread."""
    products = n_samples * network.products_per_row
    if products >= _THREADED_PRODUCTS:
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")


# seconds between refinement's progress log lines where no bar is drawn
PROGRESS_LOG_SECONDS = 5.0


def _progress(options: RefineOptions, label: str, total: int):
    """A tqdm bar when asked for and stderr is a terminal; None otherwise."""
    if not options.progress or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a bar is never worth a crash
        return None
    return tqdm(total=total, desc=label, unit="it", leave=False)
