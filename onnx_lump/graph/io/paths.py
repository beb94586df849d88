"""Refusing outputs that would harm an input, before any work starts.

A run can take hours and a wrong path can destroy the model it reads, so every output
(the model, its ``.data`` file, the side files) is checked against every input and against
the other outputs (:func:`check_paths`), through symlinks and hard links.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from onnx_lump.errors import LumpError
from onnx_lump.graph.io.tensordata import external_files

__all__ = [
    "check_output_path",
    "check_paths",
    "check_writable",
    "data_file_for",
]


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
    taken: dict[tuple, str] = {}
    for path, label in read:
        taken.setdefault(_identity(path), label)
    for path, label in written:
        check_writable(path)
        key = _identity(path)
        if key in taken:
            raise LumpError(
                f"output {label} is the same file as {taken[key]}; choose another output path"
            )
        taken[key] = f"output {label}"


def check_writable(output: Path) -> None:
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
