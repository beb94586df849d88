"""Disk space for what a pass over a model that lives on disk would otherwise hold in memory.

A model whose tensors stay in their external-data files (:func:`onnx_lump.graph.io.load.load_model`)
is compressed one chain at a time, and what the pass makes of a chain leaves memory before
the next chain is read, so the peak is one chain's weights, not the model:

* the rewritten tensors are appended to a tensor file and the output ModelProto refers to
  them as external data (an absolute location, which only onnx_lump reads:
  :func:`onnx_lump.graph.io.save.save_model` copies them into OUT's data file, and
  :mod:`onnx_lump.runtime` hands such a model to onnxruntime as a staged file);
* arrays handed to :meth:`Spill.park` (what the Report keeps: the ChainResult weights,
  the ODE coefficients; see :mod:`onnx_lump.pipeline.keep`) are written to an array file
  and mapped back: disk pages, not memory, until someone reads them.

Lifetimes: the tensor file lives until the process ends, since a ModelProto cannot say
when it is dropped (on Linux it is unlinked at once and named through ``/proc/self/fd``,
so nothing is left behind even after a kill); an array file is freed with the last array
mapped from it. Both go to the temporary folder (``TMPDIR``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper

from onnx_lump.graph.io.serialize import INLINE_LIMIT
from onnx_lump.graph.io.tensordata import (
    external_data_dir,
    release_pages,
    uses_external,
)

__all__ = [
    "MIN_MAPPED",
    "Spill",
]

# Arrays below this stay in memory: mapping them would cost more than it saves.
MIN_MAPPED = 1 << 16
_ALIGN = 64


class Spill:
    """The disk space of one compress call (see the module doc)."""

    def __init__(self) -> None:
        self._arrays: BinaryIO | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model: onnx.ModelProto) -> Spill | None:
        """A Spill when ``model`` keeps its data on disk, else None (a model held in
        memory is already the size of its weights: spilling would only cost time)."""
        if external_data_dir(model) is None or not uses_external(model):
            return None
        return cls()

    # -- output tensors ----------------------------------------------------------------
    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto | None:
        """``array`` as an external TensorProto in the tensor file, or None when it is
        small enough to stay inline."""
        array = np.asarray(array)
        if array.nbytes < INLINE_LIMIT or array.dtype.kind not in "biuf":
            return None
        try:
            data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        except (KeyError, TypeError, ValueError):
            return None
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        location, offset = _TENSORS.append(little)
        tensor = onnx.TensorProto(name=name, data_type=data_type, dims=list(array.shape))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (
            ("location", location),
            ("offset", str(offset)),
            ("length", str(little.nbytes)),
        ):
            tensor.external_data.add(key=key, value=value)
        return tensor

    # -- what the report keeps -----------------------------------------------------------
    def park(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Copies of ``arrays`` mapped from the array file (copy-on-write: writable, and
        writes never reach the file); small arrays are returned as they are."""
        out = list(arrays)
        large = [i for i, a in enumerate(out) if a.nbytes >= MIN_MAPPED]
        if not large:
            return out
        with self._lock:
            if self._arrays is None:
                self._arrays = tempfile.TemporaryFile(prefix="onnx_lump_arrays_")
            handle = self._arrays
            start = handle.seek(0, os.SEEK_END)
            offsets = []
            for index in large:
                position = handle.tell()
                if position % _ALIGN:
                    handle.write(b"\0" * (_ALIGN - position % _ALIGN))
                offsets.append(handle.tell() - start)
                _write_array(handle, out[index])
                release_pages(out[index])  # read from a map of the model's file
            handle.flush()
            size = handle.tell() - start
            whole = np.memmap(handle, dtype=np.uint8, mode="c", offset=start, shape=(size,))
        for index, offset in zip(large, offsets, strict=True):
            array = out[index]
            piece = whole[offset : offset + array.nbytes]
            out[index] = piece.view(array.dtype).reshape(array.shape)
        return out

    def close(self) -> None:
        """Close the array file (the arrays mapped from it keep its pages)."""
        with self._lock:
            if self._arrays is not None:
                self._arrays.close()
                self._arrays = None


def _write_array(handle, array: np.ndarray) -> None:
    """Append ``array``'s bytes (C order) without a copy of the whole array."""
    if array.flags.c_contiguous:
        handle.write(array.data.cast("B"))
        return
    rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    step = max(1, (1 << 22) // max(rows[0].nbytes, 1))
    for start in range(0, rows.shape[0], step):
        handle.write(np.ascontiguousarray(rows[start : start + step]).tobytes())


class _TensorFile:
    """The process's append-only file of spilled output tensors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handle: BinaryIO | None = None
        self._location = ""
        self._folder: Path | None = None

    def append(self, array: np.ndarray) -> tuple[str, int]:
        with self._lock:
            handle = self._handle if self._handle is not None else self._open()
            offset = handle.seek(0, os.SEEK_END)
            if offset % _ALIGN:
                handle.write(b"\0" * (_ALIGN - offset % _ALIGN))
                offset = handle.tell()
            _write_array(handle, array)
            handle.flush()
            return self._location, offset

    def _open(self) -> BinaryIO:
        # An unlinked file named by its descriptor: freed when the process ends, however
        # it ends. The descriptor is never closed before, so the name never changes hands.
        handle = tempfile.TemporaryFile(prefix="onnx_lump_tensors_")
        location = f"/proc/self/fd/{handle.fileno()}"
        if os.path.exists(location) and os.path.isabs(location):
            self._handle, self._location = handle, location
            return handle
        handle.close()
        self._folder = Path(tempfile.mkdtemp(prefix="onnx_lump_"))
        atexit.register(shutil.rmtree, self._folder, True)
        path = self._folder / "tensors.data"
        self._handle = open(path, "w+b")  # open for the process's lifetime
        self._location = str(path)
        return self._handle


_TENSORS = _TensorFile()
