"""int8 after the pass: onnxruntime's dynamic quantization of the written model.

``--quantize int8`` runs :func:`onnxruntime.quantization.quantize_dynamic` (int8 weights,
per output channel; uint8 activations quantized at run time) on the staged file, so the
file written, verified and measured is the quantized one, and a search that judges an
error (``--max-error``) quantizes every step it measures (:func:`quantized_copy`), so
the budget covers both steps.

onnxruntime's dynamic quantization turns ``MatMul`` with a constant B into
``MatMulInteger`` and leaves ``Gemm`` in float (its IntegerOps registry has no Gemm), so
every ``Gemm`` with a constant B and ``transA = 0`` is first rewritten as ``MatMul``
(B transposed and scaled by ``alpha`` where needed) plus ``Add`` (C scaled by ``beta``),
which computes the same function; the report says how many were rewritten and how many
weight-bearing ops stayed in float.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_lump.errors import LumpError
from onnx_lump.types import RMSE, format_error

__all__ = [
    "QUANTIZE_SCHEMES",
    "QuantizeInfo",
    "QuantizeStep",
    "check_quantizable",
    "gemm_as_matmul",
    "quantize_file",
    "quantized_copy",
]

logger = logging.getLogger("onnx_lump.quantize")  # the notes keep their name

QUANTIZE_SCHEMES = ("int8",)
# Ops onnxruntime's dynamic quantization turns into integer ops (weights int8).
_INTEGER_OPS = ("MatMul", "Conv", "Attention", "LSTM")
_QUANTIZED_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QAttention")


@dataclass
class QuantizeInfo:
    """What the quantization did: ``quantized`` weight-bearing ops now run in int8,
    ``gemms_converted`` Gemm nodes were rewritten as MatMul + Add first, ``left_float``
    names the ops with constant weights it left in float."""

    scheme: str = "int8"
    per_channel: bool = True
    quantized: int = 0
    gemms_converted: int = 0
    left_float: list[str] = field(default_factory=list)

    def describe(self) -> str:
        what = (
            f"onnxruntime quantize_dynamic: {self.quantized} op(s) with int8 weights "
            f"({'per output channel' if self.per_channel else 'per tensor'}), uint8 "
            "activations quantized at run time"
        )
        if self.gemms_converted:
            what += f"; {self.gemms_converted} Gemm rewritten as MatMul + Add first"
        if self.left_float:
            what += f"; left in float: {', '.join(self.left_float)}"
        return what


@dataclass
class QuantizeStep:
    """The size and error of each step, for the report: the input file, the pass's
    output (``lumped``) and its quantized file (``int8``, the one written). Errors are
    measured by onnxruntime against the original: the held-out error (with --calib) and
    the largest absolute output difference on the verification inputs."""

    info: QuantizeInfo
    bytes_input: int
    bytes_lumped: int
    bytes_int8: int = 0
    lumped_error: float | None = None
    int8_error: float | None = None
    lumped_max_abs: float | None = None
    int8_max_abs: float | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("lumped_error", "int8_error"):
            data[key] = None if data[key] is None else float(data[key])
        return data

    def summary_lines(self, metric: str = RMSE) -> list[str]:
        """The quantization's lines of the summary, errors in ``metric``'s words."""
        lines = [f"{self.info.scheme}: {self.info.describe()}"]
        ratio = self.bytes_int8 / self.bytes_input if self.bytes_input else 1.0
        lines.append(
            f"bytes: {self.bytes_input:,} input -> {self.bytes_lumped:,} after the pass -> "
            f"{self.bytes_int8:,} after {self.info.scheme} ({100 * ratio:.1f}% of the input)"
        )
        if self.int8_error is not None:
            lumped = "n/a" if self.lumped_error is None else format_error(self.lumped_error, metric)
            lines.append(
                f"held-out error: {lumped} after the pass -> "
                f"{format_error(self.int8_error, metric)} "
                f"after {self.info.scheme} (the written file)"
            )
        if self.int8_max_abs is not None:
            lumped = "n/a" if self.lumped_max_abs is None else f"{self.lumped_max_abs:.3g}"
            lines.append(
                f"max abs err vs the original: {lumped} after the pass -> "
                f"{self.int8_max_abs:.3g} after {self.info.scheme}"
            )
        return lines


def gemm_as_matmul(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every ``Gemm`` of the main graph whose B is an initializer
    (and C, when present) and whose ``transA`` is 0 as ``MatMul`` + ``Add``: the same
    function, in the form onnxruntime's dynamic quantization quantizes. Returns how many
    were rewritten. Tensors must be loaded (no external data references)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    taken = {t.name for t in graph.initializer} | {n.name for n in graph.node}
    taken |= {o for n in graph.node for o in n.output} | {i.name for i in graph.input}

    def fresh(base: str) -> str:
        name, count = base, 0
        while name in taken:
            count += 1
            name = f"{base}_{count}"
        taken.add(name)
        return name

    nodes, converted = [], 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        inputs = list(node.input) + [""] * (3 - len(node.input))
        b, c = initializers.get(inputs[1]), initializers.get(inputs[2]) if inputs[2] else None
        if (
            node.op_type != "Gemm"
            or node.domain not in ("", "ai.onnx")
            or attrs.get("transA", 0)
            or b is None
            or (inputs[2] and c is None)
        ):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(b)
        if attrs.get("transB", 0):
            weight = weight.T
        alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
        if alpha != 1.0:
            weight = (weight * weight.dtype.type(alpha)).astype(weight.dtype)
        stem = node.name or node.output[0]
        if not attrs.get("transB", 0) and alpha == 1.0:
            weight_name = b.name  # B as it is
        else:
            weight_name = fresh(f"{stem}_matmul_B")
            array = np.ascontiguousarray(weight)
            graph.initializer.append(numpy_helper.from_array(array, weight_name))
        output = node.output[0]
        if c is None:
            nodes.append(onnx.helper.make_node("MatMul", [inputs[0], weight_name], [output], stem))
        else:
            product = fresh(f"{stem}_matmul_out")
            bias_name = inputs[2]
            if beta != 1.0:
                bias = numpy_helper.to_array(c)
                bias_name = fresh(f"{stem}_bias")
                scaled = (bias * bias.dtype.type(beta)).astype(bias.dtype)
                graph.initializer.append(numpy_helper.from_array(scaled, bias_name))
            nodes.append(onnx.helper.make_node("MatMul", [inputs[0], weight_name], [product], stem))
            nodes.append(
                onnx.helper.make_node("Add", [product, bias_name], [output], fresh(f"{stem}_add"))
            )
        converted += 1
    if converted:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {name for node in graph.node for name in node.input}
        used |= {o.name for o in graph.output}
        kept = [t for t in graph.initializer if t.name in used]
        if len(kept) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(kept)
    return converted


def quantize_file(
    source: str | os.PathLike,
    target: str | os.PathLike,
    scheme: str = "int8",
    per_channel: bool = True,
    external_data: bool | None = None,
) -> QuantizeInfo:
    """Quantize the model file ``source`` into ``target`` (onnxruntime's dynamic int8,
    Gemm rewritten as MatMul + Add first; see the module doc). ``external_data``: write
    the tensors to ``target``'s ``.data`` file (default: when ``source`` has external
    data). Raises a one-line LumpError where onnxruntime cannot quantize the model."""
    if scheme not in QUANTIZE_SCHEMES:
        raise LumpError(
            f"unknown quantization '{scheme}' (choose from {', '.join(QUANTIZE_SCHEMES)})"
        )
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = Path(source), Path(target)
    try:
        model = onnx.load(str(source))  # with its external data: the weights are read
    except Exception as exc:
        raise LumpError(f"cannot read '{source}' to quantize it: {exc}") from exc
    if external_data is None:
        external_data = any(
            t.data_location == onnx.TensorProto.EXTERNAL
            for t in onnx.load(str(source), load_external_data=False).graph.initializer
        )
    check_quantizable(model)
    info = QuantizeInfo(scheme, per_channel)
    info.gemms_converted = gemm_as_matmul(model)
    with _quiet_onnxruntime_quantization():
        try:
            quantize_dynamic(
                model,
                target,
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
                use_external_data_format=bool(external_data),
            )
        except Exception as exc:  # onnxruntime raises plain exceptions of many kinds
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LumpError(f"onnxruntime could not quantize the model to int8: {first}") from exc
    written = onnx.load(str(target), load_external_data=False)
    ops = [n.op_type for n in written.graph.node]
    info.quantized = sum(ops.count(op) for op in _QUANTIZED_OPS)
    constants = {t.name for t in written.graph.initializer}
    left: dict[str, int] = {}
    for node in written.graph.node:
        if node.op_type in ("Gemm", *_INTEGER_OPS) and any(
            name in constants for name in node.input[1:2]
        ):
            left[node.op_type] = left.get(node.op_type, 0) + 1
    info.left_float = [f"{count} {op}" for op, count in sorted(left.items())]
    logger.info("quantized %s: %s", source, info.describe())
    return info


@contextlib.contextmanager
def quantized_copy(
    model: onnx.ModelProto, scheme: str = "int8"
) -> Iterator[tuple[Path, QuantizeInfo]]:
    """The quantized form of an in-memory ``model`` as a file in a temporary folder
    (removed on exit): ``(path, info)``. The search measures each step on it."""
    from onnx_lump.graph.io.save import save_model

    with tempfile.TemporaryDirectory(prefix="onnx_lump_int8_") as folder:
        source, target = Path(folder) / "model.onnx", Path(folder) / "model.int8.onnx"
        save_model(model, source)  # spilled or external tensors are written out here
        yield target, quantize_file(source, target, scheme)


def check_quantizable(model: onnx.ModelProto) -> None:
    """onnxruntime's dynamic quantization quantizes float32 activations (its
    DynamicQuantizeLinear takes float32 only): refuse other float types in one line."""
    names = {
        onnx.TensorProto.FLOAT16: "float16",
        onnx.TensorProto.DOUBLE: "float64",
        onnx.TensorProto.BFLOAT16: "bfloat16",
    }
    for tensor in model.graph.initializer:
        if tensor.data_type in names:
            raise LumpError(
                f"--quantize int8 needs a float32 model (onnxruntime's dynamic quantization); "
                f"tensor '{tensor.name}' is {names[tensor.data_type]}"
            )


class _Forward(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logger.debug("onnxruntime.quantization: %s", record.getMessage())


@contextlib.contextmanager
def _quiet_onnxruntime_quantization() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger (a pre-processing hint on
    every call; ``logging.warning`` would also install a stderr handler on a bare root):
    for the call, the root's records go to this module's log at debug level only."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [_Forward()]
    try:
        yield
    finally:
        root.handlers[:] = saved
