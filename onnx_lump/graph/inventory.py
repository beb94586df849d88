"""What a model holds: op counts, stored parameters and bytes on disk, before and after.

The CLI prints :func:`comparison_table` of two :class:`Inventory` values, the way onnxsim
prints its before/after table. Parameters are counted as they are *stored*
(:func:`onnx_lump.graph.io.tensordata.stored_parameters`: floating-point initializers, ``Constant``
values and sparse initializers), not as the chains use them:
a shared weight that gets a ``_lumped`` copy makes the file grow, and the table says so.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnx_lump.graph.io.tensordata import all_tensors, file_size, stored_parameters

__all__ = [
    "Inventory",
    "comparison_table",
    "file_bytes",
    "op_counts",
    "take_inventory",
]


@dataclass(frozen=True)
class Inventory:
    """Op counts (``domain::Op`` outside the default domain), node count, stored
    parameters, and the bytes of the file with its external data (None: not on disk)."""

    ops: dict[str, int] = field(default_factory=dict)
    nodes: int = 0
    parameters: int = 0
    bytes: int | None = None
    int8_parameters: int = 0  # elements of 8-bit integer tensors (a quantized model's)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes per op type, subgraphs (If/Loop bodies) included."""
    counts: Counter[str] = Counter()
    for graph in _graphs(model.graph):
        for node in graph.node:
            name = (
                node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            )
            counts[name] += 1
    return dict(sorted(counts.items()))


def file_bytes(path: str | os.PathLike) -> int | None:
    """Size of the model file plus every external-data file it names; None when absent."""
    return file_size(path) if Path(path).is_file() else None


def take_inventory(model: onnx.ModelProto, path: str | os.PathLike | None = None) -> Inventory:
    """The :class:`Inventory` of ``model``; ``path`` (where it is stored) gives the bytes."""
    ops = op_counts(model)
    size = file_bytes(path) if path is not None else None
    return Inventory(ops, sum(ops.values()), stored_parameters(model), size, _int8_elements(model))


def _int8_elements(model: onnx.ModelProto) -> int:
    """Elements of the 8-bit integer initializers and Constant values: the weights of a
    quantized model (and its zero points), which :func:`stored_parameters` leaves out."""
    eight_bit = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    total = 0
    for tensor in all_tensors(model):
        if tensor.data_type in eight_bit:
            total += math.prod(tensor.dims) if tensor.dims else 1
    return total


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def comparison_table(before: Inventory, after: Inventory) -> str:
    """Rows per op type, then nodes, stored parameters and size: before, after, change."""
    rows: list[tuple[str, int, int]] = []
    for op in sorted(set(before.ops) | set(after.ops)):
        rows.append((op, before.ops.get(op, 0), after.ops.get(op, 0)))
    rows += [
        ("nodes", before.nodes, after.nodes),
        ("stored parameters", before.parameters, after.parameters),
    ]
    if before.int8_parameters or after.int8_parameters:
        rows.append(("int8 parameters", before.int8_parameters, after.int8_parameters))
    width = max(len(name) for name in [*(r[0] for r in rows), "model size"])
    lines = [f"{'':<{width}}  {'before':>12}  {'after':>12}"]
    for name, old, new in rows:
        change = "" if old == new else f"  ({new - old:+d})"
        lines.append(f"{name:<{width}}  {old:>12}  {new:>12}{change}")
    lines.append(f"{'model size':<{width}}  {_human(before.bytes):>12}  {_human(after.bytes):>12}")
    return "\n".join(lines)
