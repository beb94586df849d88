"""Stage 4b: refine a reduced chain so it copies the original chain on calibration inputs.

After reduction (and any closed-form refit) the reduced chain is a warm start. Refinement
minimises the mean squared difference between its outputs and the original chain's
outputs on the fitting share of the calibration inputs, over every weight and bias of
the reduced chain (shortcut layers included), on analytic gradients: with L-BFGS in
float64, or, where the products are large (a transformer's FFN over token rows), with
Adam on mini-batches in float32 (the loss summed in float64; the fitting rows capped at
``max_rows``, a seeded subset), where one L-BFGS line search would take the whole
budget. No labels are used: the target is the original network itself.

The held-out share decides when to stop (no improvement for ``patience`` iterations, no
gain of ``stall_gain`` for ``stall_share`` of the time budget, or the iteration or time
budget spent) and which weights to return: those with the lowest held-out error seen,
and the unrefined ones unless refinement lowered it. Weights that a method set to zero
(the unstructured ones) stay zero.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import scipy.optimize
import threadpoolctl

from onnx_lump.activations import Activation
from onnx_lump.errors import LumpError
from onnx_lump.types import ChainResult, ReducedLayer, Shortcut

__all__ = [
    "ChainData",
    "ChainNetwork",
    "RefineOptions",
    "RefineStats",
    "blas_threads",
    "chain_loss",
    "refine_chain",
]

logger = logging.getLogger(__name__)

# A held-out error below this is float rounding: the chain is exact, nothing to refine.
_EXACT = 1e-7


@dataclass(frozen=True)
class RefineOptions:
    """The budget of one refinement: at most ``max_iters`` L-BFGS iterations and
    ``max_seconds`` of wall time (shared by the chains of one model); it stops early
    after ``patience`` iterations without a lower held-out error, or once the held-out
    error has not dropped by ``stall_gain`` (relative) for ``stall_share`` of its time
    budget: on a wide network, where an iteration takes most of a second, 100 iterations
    outlast the budget, and it went on for 44 s after its last 0.5% gain."""

    max_iters: int = 1000
    max_seconds: float = 60.0
    patience: int = 100
    progress: bool = False
    stall_gain: float = 1e-3
    stall_share: float = 0.25
    max_rows: int = 32768

    def __post_init__(self) -> None:
        if self.max_iters < 0:
            raise LumpError(f"refine iterations must be >= 0, got {self.max_iters}")
        if not self.max_seconds > 0:
            raise LumpError(f"refine seconds must be > 0, got {self.max_seconds}")
        if not (0 <= self.stall_gain < 1 and 0 < self.stall_share <= 1):
            raise LumpError("refine stall_gain must be in [0, 1) and stall_share in (0, 1]")
        if self.max_rows < 1:
            raise LumpError(f"refine max_rows must be >= 1, got {self.max_rows}")


@dataclass(frozen=True, eq=False)
class ChainData:
    """Inputs of a chain (samples x features) and the original chain's outputs on them."""

    inputs: np.ndarray
    targets: np.ndarray

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

    @property
    def improved(self) -> bool:
        return self.holdout_after < self.holdout_before


# Rows a chunk of the loss without gradient (the held-out checks).
_LOSS_ROWS = 4096


class ChainNetwork:
    """A reduced chain as a flat parameter vector with a forward pass and its gradient."""

    def __init__(
        self,
        result: ChainResult,
        activations: Sequence[Activation],
        masks: Sequence[np.ndarray | None] | None,
        dtype=np.float64,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.activations = list(activations)
        self.shortcuts = list(result.shortcuts)
        arrays = []
        for layer in result.layers:
            arrays += [layer.weight, layer.bias]
        arrays += [s.weight for s in self.shortcuts]
        self.shapes = [a.shape for a in arrays]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.n_layers = len(result.layers)
        self.theta0 = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
        self.mask = None
        if masks is not None and any(m is not None for m in masks):
            flat = [np.ones(n, dtype=bool) for n in self.sizes]
            for index, mask in enumerate(masks):
                if mask is not None:
                    flat[2 * index] = np.asarray(mask, dtype=bool).ravel()
            self.mask = np.concatenate(flat)

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
            for s, w in zip(self.shortcuts, arrays[2 * self.n_layers :], strict=True)
        ]
        return ChainResult(layers, shortcuts)

    def _forward(self, arrays, inputs):
        values, pres = [inputs], []
        for index in range(self.n_layers):
            weight, bias = arrays[2 * index], arrays[2 * index + 1]
            pre = values[-1] @ weight.T + bias
            for shortcut, s_weight in zip(
                self.shortcuts, arrays[2 * self.n_layers :], strict=False
            ):
                if shortcut.target == index:
                    pre += values[shortcut.source] @ s_weight.T
            pres.append(pre)
            activation = self.activations[index]
            single = self.dtype == np.float32
            values.append(activation.float32(pre) if single else activation(pre))
        return values, pres

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
        values, pres = self._forward(arrays, data.inputs)
        residual = values[-1] - data.targets
        count = residual.size * scale * scale
        loss = float(np.einsum("ij,ij->", residual, residual, dtype=np.float64)) / count
        grads = [None] * len(arrays)
        upstream = [None] * (self.n_layers + 1)  # d loss / d values[i]
        upstream[-1] = (2.0 / count) * residual
        for index in reversed(range(self.n_layers)):
            activation = self.activations[index]
            if self.dtype == np.float32:
                slope = activation.derivative_float32(pres[index])
            else:
                slope = activation.derivative(pres[index])
            delta = upstream[index + 1] * slope
            weight = arrays[2 * index]
            grads[2 * index] = delta.T @ values[index]
            grads[2 * index + 1] = delta.sum(axis=0)
            back = delta @ weight
            upstream[index] = back if upstream[index] is None else upstream[index] + back
            for k, (shortcut, s_weight) in enumerate(
                zip(self.shortcuts, arrays[2 * self.n_layers :], strict=False)
            ):
                if shortcut.target == index:
                    grads[2 * self.n_layers + k] = delta.T @ values[shortcut.source]
                    via = delta @ s_weight
                    source = shortcut.source
                    upstream[source] = via if upstream[source] is None else upstream[source] + via
        gradient = np.concatenate([g.ravel() for g in grads]).astype(np.float64, copy=False)
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


def refine_chain(
    result: ChainResult,
    activations: Sequence[Activation],
    fit: ChainData,
    holdout: ChainData,
    options: RefineOptions,
    masks: Sequence[np.ndarray | None] | None = None,
    seconds: float | None = None,
    label: str = "refine",
) -> tuple[ChainResult, RefineStats]:
    """Refine ``result`` (the reduced chain; ``activations[i]`` follows layer i, identity
    for the last) onto ``fit`` and return the weights with the lowest error on
    ``holdout``, which are ``result`` itself unless refinement lowered it. ``masks``
    (one per layer, or None) mark the weights that may change; ``seconds`` overrides
    ``options.max_seconds``."""
    started = time.perf_counter()
    budget = options.max_seconds if seconds is None else seconds
    fit = _capped(fit, options.max_rows)
    dtype = _precision(result, fit.n_samples)
    network = ChainNetwork(result, activations, masks, dtype)
    scale = _spread(fit.targets)
    holdout_scale = _spread(holdout.targets)
    fit, holdout = _as(fit, dtype), _as(holdout, dtype)

    def holdout_error(theta: np.ndarray) -> float:
        return network.loss(theta, holdout, holdout_scale)

    fit_before = network.loss(network.theta0, fit, scale)
    best = {"theta": network.theta0, "error": holdout_error(network.theta0), "at": 0}
    before = best["error"]
    state = {"iterations": 0}
    # the last held-out error at least stall_gain below the one before, when, and after
    # which iteration; Adam's steps are noisy: it stalls only after a few iterations
    gain = {"error": before, "at": started, "iteration": 0}
    least = _ADAM_STALL_ITERATIONS if dtype == np.float32 else 0
    bar = _progress(options, label)

    def callback(intermediate_result) -> None:
        state["iterations"] += 1
        error = holdout_error(intermediate_result.x)
        now = time.perf_counter()
        if error < best["error"]:
            best.update(theta=intermediate_result.x.copy(), error=error, at=state["iterations"])
        if error < gain["error"] * (1.0 - options.stall_gain):
            gain.update(error=error, at=now, iteration=state["iterations"])
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"held-out error {100 * best['error']:.3g}%")
        if (
            state["iterations"] - best["at"] >= options.patience
            or now - started >= budget
            or (
                now - gain["at"] >= options.stall_share * budget
                and state["iterations"] - gain["iteration"] >= least
            )
        ):
            raise StopIteration

    if before > _EXACT and options.max_iters > 0 and fit.n_samples > 0 and network.theta0.size:
        with blas_threads(network, fit.n_samples):
            if dtype == np.float32:
                _adam(network, fit, scale, options, callback)
            else:
                _minimize(network, fit, scale, options, callback)
    if bar is not None:
        bar.close()
    improved = best["error"] < before and np.isfinite(best["error"])
    refined = network.result(best["theta"]) if improved else result
    theta = best["theta"] if improved else network.theta0
    stats = RefineStats(
        iterations=state["iterations"],
        seconds=time.perf_counter() - started,
        fit_before=float(fit_before),
        fit_after=network.loss(theta, fit, scale),
        holdout_before=before,
        holdout_after=best["error"] if improved else before,
        n_fit=fit.n_samples,
        n_holdout=holdout.n_samples,
    )
    logger.info(
        "%s: %d iterations in %.2fs, held-out error %.4g -> %.4g%s",
        label,
        stats.iterations,
        stats.seconds,
        stats.holdout_before,
        stats.holdout_after,
        "" if improved else " (kept the unrefined weights)",
    )
    return refined, stats


# Multiply-adds of one forward pass over the fitting rows from which refinement runs in
# float32: there a step's products dominate its time and float32 halves them, while the
# loss, summed in float64, stays smooth enough for L-BFGS's line search (a transformer FFN
# of 384 x 1536 on 10,000 token rows: 6e9). The benchmark's networks (at most 3e7) stay in
# float64.
FLOAT32_PRODUCTS = 1e9


def _precision(result: ChainResult, n_samples: int):
    products = n_samples * sum(layer.weight.size for layer in result.layers)
    return np.float32 if products >= FLOAT32_PRODUCTS else np.float64


def _capped(data: ChainData, max_rows: int) -> ChainData:
    """At most ``max_rows`` of ``data``'s rows, a seeded subset in their order."""
    if data.n_samples <= max_rows:
        return data
    rows = np.sort(np.random.default_rng(0).choice(data.n_samples, max_rows, replace=False))
    return ChainData(data.inputs[rows], data.targets[rows])


def _as(data: ChainData, dtype) -> ChainData:
    if data.inputs.dtype == dtype and data.targets.dtype == dtype:
        return data
    return ChainData(np.asarray(data.inputs, dtype), np.asarray(data.targets, dtype))


def _minimize(
    network: ChainNetwork, fit: ChainData, scale: float, options: RefineOptions, callback
):
    scipy.optimize.minimize(
        network.loss_and_gradient,
        network.theta0.copy(),
        args=(fit, scale),
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={
            "maxiter": options.max_iters,
            "maxfun": 4 * options.max_iters,
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


def _adam(network: ChainNetwork, fit: ChainData, scale: float, options: RefineOptions, callback):
    """Adam over seeded mini-batches of the fitting rows; ``callback`` sees the weights
    every :data:`_ADAM_ITERATION` batches (an iteration, the unit of the budget and of
    the held-out checks) and stops it by raising StopIteration."""
    theta = network.theta0.astype(np.float32)
    first, second = np.zeros_like(theta), np.zeros_like(theta)
    rng = np.random.default_rng(0)
    batches = _mini_batches(fit.n_samples, rng)
    for step in range(1, _ADAM_ITERATION * options.max_iters + 1):
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
    products = n_samples * sum(int(np.prod(shape)) for shape in network.shapes if len(shape) == 2)
    if products >= _THREADED_PRODUCTS:
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")


def _progress(options: RefineOptions, label: str):
    """A tqdm bar when asked for and stderr is a terminal; None otherwise."""
    if not options.progress or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a bar is never worth a crash
        return None
    return tqdm(total=options.max_iters, desc=label, unit="it", leave=False)
