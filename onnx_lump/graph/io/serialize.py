"""Writing a model's bytes into the staging folder (:mod:`onnx_lump.graph.io.save`).

Inline, large tensors are written from their own bytes between the serialized fields
around them, giving the bytes ``SerializeToString`` gives without building the file in
memory; with external data, the model is copied tensor by tensor and each large tensor's
data is appended to the data file (from memory or straight from the input's data file),
so memory stays flat whatever the model's size.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import onnx
from google.protobuf.message import EncodeError
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from onnx_lump.errors import LumpError
from onnx_lump.graph.io.tensordata import (
    EXTERNAL_DIR_KEY,
    copy_fields,
    external_data_dir,
    external_info,
    node_tensors,
    read_range,
    sparse_parts,
    tensor_nbytes,
    uses_external,
)

try:
    from google.protobuf.unknown_fields import UnknownFieldSet as _UnknownFieldSet
except ImportError:  # protobuf < 4.22: every model is serialized whole
    _UnknownFieldSet = None

__all__ = [
    "ALIGN_THRESHOLD",
    "INLINE_LIMIT",
    "PROTO_LIMIT",
    "STREAM_MIN",
    "externalize_from",
    "write_model",
]

# Tensors smaller than this stay inside the .onnx file, as onnx.save_model's default does:
# shape tensors of a dynamo export must stay inline for onnxruntime to load the model.
INLINE_LIMIT = 1024
# A serialized protobuf cannot pass 2 GiB; beyond this the output must use external data.
PROTO_LIMIT = 2**31 - 2**20
# Large tensors start on an allocation boundary so onnxruntime can map them (onnx's values).
ALIGN_THRESHOLD = 1 << 20
_ALIGNMENT = 1 << 16
_COPY_CHUNK = 1 << 24


# Inline tensors at least this large are written from their own bytes, not serialized.
STREAM_MIN = 1 << 20


class _Raw:
    """A place in the written model for the raw bytes of ``tensor`` (``nbytes`` long)."""

    def __init__(self, tensor: onnx.TensorProto, nbytes: int) -> None:
        self.tensor, self.nbytes = tensor, nbytes

    def __len__(self) -> int:
        return self.nbytes


class _Replan(Exception):
    """A tensor's raw bytes were not as long as its dims say: serialize the model whole."""


def _inline_pieces(model: onnx.ModelProto) -> list[bytes | _Raw] | None:
    """The model as protobuf writes it, without the in-memory metadata key, as pieces to
    write one after the other; None when it would pass :data:`PROTO_LIMIT` (then it must
    go external).

    ``SerializeToString`` builds the whole file in memory, through several copies of
    every weight; here each large initializer's bytes are read once and written, and
    everything else is serialized in small parts. A message is the concatenation of its
    fields, so writing the fields before a tensor's ``raw_data`` (field 9), its bytes and
    the fields after it, and likewise around the graph's initializers (field 5) and the
    model's graph (field 7), gives the bytes ``SerializeToString`` gives.
    """
    graph = model.graph
    large = [
        tensor.HasField("raw_data") and tensor_nbytes(tensor) >= STREAM_MIN
        for tensor in graph.initializer
    ]
    if not any(large) or _has_unknown(model, graph):
        return _serialized_whole(model)
    body: list[bytes | _Raw] = [_fields(graph, 0, 5)]
    for tensor, streamed in zip(graph.initializer, large, strict=True):
        if streamed and _has_unknown(tensor):
            return _serialized_whole(model)
        if not streamed:
            encoded = tensor.SerializeToString()
            body += [_key(5, len(encoded)), encoded]
            continue
        nbytes = tensor_nbytes(tensor)
        parts: list[bytes | _Raw] = [
            _fields(tensor, 0, 9),
            _key(9, nbytes),
            _Raw(tensor, nbytes),
            _fields(tensor, 10),
        ]
        body += [_key(5, sum(len(part) for part in parts)), *parts]
    body.append(_fields(graph, 6))
    size = sum(len(part) for part in body)
    pieces = [_fields(model, 0, 7), _key(7, size), *body, _fields(model, 8, private=True)]
    if sum(len(piece) for piece in pieces) > PROTO_LIMIT:
        return None
    return pieces


def _serialized_whole(model: onnx.ModelProto) -> list[bytes | _Raw] | None:
    try:
        if external_data_dir(model) is None:
            pieces = [model.SerializeToString()]
        else:  # without the key, and without a copy of the graph
            graph = model.graph.SerializeToString()
            pieces = [_fields(model, 0, 7), _key(7, len(graph)), graph]
            pieces.append(_fields(model, 8, private=True))
    except EncodeError:  # upb refuses to serialize past 2 GiB
        return None
    if sum(len(piece) for piece in pieces) > PROTO_LIMIT:
        return None
    return pieces


def _write_pieces(handle, pieces: list[bytes | _Raw]) -> None:
    with _Writer(handle) as out:
        for piece in pieces:
            if not isinstance(piece, _Raw):
                out.write(piece)
                continue
            raw = piece.tensor.raw_data
            if len(raw) != piece.nbytes:
                raise _Replan
            out.write(raw)
            del raw


class _Writer:
    """Writes what it is given, in order, on a thread of its own: the write of one tensor
    (a system call, which releases the GIL) overlaps reading the next tensor's bytes out
    of the proto (which cannot). At most two pieces wait, so memory stays flat."""

    _DONE = object()

    def __init__(self, handle) -> None:
        self._handle = handle
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="onnx_lump-save", daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def _run(self) -> None:
        while (data := self._queue.get()) is not self._DONE:
            if self._error is None:
                try:
                    self._handle.write(data)
                except BaseException as exc:  # raised in the caller's thread
                    self._error = exc
            del data

    def __exit__(self, *exc_info) -> None:
        self._queue.put(self._DONE)
        self._thread.join()
        if self._error is not None and exc_info[0] is None:
            raise self._error


def _fields(message, first: int, end: int = 1 << 29, private: bool = False) -> bytes:
    """The serialized fields of ``message`` numbered ``first`` to ``end`` (excluded), in
    the order protobuf writes them; ``private``: without the in-memory metadata key."""
    part = type(message)()
    copy_fields(message, part, numbers=range(first, end))
    if private:
        _strip_private(part)
    return part.SerializeToString()


def _has_unknown(*messages) -> bool:
    """Whether any message holds fields this onnx does not know (ListFields skips them,
    so only a whole serialization keeps them)."""
    if _UnknownFieldSet is None:
        return True
    return any(len(_UnknownFieldSet(message)) for message in messages)


def _key(number: int, length: int) -> bytes:
    """The key of length-delimited field ``number`` followed by ``length``."""
    return _varint(number << 3 | 2) + _varint(length)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _strip_private(model: onnx.ModelProto) -> None:
    kept = [p for p in model.metadata_props if p.key != EXTERNAL_DIR_KEY]
    if len(kept) != len(model.metadata_props):
        kept = [onnx.StringStringEntryProto(key=p.key, value=p.value) for p in kept]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)


def write_model(
    model: onnx.ModelProto, path: Path, data_path: Path | None, overflow_data_path: Path
) -> Path | None:
    """Write ``model`` to ``path``, its large tensors into ``data_path`` when one is given;
    when none is and the graph's own size passes the limit, into ``overflow_data_path``.
    Returns the data file written, or None (every tensor inline)."""
    source = external_data_dir(model)
    if data_path is None:
        if uses_external(model):  # unreachable by stage_model's rule; kept as a guard
            raise LumpError("a model with external data must be written with external data")
        pieces = _inline_pieces(model)
        if pieces is not None:
            with open(path, "wb") as handle:
                try:
                    _write_pieces(handle, pieces)
                except _Replan:  # a malformed tensor: let protobuf write what it holds
                    handle.seek(0)
                    handle.truncate()
                    pieces = _serialized_whole(model)
                    if pieces is not None:
                        _write_pieces(handle, pieces)
            if pieces is not None:
                return None
        # The graph's own size took it past the limit: its tensors go external after all.
        data_path = overflow_data_path
    # Copy the model tensor by tensor: large inline tensors are moved into the data file
    # as they are copied, external ones are streamed from the input's data file.
    location = data_path.name
    out = onnx.ModelProto()
    with open(data_path, "wb", buffering=0) as data:
        copy_fields(model, out, skip=("graph",))
        copy_fields(model.graph, out.graph, skip=("initializer", "node"))
        for tensor in model.graph.initializer:  # one tensor at a time: memory stays flat
            copy = out.graph.initializer.add()
            copy_fields(tensor, copy, skip=_DATA_FIELDS)  # data is never copied in memory
            externalize_from(tensor, copy, data, location, source)
        for node in model.graph.node:
            copy = out.graph.node.add()
            copy.CopyFrom(node)
            for tensor in node_tensors(copy, sparse=False):
                _externalize(tensor, data, location, source)
        for function in out.functions:
            for node in function.node:
                for tensor in node_tensors(node, sparse=False):
                    _externalize(tensor, data, location, source)
    _strip_private(out)
    for tensor in sparse_parts(out):
        _inline(tensor, source)  # sparse tensors stay inline, where every reader looks
    if data_path.stat().st_size == 0:
        data_path.unlink()
        data_path = None
    with open(path, "wb") as handle:
        handle.write(out.SerializeToString())
    return data_path


def _inline(tensor: onnx.TensorProto, source: Path | None) -> None:
    if not uses_external_data(tensor):
        return
    if source is None:
        raise LumpError(f"tensor '{tensor.name}' is stored externally and its folder is unknown")
    info = external_info(tensor)
    tensor.raw_data = read_range(source / info["location"], info, tensor_nbytes(tensor))
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


def externalize_from(
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
        info = external_info(tensor)
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
        for field in _DATA_FIELDS:  # (a string tensor returned above)
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
    if nbytes >= ALIGN_THRESHOLD and offset % _ALIGNMENT:
        gap = _ALIGNMENT - offset % _ALIGNMENT
        data.write(b"\0" * gap)
        offset += gap
    return offset
