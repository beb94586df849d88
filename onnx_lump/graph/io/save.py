"""Saving atomically, so the output is either the old file or the complete new one.

The model and its data file are written into a hidden staging folder beside the
destination, independent of the working directory, can be checked there
(:func:`stage_model`), and only then renamed into place. A SIGTERM while staging removes
the folder before the process ends. Large tensors are streamed tensor by tensor
(:mod:`onnx_lump.graph.io.serialize`), so memory stays flat whatever the model's size.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

from onnx_lump.errors import LumpError
from onnx_lump.graph.io.paths import check_writable, data_file_for
from onnx_lump.graph.io.serialize import ALIGN_THRESHOLD, PROTO_LIMIT, write_model
from onnx_lump.graph.io.tensordata import all_tensors, copy_fields, tensor_nbytes, uses_external

__all__ = [
    "StagedModel",
    "check_model",
    "check_model_file",
    "save_model",
    "stage_model",
]


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
    data, or when the output would pass 2 GiB; tensors under
    :data:`~onnx_lump.graph.io.serialize.INLINE_LIMIT` bytes stay inline. Nothing depends on
    the working directory.
    """
    output = Path(output)
    check_writable(output)
    external = external_data or uses_external(model) or _data_bytes(model) > PROTO_LIMIT
    with _terminate_cleanly():
        # The folder is made inside the try that removes it. Blocking signals around
        # mkdtemp is not enough: the mask is per thread, onnxruntime's threads still take
        # the signal, and the handler then runs in this thread at any bytecode.
        blocked = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
        can_block = threading.current_thread() is threading.main_thread()
        folder = output.resolve().parent / f".{output.name}.{secrets.token_hex(6)}"
        staging: Path | None = folder  # None: not ours to remove
        try:
            try:
                folder.mkdir(mode=0o700)
            except OSError as exc:
                staging = None  # not made, or not ours (a name collision): never remove it
                raise LumpError(f"cannot write '{output}': {exc.strerror or exc}") from None
            staged = StagedModel(output, folder, external)
            try:
                staged.data_path = write_model(
                    model,
                    staged.path,
                    staged.data_path,
                    staged.staging / data_file_for(output).name,
                )
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
        return uses_external_data(tensor) or tensor_nbytes(tensor) > ALIGN_THRESHOLD

    probe = onnx.ModelProto()
    copy_fields(model, probe, skip=("graph",))
    copy_fields(model.graph, probe.graph, skip=("initializer",))
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


def _data_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every tensor's data, from dims and types: what decides the output's form
    before anything is serialized (``ByteSize`` costs as much as serializing)."""
    return sum(tensor_nbytes(tensor) for tensor in all_tensors(model))
