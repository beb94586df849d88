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

import numpy as np
import onnx_graphsurgeon as gs

from onnx_lump.activations import BIAS_ACTIVATION_OPS
from onnx_lump.graph.read.dense import ConstantRef, DenseLayer
from onnx_lump.graph.read.elementwise import op_domain, traced_rank

__all__ = [
    "DenseReader",
]

logger = logging.getLogger("onnx_lump.graph.chains")  # the reader's notes keep their name

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)

# onnxruntime's fused ops that add a per-neuron constant bias to the data inputs they sum:
# (domain, op) -> (index of the bias input, indices of the data inputs). The transformer
# optimizer fuses a MatMul's bias Add into the next op: ``BiasGelu(x, b)``,
# ``FastGelu(x, b)`` (the activations of ``activations.BIAS_ACTIVATION_OPS``) and
# ``SkipLayerNormalization(x, skip, gamma, beta, b)`` = LayerNorm(x + skip + b), whose sum
# (output 3 too) only ever sees ``x + b``; so ``b`` is the layer's bias, read and rewritten
# where it lives.
_BIAS_HOLDERS: dict[tuple[str, str], tuple[int, tuple[int, ...]]] = {
    **{
        (domain, name): (1, (0,))
        for domain, _, name in (op.partition(":") for op in BIAS_ACTIVATION_OPS)
    },
    ("com.microsoft", "SkipLayerNormalization"): (4, (0, 1)),
    ("com.microsoft", "SkipSimplifiedLayerNormalization"): (3, (0, 1)),
    ("com.microsoft", "BiasAdd"): (1, (0, 2)),  # X + bias + skip
}


class DenseReader:
    """The graph facts every reading needs, the constant resolver and the dense forms."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.notes: list[str] = []
        self.graph_outputs = {t.name for t in graph.outputs}
        self.used_in_subgraphs = _names_used_in_subgraphs(graph)
        self.opset = int(getattr(graph, "opset", None) or 17)

    def note(self, message: str) -> None:
        logger.info(message)
        if message not in self.notes:
            self.notes.append(message)

    def is_observable(self, tensor: gs.Tensor) -> bool:
        """True when something besides a single consumer node reads ``tensor``."""
        return (
            tensor.name in self.graph_outputs
            or tensor.name in self.used_in_subgraphs
            or len(tensor.outputs) != 1
        )

    def exposed(self, tensor: gs.Tensor) -> bool:
        """True when ``tensor`` is a graph output or read inside a subgraph."""
        return tensor.name in self.graph_outputs or tensor.name in self.used_in_subgraphs

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
        self._read_held_bias(layer)
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
        rows, columns = weight_ref.shape  # 2-D: checked by _weight
        shape = (rows, columns) if trans_b else (columns, rows)
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
        data_rank = traced_rank(node.inputs[0])
        if data_rank is not None and data_rank < 2:
            self.note(f"MatMul '{node.name}': rank-{data_rank} input is not read as a dense layer")
            return None
        rows, columns = weight_ref.shape  # 2-D: checked by _weight
        shape = (columns, rows)
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

    def _read_held_bias(self, layer: DenseLayer) -> None:
        """A bias-free layer whose only reader adds a constant bias to it (see
        :data:`_BIAS_HOLDERS`): that bias is the layer's."""
        out = layer.output
        if layer.bias_ref is not None or layer.batch_norm is not None or self.is_observable(out):
            return
        holder = out.outputs[0]
        bias_index, data = _BIAS_HOLDERS.get((op_domain(holder), holder.op), (None, ()))
        if bias_index is None or bias_index >= len(holder.inputs):
            return
        if not holder.inputs[bias_index].name or holder.inputs[bias_index] is out:
            return
        if not any(i < len(holder.inputs) and holder.inputs[i] is out for i in data):
            return
        ref = self.resolve_constant(holder, bias_index)
        vector = None if ref is None else self._bias(ref, layer.out_features, 1)
        if vector is None:
            self.note(
                f"{holder.op} '{holder.name}' after {layer.describe()}: its bias is not a "
                "constant per-neuron vector; not read as the layer's bias"
            )
            return
        layer.bias, layer.bias_ref, layer.bias_holder = vector, ref, holder

    def _fold_batch_norm(self, layer: DenseLayer) -> None:
        """Fold an inference-mode BatchNormalization on a rank-2 output into the layer."""
        out = layer.output
        if self.is_observable(out) or out.outputs[0].op != "BatchNormalization":
            return
        bn = out.outputs[0]
        where = f"BatchNormalization '{bn.name}' after {layer.describe()}"
        rank = 2 if layer.node.op == "Gemm" else traced_rank(layer.input)
        if rank != 2:
            self.note(
                f"{where}: normalises axis 1, which is the feature axis only for rank-2 data "
                f"(rank {rank}); not folded, the chain ends there"
            )
            return
        extra = [t for t in bn.outputs[1:] if t.name and (t.outputs or self.exposed(t))]
        found = [self.resolve_constant(bn, i) for i in range(1, 5)] if len(bn.inputs) == 5 else []
        width = layer.out_features
        refs = [
            r
            for r in found
            if r is not None and r.dtype.type in _FLOAT_DTYPES and math.prod(r.shape) == width
        ]
        usable = bn.attrs.get("training_mode", 0) == 0 and not extra and len(refs) == 4
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
