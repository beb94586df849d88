"""The dense-layer reader: the forms exporters give ``y = x @ W.T + b``.

Exporters spell one dense layer many ways (``Gemm``, ``MatMul`` + ``Add``, onnxsim's
Reshape-Gemm-Reshape, a trailing BatchNormalization to fold, weights behind
Identity/Transpose); this module reduces all of them to one :class:`DenseLayer` whose
:class:`ConstantRef` handles say where each constant lives, so the rewrite can change it
in place and the weights stay on disk until a chain needs them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from onnx_lump.graph.elementwise import _traced_rank

__all__ = ["ConstantRef", "DenseLayer"]

logger = logging.getLogger("onnx_lump.graph.chains")  # the reader's notes keep their name

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass(eq=False)
class ConstantRef:
    """Where a constant input of a node comes from, so it can be rewritten later.

    ``path`` lists the Identity/Transpose nodes between the consumer's input (first)
    and the root (last); ``value`` is what the consumer sees, read when first asked for
    (``shape`` and ``dtype`` never read it). ``exclusive`` is true when nothing but this
    consumer reads the root or any tensor on the path, so the root may be rewritten in
    place.
    """

    consumer: gs.Node
    input_index: int
    root: gs.Constant | gs.Node
    path: tuple[gs.Node, ...]
    exclusive: bool
    _value: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.root.name if isinstance(self.root, gs.Constant) else self.root.outputs[0].name

    @property
    def constant(self) -> gs.Constant:
        """The graphsurgeon constant at the root (a Constant node's ``value``)."""
        return self.root if isinstance(self.root, gs.Constant) else self.root.attrs["value"]

    @property
    def value(self) -> np.ndarray:
        """The constant as the consumer sees it; kept (in the graph too) once read."""
        if self._value is None:
            self._value = self._transposed(np.asarray(self.constant.values))
        return self._value

    @property
    def shape(self) -> tuple[int, ...]:
        shape = tuple(int(d) for d in self.constant.shape)
        for step in reversed(self.path):
            if step.op == "Transpose":
                perm = step.attrs.get("perm")
                order = range(len(shape) - 1, -1, -1) if perm is None else perm
                shape = tuple(shape[i] for i in order)
        return shape

    @property
    def dtype(self) -> np.dtype:
        dtype = self.constant.dtype
        if isinstance(dtype, (int, np.integer)):  # an ONNX type numpy has no name for
            return helper.tensor_dtype_to_np_dtype(int(dtype))
        return np.dtype(dtype)

    def view(self, shared: bool = False) -> np.ndarray:
        """The value without keeping it: memory-mapped from the external-data file when
        the graph came from :func:`onnx_lump.graph.rewrite.import_graph` and the constant was not
        read yet (``shared``: see :func:`onnx_lump.graph.modelio.tensor_view`); the value read
        otherwise."""
        if self._value is not None:
            return self._value
        values = self.constant._values
        mapped = None if isinstance(values, np.ndarray) else getattr(values, "map_values", None)
        raw = mapped(shared) if callable(mapped) else np.asarray(self.constant.values)
        return self._transposed(raw)

    def release(self) -> None:
        """Forget the value read (the graph's constant is the rewrite's to release)."""
        self._value = None

    def _transposed(self, value: np.ndarray) -> np.ndarray:
        for step in reversed(self.path):
            if step.op == "Transpose":
                value = np.transpose(value, step.attrs.get("perm"))
        return value


@dataclass(eq=False)
class DenseLayer:
    """One dense layer, ``output = input @ weight.T + bias``, in float64.

    ``weight`` is read from the graph when first asked for (a model's data stays on disk
    until its chain is processed) and kept until :meth:`release`; ``shape`` (out, in)
    is known without it. ``weight``/``bias`` include a folded ``batch_norm``
    (``row_scale``, one factor per output). ``in_reshape``/``out_reshape`` are onnxsim's
    Reshapes around a Gemm; ``width_refs`` the shape constants whose last entry is the
    output width (rewritten when the width changes).
    """

    node: gs.Node
    shape: tuple[int, int]
    bias: np.ndarray
    weight_ref: ConstantRef
    bias_ref: ConstantRef | None
    bias_add: gs.Node | None
    output: gs.Tensor
    dtype: np.dtype
    alpha: float = 1.0
    beta: float = 1.0
    trans_b: bool = False
    batch_norm: gs.Node | None = None
    batch_norm_refs: tuple[ConstantRef, ...] = ()
    in_reshape: gs.Node | None = None
    in_width_ref: ConstantRef | None = None
    out_reshape: gs.Node | None = None
    width_refs: tuple[ConstantRef, ...] = ()
    row_scale: np.ndarray | None = None
    _weight: np.ndarray | None = field(default=None, repr=False)
    _stored: np.ndarray | None = field(default=None, repr=False)

    @property
    def weight(self) -> np.ndarray:
        if self._weight is None:
            self._weight = self._read_weight()
        return self._weight

    @weight.setter
    def weight(self, value: np.ndarray) -> None:
        self._weight = value
        self.shape = tuple(value.shape)

    def _read_weight(self) -> np.ndarray:
        if self._written():
            raise RuntimeError(
                f"the weight of '{self.name}' was released after the rewrite replaced it"
            )
        stored = self.weight_ref.view()
        if self.node.op != "Gemm" or not self.trans_b:
            stored = stored.T
        weight = np.array(stored, dtype=np.float64, order="C")
        del stored  # a memory map: its pages go back now
        if self.alpha != 1.0:
            weight *= self.alpha
        if self.row_scale is not None:
            weight = weight * self.row_scale[:, None]
        return weight

    def stored_weight(self) -> np.ndarray:
        """An array equal to ``weight`` element for element, in the dtype the model stores
        it in where that loses nothing: the stored values themselves (memory-mapped when
        they live in an external-data file, else read once and kept until
        :meth:`release`), transposed as needed, read-only. A float32 layer then costs its
        own size instead of a float64 copy twice that; arithmetic on it accumulates in
        float64 (see :func:`onnx_lump.ode.encoding.aggregate`). Where the stored values
        must be scaled (``alpha``, a folded BatchNormalization), are float16 (which sums
        badly) or float64 (already the dtype of ``weight``), this is ``weight``."""
        if self._weight is not None:
            return self._weight
        plain = self.alpha == 1.0 and self.row_scale is None and not self._written()
        if not plain or self.dtype != np.float32:
            return self.weight
        if self._stored is None:
            stored = self.weight_ref.view()
            if self.node.op != "Gemm" or not self.trans_b:
                stored = stored.T
            stored = stored.view()
            stored.flags.writeable = False  # the model's own values: never changed in place
            self._stored = stored
        return self._stored

    def holds(self, weight: np.ndarray, bias: np.ndarray) -> bool:
        """Whether ``weight`` and ``bias`` are this layer's parameters, value for value;
        compared with the stored weight (no float64 copy), and not at all when
        ``weight`` is a view of the very same memory."""
        if tuple(weight.shape) != tuple(self.shape) or not np.array_equal(bias, self.bias):
            return False
        stored = self.stored_weight()
        if _same_memory(weight, stored):
            return True
        return bool(np.array_equal(weight, stored))

    def weight_view(self) -> np.ndarray | None:
        """An array equal to ``weight`` element for element that is not held in memory
        (a shared read-only map of the stored tensor, transposed as needed), or None when
        the stored values must be scaled (``alpha``, a folded BatchNormalization) or do not
        live in an external-data file."""
        if self.alpha != 1.0 or self.row_scale is not None or self._written():
            return None
        stored = self.weight_ref.view(shared=True)
        if not isinstance(stored, np.memmap):
            return None
        return stored if self.node.op == "Gemm" and self.trans_b else stored.T

    def _written(self) -> bool:
        return bool(getattr(self.weight_ref.constant, "_onnx_lump_written", False))

    def all_finite(self) -> bool:
        """Whether every weight and bias is finite; the weight is read without being kept
        (and without a float64 copy when it is stored as it is used)."""
        if not np.isfinite(self.bias).all():
            return False
        if self._weight is not None:
            return bool(np.isfinite(self._weight).all())
        if self.alpha == 1.0 and self.row_scale is None:
            return bool(np.isfinite(self.weight_ref.view()).all())
        return bool(np.isfinite(self._read_weight()).all())  # not kept

    def release(self) -> None:
        """Drop the weight read from the graph (it is read again if asked for)."""
        self._weight = None
        self._stored = None
        self.weight_ref.release()

    @property
    def name(self) -> str:
        return self.node.name or self.output.name

    @property
    def input(self) -> gs.Tensor:
        return self.node.inputs[0]

    @property
    def entry(self) -> gs.Tensor:
        """The tensor the layer reads, before an onnxsim Reshape."""
        return self.input if self.in_reshape is None else self.in_reshape.inputs[0]

    @property
    def entry_node(self) -> gs.Node:
        return self.node if self.in_reshape is None else self.in_reshape

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def n_params(self) -> int:
        has_bias = self.bias_ref is not None or self.batch_norm is not None
        return self.shape[0] * self.shape[1] + (self.out_features if has_bias else 0)

    @property
    def nodes(self) -> list[gs.Node]:
        found = [self.in_reshape, self.node, self.bias_add, self.batch_norm, self.out_reshape]
        return [n for n in found if n is not None]

    @property
    def output_tensors(self) -> list[gs.Tensor]:
        """Every tensor of width ``out_features`` from the product to ``output``."""
        return [n.outputs[0] for n in self.nodes if n is not self.in_reshape]

    def describe(self) -> str:
        op = self.node.op if self.bias_add is None else "MatMul+Add"
        if self.in_reshape is not None or self.out_reshape is not None:
            op = f"Reshape+{op}+Reshape"
        if self.batch_norm is not None:
            op += "+BatchNormalization"
        return f"{op} '{self.name}' ({self.in_features}->{self.out_features})"


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays read the same elements from the same bytes."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


class _DenseReader:
    """The graph facts every reading needs, the constant resolver and the dense forms."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.notes: list[str] = []
        self._graph_outputs = {t.name for t in graph.outputs}
        self._used_in_subgraphs = _names_used_in_subgraphs(graph)
        self._opset = int(getattr(graph, "opset", None) or 17)

    def note(self, message: str) -> None:
        logger.info(message)
        if message not in self.notes:
            self.notes.append(message)

    def is_observable(self, tensor: gs.Tensor) -> bool:
        """True when something besides a single consumer node reads ``tensor``."""
        return (
            tensor.name in self._graph_outputs
            or tensor.name in self._used_in_subgraphs
            or len(tensor.outputs) != 1
        )

    def _exposed(self, tensor: gs.Tensor) -> bool:
        return tensor.name in self._graph_outputs or tensor.name in self._used_in_subgraphs

    # -- constants -------------------------------------------------------------
    def resolve_constant(self, node: gs.Node, index: int) -> ConstantRef | None:
        tensor = node.inputs[index]
        path: list[gs.Node] = []
        exclusive = True
        while True:
            if isinstance(tensor, gs.Constant):
                exclusive &= not self.is_observable(tensor)
                root = tensor
                break
            exclusive &= not self.is_observable(tensor)
            if len(tensor.inputs) != 1:
                return None
            producer = tensor.inputs[0]
            if producer.op == "Constant" and isinstance(producer.attrs.get("value"), gs.Constant):
                root = producer
                break
            if producer.op in ("Identity", "Transpose") and len(producer.inputs) == 1:
                path.append(producer)
                tensor = producer.inputs[0]
                continue
            return None
        # values are read when asked for: a weight is read when its chain is processed
        return ConstantRef(node, index, root, tuple(path), exclusive)

    # -- dense layers -----------------------------------------------------------
    def read_dense(self, node: gs.Node) -> DenseLayer | None:
        layer = self._read_gemm(node) if node.op == "Gemm" else self._read_matmul(node)
        if layer is None:
            return None
        self._fold_batch_norm(layer)
        self._read_reshapes(layer)
        return layer

    def _weight(self, node: gs.Node, index: int) -> ConstantRef | None:
        if len(node.inputs) <= index or isinstance(node.inputs[0], gs.Constant):
            return None
        ref = self.resolve_constant(node, index)
        if ref is None:
            return None  # activations times activations: not a dense layer
        if len(ref.shape) != 2 or ref.dtype.type not in _FLOAT_DTYPES:
            self.note(
                f"{node.op} '{node.name}': weight '{ref.name}' has shape {ref.shape} and "
                f"dtype {ref.dtype}; only 2-D float16/32/64 weights are read, node left as is"
            )
            return None
        return ref

    def _bias(self, ref: ConstantRef, out_features: int, max_rank: int) -> np.ndarray | None:
        """The bias as a vector, or None when it does not broadcast like a per-neuron bias."""
        if ref.dtype.type not in _FLOAT_DTYPES or len(ref.shape) > max_rank:
            return None
        value = ref.value
        if value.size == 1:
            return np.full(out_features, float(value.reshape(-1)[0]))
        if value.shape[-1] == out_features and value.size == out_features:
            return value.reshape(-1).astype(np.float64)
        return None

    def _read_gemm(self, node: gs.Node) -> DenseLayer | None:
        if node.attrs.get("transA", 0):
            self.note(f"Gemm '{node.name}': transA=1 is not a dense layer on its input; left as is")
            return None
        weight_ref = self._weight(node, 1)
        if weight_ref is None:
            return None
        alpha = float(node.attrs.get("alpha", 1.0))
        beta = float(node.attrs.get("beta", 1.0))
        trans_b = bool(node.attrs.get("transB", 0))
        stored = weight_ref.shape
        shape = stored if trans_b else stored[::-1]
        bias_ref = None
        bias = np.zeros(shape[0])
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias_ref = self.resolve_constant(node, 2)
            vector = None if bias_ref is None else self._bias(bias_ref, shape[0], 2)
            if vector is None:
                self.note(
                    f"Gemm '{node.name}': bias C is not a constant per-neuron bias; left as is"
                )
                return None
            bias = beta * vector
        return DenseLayer(
            node,
            shape,
            bias,
            weight_ref,
            bias_ref,
            None,
            node.outputs[0],
            weight_ref.dtype,
            alpha=alpha,
            beta=beta,
            trans_b=trans_b,
        )

    def _read_matmul(self, node: gs.Node) -> DenseLayer | None:
        weight_ref = self._weight(node, 1)
        if weight_ref is None:
            return None
        data_rank = _traced_rank(node.inputs[0])
        if data_rank is not None and data_rank < 2:
            self.note(f"MatMul '{node.name}': rank-{data_rank} input is not read as a dense layer")
            return None
        shape = weight_ref.shape[::-1]
        out = node.outputs[0]
        bias, bias_ref, bias_add, output = np.zeros(shape[0]), None, None, out
        if not self.is_observable(out) and out.outputs[0].op == "Add":
            add = out.outputs[0]
            bias_index = 1 if add.inputs[0] is out else 0
            if add.inputs[bias_index] is not out:
                ref = self.resolve_constant(add, bias_index)
                vector = None
                if ref is not None:
                    vector = self._bias(ref, shape[0], max(data_rank or 2, 2))
                if vector is not None:
                    bias, bias_ref, bias_add, output = vector, ref, add, add.outputs[0]
        return DenseLayer(
            node, shape, bias, weight_ref, bias_ref, bias_add, output, weight_ref.dtype
        )

    def _fold_batch_norm(self, layer: DenseLayer) -> None:
        """Fold an inference-mode BatchNormalization on a rank-2 output into the layer."""
        out = layer.output
        if self.is_observable(out) or out.outputs[0].op != "BatchNormalization":
            return
        bn = out.outputs[0]
        where = f"BatchNormalization '{bn.name}' after {layer.describe()}"
        rank = 2 if layer.node.op == "Gemm" else _traced_rank(layer.input)
        if rank != 2:
            self.note(
                f"{where}: normalises axis 1, which is the feature axis only for rank-2 data "
                f"(rank {rank}); not folded, the chain ends there"
            )
            return
        extra = [t for t in bn.outputs[1:] if t.name and (t.outputs or self._exposed(t))]
        refs = [self.resolve_constant(bn, i) for i in range(1, 5)] if len(bn.inputs) == 5 else []
        width = layer.out_features
        usable = (
            bn.attrs.get("training_mode", 0) == 0
            and not extra
            and len(refs) == 4
            and all(
                r is not None and r.dtype.type in _FLOAT_DTYPES and math.prod(r.shape) == width
                for r in refs
            )
        )
        if not usable:
            self.note(
                f"{where}: needs constant scale, bias, mean and variance and training_mode=0 "
                "to be folded; the chain ends there"
            )
            return
        scale, shift, mean, var = (np.asarray(r.value, np.float64).reshape(-1) for r in refs)
        factor = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        layer.row_scale = factor  # applied to the weight when it is read
        layer.bias = factor * (layer.bias - mean) + shift
        layer.batch_norm, layer.batch_norm_refs = bn, tuple(refs)
        layer.output = bn.outputs[0]

    def _read_reshapes(self, layer: DenseLayer) -> None:
        """onnxsim's Reshape(x, [-1, F]) before and Reshape(., [..., H]) after a layer."""
        data = layer.input
        producer = data.inputs[0] if len(data.inputs) == 1 else None
        if producer is None or producer.op != "Reshape" or self.is_observable(data):
            return
        shape_ref = self.resolve_constant(producer, 1) if len(producer.inputs) > 1 else None
        if shape_ref is None or not np.issubdtype(shape_ref.dtype, np.integer):
            return
        target = shape_ref.value.reshape(-1)
        if target.size != 2 or int(target[-1]) != layer.in_features:
            return
        out = layer.output
        after = None if self.is_observable(out) else out.outputs[0]
        if after is None or after.op != "Reshape" or after.inputs[0] is not out:
            return
        width_refs = self._width_refs(after, layer.out_features)
        if width_refs is None:
            self.note(
                f"Reshape '{after.name}' after {layer.describe()}: its shape does not end in "
                f"the constant width {layer.out_features}; not read as a rank-3 dense layer"
            )
            return
        layer.in_reshape, layer.in_width_ref = producer, shape_ref
        layer.out_reshape, layer.width_refs = after, width_refs
        layer.output = after.outputs[0]

    def _width_refs(self, reshape: gs.Node, width: int) -> tuple[ConstantRef, ...] | None:
        """The constant whose last entry is the width of a Reshape's target shape: the
        shape itself, or the last part of the Concat that builds it."""
        node, index = reshape, 1
        shape = reshape.inputs[1]
        if len(shape.inputs) == 1 and shape.inputs[0].op == "Concat":
            concat = shape.inputs[0]
            if concat.attrs.get("axis", 0) != 0 or self.is_observable(shape):
                return None
            node, index = concat, len(concat.inputs) - 1
        ref = self.resolve_constant(node, index)
        if ref is None or not np.issubdtype(ref.dtype, np.integer) or len(ref.shape) != 1:
            return None
        if ref.value.size == 0 or int(ref.value[-1]) != width:
            return None
        return (ref,)


def _names_used_in_subgraphs(graph: gs.Graph) -> set[str]:
    """Names of outer tensors read by If/Loop/Scan bodies, which gs does not list as consumers."""
    names: set[str] = set()
    for node in graph.nodes:
        for attr in node.attrs.values():
            subgraphs = attr if isinstance(attr, list) else [attr]
            for sub in subgraphs:
                if isinstance(sub, gs.Graph):
                    for inner in sub.nodes:
                        names.update(t.name for t in inner.inputs)
                    names |= _names_used_in_subgraphs(sub)
    return names
