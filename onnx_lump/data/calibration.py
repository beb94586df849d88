"""Inputs for checks and data-aware methods, and the activations they produce in a chain.

Calibration inputs come from ``.npz`` (one array per graph input), ``.npy`` or ``.csv``
(single-input models) or are seeded random draws: normals for float inputs, ids in the
range of the embedding table that reads an integer input, ones for masks; dynamic
dimensions other than the batch default to small sizes. The input of each dense chain is
read from the model itself, by onnxruntime with the chain inputs exposed as extra graph
outputs; what happens inside a chain is then computed by :func:`forward_chain`, a numpy
forward pass that the tests hold against onnxruntime.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, overload

import numpy as np
import onnx

from onnx_lump.errors import LumpError
from onnx_lump.graph.read.dense import DenseChain
from onnx_lump.ode.encoding import OdeSystem
from onnx_lump.runtime import run_session, session

__all__ = [
    "AUTO_MASK_INPUT",
    "MAX_CALIBRATION_POSITIONS",
    "MAX_RANDOM_BYTES",
    "TARGET_KEYS",
    "chain_inputs",
    "check_feeds",
    "forward_chain",
    "load_inputs",
    "random_input_shapes",
    "random_inputs",
    "random_inputs_bytes",
    "random_inputs_note",
    "token_mask",
]

logger = logging.getLogger(__name__)

# Keys of a .npz that hold reference outputs (targets) rather than model inputs.
TARGET_KEYS = ("target", "targets", "y_true")
# Calibration rows beyond this many chain rows (positions) are subsampled, seeded.
MAX_CALIBRATION_POSITIONS = 200_000
# Seeded random check inputs beyond this are refused: the check would swap or be killed.
MAX_RANDOM_BYTES = 4 * 2**30
# Size of a dynamic dimension other than the batch in random check inputs, unless the
# model fixes it (the width its first dense layer reads) or --input-shape gives it.
DEFAULT_DYNAMIC_DIM = 8
# Ops an integer input may pass through on its way to the Gather that reads it as ids.
_ID_PATH_OPS = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
# Ops that read an integer input as numbers (features), not as ids.
_DENSE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger"})
# How a file that is not calibration data starts: numpy's two formats, and pickle (2+).
_NPY_MAGIC, _ZIP_MAGIC, _PICKLE_MAGIC = b"\x93NUMPY", b"PK", b"\x80"


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


class _Readers:
    """Who reads each tensor of a graph, for telling what an input holds: ids (read by a
    Gather through shape-only ops: the table's first dimension bounds them), numbers read
    by a dense layer (whose weight fixes the width), or neither. Reads dimensions only,
    never tensor data."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.producers: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
            for name in node.output:
                self.producers[name] = node
        self.dims = {t.name: [int(d) for d in t.dims] for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.dims[node.output[0]] = [int(d) for d in attribute.t.dims]

    def constant_dims(self, name: str) -> list[int] | None:
        """Dimensions of an initializer or Constant (through Identity nodes), else None."""
        for _ in range(16):
            if name in self.dims:
                return self.dims[name]
            producer = self.producers.get(name)
            if producer is None or producer.op_type != "Identity":
                return None
            name = producer.input[0]
        return None

    def reached(self, name: str) -> Iterator[tuple[onnx.NodeProto, str]]:
        """(node, the tensor it reads) for each node reading ``name`` directly or through
        shape-only ops and casts (:data:`_ID_PATH_OPS`)."""
        todo, seen = [name], {name}
        while todo:
            tensor = todo.pop()
            for node in self.consumers.get(tensor, ()):
                yield node, tensor
                if node.op_type in _ID_PATH_OPS and node.input[0] == tensor and node.output:
                    if node.output[0] not in seen:
                        seen.add(node.output[0])
                        todo.append(node.output[0])

    def tables(self, name: str) -> list[tuple[str, int]]:
        """(table, rows) of each Gather whose indices are ``name`` (through
        :data:`_ID_PATH_OPS`), the table an initializer or Constant."""
        found = []
        for node, tensor in self.reached(name):
            if node.op_type == "EmbedLayerNormalization":  # onnxruntime's fused embedding
                slot = list(node.input).index(tensor)
                table = {0: 2, 1: 4, 8: 3}.get(slot, len(node.input))  # ids, segments, positions
                dims = self.constant_dims(node.input[table]) if table < len(node.input) else None
                if dims and dims[0] > 0:
                    found.append((node.input[table], dims[0]))
                continue
            if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] != tensor:
                continue
            dims = self.constant_dims(node.input[0])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if dims and -len(dims) <= axis < len(dims) and dims[axis] > 0:
                found.append((node.input[0], dims[axis]))
        return found

    def dense_reader(self, name: str) -> onnx.NodeProto | None:
        """A dense layer reading ``name`` as numbers (through :data:`_ID_PATH_OPS`)."""
        return next((n for n, _ in self.reached(name) if n.op_type in _DENSE_OPS), None)

    def width(self, name: str) -> int | None:
        """The width a dense layer reads from ``name``'s last axis: the inner dimension of
        a MatMul or Gemm (not transposed) whose weight is a constant, reading it directly
        or through Cast/Identity."""
        tensors, readers = [name], []
        while tensors:
            tensor = tensors.pop()
            for node in self.consumers.get(tensor, ()):
                if node.op_type in ("Cast", "Identity") and len(tensors) < 64:
                    tensors.append(node.output[0])
                elif node.op_type in ("MatMul", "Gemm") and node.input[0] == tensor:
                    readers.append(node)
        for node in readers:
            attributes = {a.name: a.i for a in node.attribute}
            dims = self.constant_dims(node.input[1]) if len(node.input) > 1 else None
            if not dims or len(dims) < 2 or attributes.get("transA", 0):
                continue
            if node.op_type == "MatMul":
                return dims[-2]
            return dims[1] if attributes.get("transB", 0) else dims[0]
        return None


def _read_arrays(
    path: Path, n_inputs: int, notes: list[str] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of a data file by name ('' for a bare array or table); what was left out
    of a CSV is added to ``notes``."""
    if path.suffix.lower() == ".csv":
        table = _read_csv(path, notes)
        if n_inputs != 1:
            raise LumpError(f"'{path}' is one table but the model has {n_inputs} inputs; use .npz")
        return {"": table}
    _refuse_other_formats(path)
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


def _refuse_other_formats(path: Path) -> None:
    """A one-line answer for a file that is neither .npy nor .npz: an ONNX model (given
    as data by mistake), a pickle, or something else (numpy would take any of them for
    a pickle, which is never loaded)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise LumpError(f"cannot read '{path}': {exc.strerror or exc}") from exc
    if head.startswith((_NPY_MAGIC, _ZIP_MAGIC)):
        return
    if _is_onnx_model(path):
        raise LumpError(f"'{path}' is an ONNX model, not calibration data (.npz/.npy/.csv)")
    if head.startswith(_PICKLE_MAGIC):
        return  # numpy refuses it below, as pickled data
    raise LumpError(
        f"cannot read '{path}' as .npz/.npy/.csv: it is none of them "
        "(save arrays with numpy.savez, or a table as .csv)"
    )


# A file larger than this is not parsed to tell whether it is an ONNX model.
_ONNX_PROBE_BYTES = 512 * 2**20


def _is_onnx_model(path: Path) -> bool:
    """Whether ``path`` parses as an ONNX model with a graph (its external data unread)."""
    try:
        if path.stat().st_size > _ONNX_PROBE_BYTES and path.suffix.lower() != ".onnx":
            return False
        model = onnx.load_model(path, load_external_data=False)
    except Exception:  # not protobuf, or not a model
        return False
    return model.ir_version > 0 and model.HasField("graph")


def _read_csv(path: Path, notes: list[str] | None = None) -> np.ndarray:
    """A numeric table, an optional header row aside. A leading unnamed column of
    distinct integers, as pandas writes its row index (``DataFrame.to_csv``), is left out
    (said in ``notes``); a cell that is not a number is named in the error."""
    try:
        table = np.genfromtxt(path, delimiter=",", dtype=np.float64)
    except ValueError as exc:
        raise LumpError(f"cannot read '{path}' as CSV of numbers: {exc}") from exc
    table = np.atleast_2d(table)
    header = bool(table.size) and bool(np.isnan(table[0]).all())
    if header:
        table = table[1:]
    if table.size == 0:
        raise LumpError(f"'{path}' must hold a numeric table (an optional header row aside)")
    if np.isnan(table).any():
        row, column = (int(i) for i in np.argwhere(np.isnan(table))[0])
        cell = _csv_cell(path, row + header, column)
        where = f"row {row + 1 + header}, column {column + 1}"
        what = "is empty" if cell == "" else f"is '{cell}'" if cell is not None else "is missing"
        raise LumpError(
            f"'{path}' must hold a numeric table (an optional header row aside): "
            f"{where} {what}, not a number"
        )
    if header and table.shape[1] > 1 and _is_index_column(path, table[:, 0]):
        if notes is not None:
            notes.append(
                f"'{path}': its first column has no name and numbers the rows (a pandas "
                f"row index); left out, {table.shape[1] - 1} columns read"
            )
        table = table[:, 1:]
    return table


def _csv_rows(path: Path) -> Iterator[list[str]]:
    """The rows of a CSV file as text cells, blank lines left out (as genfromtxt does)."""
    with path.open(newline="", errors="replace") as handle:
        for cells in csv.reader(handle):
            if any(c.strip() for c in cells):
                yield cells


def _csv_cell(path: Path, row: int, column: int) -> str | None:
    """The text of cell (``row``, ``column``) (0-based, header included), None if absent."""
    for index, cells in enumerate(_csv_rows(path)):
        if index == row:
            return cells[column].strip() if column < len(cells) else None
    return None


def _is_index_column(path: Path, values: np.ndarray) -> bool:
    """Whether the first column is a pandas row index: no name in a header that names
    every other column, and distinct integers."""
    header = next(_csv_rows(path), [])
    if len(header) < 2 or header[0].strip() or not all(c.strip() for c in header[1:]):
        return False
    return bool(np.all(values == np.round(values))) and len(np.unique(values)) == len(values)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _numeric(path: Path | str, key: str, array: np.ndarray) -> np.ndarray:
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


def _check_dtype(
    path: Path | str, name: str, array: np.ndarray, dtype: np.dtype, readers: _Readers
) -> None:
    """Refuse data of the wrong kind for an input: integers (token ids, labels) for a
    float input, fractions for an integer one, ids outside the table that reads them."""
    if dtype.kind == "f" and array.dtype.kind in "biu":
        raise LumpError(
            f"'{path}' array '{name}' is {array.dtype}, but model input '{name}' is {dtype}: "
            f"integer data (token ids?) for a float input; if they are features, save them "
            f"as floats (.astype(numpy.{dtype}))"
        )
    if dtype.kind not in "iu":
        return
    if array.dtype.kind == "f":
        fractions = array != np.round(array)
        if fractions.any():
            example = array[np.unravel_index(int(np.argmax(fractions)), array.shape)]
            raise LumpError(
                f"'{path}' array '{name}' holds fractions (e.g. {example:g}), but model input "
                f"'{name}' is {dtype}"
            )
    if "mask" in name.lower():
        return
    tables = readers.tables(name)
    if tables and array.size:
        table, rows = min(tables, key=lambda t: t[1])
        low, high = float(array.min()), float(array.max())
        if high >= rows or low < -rows:
            raise LumpError(
                f"'{path}' array '{name}' holds ids from {low:.0f} to {high:.0f}, but the "
                f"table '{table}' that reads them has {rows} rows"
            )


def _dim_params(value: onnx.ValueInfoProto) -> list[str]:
    """The symbolic name of each dimension of a graph input ('' where it has none)."""
    return [d.dim_param for d in value.type.tensor_type.shape.dim]


def _static_dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """Dimensions of a graph input or output (None: dynamic); None when the rank is unknown."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor_type.shape.dim
    ]


def _check_shape(path: Path | str, value: onnx.ValueInfoProto, array: np.ndarray) -> None:
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


# Element types of the outputs that targets are given for (label outputs may be left out).
_FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    }
)


def _check_targets(path: Path, model: onnx.ModelProto, targets: np.ndarray, rows: int) -> None:
    targets = _numeric(path, "target", targets)
    if len(targets) != rows:
        raise LumpError(
            f"'{path}' has {len(targets)} target rows for {rows} input rows; they must match"
        )
    per_row = float_per_row = 0
    for output in model.graph.output:
        dims = _static_dims(output)
        known = [d for d in dims[1:] if d is not None] if dims is not None else []
        if dims is None or len(known) < len(dims) - 1:
            return  # the output width is only known after a run: the search checks it then
        width = int(np.prod(known, dtype=np.int64))
        per_row += width
        if output.type.tensor_type.elem_type in _FLOAT_TYPES:
            float_per_row += width
    if targets.size not in (rows * per_row, rows * float_per_row):
        floats = f" (its float outputs {float_per_row})" if float_per_row != per_row else ""
        raise LumpError(
            f"'{path}' target has shape {tuple(targets.shape)}, but the model's outputs "
            f"hold {per_row} values per row{floats} ({rows} rows)"
        )


@overload
def load_inputs(
    path: str | Path, model: onnx.ModelProto, with_targets: Literal[False] = False
) -> dict[str, np.ndarray]: ...


@overload
def load_inputs(
    path: str | Path, model: onnx.ModelProto, with_targets: Literal[True]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]: ...


@overload
def load_inputs(
    path: str | Path, model: onnx.ModelProto, with_targets: bool
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray | None]: ...


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
    notes: list[str] = []
    arrays = _read_arrays(path, len(inputs), notes)
    targets = next((arrays.pop(k) for k in TARGET_KEYS if k in arrays), None)
    feeds = _checked_feeds(arrays, model, str(path), notes)
    if with_targets and targets is not None and feeds:
        _check_targets(path, model, targets, len(next(iter(feeds.values()))))
    for note in notes:  # once the data is known to be good: a refused file shows its error
        logger.warning(note)
    return (feeds, targets) if with_targets else feeds


def check_feeds(
    feeds: Mapping[str, np.ndarray] | np.ndarray, model: onnx.ModelProto, what: str
) -> dict[str, np.ndarray]:
    """The API's inputs (``what``: "calibration", "validation") held to the checks
    :func:`load_inputs` makes of a file, as a feed per graph input; a bare array is taken
    for a one-input model. Returns ``feeds`` itself when it is already that dict (a
    search's caches know the data by identity)."""
    inputs = _graph_inputs(model)
    if isinstance(feeds, np.ndarray):
        if len(inputs) != 1:
            names = ", ".join(f"'{v.name}'" for v in inputs)
            raise LumpError(
                f"{what} is one array, but the model has {len(inputs)} inputs ({names}): "
                "give a dict of input name -> array"
            )
        feeds = {inputs[0].name: feeds}
    elif not isinstance(feeds, Mapping):
        raise LumpError(
            f"{what} must be a dict of input name -> array (or one array for a one-input "
            f"model), not {type(feeds).__name__}"
        )
    unknown = sorted(set(feeds) - {v.name for v in inputs})
    if unknown:
        names = ", ".join(f"'{v.name}'" for v in inputs)
        raise LumpError(f"{what} has arrays for no model input: {unknown} (inputs: {names})")
    checked = _checked_feeds(dict(feeds), model, what, [])
    checked = _capped(checked, what)
    if isinstance(feeds, dict) and all(checked[k] is feeds[k] for k in checked):
        return feeds
    return checked


def _positions(feeds: Mapping[str, np.ndarray]) -> int:
    """Chain rows the feeds make at most: rows times every non-feature dimension (a float
    input's last axis is its features; an integer input's ids are all positions)."""
    most = 0
    for array in feeds.values():
        axes = array.shape[1:] if array.dtype.kind in "biu" else array.shape[1:-1]
        most = max(most, len(array) * int(np.prod(axes, dtype=np.int64)))
    return most


def _capped(feeds: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """A seeded subsample of the rows where they would make more than
    ``MAX_CALIBRATION_POSITIONS`` chain rows (10 million rows took 15 silent minutes and
    8 GB before; the fits gain little beyond a few hundred thousand rows), said in a
    warning."""
    positions = _positions(feeds)
    if positions <= MAX_CALIBRATION_POSITIONS:
        return feeds
    rows = len(next(iter(feeds.values())))
    keep = max(2, rows * MAX_CALIBRATION_POSITIONS // positions)
    chosen = np.sort(np.random.default_rng(0).choice(rows, keep, replace=False))
    logger.warning(
        "%s: %d rows (%d chain rows); a seeded %d of them are used (at most %d chain rows)",
        what, rows, positions, keep, MAX_CALIBRATION_POSITIONS,
    )  # fmt: skip
    return {name: array[chosen] for name, array in feeds.items()}


def _checked_feeds(
    arrays: dict[str, np.ndarray], model: onnx.ModelProto, source: str, notes: list[str]
) -> dict[str, np.ndarray]:
    """One feed per graph input from ``arrays`` (named by input; one unnamed array for a
    one-input model), cast to the input's dtype and refused, with a one-line
    :class:`LumpError` naming ``source``, where the numbers would be meaningless."""
    inputs = _graph_inputs(model)
    if len(inputs) == 1 and len(arrays) == 1 and inputs[0].name not in arrays:
        arrays = {inputs[0].name: next(iter(arrays.values()))}
    feeds, readers = {}, None
    for value in inputs:
        if value.name not in arrays:
            found = ", ".join(sorted(arrays)) or "none"
            raise LumpError(
                f"'{source}' has no array for model input '{value.name}' (arrays: {found})"
            )
        array = _numeric(source, value.name, arrays[value.name])
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if readers is None:
            readers = _Readers(model)
        _check_dtype(source, value.name, array, np.dtype(dtype), readers)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below
            cast = array.astype(dtype, copy=False)
        if cast.dtype.kind == "f" and not np.isfinite(cast).all():
            raise LumpError(
                f"'{source}' array '{value.name}' has values too large for {cast.dtype}"
            )
        try:
            _check_shape(source, value, cast)
        except LumpError as exc:
            if not notes:
                raise
            raise LumpError(
                f"{exc} (its unnamed first column, a pandas row index, was left out)"
            ) from None
        feeds[value.name] = cast
    rows = {len(v) for v in feeds.values()}
    if len(rows) > 1:
        raise LumpError(f"'{source}' arrays have different numbers of rows: {sorted(rows)}")
    if feeds and not _varies(feeds):
        n = len(next(iter(feeds.values())))
        what = "one row" if n == 1 else f"{n} identical rows"
        raise LumpError(
            f"'{source}' holds {what}: too little information to tell neurons apart or to "
            "measure an error; give at least two different rows (ideally hundreds)"
        )
    return feeds


@dataclass(frozen=True)
class _Draw:
    """How one seeded random input is drawn: ``kind`` is "normal" (standard normals),
    "ids" (uniform integers in [0, high)), "ones" or "zeros"."""

    shape: tuple[int, ...]
    dtype: np.dtype
    kind: str
    high: int = 0


def _random_plan(
    model: onnx.ModelProto, n: int, shapes: Mapping[str, Sequence[int]] | None
) -> tuple[dict[str, _Draw], str | None]:
    """How :func:`random_inputs` draws each input, and one line saying what it chose
    beyond the obvious (None if nothing): the dynamic dimensions it set and what the
    integer inputs hold."""
    shapes = {name: [int(d) for d in dims] for name, dims in (shapes or {}).items()}
    inputs = _graph_inputs(model)
    # A symbolic dimension that --input-shape sets for one input holds for all of them.
    named: dict[str, int] = {}
    for value in inputs:
        if value.name in shapes and value.type.HasField("tensor_type"):
            for param, size in zip(_dim_params(value), shapes[value.name], strict=False):
                if param:
                    named.setdefault(param, size)
    readers = _Readers(model)
    plan, contents = {}, []
    # (size, read from a layer's weight) -> the "input[axis]" set to it
    set_dims: dict[tuple[int, bool], list[str]] = defaultdict(list)
    chosen: dict[str, bool] = {}  # symbolic dimensions set here (not by --input-shape)
    for value in inputs:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor_type.elem_type == 0:
            raise LumpError(f"input '{value.name}' is not a typed tensor; give --calib data")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        kind, high, what = _content(value.name, dtype, readers)
        if what:
            contents.append(f"{value.name}: {what}")
        dims = _static_dims(value)
        if value.name in shapes:
            shape = shapes[value.name]
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
            params = _dim_params(value)
            for axis, dim in enumerate(dims):
                if dim is None and params[axis] in named:
                    dim = named[params[axis]]
                    if params[axis] in chosen:
                        set_dims[dim, chosen[params[axis]]].append(f"{value.name}[{axis}]")
                elif dim is None and axis == 0:
                    dim = n
                elif dim is None:
                    width = readers.width(value.name) if axis == len(dims) - 1 else None
                    dim = width or DEFAULT_DYNAMIC_DIM
                    if params[axis]:
                        named[params[axis]] = dim
                        chosen[params[axis]] = width is not None
                    set_dims[dim, width is not None].append(f"{value.name}[{axis}]")
                shape.append(dim)
        plan[value.name] = _Draw(tuple(shape), dtype, kind, high)
    parts = []
    if set_dims:
        sizes = ", ".join(
            f"{', '.join(where)} = {size}"
            + (", the width of the layer that reads it" if read else "")
            for (size, read), where in set_dims.items()
        )
        parts.append(f"dynamic dimensions {sizes} (override with --input-shape NAME:D0,D1,...)")
    parts += contents
    note = f"random check inputs: {'; '.join(parts)}" if parts else None
    return plan, note


def _content(name: str, dtype: np.dtype, readers: _Readers) -> tuple[str, int, str]:
    """(kind, high, what the note says) for one random input (see :class:`_Draw`)."""
    if dtype.kind == "f":
        return "normal", 0, ""
    if dtype.kind not in "biu":
        raise LumpError(f"input '{name}' is {dtype}; random checks need --calib data for it")
    if "mask" in name.lower():
        return "ones", 0, "all ones (a mask)"
    tables = readers.tables(name) if dtype.kind != "b" else []
    if tables:
        table, rows = min(tables, key=lambda t: t[1])
        if dtype.kind in "iu":
            rows = min(rows, int(np.iinfo(dtype).max) + 1)
        return "ids", rows, f"ids in [0, {rows}) (the rows of '{table}')"
    reader = readers.dense_reader(name)
    if reader is not None:
        raise LumpError(
            f"input '{name}' is {dtype} and {reader.op_type} '{reader.name or reader.output[0]}'"
            " reads it as numbers; random checks need --calib data for it"
        )
    return "zeros", 0, "zeros (no embedding table reads it)"


def random_input_shapes(
    model: onnx.ModelProto, n: int, shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each seeded random input :func:`random_inputs` would draw."""
    plan, _ = _random_plan(model, n, shapes)
    return {name: (draw.shape, draw.dtype) for name, draw in plan.items()}


def random_inputs_note(
    model: onnx.ModelProto, n: int, shapes: Mapping[str, Sequence[int]] | None = None
) -> str | None:
    """One line saying which dynamic dimensions :func:`random_inputs` sets and what it
    puts in integer inputs; None when every input is a float with only its batch
    dimension dynamic (it then becomes ``n``)."""
    return _random_plan(model, n, shapes)[1]


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
    """Seeded inputs for a check: standard normals for float inputs; for integer inputs,
    uniform ids in [0, rows) of the embedding table (a Gather) that reads them, ones for
    a mask (a name with "mask" in it), else zeros. A dynamic leading (batch) dimension
    becomes ``n``; other dynamic dimensions come from ``shapes`` (a symbolic name given
    for one input holds for all), else the width the first dense layer reads, else
    :data:`DEFAULT_DYNAMIC_DIM`; what was chosen is logged in one info line
    (:func:`random_inputs_note`). Refuses to draw more than :data:`MAX_RANDOM_BYTES`."""
    plan, note = _random_plan(model, n, shapes)
    needed = sum(int(np.prod(d.shape, dtype=np.float64)) * d.dtype.itemsize for d in plan.values())
    if needed > MAX_RANDOM_BYTES:
        raise LumpError(
            f"{n} random check inputs would take {needed / 2**30:.1f} GiB (limit "
            f"{MAX_RANDOM_BYTES / 2**30:.0f} GiB); lower --check or give --calib data"
        )
    if note:
        logger.info(note)
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, draw in plan.items():
        if draw.kind == "normal":
            feeds[name] = rng.standard_normal(draw.shape).astype(draw.dtype)
        elif draw.kind == "ids":
            feeds[name] = rng.integers(0, draw.high, draw.shape).astype(draw.dtype)
        else:
            feeds[name] = (np.ones if draw.kind == "ones" else np.zeros)(draw.shape, draw.dtype)
    return feeds


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
        values: Mapping[str, np.ndarray] = feeds
    else:
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
    # every sentence is in a batch: no part is left None
    return [np.concatenate(cast(list[np.ndarray], parts)).astype(np.float64) for parts in blocks]


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
