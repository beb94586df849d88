"""Tensors as a model stores them, read without loading the model whole.

A model of any size must fit in the memory of its graph, so external data stays a
reference into its file until a pass needs one tensor (read, or memory-mapped so its pages
can be handed back); every walk over "all tensors" (subgraphs, functions, sparse parts)
lives here so loading, saving and counting agree on what a model holds.
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper, serialization
from onnx.external_data_helper import uses_external_data

from onnx_lump.errors import LumpError

__all__ = [
    "EXTERNAL_DIR_KEY",
    "all_tensors",
    "copy_fields",
    "external_data_dir",
    "external_files",
    "external_info",
    "file_size",
    "is_spilled",
    "node_tensors",
    "parse_model_file",
    "read_range",
    "sparse_parts",
    "stored_parameters",
    "tensor_array",
    "tensor_nbytes",
    "tensor_view",
    "uses_external",
]

# Model-level metadata key that records, in memory only, where a lazily loaded model's
# external data lives; save_model never writes it.
EXTERNAL_DIR_KEY = "pkg.onnx_lump.external_data_dir"


def external_data_dir(model: onnx.ModelProto) -> Path | None:
    """The folder a lazily loaded model's external data lives in (None: all in memory)."""
    for prop in model.metadata_props:
        if prop.key == EXTERNAL_DIR_KEY:
            return Path(prop.value)
    return None


def uses_external(model: onnx.ModelProto) -> bool:
    """Whether any tensor of ``model`` (subgraphs and Constant nodes included) is external."""
    return any(uses_external_data(t) for t in all_tensors(model))


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
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
    info = external_info(tensor)
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
        copy.raw_data = read_range(Path(base) / info["location"], info, tensor_nbytes(tensor))
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
    info = external_info(tensor)
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


def release_pages(array: np.ndarray | None) -> bool:
    """Hand back the resident pages of a read-only memory map that ``array`` views
    (:func:`tensor_view`): the array stays valid and reads its pages again from the page
    cache when next touched, but until then they no longer count in the process's
    memory. A pass over a wide layer read through a map would otherwise keep the whole
    layer resident for as long as the map lives. Returns whether pages were handed back
    (False for anything but a read-only map: a copy-on-write map's pages may hold writes
    that the file does not)."""
    node = array
    while node is not None:
        # the mmap object behind a map (private to numpy: read where it is there)
        mapped = getattr(node, "_mmap", None) if isinstance(node, np.memmap) else None
        if isinstance(node, np.memmap) and mapped is not None:
            if node.mode != "r" or not hasattr(mmap, "MADV_DONTNEED"):
                return False
            try:
                mapped.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # closed, or a platform that refuses
                return False
            return True
        node = getattr(node, "base", None)
    return False


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


def read_range(path: Path, info: dict[str, str], nbytes: int) -> bytes:
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


def parse_model_file(path: str | os.PathLike) -> onnx.ModelProto:
    """``onnx.load(path, load_external_data=False)`` without reading the file into a
    bytes object first: protobuf parses the file's pages in place (a memory map), so a
    large model is copied once, into the ModelProto, not twice. Text formats, which onnx
    chooses by extension, go through onnx.load."""
    path = Path(path)
    if serialization.registry.get_format_from_file_extension(path.suffix) not in (
        None,
        "protobuf",
    ):
        return onnx.load(str(path), load_external_data=False)
    model = onnx.ModelProto()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            model.ParseFromString(b"")
            return model
        with (
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
            memoryview(mapped) as view,
        ):
            decoded = model.ParseFromString(view)
    if decoded is not None and decoded != size:
        raise DecodeError(f"protobuf decoding consumed {decoded} of {size} bytes")
    return model


def external_files(path: str | os.PathLike) -> list[Path]:
    """The external-data files an ONNX file refers to (empty when it cannot be read)."""
    path = Path(path)
    try:
        model = parse_model_file(path)
    except Exception:  # not a model: nothing to protect beyond the file itself
        return []
    seen: dict[str, Path] = {}
    for tensor in all_tensors(model):
        if uses_external_data(tensor):
            location = external_info(tensor).get("location", "")
            if location:
                seen.setdefault(location, path.parent / location)
    return list(seen.values())


def all_tensors(model: onnx.ModelProto, sparse: bool = True) -> Iterator[onnx.TensorProto]:
    """Every TensorProto stored in ``model``: initializers, tensor attributes and (with
    ``sparse``) the parts of sparse tensors, in the main graph, subgraphs and functions."""
    yield from _graph_tensors(model.graph, sparse)
    for function in model.functions:
        for node in function.node:
            yield from node_tensors(node, sparse)


def copy_fields(source, target, skip: tuple[str, ...] = (), numbers: range | None = None) -> None:
    """Copy every set field of a protobuf message except ``skip`` (and, with ``numbers``,
    those numbered outside it). Fields are looked up by descriptor, not ListFields, which
    would read every value, a tensor's raw_data included, only to skip it."""
    for descriptor in source.DESCRIPTOR.fields:
        name = descriptor.name
        if name in skip or (numbers is not None and descriptor.number not in numbers):
            continue
        if _is_repeated(descriptor):
            if len(getattr(source, name)):
                getattr(target, name).extend(getattr(source, name))
        elif not source.HasField(name):
            continue
        elif descriptor.message_type is not None:
            getattr(target, name).CopyFrom(getattr(source, name))
        else:
            setattr(target, name, getattr(source, name))


def _is_repeated(descriptor) -> bool:
    repeated = getattr(descriptor, "is_repeated", None)  # protobuf >= 5.28 dropped `label`
    return descriptor.label == descriptor.LABEL_REPEATED if repeated is None else repeated


def sparse_parts(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
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
        yield from node_tensors(node, sparse)


def node_tensors(node: onnx.NodeProto, sparse: bool) -> Iterator[onnx.TensorProto]:
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
