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

from onnx_lump.errors import LumpError
from onnx_lump.graph.chains import DenseChain
from onnx_lump.ode.encoding import OdeSystem
from onnx_lump.runtime import run_session, session

__all__ = [
    "AUTO_MASK_INPUT",
    "MAX_RANDOM_BYTES",
    "TARGET_KEYS",
    "chain_inputs",
    "forward_chain",
    "load_inputs",
    "random_input_shapes",
    "random_inputs",
    "random_inputs_bytes",
    "token_mask",
]

# Keys of a .npz that hold reference outputs (targets) rather than model inputs.
TARGET_KEYS = ("target", "targets", "y_true")
# Seeded random check inputs beyond this are refused: the check would swap or be killed.
MAX_RANDOM_BYTES = 4 * 2**30


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
        # Our own handle, so that numpy's failures on damaged files cannot leak it; an .npz
        # reads its members lazily, so corrupt or pickled members fail in items().
        with path.open("rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                arrays = {"": loaded}
            else:
                with loaded:
                    arrays = dict(loaded.items())
    except ValueError as exc:
        if "pickle" in str(exc) or "Object arrays" in str(exc):
            raise LumpError(
                f"'{path}' holds pickled (object) data, which is never loaded; "
                "save plain numeric arrays with numpy.savez"
            ) from exc
        raise LumpError(f"cannot read '{path}' as .npz/.npy/.csv: {_first_line(exc)}") from exc
    except Exception as exc:  # zipfile, zlib, EOF and OS errors for damaged files
        raise LumpError(
            f"cannot read '{path}' as .npz/.npy/.csv ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not arrays:
        raise LumpError(f"'{path}' holds no arrays")
    if "" in arrays and n_inputs != 1:
        raise LumpError(f"'{path}' holds one array but the model has {n_inputs} inputs; use .npz")
    return arrays


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _numeric(path: Path, key: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise LumpError(f"'{path}' array '{key}' is {array.dtype}, not numbers")
    if array.ndim == 0 or array.shape[0] == 0:
        raise LumpError(f"'{path}' array '{key}' has no rows (shape {array.shape})")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1)))
        raise LumpError(
            f"'{path}' array '{key}' holds NaN or infinite values in {bad} of {len(array)} rows; "
            "remove those rows"
        )
    return array


def _static_dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """Dimensions of a graph input or output (None: dynamic); None when the rank is unknown."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor_type.shape.dim
    ]


def _check_shape(path: Path, value: onnx.ValueInfoProto, array: np.ndarray) -> None:
    dims = _static_dims(value)
    if dims is None:
        return
    fits = len(dims) == array.ndim and all(
        d is None or d == a for d, a in zip(dims[1:], array.shape[1:], strict=True)
    )
    if not fits:
        wanted = ", ".join(
            "N" if i == 0 and d is None else "?" if d is None else str(d)
            for i, d in enumerate(dims)
        )
        raise LumpError(
            f"'{path}' array for input '{value.name}' has shape {tuple(array.shape)}, "
            f"but the model expects ({wanted})"
        )


def _varies(feeds: Mapping[str, np.ndarray]) -> bool:
    """Whether some row differs from the first one (rows are entries along axis 0)."""
    return any(bool(np.any(v != v[:1])) for v in feeds.values())


def _check_targets(path: Path, model: onnx.ModelProto, targets: np.ndarray, rows: int) -> None:
    targets = _numeric(path, "target", targets)
    if len(targets) != rows:
        raise LumpError(
            f"'{path}' has {len(targets)} target rows for {rows} input rows; they must match"
        )
    per_row = 0
    for output in model.graph.output:
        dims = _static_dims(output)
        if dims is None or any(d is None for d in dims[1:]):
            return  # the output width is only known after a run: the search checks it then
        per_row += int(np.prod(dims[1:], dtype=np.int64))
    if targets.size != rows * per_row:
        raise LumpError(
            f"'{path}' target has shape {tuple(targets.shape)}, but the model's outputs "
            f"hold {per_row} values per row ({rows} rows)"
        )


def load_inputs(
    path: str | Path,
    model: onnx.ModelProto,
    with_targets: bool = False,
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Feeds for every graph input from a file, cast to the inputs' dtypes; with
    ``with_targets`` also the array stored under one of :data:`TARGET_KEYS`, if any.

    Refuses, with a one-line :class:`LumpError`, anything that would make the numbers
    meaningless: unreadable or pickled files, non-numeric, NaN or infinite values, shapes
    the model does not take, inputs with different row counts, targets that do not match
    the outputs, and data whose rows are all the same (one row, or copies of one row, say
    nothing about how the neurons vary).
    """
    path = Path(path)
    if not path.is_file():
        raise LumpError(f"data file '{path}' does not exist or is not a file")
    inputs = _graph_inputs(model)
    arrays = _read_arrays(path, len(inputs))
    targets = next((arrays.pop(k) for k in TARGET_KEYS if k in arrays), None)
    if len(inputs) == 1 and len(arrays) == 1 and inputs[0].name not in arrays:
        arrays = {inputs[0].name: next(iter(arrays.values()))}
    feeds = {}
    for value in inputs:
        if value.name not in arrays:
            found = ", ".join(sorted(arrays)) or "none"
            raise LumpError(
                f"'{path}' has no array for model input '{value.name}' (arrays: {found})"
            )
        array = _numeric(path, value.name, arrays[value.name])
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below
            cast = array.astype(dtype, copy=False)
        if cast.dtype.kind == "f" and not np.isfinite(cast).all():
            raise LumpError(f"'{path}' array '{value.name}' has values too large for {cast.dtype}")
        _check_shape(path, value, cast)
        feeds[value.name] = cast
    rows = {len(v) for v in feeds.values()}
    if len(rows) > 1:
        raise LumpError(f"'{path}' arrays have different numbers of rows: {sorted(rows)}")
    if feeds and not _varies(feeds):
        n = len(next(iter(feeds.values())))
        what = "one row" if n == 1 else f"{n} identical rows"
        raise LumpError(
            f"'{path}' holds {what}: too little information to tell neurons apart or to "
            "measure an error; give at least two different rows (ideally hundreds)"
        )
    if with_targets and targets is not None and feeds:
        _check_targets(path, model, targets, len(next(iter(feeds.values()))))
    return (feeds, targets) if with_targets else feeds


def random_input_shapes(
    model: onnx.ModelProto, n: int, shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each seeded random input :func:`random_inputs` would draw."""
    shapes = dict(shapes or {})
    result = {}
    for value in _graph_inputs(model):
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor_type.elem_type == 0:
            raise LumpError(f"input '{value.name}' is not a typed tensor; give --calib data")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if not np.issubdtype(dtype, np.floating):
            raise LumpError(
                f"input '{value.name}' is {dtype}; random checks need --calib data for it"
            )
        dims = _static_dims(value)
        if value.name in shapes:
            shape = [int(d) for d in shapes[value.name]]
            if dims is not None and (
                len(dims) != len(shape)
                or any(d not in (None, s) for d, s in zip(dims, shape, strict=True))
            ):
                raise LumpError(
                    f"--input-shape {value.name}:{','.join(map(str, shape))} does not fit the "
                    f"model's shape {['?' if d is None else d for d in dims]} for that input"
                )
        elif dims is None:
            raise LumpError(
                f"input '{value.name}' has no shape in the model; give --input-shape "
                f"{value.name}:d0,d1,... or --calib data"
            )
        else:
            shape = []
            for axis, dim in enumerate(dims):
                if dim is not None:
                    shape.append(dim)
                elif axis == 0:
                    shape.append(n)
                else:
                    raise LumpError(
                        f"input '{value.name}' has dynamic dimension {axis}; "
                        f"give its shape with --input-shape {value.name}:d0,d1,..."
                    )
        result[value.name] = (tuple(shape), dtype)
    return result


def random_inputs_bytes(
    model: onnx.ModelProto, n: int, shapes: Mapping[str, Sequence[int]] | None = None
) -> int:
    """Bytes the seeded random inputs would take (the outputs come on top)."""
    return sum(
        int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        for shape, dtype in random_input_shapes(model, n, shapes).values()
    )


def random_inputs(
    model: onnx.ModelProto,
    n: int,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs; a dynamic leading (batch) dimension becomes ``n``,
    other dynamic dimensions must be given in ``shapes``. Refuses to draw more than
    :data:`MAX_RANDOM_BYTES`."""
    needed = random_inputs_bytes(model, n, shapes)
    if needed > MAX_RANDOM_BYTES:
        raise LumpError(
            f"{n} random check inputs would take {needed / 2**30:.1f} GiB (limit "
            f"{MAX_RANDOM_BYTES / 2**30:.0f} GiB); lower --check or give --calib data"
        )
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal(shape).astype(dtype)
        for name, (shape, dtype) in random_input_shapes(model, n, shapes).items()
    }


# The input that marks real tokens in the exports of Hugging Face models: positions where
# it is 0 are padding, which no fit or error should be about.
AUTO_MASK_INPUT = "attention_mask"


def token_mask(
    feeds: Mapping[str, np.ndarray], mask_input: str | None = AUTO_MASK_INPUT
) -> np.ndarray | None:
    """Which positions of ``feeds`` are real: ``feeds[mask_input] != 0`` as booleans of
    its shape (rows x positions), or None when there is no such feed (or it is 1-D)."""
    if not mask_input or mask_input not in feeds:
        return None
    mask = np.asarray(feeds[mask_input]) != 0
    return mask if mask.ndim >= 2 else None


def _rows_of(value: np.ndarray, in_features: int, mask: np.ndarray | None) -> np.ndarray:
    """A chain input as (samples x features) rows, the masked positions left out when
    its leading dimensions are the mask's (a token-level tensor); else every row."""
    value = np.asarray(value, dtype=np.float64)
    if mask is not None and value.shape[: mask.ndim] == mask.shape:
        return value.reshape(mask.size, -1)[mask.reshape(-1)].reshape(-1, in_features)
    return value.reshape(-1, in_features)


def chain_inputs(
    model: onnx.ModelProto,
    chains: Sequence[DenseChain],
    feeds: Mapping[str, np.ndarray],
    providers: Sequence,
    mask: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The input of each chain on ``feeds``, as (samples x features) float64 arrays, read
    by onnxruntime from the model with those tensors exposed as outputs (a chain that
    reads a graph input directly takes the feed as it is, and when all do, nothing runs).
    With ``mask`` (:func:`token_mask` of ``feeds``), the rows of masked positions are
    left out of every chain whose input is laid out by position, and the model runs on
    batches of similar length cut to their last real position (:func:`_trimmed_rows`)."""
    if all(chain.layers[0].input.name in feeds for chain in chains):
        values = {name: feeds[name] for name in (c.layers[0].input.name for c in chains)}
        return [
            _rows_of(values[c.layers[0].input.name], c.layers[0].in_features, mask) for c in chains
        ]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for chain in chains:
        name = chain.layers[0].input.name
        if name not in outputs:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(chain.layers[0].dtype))
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
            outputs.add(name)
    runner = session(probe, providers)
    if mask is not None and mask.ndim == 2:
        rows = _trimmed_rows(runner, chains, feeds, mask)
        if rows is not None:
            return rows
    values = run_session(runner, feeds)
    return [_rows_of(values[c.layers[0].input.name], c.layers[0].in_features, mask) for c in chains]


# Sentences a batch of the trimmed run (about 2 MB of activations a 1,536-wide tensor
# for 64 tokens each).
_TRIM_BATCH = 32


def _trimmed_rows(runner, chains, feeds, mask: np.ndarray) -> list[np.ndarray] | None:
    """:func:`chain_inputs` for token data: sentences sorted by length, a batch at a
    time, every input laid out like the mask cut after the batch's last real position.
    What the mask marks as padding does not reach real positions in a model that reads
    it as an attention mask, so the real rows are those of the full run, for a share of
    its work (MiniLM on 64-token calibration sentences, 38% real: 2.4x faster). Each
    sentence's rows keep their place. None where the model does not take the cut
    inputs, or a chain's input is not laid out by sentence (the caller runs it whole)."""
    positions = mask.shape[1]
    last = np.where(mask.any(axis=1), positions - np.argmax(mask[:, ::-1], axis=1), 0)
    if last.min(initial=positions) >= positions:
        return None  # every sentence uses every position: nothing to cut
    order = np.argsort(last, kind="stable")
    blocks: list[list[np.ndarray | None]] = [[None] * mask.shape[0] for _ in chains]
    for start in range(0, order.size, _TRIM_BATCH):
        batch = order[start : start + _TRIM_BATCH]
        cut = max(int(last[batch].max()), 1)
        part = {
            name: (
                np.asarray(value)[batch][:, :cut]
                if np.asarray(value).shape[:2] == mask.shape
                else np.asarray(value)[batch]
            )
            for name, value in feeds.items()
        }
        try:
            values = runner.run([c.layers[0].input.name for c in chains], part)
        except Exception:  # e.g. a sequence length fixed at export
            return None
        for index, (chain, value) in enumerate(zip(chains, values, strict=True)):
            if value.shape[0] != batch.size:
                return None
            sub = mask[batch][:, :cut]
            for row, sentence in enumerate(batch):
                item = value[row]
                if item.shape[:1] == (cut,):
                    item = item[sub[row]]
                blocks[index][sentence] = item.reshape(-1, chain.layers[0].in_features)
    return [np.concatenate(parts).astype(np.float64) for parts in blocks]


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
