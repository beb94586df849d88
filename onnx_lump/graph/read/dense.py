"""What stage 1 hands on: the dense layer the pass works on (:class:`DenseLayer`), the
:class:`ConstantRef` handles that say where each constant lives, so the rewrite can change
it in place and the weights stay on disk until a chain needs them, and the chains of
layers joined by activations (:class:`DenseChain`, each activation subgraph an
:class:`ActivationRegion`). Only types live here: reading a layer from the many forms
exporters give is :mod:`onnx_lump.graph.read.dense_reader`'s, and the walk that links
layers into chains is :mod:`onnx_lump.graph.read.links`'.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from onnx_lump.activations import Activation
from onnx_lump.activations import expressions as ex

__all__ = [
    "ActivationRegion",
    "ConstantRef",
    "DenseChain",
    "DenseLayer",
    "qualified",
    "same_memory",
]


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
        the graph came from :func:`onnx_lump.graph.write.importer.import_graph` and the
        constant was not read yet (``shared``: see
        :func:`onnx_lump.graph.io.tensordata.tensor_view`); the value read otherwise."""
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
    output width (rewritten when the width changes). ``bias_holder`` is the node after the
    layer that adds its bias where onnxruntime's optimizer fused the bias Add into the next
    op (``BiasGelu``, ``FastGelu``, ``SkipLayerNormalization``): ``bias_ref`` is then that
    node's input and ``output`` holds the product without the bias.
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
    bias_holder: gs.Node | None = None
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

    @property
    def held(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The (stored, float64) weight arrays this layer holds so far, without reading
        either: the report keeps a weight by the map it came from where it is one of
        them (see :mod:`onnx_lump.pipeline.keep`)."""
        return self._stored, self._weight

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
        if same_memory(weight, stored):
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
        if self.bias_holder is not None:
            op += f"(+bias in {self.bias_holder.op})"
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
    expression: tuple = ex.X  # of the gate's output, for a gated FFN
    gate: DenseLayer | None = None  # hidden = activation(gate(x)) * up(x) where given


@dataclass(eq=False)
class DenseChain:
    """Dense layers joined by element-wise activations; ``activations[i]`` sits between
    ``layers[i]`` and ``layers[i + 1]`` (identity when ``activation_nodes[i]`` is None;
    for a decomposed activation ``activation_nodes[i]`` is its last node and
    ``regions[i]`` holds all of them).

    A gated FFN is a chain of its own, ``[up, down]`` with ``gate`` set: hidden neuron i is
    ``activations[0](gate row i . x) * (up row i . x)``; the reader joins no other layer
    to it, so the compressors that read it (:mod:`onnx_lump.methods.gated`) see exactly
    these three layers."""

    layers: list[DenseLayer]
    activations: list[Activation]
    activation_nodes: list[gs.Node | None]
    regions: list[ActivationRegion | None] = field(default_factory=list)

    @property
    def gate(self) -> DenseLayer | None:
        """The gate layer of a gated FFN (None for an ordinary chain)."""
        return self.regions[0].gate if self.regions and self.regions[0] is not None else None

    @property
    def all_layers(self) -> list[DenseLayer]:
        """Every dense layer the chain owns: ``layers`` and the gate, if any."""
        gate = self.gate
        return [*self.layers, gate] if gate is not None else list(self.layers)

    @property
    def hidden_widths(self) -> list[int]:
        return [layer.out_features for layer in self.layers[:-1]]

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.all_layers)

    def hidden_tensors(self, index: int) -> list[gs.Tensor]:
        """Every tensor whose last axis is hidden layer ``index``."""
        tensors = list(self.layers[index].output_tensors)
        region = self.regions[index] if index < len(self.regions) else None
        node = self.activation_nodes[index]
        if region is not None:
            tensors += region.tensors
            if region.gate is not None:
                tensors += region.gate.output_tensors
        elif node is not None:
            tensors.append(node.outputs[0])
        following = self.layers[index + 1]
        if following.in_reshape is not None:
            tensors.append(following.in_reshape.outputs[0])
        return tensors

    def resized_constants(self, index: int, width: int) -> Iterator[tuple[ConstantRef, np.ndarray]]:
        """(constant, new value as its consumer sees it) for hidden layer ``index`` at
        ``width``: Reshape shapes end in the width, repeated per-feature values shrink to
        one entry (they broadcast)."""
        refs = [*self.layers[index].width_refs]
        in_width_ref = self.layers[index + 1].in_width_ref
        if in_width_ref is not None:
            refs.append(in_width_ref)
        region = self.regions[index] if index < len(self.regions) else None
        if region is not None and region.gate is not None:
            refs += region.gate.width_refs
        for ref in refs:
            value = np.array(ref.value, copy=True)
            value[-1] = width
            yield ref, value
        for ref in () if region is None else region.feature_constants:
            shape = (*ref.value.shape[:-1], 1)
            yield ref, np.full(shape, ref.value.reshape(-1)[0], dtype=ref.value.dtype)

    def describe(self) -> str:
        gate = self.gate
        if gate is not None:
            up, down = self.layers
            act_name = self.activations[0].describe()
            return f"gated FFN {act_name}({gate.describe()}) * {up.describe()} -> {down.describe()}"
        parts = [self.layers[0].describe()]
        for activation, layer in zip(self.activations, self.layers[1:], strict=True):
            parts += [activation.describe(), layer.describe()]
        return " -> ".join(parts)


def qualified(node: gs.Node) -> str:
    """The node's op, prefixed by its domain where that is not the standard one."""
    domain = node.domain or ""
    return node.op if domain in ("", "ai.onnx") else f"{domain}:{node.op}"


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays read the same elements from the same bytes."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )
