"""The original chain on the calibration rows, and the data path's layer inputs.

:class:`ReferenceRows` holds what every step of a data-aware search compares with: the
original chain's output (float64, the exact reference eps 0 is judged by) and every
layer's original pre-activations (the refit targets, float32). :func:`layer_inputs` are
a reduced layer's activations on the rows, in float32: what the next layer is grouped
and refit on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, TypeVar

import numpy as np

from onnx_lump.data.cache import ChainCache
from onnx_lump.data.calibration import forward_chain
from onnx_lump.ode.encoding import OdeLayer, OdeSystem
from onnx_lump.progress import stage
from onnx_lump.types import ReducedLayer


class ChainProblem(Protocol):
    """What the reference rows read of a chain to compress
    (:class:`onnx_lump.methods.base.ChainProblem` is one): typed here as a protocol, so
    the data stage does not import the methods above it."""

    @property
    def system(self) -> OdeSystem: ...
    @property
    def calibration(self) -> np.ndarray | None: ...
    @property
    def holdout(self) -> np.ndarray | None: ...
    @property
    def cache(self) -> ChainCache | None: ...
    @property
    def original_calibration(self) -> np.ndarray | None: ...
    @property
    def original_holdout(self) -> np.ndarray | None: ...
    @property
    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]: ...


__all__ = [
    "ROW_CHUNK_ENTRIES",
    "STORED_TARGET_BYTES",
    "ReferenceRows",
    "frozen",
    "layer_input_chunks",
    "layer_inputs",
    "original_output",
    "original_rows",
    "reference_error",
]


_Array = TypeVar("_Array", bound=np.ndarray | None)


def frozen(array: _Array) -> _Array:
    """``array``, made read-only where it owns its data: what a search cache holds."""
    if isinstance(array, np.ndarray) and array.flags.writeable and array.flags.owndata:
        array.setflags(write=False)
    return array


# The original network's pre-activations on the calibration rows (the refit targets) are
# kept, in float32, while all of them take at most this much (2,048 rows of the 4 x 4096
# benchmark: 134 MB); beyond, each compress call recomputes them a layer at a time.
STORED_TARGET_BYTES = 1 << 30
# Rows of the data path are computed this many entries (rows x neurons) at a time.
ROW_CHUNK_ENTRIES = 1 << 22


def _row_step(width: int) -> int:
    return max(1, ROW_CHUNK_ENTRIES // max(width, 1))


class ReferenceRows:
    """Inputs of a chain on some rows, the original chain's output on them (float64;
    computed from ``source``, the chain's inputs in the original model on the same rows,
    where sequential calibration gave ``inputs`` from a compressed one), and every
    layer's original pre-activations (the refit targets, float32): stored
    when they fit :data:`STORED_TARGET_BYTES`, else recomputed by :meth:`targets`, so
    that the data path holds one layer's worth of rows, not the whole network's.

    With ``output_first`` (the held-out rows, whose output every step's error is
    measured against) one float64 pass makes the output and the stored targets; else
    (the fitting rows, whose output only refinement reads) the stored targets come
    from float32 products, twice as fast, and the output from a float64 pass on first
    use."""

    def __init__(
        self,
        problem: ChainProblem,
        inputs: np.ndarray,
        output_first: bool = True,
        source: np.ndarray | None = None,
    ):
        self.inputs = inputs
        # the original chain's input on the same rows, which its outputs come from
        self._source = inputs if source is None else source
        self._problem = problem
        widths = sum(layer.size for layer in problem.system.layers)
        keep = inputs.shape[0] * widths * 4 <= STORED_TARGET_BYTES
        self._output: np.ndarray | None = None
        self._stored: list[np.ndarray] | None = None
        if output_first:
            self._forward(np.float64, keep, True)
        elif keep:
            self._forward(np.float32, True, False)

    def _forward(self, dtype, store: bool, output: bool) -> None:
        """One pass through the chain in ``dtype``, a chunk of rows at a time, storing the
        targets (float32) and the output (float64: the exact reference eps 0 is judged
        by) as asked."""
        system, inputs = self._problem.system, self._source
        if dtype is np.float32:
            weights = [
                (_float32(layer), np.asarray(layer.bias, np.float32)) for layer in system.layers
            ]
        else:
            weights = self._problem.weights
        rows = inputs.shape[0]
        stored = [np.empty((rows, w.shape[0]), np.float32) for w, _ in weights[1:]] if store else []
        result = np.empty((rows, weights[-1][0].shape[0])) if output else None
        step = _row_step(max(max(w.shape) for w, _ in weights))
        for start in range(0, rows, step):
            part = slice(start, start + step)
            values = np.asarray(inputs[part], dtype=dtype)
            layers = zip(weights, system.layers, strict=True)
            for index, ((weight, bias), layer) in enumerate(layers):
                pre = values @ weight.T + bias
                if store and index:
                    stored[index - 1][part] = pre
                if output or index + 1 < len(weights):
                    exact = dtype is np.float64
                    values = layer.activation(pre) if exact else layer.activation.float32(pre)
            if output:
                assert result is not None
                result[part] = values
        if store:
            self._stored = [frozen(t) for t in stored]
        if output:
            self._output = frozen(result)

    @property
    def output(self) -> np.ndarray:
        """The original chain's output on these rows, float64."""
        if self._output is None:
            stage(f"the original chain's output on {self.inputs.shape[0]} rows (float64)")
            self._forward(np.float64, False, True)
        assert self._output is not None
        return self._output

    def targets(self) -> Iterator[np.ndarray]:
        """The original pre-activations of layers 1, 2, ... (those refits aim at), front
        to back, float32."""
        if self._stored is not None:
            return iter(self._stored)
        return self._recomputed()

    def _recomputed(self) -> Iterator[np.ndarray]:
        """:meth:`targets` a layer at a time (computed in float64 a chunk of rows at a
        time, the activations between layers held in float32): only the current
        layer's rows are held."""
        system, weights = self._problem.system, self._problem.weights
        current = self._source
        for index, (weight, bias) in enumerate(weights):
            pre = np.empty((current.shape[0], weight.shape[0]), np.float32)
            step = _row_step(max(weight.shape))
            for start in range(0, current.shape[0], step):
                rows = np.asarray(current[start : start + step], dtype=np.float64)
                pre[start : start + step] = rows @ weight.T + bias
            if index:
                yield pre
            if index + 1 < len(weights):
                activation = system.layers[index].activation
                # in place: whoever took this layer's targets is done with them once
                # it asks for the next layer's
                for start in range(0, pre.shape[0], step):
                    chunk = pre[start : start + step]
                    chunk[...] = activation.float32(chunk)
                current = pre


def _float32(layer: OdeLayer) -> np.ndarray:
    """The layer's coefficients in float32: the stored values themselves while no float64
    copy replaced them (a float32 model before the data path needs float64), so that the
    fitting rows' pass neither makes a float64 copy nor converts one back (exact either
    way: float32 to float64 and back is lossless)."""
    if layer.values.dtype == np.float32:
        return layer.values
    return np.asarray(layer.coefficients, np.float32)


def layer_inputs(inputs: np.ndarray, layer: ReducedLayer, activation) -> np.ndarray:
    """``activation(inputs @ layer.weight.T + layer.bias)`` in float32, a chunk of rows at
    a time: the data path's layer inputs, which feed fits and comparisons on data, not
    the exact reference (the output, float64), so float32 products (twice as fast as
    float64 on wide layers) are accurate enough."""
    out = np.empty((inputs.shape[0], layer.weight.shape[0]), dtype=np.float32)
    start = 0
    for chunk in layer_input_chunks(inputs, layer, activation):
        out[start : start + chunk.shape[0]] = chunk
        start += chunk.shape[0]
    return out


def layer_input_chunks(inputs: np.ndarray, layer: ReducedLayer, activation) -> Iterator:
    """:func:`layer_inputs` a chunk of rows at a time, for statistics that need never
    hold them all (a wide layer's activations on many token rows)."""
    weight_t = np.asarray(layer.weight, dtype=np.float32).T
    bias = np.asarray(layer.bias, dtype=np.float32)
    step = _row_step(max(layer.weight.shape))
    for start in range(0, inputs.shape[0], step):
        rows = np.asarray(inputs[start : start + step], dtype=np.float32)
        pre = rows @ weight_t
        pre += bias
        yield activation.float32(pre)


def original_rows(problem: ChainProblem, which: str) -> ReferenceRows:
    """The original chain on the fitting (``which`` "fit") or held-out ("held") rows,
    computed once per cache (``problem.cache``)."""
    if which == "fit":
        inputs, source = problem.calibration, problem.original_calibration
    else:
        inputs, source = problem.holdout, problem.original_holdout
    assert inputs is not None, f"original rows ({which}) of a problem without them"

    def make() -> ReferenceRows:
        rows = "fitting" if which == "fit" else "held-out"
        stage(f"the original chain on the {inputs.shape[0]} {rows} rows")
        return ReferenceRows(problem, inputs, which != "fit", source)

    if problem.cache is None:
        return make()
    return problem.cache.get(("original rows", which), make, pin=True)


def original_output(problem: ChainProblem, which: str) -> np.ndarray:
    """The original chain's output on the fitting or held-out rows (see original_rows)."""
    return original_rows(problem, which).output


def reference_error(system: OdeSystem, layers: list[ReducedLayer], rows: ReferenceRows) -> float:
    """Mean squared difference of the reduced chain's output from the original's on
    ``rows``, a chunk of rows at a time."""
    weights = [(layer.weight, layer.bias) for layer in layers]
    total, n = 0.0, rows.inputs.shape[0]
    step = _row_step(max(max(w.shape) for w, _ in weights))
    for start in range(0, n, step):
        part = slice(start, start + step)
        output = forward_chain(weights, system, rows.inputs[part])[-1]
        total += float(np.square(output - rows.output[part]).sum())
    return total / max(rows.output.size, 1)
