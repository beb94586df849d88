"""Inputs for checks and data-aware methods, and the activations they produce in a chain.

Calibration inputs come from ``.npz`` (one array per graph input), ``.npy`` or ``.csv``
(single-input models) or are seeded random normals. The input of each dense chain is read
from the model itself, by onnxruntime with the chain inputs exposed as extra graph
outputs; what happens inside a chain is then computed by :func:`forward_chain`, a numpy
forward pass that the tests hold against onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from onnx_lump.chains import DenseChain
from onnx_lump.errors import LumpError
from onnx_lump.ode import OdeSystem
from onnx_lump.runtime import run_model

__all__ = [
    "TARGET_KEYS",
    "chain_inputs",
    "forward_chain",
    "load_inputs",
    "random_inputs",
]

# Keys of a .npz that hold reference outputs (targets) rather than model inputs.
TARGET_KEYS = ("target", "targets", "y_true")


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _read_arrays(path: Path, n_inputs: int) -> dict[str, np.ndarray]:
    if path.suffix.lower() == ".csv":
        try:
            table = np.genfromtxt(path, delimiter=",", dtype=np.float64)
        except ValueError as exc:
            raise LumpError(f"cannot read '{path}' as CSV of numbers: {exc}") from exc
        table = np.atleast_2d(table)
        if np.isnan(table[0]).all():  # a header row
            table = table[1:]
        if table.size == 0 or np.isnan(table).any():
            raise LumpError(f"'{path}' must hold a numeric table (an optional header row aside)")
        if n_inputs != 1:
            raise LumpError(f"'{path}' is one table but the model has {n_inputs} inputs; use .npz")
        return {"": table}
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise LumpError(f"cannot read '{path}' as .npz/.npy/.csv: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        if n_inputs != 1:
            raise LumpError(
                f"'{path}' holds one array but the model has {n_inputs} inputs; use .npz"
            )
        return {"": loaded}
    return dict(loaded.items())


def load_inputs(
    path: str | Path, model: onnx.ModelProto, with_targets: bool = False
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Feeds for every graph input from a file, cast to the inputs' dtypes; with
    ``with_targets`` also the array stored under one of :data:`TARGET_KEYS`, if any."""
    path = Path(path)
    if not path.is_file():
        raise LumpError(f"calibration file '{path}' does not exist")
    inputs = _graph_inputs(model)
    arrays = _read_arrays(path, len(inputs))
    targets = next((arrays.pop(k) for k in TARGET_KEYS if k in arrays), None)
    if len(inputs) == 1 and len(arrays) == 1 and inputs[0].name not in arrays:
        arrays = {inputs[0].name: next(iter(arrays.values()))}
    feeds = {}
    for value in inputs:
        if value.name not in arrays:
            raise LumpError(f"'{path}' has no array for model input '{value.name}'")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = np.asarray(arrays[value.name]).astype(dtype, copy=False)
    return (feeds, targets) if with_targets else feeds


def random_inputs(
    model: onnx.ModelProto,
    n: int,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs; a dynamic leading (batch) dimension becomes ``n``,
    other dynamic dimensions must be given in ``shapes``."""
    shapes = dict(shapes or {})
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in _graph_inputs(model):
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if not np.issubdtype(dtype, np.floating):
            raise LumpError(
                f"input '{value.name}' is {dtype}; random checks need --calib data for it"
            )
        if value.name in shapes:
            shape = [int(d) for d in shapes[value.name]]
        else:
            shape = []
            for axis, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    shape.append(dim.dim_value)
                elif axis == 0:
                    shape.append(n)
                else:
                    raise LumpError(
                        f"input '{value.name}' has dynamic dimension {axis}; "
                        f"give its shape with --input-shape {value.name}:d0,d1,..."
                    )
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def chain_inputs(
    model: onnx.ModelProto,
    chains: Sequence[DenseChain],
    feeds: Mapping[str, np.ndarray],
    providers: Sequence,
) -> list[np.ndarray]:
    """The input of each chain on ``feeds``, as (samples x features) float64 arrays, read
    by onnxruntime from the model with those tensors exposed as outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for chain in chains:
        name = chain.layers[0].input.name
        if name not in outputs:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(chain.layers[0].dtype))
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
            outputs.add(name)
    values = run_model(probe, feeds, providers)
    result = []
    for chain in chains:
        value = np.asarray(values[chain.layers[0].input.name], dtype=np.float64)
        result.append(value.reshape(-1, chain.layers[0].in_features))
    return result


def forward_chain(
    layers: Sequence[tuple[np.ndarray, np.ndarray]],
    system: OdeSystem,
    inputs: np.ndarray,
) -> list[np.ndarray]:
    """[input of layer 0, input of layer 1, ..., chain output] for weights ``layers``
    (each ``(weight, bias)``) with the activations of ``system``."""
    values = [inputs]
    for index, (weight, bias) in enumerate(layers):
        pre = values[-1] @ weight.T + bias
        values.append(system.layers[index].activation(pre))
    return values
