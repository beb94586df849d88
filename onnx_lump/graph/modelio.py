"""Loading and saving models without harming anything the user owns.

* Loading keeps external data on disk: tensors stay references into the input's data
  files and are read one at a time when the pass needs them (:func:`tensor_array`), so a
  model of any size loads in the memory of its graph.
* Every output path (the model, its ``.data`` file, the side files) is checked against
  every input path and against the other outputs before any work starts
  (:func:`check_paths`), through symlinks and hard links.
* Saving is atomic and independent of the working directory: the model and its data file
  are written into a hidden staging folder beside the destination, can be checked there
  (:func:`stage_model`), and only then renamed into place. A SIGTERM while staging removes
  the folder before the process ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from onnx_lump.errors import LumpError

__all__ = [
    "EXTERNAL_DIR_KEY",
    "INLINE_LIMIT",
    "LoadedModel",
    "StagedModel",
    "all_tensors",
    "check_model",
    "check_model_file",
    "check_output_path",
    "check_paths",
    "data_file_for",
    "external_data_dir",
    "external_files",
    "file_size",
    "is_spilled",
    "load_model",
    "save_model",
    "stage_model",
    "stored_parameters",
    "tensor_array",
    "tensor_nbytes",
    "tensor_view",
    "uses_external",
]

logger = logging.getLogger(__name__)

# Tensors smaller than this stay inside the .onnx file, as onnx.save_model's default does:
# shape tensors of a dynamo export must stay inline for onnxruntime to load the model.
INLINE_LIMIT = 1024
# A serialized protobuf cannot pass 2 GiB; beyond this the output must use external data.
PROTO_LIMIT = 2**31 - 2**20
# Large tensors start on an allocation boundary so onnxruntime can map them (onnx's values).
_ALIGN_THRESHOLD = 1 << 20
_ALIGNMENT = 1 << 16
_COPY_CHUNK = 1 << 24
# Model-level metadata key that records, in memory only, where a lazily loaded model's
# external data lives; save_model never writes it.
EXTERNAL_DIR_KEY = "pkg.onnx_lump.external_data_dir"


@dataclass
class LoadedModel:
    model: onnx.ModelProto
    path: Path
    external_data: bool  # the input kept its tensors in a separate file; so will the output


# -- reading -------------------------------------------------------------------------


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read an ONNX file or raise a one-line LumpError; external data stays on disk.

    The returned model refers to its data files by location; :func:`tensor_array`,
    onnxruntime (through :mod:`onnx_lump.runtime`) and :func:`save_model` read them.
    """
    path = Path(path)
    if not path.is_file():
        raise LumpError(f"input model '{path}' does not exist or is not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types for garbage
        raise LumpError(f"'{path}' is not an ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node:
        raise LumpError(f"'{path}' is not an ONNX model with a graph (no nodes found)")
    base = path.resolve().parent
    external = False
    for tensor in all_tensors(model):
        if uses_external_data(tensor):
            external = True
            _check_external(tensor, base, path)
    if external:
        _set_prop(model, EXTERNAL_DIR_KEY, str(base))
    return LoadedModel(model, path, external)


def _check_external(tensor: onnx.TensorProto, base: Path, model_path: Path) -> None:
    info = _external_info(tensor)
    location = info.get("location", "")
    target = (base / location).resolve()
    if not location or Path(location).is_absolute() or base not in target.parents:
        raise LumpError(
            f"external data of tensor '{tensor.name}' in '{model_path}' points outside the "
            f"model's folder ('{location}')"
        )
    if not target.is_file():
        raise LumpError(
            f"external data file '{location}' of '{model_path}' is missing "
            f"(tensor '{tensor.name}'); keep it next to the model"
        )
    end = int(info.get("offset", 0)) + tensor_nbytes(tensor)
    if target.stat().st_size < end:
        raise LumpError(
            f"external data file '{location}' of '{model_path}' is too short for tensor "
            f"'{tensor.name}' ({target.stat().st_size} bytes, needs {end})"
        )


def external_data_dir(model: onnx.ModelProto) -> Path | None:
    """The folder a lazily loaded model's external data lives in (None: all in memory)."""
    for prop in model.metadata_props:
        if prop.key == EXTERNAL_DIR_KEY:
            return Path(prop.value)
    return None


def uses_external(model: onnx.ModelProto) -> bool:
    """Whether any tensor of ``model`` (subgraphs and Constant nodes included) is external."""
    return any(uses_external_data(t) for t in all_tensors(model))


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def is_spilled(tensor: onnx.TensorProto) -> bool:
    """Whether ``tensor`` refers to a spill file (an absolute external-data
    location, which onnx_lump writes and never saves)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return False
    location = next((e.value for e in tensor.external_data if e.key == "location"), "")
    return os.path.isabs(location)


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of the tensor's data, from its dims and type (never reads the data)."""
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * itemsize


def tensor_array(tensor: onnx.TensorProto, base: str | os.PathLike | None = None) -> np.ndarray:
    """The values of ``tensor``; external data is read from ``base`` (the model's folder)
    into a fresh array, so memory is returned when the array is dropped."""
    if not uses_external_data(tensor):
        return numpy_helper.to_array(tensor)
    info = _external_info(tensor)
    if base is None:
        if not os.path.isabs(info.get("location", "")):  # absolute: an onnx_lump spill
            raise LumpError(
                f"tensor '{tensor.name}' is stored externally and its folder is unknown"
            )
        base = "/"
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    plain = tensor.data_type not in (
        onnx.TensorProto.INT4,
        onnx.TensorProto.UINT4,
        onnx.TensorProto.BFLOAT16,
    ) and not str(dtype).startswith("float8")
    if not plain:  # packed or non-native types: let onnx decode them from raw bytes
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        del copy.external_data[:]
        copy.data_location = onnx.TensorProto.DEFAULT
        copy.raw_data = _read_range(Path(base) / info["location"], info, tensor_nbytes(tensor))
        return numpy_helper.to_array(copy)
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    array = np.fromfile(
        Path(base) / info["location"],
        dtype=dtype.newbyteorder("<"),
        count=count,
        offset=int(info.get("offset", 0)),
    )
    if array.size != count:
        raise LumpError(f"external data of tensor '{tensor.name}' is truncated")
    return array.astype(dtype, copy=False).reshape(tuple(tensor.dims))


def tensor_view(
    tensor: onnx.TensorProto, base: str | os.PathLike | None = None, shared: bool = False
) -> np.ndarray:
    """The values of ``tensor`` without reading them into memory where that is possible:
    external data of a plain little-endian type is memory-mapped read-only, so its pages
    are read when touched and handed back when the array is dropped. Other tensors come
    as :func:`tensor_array` gives them.

    With ``shared``, the view is a slice of one mapping of the whole data file (kept while
    any such view lives): many long-lived views then cost one file descriptor, but pages
    touched through any of them stay resident until all are dropped.
    """
    if not uses_external_data(tensor) or not tensor.dims:
        return tensor_array(tensor, base)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    count = int(np.prod(tensor.dims, dtype=np.int64))
    if count == 0 or dtype.kind not in "biuf" or tensor.data_type in _PACKED:
        return tensor_array(tensor, base)
    info = _external_info(tensor)
    location = info.get("location", "")
    if base is None and not os.path.isabs(location):
        return tensor_array(tensor, None)  # raises: the folder is unknown
    path = Path(base or "/") / location
    offset = int(info.get("offset", 0))
    nbytes = count * dtype.itemsize
    stat = path.stat()
    if stat.st_size < offset + nbytes:
        raise LumpError(f"external data of tensor '{tensor.name}' is truncated")
    little = dtype.newbyteorder("<")
    if not shared:
        return np.memmap(path, dtype=little, mode="r", offset=offset, shape=tuple(tensor.dims))
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    whole = _SHARED_MAPS.get(key)
    if whole is None:
        whole = np.memmap(path, dtype=np.uint8, mode="r")
        _SHARED_MAPS[key] = whole
    return whole[offset : offset + nbytes].view(little).reshape(tuple(tensor.dims))


# One read-only mapping per data file for the shared views, alive while a view is.
_SHARED_MAPS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

# Types numpy has no plain layout for (packed nibbles, bfloat16 and float8 through onnx).
_PACKED = (
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.FLOAT8E4M3FN,
    onnx.TensorProto.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ,
)


def _read_range(path: Path, info: dict[str, str], nbytes: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(int(info.get("offset", 0)))
        return handle.read(nbytes)


def stored_parameters(model: onnx.ModelProto) -> int:
    """Elements of every floating-point tensor the file stores: initializers (sparse ones by
    their stored values) and Constant-node tensors, subgraphs included; never reads data."""
    floats = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    }
    total = 0
    for tensor in all_tensors(model):
        if tensor.data_type in floats:
            total += int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    return total


def file_size(path: str | os.PathLike) -> int:
    """Bytes of the .onnx file plus every external-data file it refers to."""
    path = Path(path)
    return path.stat().st_size + sum(p.stat().st_size for p in external_files(path) if p.exists())


def external_files(path: str | os.PathLike) -> list[Path]:
    """The external-data files an ONNX file refers to (empty when it cannot be read)."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model: nothing to protect beyond the file itself
        return []
    seen: dict[str, Path] = {}
    for tensor in all_tensors(model):
        if uses_external_data(tensor):
            location = _external_info(tensor).get("location", "")
            if location:
                seen.setdefault(location, path.parent / location)
    return list(seen.values())


def all_tensors(model: onnx.ModelProto, sparse: bool = True) -> Iterator[onnx.TensorProto]:
    """Every TensorProto stored in ``model``: initializers, tensor attributes and (with
    ``sparse``) the parts of sparse tensors, in the main graph, subgraphs and functions."""
    yield from _graph_tensors(model.graph, sparse)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node, sparse)


def _copy_fields(source, target, skip: tuple[str, ...]) -> None:
    """Copy every set field of a protobuf message except ``skip``."""
    for descriptor, value in source.ListFields():
        if descriptor.name in skip:
            continue
        repeated = getattr(descriptor, "is_repeated", None)
        if repeated is None:
            repeated = descriptor.label == descriptor.LABEL_REPEATED
        if repeated:
            getattr(target, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def _sparse_parts(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    def walk(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        for item in graph.sparse_initializer:
            yield item.values
            yield item.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    yield from walk(sub)

    yield from walk(model.graph)


def _graph_tensors(graph: onnx.GraphProto, sparse: bool) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    if sparse:
        for item in graph.sparse_initializer:
            yield item.values
            yield item.indices
    for node in graph.node:
        yield from _node_tensors(node, sparse)


def _node_tensors(node: onnx.NodeProto, sparse: bool) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if sparse and attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g, sparse)
        for sub in attr.graphs:
            yield from _graph_tensors(sub, sparse)


# -- paths ---------------------------------------------------------------------------


def data_file_for(output: str | os.PathLike) -> Path:
    """The external-data file :func:`save_model` writes beside ``output``."""
    output = Path(output)
    return output.with_name(f"{output.name}.data")


def _identity(path: Path) -> tuple:
    """What makes two paths the same file: (device, inode) when it exists (hard links and
    symlinks included), else the resolved path."""
    try:
        info = os.stat(path)
        return ("inode", info.st_dev, info.st_ino)
    except OSError:
        return ("path", str(path.resolve()))


def check_paths(
    inputs: Sequence[str | os.PathLike | None],
    outputs: Sequence[str | os.PathLike | None],
    *,
    models: Sequence[str | os.PathLike] = (),
) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other.

    ``inputs`` are files read (the model, --calib, --val); the external-data files of
    every ``.onnx`` among them are added. ``outputs`` are files written (None entries, in
    both lists, are skipped); ``models`` lists the outputs that are models, whose ``.data``
    file is added.
    Also refuses an output that is a folder or whose folder is missing or read-only.
    """
    read: list[tuple[Path, str]] = []
    for item in inputs:
        if item is None:
            continue
        path = Path(item)
        read.append((path, f"input '{path}'"))
        if path.suffix.lower() == ".onnx" and path.is_file():
            read += [(p, f"external data '{p}' of '{path}'") for p in external_files(path)]
    written: list[tuple[Path, str]] = []
    model_outputs = {_identity(Path(m)) for m in models}
    for item in outputs:
        if item is None:
            continue
        path = Path(item)
        written.append((path, f"'{path}'"))
        if _identity(path) in model_outputs:
            data = data_file_for(path)
            written.append((data, f"'{data}' (the external-data file of '{path}')"))
    taken = {}
    for path, label in read:
        taken.setdefault(_identity(path), label)
    for path, label in written:
        _check_writable(path)
        key = _identity(path)
        if key in taken:
            raise LumpError(
                f"output {label} is the same file as {taken[key]}; choose another output path"
            )
        taken[key] = f"output {label}"


def _check_writable(output: Path) -> None:
    folder = output.resolve().parent
    if not folder.is_dir():
        raise LumpError(f"output folder '{folder}' does not exist or is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LumpError(f"output folder '{folder}' is not writable")
    if output.is_dir():
        raise LumpError(f"output '{output}' is a folder; give a file name")


def check_output_path(
    output: str | os.PathLike, input_path: str | os.PathLike | None = None
) -> Path:
    """One model output against one input model (see :func:`check_paths`)."""
    output = Path(output)
    check_paths([] if input_path is None else [input_path], [output], models=[output])
    return output


# -- writing -------------------------------------------------------------------------


class StagedModel:
    """A model written into a hidden folder beside its destination; :meth:`commit` moves
    it into place, leaving the context without commit removes it."""

    def __init__(self, output: Path, staging: Path, external: bool) -> None:
        self.output = output
        self.staging = staging
        self.path = staging / output.name
        self.data_path = staging / data_file_for(output).name if external else None
        self.committed = False

    def commit(self) -> None:
        try:
            if self.data_path is not None and self.data_path.exists():
                os.replace(self.data_path, data_file_for(self.output))
            os.replace(self.path, self.output)
        except OSError as exc:
            raise LumpError(f"cannot write '{self.output}': {exc.strerror or exc}") from exc
        self.committed = True


class _Terminated(BaseException):
    """Raised by the SIGTERM handler inside the staging window."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """While staging, turn SIGTERM/SIGHUP into an exception so ``finally`` clean-ups run,
    then end the process the way the signal would have."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    except _Terminated as stop:
        for sig, old in previous.items():
            signal.signal(sig, old)
        previous.clear()
        signal.raise_signal(stop.signum)  # default action: the process ends here
        raise SystemExit(128 + stop.signum) from None  # a handler that returned
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def stage_model(
    model: onnx.ModelProto, output: str | os.PathLike, external_data: bool = False
) -> Iterator[StagedModel]:
    """Write ``model`` into a staging folder beside ``output``; yields a StagedModel whose
    ``path`` can be loaded and checked, and whose ``commit()`` moves it into place.

    External data is used when ``external_data`` is set, when ``model`` refers to external
    data, or when the output would pass 2 GiB; tensors under :data:`INLINE_LIMIT` bytes
    stay inline. Nothing depends on the working directory.
    """
    output = Path(output)
    _check_writable(output)
    external = external_data or uses_external(model) or _estimated_size(model) > PROTO_LIMIT
    with _terminate_cleanly():
        # The folder is made inside the try that removes it. Blocking signals around
        # mkdtemp is not enough: the mask is per thread, onnxruntime's threads still take
        # the signal, and the handler then runs in this thread at any bytecode.
        blocked = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
        can_block = threading.current_thread() is threading.main_thread()
        staging: Path | None = output.resolve().parent / f".{output.name}.{secrets.token_hex(6)}"
        try:
            try:
                staging.mkdir(mode=0o700)
            except OSError as exc:
                staging = None  # not made, or not ours (a name collision): never remove it
                raise LumpError(f"cannot write '{output}': {exc.strerror or exc}") from None
            staged = StagedModel(output, staging, external)
            try:
                _write(model, staged)
            except OSError as exc:
                raise LumpError(f"cannot write '{output}': {exc.strerror or exc}") from exc
            yield staged
        finally:
            if can_block:  # the clean-up itself must not be cut short by a signal
                signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
            try:
                if staging is not None:
                    shutil.rmtree(staging, ignore_errors=True)
            finally:
                if can_block:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


def save_model(
    model: onnx.ModelProto, output: str | os.PathLike, external_data: bool = False
) -> None:
    """Write ``model`` so that ``output`` is either the old file or the complete new one
    (see :func:`stage_model`)."""
    with stage_model(model, output, external_data) as staged:
        staged.commit()


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker on an in-memory model of any size, external data references included:
    it checks a copy whose external and large tensors are empty placeholders (the
    structure is what can be wrong; the data were checked when they were written)."""

    def placeholder(tensor: onnx.TensorProto) -> None:
        for name in ("raw_data", "float_data", "double_data", "int32_data", "int64_data"):
            tensor.ClearField(name)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.dims[:]
        tensor.dims.append(0)

    def big(tensor: onnx.TensorProto) -> bool:
        return uses_external_data(tensor) or tensor_nbytes(tensor) > _ALIGN_THRESHOLD

    probe = onnx.ModelProto()
    _copy_fields(model, probe, skip=("graph",))
    _copy_fields(model.graph, probe.graph, skip=("initializer",))
    for tensor in model.graph.initializer:  # large data is never copied
        copy = probe.graph.initializer.add()
        if big(tensor):
            copy.name, copy.data_type, copy.doc_string = tensor.name, tensor.data_type, ""
            placeholder(copy)
        else:
            copy.CopyFrom(tensor)
    for tensor in all_tensors(probe, sparse=False):
        if big(tensor):
            placeholder(tensor)
    onnx.checker.check_model(probe)


def check_model_file(path: str | os.PathLike) -> None:
    """onnx.checker on the written file's path (works for models over 2 GiB)."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LumpError(f"the written model fails onnx.checker: {first}") from exc


def _estimated_size(model: onnx.ModelProto) -> int:
    """Bytes the model would take serialized inline, without serializing it."""
    inline = 0
    for tensor in all_tensors(model):
        if uses_external_data(tensor):
            inline += tensor_nbytes(tensor)
    try:
        return inline + model.ByteSize()
    except Exception:  # ByteSize itself overflows on some protobuf builds
        return PROTO_LIMIT + 1


def _set_prop(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _strip_private(model: onnx.ModelProto) -> None:
    kept = [p for p in model.metadata_props if p.key != EXTERNAL_DIR_KEY]
    if len(kept) != len(model.metadata_props):
        kept = [onnx.StringStringEntryProto(key=p.key, value=p.value) for p in kept]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)


def _write(model: onnx.ModelProto, staged: StagedModel) -> None:
    source = external_data_dir(model)
    if staged.data_path is None:
        if uses_external(model):  # unreachable by stage_model's rule; kept as a guard
            raise LumpError("a model with external data must be written with external data")
        out = onnx.ModelProto()
        out.CopyFrom(model)
        _strip_private(out)
        with open(staged.path, "wb") as handle:
            handle.write(out.SerializeToString())
        return
    # Copy the model tensor by tensor: large inline tensors are moved into the data file
    # as they are copied, external ones are streamed from the input's data file.
    location = staged.data_path.name
    out = onnx.ModelProto()
    with open(staged.data_path, "wb", buffering=0) as data:
        _copy_fields(model, out, skip=("graph",))
        _copy_fields(model.graph, out.graph, skip=("initializer", "node"))
        for tensor in model.graph.initializer:  # one tensor at a time: memory stays flat
            copy = out.graph.initializer.add()
            _copy_fields(tensor, copy, skip=_DATA_FIELDS)  # data is never copied in memory
            _externalize_from(tensor, copy, data, location, source)
        for node in model.graph.node:
            copy = out.graph.node.add()
            copy.CopyFrom(node)
            for tensor in _node_tensors(copy, sparse=False):
                _externalize(tensor, data, location, source)
        for function in out.functions:
            for node in function.node:
                for tensor in _node_tensors(node, sparse=False):
                    _externalize(tensor, data, location, source)
    _strip_private(out)
    for tensor in _sparse_parts(out):
        _inline(tensor, source)  # sparse tensors stay inline, where every reader looks
    if staged.data_path.stat().st_size == 0:
        staged.data_path.unlink()
        staged.data_path = None
    with open(staged.path, "wb") as handle:
        handle.write(out.SerializeToString())


def _inline(tensor: onnx.TensorProto, source: Path | None) -> None:
    if not uses_external_data(tensor):
        return
    if source is None:
        raise LumpError(f"tensor '{tensor.name}' is stored externally and its folder is unknown")
    info = _external_info(tensor)
    tensor.raw_data = _read_range(source / info["location"], info, tensor_nbytes(tensor))
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


_DATA_FIELDS = (
    "raw_data",
    "float_data",
    "double_data",
    "int32_data",
    "int64_data",
    "uint64_data",
    "string_data",
)


def _externalize_from(
    tensor: onnx.TensorProto, copy: onnx.TensorProto, data, location: str, source: Path | None
) -> None:
    """Give ``copy`` (``tensor`` without its data fields) its data: inline when small,
    else appended to ``data`` straight from ``tensor`` or its external file."""
    if uses_external_data(tensor) or tensor.data_type == onnx.TensorProto.STRING:
        copy.string_data.extend(tensor.string_data)  # external tensors hold no data fields
        _externalize(copy, data, location, source)
        return
    nbytes = tensor_nbytes(tensor)
    if nbytes < INLINE_LIMIT:
        for descriptor, value in tensor.ListFields():
            if descriptor.name in _DATA_FIELDS:
                field = getattr(copy, descriptor.name)
                if isinstance(value, bytes):
                    setattr(copy, descriptor.name, value)
                else:
                    field.extend(value)
        return
    offset = _pad(data, nbytes)
    data.write(tensor.raw_data if tensor.HasField("raw_data") else _raw_bytes(tensor))
    del copy.external_data[:]
    copy.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(nbytes))):
        copy.external_data.add(key=key, value=value)


def _externalize(tensor: onnx.TensorProto, data, location: str, source: Path | None) -> None:
    nbytes = tensor_nbytes(tensor)
    if tensor.data_type == onnx.TensorProto.STRING:
        return  # strings cannot be stored externally
    if uses_external_data(tensor):
        info = _external_info(tensor)
        if source is None:
            raise LumpError(f"tensor '{tensor.name}' is external and its folder is unknown")
        if nbytes < INLINE_LIMIT:
            _inline(tensor, source)
            return
        offset = _pad(data, nbytes)
        _copy_range(source / info["location"], int(info.get("offset", 0)), nbytes, data)
    else:
        if nbytes < INLINE_LIMIT:
            return
        raw = tensor.raw_data if tensor.HasField("raw_data") else _raw_bytes(tensor)
        offset = _pad(data, nbytes)
        data.write(raw)
        del raw
        for field in (
            "raw_data",
            "float_data",
            "double_data",
            "int32_data",
            "int64_data",
            "uint64_data",
        ):
            tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(nbytes))):
        tensor.external_data.add(key=key, value=value)


def _copy_range(path: Path, start: int, nbytes: int, data) -> None:
    """Append bytes [start, start + nbytes) of ``path`` to ``data`` without holding them."""
    with open(path, "rb", buffering=0) as handle:
        left = nbytes
        if hasattr(os, "copy_file_range"):
            try:
                while left:
                    done = os.copy_file_range(handle.fileno(), data.fileno(), left, start)
                    if done == 0:
                        break
                    start += done
                    left -= done
            except OSError:  # e.g. across file systems on old kernels: copy by hand
                pass
        handle.seek(start)
        while left:
            chunk = handle.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise LumpError(f"external data file '{path.name}' is truncated")
            data.write(chunk)
            left -= len(chunk)


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    array = numpy_helper.to_array(tensor)
    return numpy_helper.from_array(array, tensor.name).raw_data


def _pad(data, nbytes: int) -> int:
    offset = data.tell()
    if nbytes >= _ALIGN_THRESHOLD and offset % _ALIGNMENT:
        gap = _ALIGNMENT - offset % _ALIGNMENT
        data.write(b"\0" * gap)
        offset += gap
    return offset
