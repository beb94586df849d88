"""Stage 1: find the dense chains of an ONNX graph.

A dense layer computes ``y = x @ W.T + b`` with constant ``W`` and ``b``; the reader
recognises these forms exporters emit:

1. ``Gemm`` with any ``alpha``/``beta``, ``transA=0``, ``transB`` 0 or 1 and an optional
   bias ``C`` that is a scalar, 1-D or ``(1, H)``;
2. ``MatMul`` followed by ``Add`` with the bias as either input (PyTorch puts it first),
   or a bias-free ``MatMul``; the data input may be rank 2 or higher (batched MatMul);
3. weights held as initializers, ``Constant`` nodes, or behind ``Identity``/``Transpose``.

A chain is a maximal run ``dense -> activation -> dense -> ...`` where the activation is
Relu, LeakyRelu, Tanh, Sigmoid or absent. A hidden tensor that is a graph output or has
another consumer ends the chain there, so its neurons are never merged. The reader knows
nothing of epsilon: it only returns numbers in float64 plus handles for the rewrite.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnx_lump.activations import Activation, ActivationKind

__all__ = ["ConstantRef", "DenseChain", "DenseLayer", "GraphScan", "scan_graph"]

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)
_ACTIVATION_OPS = {
    "Relu": ActivationKind.RELU,
    "LeakyRelu": ActivationKind.LEAKY_RELU,
    "Tanh": ActivationKind.TANH,
    "Sigmoid": ActivationKind.SIGMOID,
}


@dataclass(eq=False)
class ConstantRef:
    """Where a constant input of a node comes from, so it can be rewritten later.

    ``path`` lists the Identity/Transpose nodes between the consumer's input (first)
    and the root (last); ``value`` is what the consumer sees. ``exclusive`` is true when
    nothing but this consumer reads the root or any tensor on the path, so the root may
    be rewritten in place.
    """

    consumer: gs.Node
    input_index: int
    root: gs.Constant | gs.Node
    path: tuple[gs.Node, ...]
    value: np.ndarray
    exclusive: bool

    @property
    def name(self) -> str:
        return self.root.name if isinstance(self.root, gs.Constant) else self.root.outputs[0].name


@dataclass(eq=False)
class DenseLayer:
    """One dense layer, ``output = input @ weight.T + bias``, in float64."""

    node: gs.Node
    weight: np.ndarray
    bias: np.ndarray
    weight_ref: ConstantRef
    bias_ref: ConstantRef | None
    bias_add: gs.Node | None
    output: gs.Tensor
    dtype: np.dtype
    alpha: float = 1.0
    beta: float = 1.0
    trans_b: bool = False

    @property
    def name(self) -> str:
        return self.node.name or self.output.name

    @property
    def input(self) -> gs.Tensor:
        return self.node.inputs[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def n_params(self) -> int:
        has_bias = self.bias_ref is not None
        return self.weight.size + (self.out_features if has_bias else 0)

    def describe(self) -> str:
        op = self.node.op if self.bias_add is None else "MatMul+Add"
        return f"{op} '{self.name}' ({self.in_features}->{self.out_features})"


@dataclass(eq=False)
class DenseChain:
    """Dense layers joined by element-wise activations; ``activations[i]`` sits between
    ``layers[i]`` and ``layers[i + 1]`` (identity when ``activation_nodes[i]`` is None)."""

    layers: list[DenseLayer]
    activations: list[Activation]
    activation_nodes: list[gs.Node | None]

    @property
    def hidden_widths(self) -> list[int]:
        return [layer.out_features for layer in self.layers[:-1]]

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)

    def describe(self) -> str:
        parts = [self.layers[0].describe()]
        for act, layer in zip(self.activations, self.layers[1:], strict=True):
            parts += [act.describe(), layer.describe()]
        return " -> ".join(parts)


@dataclass
class GraphScan:
    """The chains found in a graph, and notes on what the reader left untouched."""

    chains: list[DenseChain]
    notes: list[str] = field(default_factory=list)


def scan_graph(graph: gs.Graph) -> GraphScan:
    """Find every maximal dense chain (two or more dense layers) in ``graph``."""
    reader = _Reader(graph)
    dense_by_node = {}
    for node in graph.nodes:
        if node.op in ("Gemm", "MatMul"):
            layer = reader.read_dense(node)
            if layer is not None:
                dense_by_node[id(node)] = layer
    links = {}
    for layer in dense_by_node.values():
        link = reader.follow(layer, dense_by_node)
        if link is not None:
            links[id(layer)] = link
    targets = {id(nxt) for _, _, nxt in links.values()}
    chains = []
    for layer in dense_by_node.values():
        if id(layer) in targets:
            continue
        layers, acts, act_nodes = [layer], [], []
        while id(layers[-1]) in links:
            act, act_node, nxt = links[id(layers[-1])]
            acts.append(act)
            act_nodes.append(act_node)
            layers.append(nxt)
        if len(layers) > 1:
            chains.append(DenseChain(layers, acts, act_nodes))
    reader.note_untouched(chains)
    return GraphScan(chains, reader.notes)


class _Reader:
    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.notes: list[str] = []
        self._graph_outputs = {t.name for t in graph.outputs}
        self._used_in_subgraphs = _names_used_in_subgraphs(graph)

    def note(self, message: str) -> None:
        logger.info(message)
        self.notes.append(message)

    def is_observable(self, tensor: gs.Tensor) -> bool:
        """True when something besides a single consumer node reads ``tensor``."""
        return (
            tensor.name in self._graph_outputs
            or tensor.name in self._used_in_subgraphs
            or len(tensor.outputs) != 1
        )

    # -- constants -------------------------------------------------------------
    def resolve_constant(self, node: gs.Node, index: int) -> ConstantRef | None:
        tensor = node.inputs[index]
        path: list[gs.Node] = []
        exclusive = True
        while True:
            if isinstance(tensor, gs.Constant):
                exclusive &= not self.is_observable(tensor)
                root, value = tensor, tensor.values
                break
            exclusive &= not self.is_observable(tensor)
            if len(tensor.inputs) != 1:
                return None
            producer = tensor.inputs[0]
            if producer.op == "Constant" and isinstance(producer.attrs.get("value"), gs.Constant):
                root, value = producer, producer.attrs["value"].values
                break
            if producer.op in ("Identity", "Transpose") and len(producer.inputs) == 1:
                path.append(producer)
                tensor = producer.inputs[0]
                continue
            return None
        value = np.asarray(value)
        for step in reversed(path):
            if step.op == "Transpose":
                value = np.transpose(value, step.attrs.get("perm"))
        return ConstantRef(node, index, root, tuple(path), value, exclusive)

    # -- dense layers -----------------------------------------------------------
    def read_dense(self, node: gs.Node) -> DenseLayer | None:
        if node.op == "Gemm":
            return self._read_gemm(node)
        return self._read_matmul(node)

    def _weight(self, node: gs.Node, index: int) -> ConstantRef | None:
        if len(node.inputs) <= index or isinstance(node.inputs[0], gs.Constant):
            return None
        ref = self.resolve_constant(node, index)
        if ref is None:
            return None  # activations times activations: not a dense layer
        if ref.value.ndim != 2 or ref.value.dtype.type not in _FLOAT_DTYPES:
            self.note(
                f"{node.op} '{node.name}': weight '{ref.name}' has shape {ref.value.shape} and "
                f"dtype {ref.value.dtype}; only 2-D float16/32/64 weights are read, node left as is"
            )
            return None
        return ref

    def _bias(self, ref: ConstantRef, out_features: int, max_rank: int) -> np.ndarray | None:
        """The bias as a vector, or None when it does not broadcast like a per-neuron bias."""
        value = ref.value
        if value.dtype.type not in _FLOAT_DTYPES or value.ndim > max_rank:
            return None
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
        stored = weight_ref.value if trans_b else weight_ref.value.T
        weight = np.array(stored, dtype=np.float64, order="C")
        if alpha != 1.0:
            weight *= alpha
        bias_ref = None
        bias = np.zeros(weight.shape[0])
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias_ref = self.resolve_constant(node, 2)
            vector = None if bias_ref is None else self._bias(bias_ref, weight.shape[0], 2)
            if vector is None:
                self.note(
                    f"Gemm '{node.name}': bias C is not a constant per-neuron bias; left as is"
                )
                return None
            bias = beta * vector
        return DenseLayer(
            node,
            weight,
            bias,
            weight_ref,
            bias_ref,
            None,
            node.outputs[0],
            weight_ref.value.dtype,
            alpha=alpha,
            beta=beta,
            trans_b=trans_b,
        )

    def _read_matmul(self, node: gs.Node) -> DenseLayer | None:
        weight_ref = self._weight(node, 1)
        if weight_ref is None:
            return None
        data_rank = _rank(node.inputs[0])
        if data_rank is not None and data_rank < 2:
            self.note(f"MatMul '{node.name}': rank-{data_rank} input is not read as a dense layer")
            return None
        weight = np.array(weight_ref.value.T, dtype=np.float64, order="C")
        out = node.outputs[0]
        bias, bias_ref, bias_add, output = np.zeros(weight.shape[0]), None, None, out
        if not self.is_observable(out) and out.outputs[0].op == "Add":
            add = out.outputs[0]
            bias_index = 1 if add.inputs[0] is out else 0
            if add.inputs[bias_index] is not out:
                ref = self.resolve_constant(add, bias_index)
                vector = None
                if ref is not None:
                    vector = self._bias(ref, weight.shape[0], max(data_rank or 2, 2))
                if vector is not None:
                    bias, bias_ref, bias_add, output = vector, ref, add, add.outputs[0]
        return DenseLayer(
            node, weight, bias, weight_ref, bias_ref, bias_add, output, weight_ref.value.dtype
        )

    # -- linking ----------------------------------------------------------------
    def follow(
        self, layer: DenseLayer, dense_by_node: dict[int, DenseLayer]
    ) -> tuple[Activation, gs.Node | None, DenseLayer] | None:
        """The (activation, its node, next dense) that continues a chain after ``layer``."""
        tensor = layer.output
        if self.is_observable(tensor):
            self._note_observable(layer, tensor)
            return None
        consumer = tensor.outputs[0]
        nxt = dense_by_node.get(id(consumer))
        if nxt is not None and nxt.input is tensor:
            if nxt.dtype != layer.dtype:
                return None
            return Activation(ActivationKind.IDENTITY), None, nxt
        kind = _ACTIVATION_OPS.get(consumer.op)
        if kind is None or consumer.inputs[0] is not tensor:
            return None
        activated = consumer.outputs[0]
        if self.is_observable(activated):
            self._note_observable(layer, activated)
            return None
        nxt = dense_by_node.get(id(activated.outputs[0]))
        if nxt is None or nxt.input is not activated or nxt.dtype != layer.dtype:
            return None
        alpha = (
            float(consumer.attrs.get("alpha", 0.01)) if kind is ActivationKind.LEAKY_RELU else 0.0
        )
        return Activation(kind, alpha), consumer, nxt

    def _note_observable(self, layer: DenseLayer, tensor: gs.Tensor) -> None:
        continues = any(
            c.op in _ACTIVATION_OPS or c.op in ("Gemm", "MatMul") for c in tensor.outputs
        )
        if not continues:
            return  # the chain's natural end, nothing to report
        if tensor.name in self._graph_outputs:
            why = "is a graph output"
        elif tensor.name in self._used_in_subgraphs:
            why = "is read inside a subgraph"
        elif len(tensor.outputs) > 1:
            why = f"has {len(tensor.outputs)} consumers"
        else:
            return
        self.note(
            f"tensor '{tensor.name}' after {layer.describe()} {why}: "
            "a chain ends there and its neurons are kept"
        )

    def note_untouched(self, chains: list[DenseChain]) -> None:
        in_chains = set()
        for chain in chains:
            for layer in chain.layers:
                in_chains.update(id(n) for n in (layer.node, layer.bias_add) if n is not None)
            in_chains.update(id(n) for n in chain.activation_nodes if n is not None)
        others = collections.Counter(
            n.op for n in self.graph.nodes if id(n) not in in_chains and n.op != "Constant"
        )
        if others:
            listed = ", ".join(f"{op} x{count}" for op, count in sorted(others.items()))
            self.note(f"left unchanged outside dense chains: {listed}")


def _rank(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


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
