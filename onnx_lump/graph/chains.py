"""Stage 1: find the dense chains of an ONNX graph.

A dense layer computes ``y = x @ W.T + b`` with constant ``W`` and ``b``; the reader
recognises these forms exporters emit:

1. ``Gemm`` with any ``alpha``/``beta``, ``transA=0``, ``transB`` 0 or 1 and an optional
   bias ``C`` that is a scalar, 1-D or ``(1, H)``;
2. ``MatMul`` followed by ``Add`` with the bias as either input (PyTorch puts it first),
   or a bias-free ``MatMul``; the data input may be rank 2 or higher (batched MatMul,
   batch x sequence x features with dynamic batch and sequence);
3. weights held as initializers, ``Constant`` nodes, or behind ``Identity``/``Transpose``;
4. onnxsim's rank-3 form ``Reshape(x, [-1, F]) -> Gemm -> Reshape(., [..., H])``, the
   output shape a constant or a ``Concat`` ending in the constant width (the
   ``Shape -> Slice`` probes that read the leading dims of a hidden tensor are allowed);
5. a ``BatchNormalization`` with constant statistics right after a rank-2 dense layer
   (TorchScript's ``Linear -> BatchNorm1d``), folded into the layer's weight and bias.

A chain is a maximal run ``dense -> activation -> dense -> ...`` where the activation is
absent or any element-wise subgraph that ``onnx_lump.activations`` recognises (a single
op or a decomposed form such as the erf Gelu). The reader reads a subgraph as a
canonical expression in its input and asks the registry which activation it is. An
intermediate tensor that is a graph output or has a consumer outside the activation
ends the chain there, so its neurons are never merged. The reader knows nothing of
epsilon: it only returns numbers in float64 plus handles for the rewrite.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from onnx_lump import activations as act
from onnx_lump.activations import Activation

__all__ = [
    "ActivationRegion",
    "ConstantRef",
    "DenseChain",
    "DenseLayer",
    "GraphScan",
    "scan_graph",
]

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)
_STANDARD = ("", "ai.onnx")
_MAX_REGION = 48  # nodes in one activation subgraph; the walk gives up past this


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


@dataclass(eq=False)
class ActivationRegion:
    """The nodes of one activation subgraph between two dense layers.

    ``tensors`` are the tensors it produces (all of the hidden width); ``feature_constants``
    the constants of one repeated value laid out along the feature axis, which must be
    reduced to one entry when the width changes.
    """

    nodes: tuple[gs.Node, ...]
    tensors: tuple[gs.Tensor, ...]
    feature_constants: tuple[ConstantRef, ...] = ()
    expression: tuple = act.X


@dataclass(eq=False)
class DenseChain:
    """Dense layers joined by element-wise activations; ``activations[i]`` sits between
    ``layers[i]`` and ``layers[i + 1]`` (identity when ``activation_nodes[i]`` is None;
    for a decomposed activation ``activation_nodes[i]`` is its last node and
    ``regions[i]`` holds all of them)."""

    layers: list[DenseLayer]
    activations: list[Activation]
    activation_nodes: list[gs.Node | None]
    regions: list[ActivationRegion | None] = field(default_factory=list)

    @property
    def hidden_widths(self) -> list[int]:
        return [layer.out_features for layer in self.layers[:-1]]

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)

    def hidden_tensors(self, index: int) -> list[gs.Tensor]:
        """Every tensor whose last axis is hidden layer ``index``."""
        tensors = list(self.layers[index].output_tensors)
        region = self.regions[index] if index < len(self.regions) else None
        if region is not None:
            tensors += region.tensors
        elif self.activation_nodes[index] is not None:
            tensors.append(self.activation_nodes[index].outputs[0])
        following = self.layers[index + 1]
        if following.in_reshape is not None:
            tensors.append(following.in_reshape.outputs[0])
        return tensors

    def resized_constants(self, index: int, width: int) -> Iterator[tuple[ConstantRef, np.ndarray]]:
        """(constant, new value as its consumer sees it) for hidden layer ``index`` at
        ``width``: Reshape shapes end in the width, repeated per-feature values shrink to
        one entry (they broadcast)."""
        refs = [*self.layers[index].width_refs]
        if self.layers[index + 1].in_width_ref is not None:
            refs.append(self.layers[index + 1].in_width_ref)
        for ref in refs:
            value = np.array(ref.value, copy=True)
            value[-1] = width
            yield ref, value
        region = self.regions[index] if index < len(self.regions) else None
        for ref in () if region is None else region.feature_constants:
            shape = (*ref.value.shape[:-1], 1)
            yield ref, np.full(shape, ref.value.reshape(-1)[0], dtype=ref.value.dtype)

    def describe(self) -> str:
        parts = [self.layers[0].describe()]
        for activation, layer in zip(self.activations, self.layers[1:], strict=True):
            parts += [activation.describe(), layer.describe()]
        return " -> ".join(parts)


@dataclass
class GraphScan:
    """The chains found in a graph, and notes on what the reader left untouched."""

    chains: list[DenseChain]
    notes: list[str] = field(default_factory=list)


def scan_graph(graph: gs.Graph) -> GraphScan:
    """Find every maximal dense chain (two or more dense layers) in ``graph``."""
    reader = _Reader(graph)
    dense = []
    for node in graph.nodes:
        if node.op in ("Gemm", "MatMul"):
            layer = reader.read_dense(node)
            if layer is not None:
                dense.append(layer)
    by_output = {id(layer.output): layer for layer in dense}
    links = {}
    for nxt in dense:
        found = reader.link(nxt, by_output)
        if found is not None and id(found[0]) not in links:
            prev, activation, region = found
            links[id(prev)] = (activation, region, nxt)
    targets = {id(nxt) for _, _, nxt in links.values()}
    chains = []
    for layer in dense:
        if id(layer) in targets:
            continue
        layers, acts, act_nodes, regions = [layer], [], [], []
        while id(layers[-1]) in links:
            activation, region, nxt = links[id(layers[-1])]
            acts.append(activation)
            act_nodes.append(None if region is None else region.nodes[-1])
            regions.append(region)
            layers.append(nxt)
        if len(layers) > 1:
            chains.append(DenseChain(layers, acts, act_nodes, regions))
    reader.note_untouched(chains)
    return GraphScan(chains, reader.notes)


class _NoMatch(Exception):
    """The walk back from a dense layer's input found no activation subgraph."""

    def __init__(self, reason: str, node: gs.Node | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.node = node


@dataclass
class _Walk:
    """State of one backward walk from a dense layer's input."""

    by_output: dict[int, DenseLayer]
    source: gs.Tensor | None = None
    nodes: dict[int, gs.Node] = field(default_factory=dict)
    memo: dict[int, tuple] = field(default_factory=dict)
    constants: list[ConstantRef] = field(default_factory=list)


class _Reader:
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

    def _readers(self, tensor: gs.Tensor) -> list[gs.Node]:
        """The consumers of ``tensor`` that read more than its leading dimensions."""
        return [n for n in tensor.outputs if not self._reads_leading_dims(n, tensor)]

    def _reads_leading_dims(self, node: gs.Node, tensor: gs.Tensor) -> bool:
        """A ``Shape`` whose result only feeds Slices of the leading dims (onnxsim's
        reshape targets): it does not see the width, so it may stay when it changes."""
        if node.op != "Shape" or _domain(node):
            return False
        rank = _rank(tensor)
        if rank is None and node.outputs[0].shape:
            rank = node.outputs[0].shape[0] if isinstance(node.outputs[0].shape[0], int) else None
        if rank is None:
            return False
        start, end = node.attrs.get("start", 0), node.attrs.get("end")
        if end is not None:
            return _normalised(end, rank) <= rank - 1
        result = node.outputs[0]
        if self._exposed(result) or not result.outputs:
            return False
        for user in result.outputs:
            if user.op != "Slice" or user.inputs[0] is not result or len(user.inputs) < 3:
                return False
            bounds = [self._int_constant(user, i) for i in range(1, len(user.inputs))]
            if any(b is None or b.size != 1 for b in bounds):
                return False
            ends = int(bounds[1][0]) + start
            axes_ok = len(bounds) < 3 or int(bounds[2][0]) in (0, -1)
            steps_ok = len(bounds) < 4 or int(bounds[3][0]) == 1
            if not (axes_ok and steps_ok and _normalised(ends, rank) <= rank - 1):
                return False
        return True

    def _int_constant(self, node: gs.Node, index: int) -> np.ndarray | None:
        if index >= len(node.inputs) or not node.inputs[index].name:
            return None
        ref = self.resolve_constant(node, index)
        if ref is None or not np.issubdtype(ref.dtype, np.integer):
            return None
        return ref.value.reshape(-1)

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

    # -- linking ----------------------------------------------------------------
    def link(
        self, nxt: DenseLayer, by_output: dict[int, DenseLayer]
    ) -> tuple[DenseLayer, Activation, ActivationRegion | None] | None:
        """The (previous dense, activation, its subgraph) that ``nxt`` continues."""
        entry = nxt.entry
        prev = by_output.get(id(entry))
        if prev is not None:
            if not self._only_reader(entry, nxt.entry_node, prev):
                return None
            if prev.dtype != nxt.dtype:
                return None
            return prev, act.IDENTITY, None
        walk = _Walk(by_output)
        try:
            expression = self._expression(entry, walk)
        except _NoMatch as failure:
            self._note_no_match(failure, walk, nxt)
            return None
        prev = by_output[id(walk.source)]
        if prev.dtype != nxt.dtype or not self._region_is_closed(walk, prev, nxt):
            return None
        activation = act.match_expression(expression)
        region_ops = {n.op for n in walk.nodes.values()}
        if activation is None:
            self.note(
                f"the element-wise subgraph between {prev.describe()} and {nxt.describe()} "
                f"computes {act.render(expression)}, which is no registered activation; the "
                f"chain ends there (nearest patterns: {act.hint_for_ops(region_ops)})"
            )
            return None
        features = self._feature_constants(walk, prev)
        if features is None:
            return None
        ordered = tuple(n for n in self.graph.nodes if id(n) in walk.nodes)
        tensors = tuple(t for n in ordered for t in n.outputs)
        region = ActivationRegion(ordered, tensors, features, expression)
        return prev, activation, region

    def _only_reader(self, tensor: gs.Tensor, reader: gs.Node, prev: DenseLayer) -> bool:
        readers = self._readers(tensor)
        if self._exposed(tensor) or readers != [reader]:
            self._note_observable(prev, tensor, len(readers))
            return False
        return True

    def _region_is_closed(self, walk: _Walk, prev: DenseLayer, nxt: DenseLayer) -> bool:
        """No tensor of the subgraph is read outside it (but the last, by ``nxt`` only)."""
        inside = walk.nodes
        last = nxt.entry
        for tensor in [walk.source, *(t for n in inside.values() for t in n.outputs)]:
            readers = self._readers(tensor)
            if tensor is last:
                ok = readers == [nxt.entry_node]
            else:
                ok = all(id(r) in inside for r in readers)
            if self._exposed(tensor) or not ok:
                self._note_observable(prev, tensor, len(readers))
                return False
        return True

    def _feature_constants(self, walk: _Walk, prev: DenseLayer) -> tuple[ConstantRef, ...] | None:
        """Constants laid along the feature axis (one value repeated), to shrink with it."""
        resized = []
        for ref in walk.constants:
            value = ref.value
            if value.size <= 1:
                continue
            if value.shape[-1] != prev.out_features or value.size != value.shape[-1]:
                self.note(
                    f"constant '{ref.name}' of shape {value.shape} in the activation after "
                    f"{prev.describe()} does not broadcast along the features; the chain ends"
                )
                return None
            resized.append(ref)
        return tuple(resized)

    def _note_observable(self, layer: DenseLayer, tensor: gs.Tensor, readers: int) -> None:
        if tensor.name in self._graph_outputs:
            why = "is a graph output"
        elif tensor.name in self._used_in_subgraphs:
            why = "is read inside a subgraph"
        elif readers > 1:
            why = f"has {readers} consumers"
        else:
            why = "is read outside the activation"
        self.note(
            f"tensor '{tensor.name}' after {layer.describe()} {why}: "
            "a chain ends there and its neurons are kept"
        )

    def _note_no_match(self, failure: _NoMatch, walk: _Walk, nxt: DenseLayer) -> None:
        """Report an unknown op only where it sits between two dense layers."""
        node = failure.node
        if node is None:
            if walk.source is not None or walk.nodes:
                prev = walk.source and walk.by_output.get(id(walk.source))
                where = f"after {prev.describe()} " if prev else ""
                self.note(f"activation {where}before {nxt.describe()}: {failure.reason}")
            return
        prev = self._dense_behind(node, walk.by_output)
        if prev is None:
            return
        ops = {n.op for n in walk.nodes.values()} | {node.op}
        self.note(
            f"'{node.op}' (node '{node.name}') between {prev.describe()} and {nxt.describe()} "
            f"is not a registered element-wise activation, so the chain ends there; "
            f"it would need {act.hint_for_ops(ops)}"
        )

    def note_untouched(self, chains: list[DenseChain]) -> None:
        in_chains = set()
        for chain in chains:
            for layer in chain.layers:
                in_chains.update(id(n) for n in layer.nodes)
            for region in chain.regions:
                if region is not None:
                    in_chains.update(id(n) for n in region.nodes)
            in_chains.update(id(n) for n in chain.activation_nodes if n is not None)
        others = collections.Counter(
            n.op for n in self.graph.nodes if id(n) not in in_chains and n.op != "Constant"
        )
        if others:
            listed = ", ".join(f"{op} x{count}" for op, count in sorted(others.items()))
            self.note(f"left unchanged outside dense chains: {listed}")

    def _dense_behind(self, node: gs.Node, by_output: dict[int, DenseLayer]) -> DenseLayer | None:
        """A dense layer a few single-input nodes upstream of ``node``, if any."""
        for _ in range(8):
            data = [t for t in node.inputs if not isinstance(t, gs.Constant) and t.name]
            data = [t for t in data if not (t.inputs and t.inputs[0].op == "Constant")]
            if len(data) != 1:
                return None
            if id(data[0]) in by_output:
                return by_output[id(data[0])]
            if len(data[0].inputs) != 1:
                return None
            node = data[0].inputs[0]
        return None

    # -- the expression of an activation subgraph ----------------------------------
    def _expression(self, tensor: gs.Tensor, walk: _Walk) -> tuple:
        key = id(tensor)
        if key in walk.memo:
            return walk.memo[key]
        if key in walk.by_output:
            if walk.source is not None and walk.source is not tensor:
                raise _NoMatch("it reads two dense layers")
            walk.source = tensor
            return act.X
        if isinstance(tensor, gs.Constant) or len(tensor.inputs) != 1:
            raise _NoMatch("it reads a graph input or a constant only")
        node = tensor.inputs[0]
        if node.op == "Constant":
            raise _NoMatch("it is a constant")
        handler = _HANDLERS.get((_domain(node), node.op))
        if handler is None or len(node.outputs) != 1:
            raise _NoMatch(f"'{node.op}' is not a registered element-wise op", node)
        if len(walk.nodes) >= _MAX_REGION:
            raise _NoMatch("the subgraph is larger than any registered activation")
        walk.nodes[id(node)] = node
        expression = handler(self, node, walk)
        walk.memo[key] = expression
        return expression

    def operand(self, node: gs.Node, index: int, walk: _Walk) -> tuple:
        """Input ``index`` of ``node`` as an expression: a scalar constant or a subgraph."""
        tensor = node.inputs[index]
        if (
            not isinstance(tensor, gs.Constant)
            and tensor.inputs
            and tensor.inputs[0].op
            not in (
                "Constant",
                "Identity",
                "Transpose",
            )
        ):
            return self._expression(tensor, walk)
        ref = self.resolve_constant(node, index)
        if ref is None:
            return self._expression(tensor, walk)
        value = np.asarray(ref.value)
        if value.size == 0 or value.dtype.kind not in "fiub":
            raise _NoMatch(f"constant '{ref.name}' of {node.op} is not numeric", None)
        first = value.reshape(-1)[0]
        if not np.all(value == first):
            raise _NoMatch(
                f"constant '{ref.name}' of {node.op} '{node.name}' varies per feature "
                f"(shape {value.shape}); only one repeated value can stay in a narrower layer"
            )
        walk.constants.append(ref)
        return act.constant(float(first))

    def scalar(self, node: gs.Node, index: int, walk: _Walk, default: float) -> float:
        if index >= len(node.inputs) or not node.inputs[index].name:
            return default
        value = self.operand(node, index, walk)
        if value[0] != "const":
            raise _NoMatch(f"input {index} of {node.op} '{node.name}' is not a constant")
        return value[1]


def _rank(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


def _traced_rank(tensor: gs.Tensor, budget: list[int] | None = None) -> int | None:
    """The rank of ``tensor``, from its shape or, where exporters left none, traced back
    through ops whose output rank follows from their inputs': element-wise ones
    (broadcasting: the largest input rank), BatchNormalization, Gemm (2) and MatMul with
    a constant weight, which dense reading requires to be 2-D."""
    budget = [64] if budget is None else budget
    rank = _rank(tensor)
    if rank is not None or isinstance(tensor, gs.Constant) or len(tensor.inputs) != 1:
        return len(tensor.shape) if isinstance(tensor, gs.Constant) else rank
    budget[0] -= 1
    node = tensor.inputs[0]
    if budget[0] < 0:
        return None
    if node.op == "Gemm":
        return 2
    if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
        return len(node.attrs["value"].shape)
    if node.op == "MatMul":
        weight = node.inputs[1] if len(node.inputs) == 2 else None
        if weight is None or _traced_rank(weight, budget) != 2:
            return None
        return _traced_rank(node.inputs[0], budget)
    if node.op != "BatchNormalization" and (_domain(node), node.op) not in _HANDLERS:
        return None
    ranks = [_traced_rank(t, budget) for t in node.inputs if t.name]
    return None if not ranks or None in ranks else max(ranks)


def _domain(node: gs.Node) -> str:
    """The node's op domain, "" for the standard one."""
    domain = node.domain or ""
    return "" if domain in _STANDARD else domain


def _normalised(index: int, rank: int) -> int:
    return min(index + rank if index < 0 else index, rank)


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


# -- element-wise ops as expressions ----------------------------------------------------


def _unary(op: str, **defaults: float | str):
    def handle(reader: _Reader, node: gs.Node, walk: _Walk) -> tuple:
        arg = reader.operand(node, 0, walk)
        params = {k: node.attrs.get(k, v) for k, v in defaults.items()}
        params = {k: v.decode() if isinstance(v, bytes) else v for k, v in params.items()}
        params = {k: v if isinstance(v, str) else float(v) for k, v in params.items()}
        return act.fn(op, arg, **params)

    return handle


def _binary(combine):
    def handle(reader: _Reader, node: gs.Node, walk: _Walk) -> tuple:
        if len(node.inputs) != 2:
            raise _NoMatch(f"{node.op} '{node.name}' does not have two inputs")
        return combine(reader.operand(node, 0, walk), reader.operand(node, 1, walk))

    return handle


def _divide(a: tuple, b: tuple) -> tuple:
    if b[0] == "const":
        if b[1] == 0.0:
            raise _NoMatch("division by a zero constant")
        return act.mul(a, act.constant(1.0 / b[1]))
    return act.mul(a, act.power(b, -1.0))


def _pow(a: tuple, b: tuple) -> tuple:
    if b[0] != "const":
        raise _NoMatch("Pow with a non-constant exponent")
    return act.power(a, b[1])


def _extremum(kind: str):
    def handle(reader: _Reader, node: gs.Node, walk: _Walk) -> tuple:
        args = [reader.operand(node, i, walk) for i in range(len(node.inputs))]
        data = [a for a in args if a[0] != "const"]
        bounds = [a[1] for a in args if a[0] == "const"]
        if len(data) != 1 or not bounds:
            raise _NoMatch(f"{node.op} '{node.name}' needs one data input and constants")
        if kind == "Max":
            return act.fn("Clip", data[0], low=max(bounds))
        return act.fn("Clip", data[0], high=min(bounds))

    return handle


def _clip(reader: _Reader, node: gs.Node, walk: _Walk) -> tuple:
    arg = reader.operand(node, 0, walk)
    if reader._opset < 11 and ("min" in node.attrs or "max" in node.attrs):
        low = float(node.attrs.get("min", -math.inf))
        high = float(node.attrs.get("max", math.inf))
    else:
        low = reader.scalar(node, 1, walk, -math.inf)
        high = reader.scalar(node, 2, walk, math.inf)
    return act.fn("Clip", arg, low=low, high=high)


def _prelu(reader: _Reader, node: gs.Node, walk: _Walk) -> tuple:
    arg = reader.operand(node, 0, walk)
    slope = reader.operand(node, 1, walk)
    if slope[0] != "const":
        raise _NoMatch(f"PRelu '{node.name}' has a slope that is not a constant")
    return act.fn("PRelu", arg, alpha=slope[1])


def _compare(kind: str, flipped: str):
    def handle(reader: _Reader, node: gs.Node, walk: _Walk) -> tuple:
        a, b = reader.operand(node, 0, walk), reader.operand(node, 1, walk)
        if b[0] == "const" and a[0] != "const":
            return ("cmp", kind, a, b[1])
        if a[0] == "const" and b[0] != "const":
            return ("cmp", flipped, b, a[1])
        raise _NoMatch(f"{node.op} '{node.name}' does not compare with a constant")

    return handle


def _where(reader: _Reader, node: gs.Node, walk: _Walk) -> tuple:
    cond = reader.operand(node, 0, walk)
    if cond[0] != "cmp":
        raise _NoMatch(f"Where '{node.name}' has a condition that is not a comparison")
    return ("where", cond, reader.operand(node, 1, walk), reader.operand(node, 2, walk))


def _fast_gelu(reader: _Reader, node: gs.Node, walk: _Walk) -> tuple:
    if len(node.inputs) > 1 and node.inputs[1].name:
        raise _NoMatch(f"FastGelu '{node.name}' adds a bias of its own")
    return act.fn("Gelu", reader.operand(node, 0, walk), approximate="tanh")


_HANDLERS = {
    ("", "Identity"): lambda r, n, w: r.operand(n, 0, w),
    ("", "Add"): _binary(act.add),
    ("", "Sub"): _binary(lambda a, b: act.add(a, act.mul(act.constant(-1.0), b))),
    ("", "Mul"): _binary(act.mul),
    ("", "Div"): _binary(_divide),
    ("", "Pow"): _binary(_pow),
    ("", "Neg"): lambda r, n, w: act.mul(act.constant(-1.0), r.operand(n, 0, w)),
    ("", "Reciprocal"): lambda r, n, w: act.power(r.operand(n, 0, w), -1.0),
    ("", "Sqrt"): lambda r, n, w: act.power(r.operand(n, 0, w), 0.5),
    ("", "Max"): _extremum("Max"),
    ("", "Min"): _extremum("Min"),
    ("", "Clip"): _clip,
    ("", "PRelu"): _prelu,
    ("", "Greater"): _compare("gt", "lt"),
    ("", "GreaterOrEqual"): _compare("ge", "le"),
    ("", "Less"): _compare("lt", "gt"),
    ("", "LessOrEqual"): _compare("le", "ge"),
    ("", "Where"): _where,
    ("", "LeakyRelu"): _unary("LeakyRelu", alpha=0.01),
    ("", "Elu"): _unary("Elu", alpha=1.0),
    ("", "Selu"): _unary("Selu", alpha=1.67326319217681884765625, gamma=1.05070102214813232421875),
    ("", "Celu"): _unary("Celu", alpha=1.0),
    ("", "HardSigmoid"): _unary("HardSigmoid", alpha=0.2, beta=0.5),
    ("", "Gelu"): _unary("Gelu", approximate="none"),
    ("com.microsoft", "Gelu"): _unary("Gelu", approximate="none"),
    ("com.microsoft", "FastGelu"): _fast_gelu,
    ("com.microsoft", "QuickGelu"): _unary("QuickGelu", alpha=1.702),
    **{
        ("", op): _unary(op)
        for op in (
            "Relu",
            "Tanh",
            "Sigmoid",
            "Softplus",
            "Softsign",
            "HardSwish",
            "Mish",
            "Erf",
            "Exp",
            "Log",
            "Abs",
        )
    },
}
