"""Stage 5: write reduced weights back into the graph and export the model.

Rules, in the order they apply to each constant input of a dense layer:

1. the new value is cast to the dtype the model already uses and laid out as the node
   expects it (``transB``, ``alpha``/``beta`` and any Identity/Transpose in between);
2. a constant read only by this layer is rewritten in place and keeps its name;
3. a constant shared with other nodes is left intact, and the layer gets a new
   initializer named ``<name>_lumped``; Identity/Transpose nodes left without readers go;
4. a bias that must appear where there was none becomes Gemm's ``C`` or a new ``Add``;
5. shapes recorded for tensors whose width changed are dropped, so no stale
   ``value_info`` survives.

The output is the ORIGINAL ModelProto with the rewrite's changes applied to it, not an
export of the graphsurgeon graph: every node keeps its doc string, metadata and attributes
unless the rewrite changed them; initializers, sparse initializers, graph inputs/outputs
(IR 3 initializer inputs, skl2onnx's ZipMap sequence types) and value_info keep their
protos; an unchanged tensor stays what it was, external-data reference included, so a
model that lives on disk is never read whole. Model-level fields (ir_version, opsets,
metadata, doc strings, functions) are copied unchanged.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx.external_data_helper import uses_external_data
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnx_lump.graph.chains import ConstantRef, DenseChain, DenseLayer
from onnx_lump.graph.modelio import external_data_dir, tensor_array, tensor_view
from onnx_lump.methods.base import Shortcut
from onnx_lump.ode.reduction import ReducedLayer

if TYPE_CHECKING:
    from onnx_lump.graph.spill import Spill

__all__ = ["export_model", "import_graph", "release_chain", "rewrite_chain"]

# Attributes this module sets on graphsurgeon objects (they are plain Python objects).
_INDEX = "_onnx_lump_index"  # position of a node in the original graph
_OUTPUTS = "_onnx_lump_outputs"  # a node's output names before the rewrite renamed one
_WRITTEN = "_onnx_lump_written"  # a constant whose values the rewrite replaced
_PRISTINE = "_onnx_lump_pristine"  # (weakref to the loaded array, its lazy source)

logger = logging.getLogger(__name__)


def rewrite_chain(
    graph: gs.Graph,
    chain: DenseChain,
    reduced: list[ReducedLayer],
    shortcuts: Sequence[Shortcut] = (),
    spill: Spill | None = None,
) -> bool:
    """Replace the parameters of every layer of ``chain`` by ``reduced`` and add
    ``shortcuts``, in place; returns whether anything changed. With ``spill``, every
    tensor written is moved to its file at once, so the graph holds references only."""
    names = _NameSource(graph, spill)
    changed = bool(shortcuts)
    # Listed before the writes: a bias Add given to a bias-free MatMul takes over its output.
    hidden = [chain.hidden_tensors(index) for index in range(len(chain.layers) - 1)]
    for layer, new in zip(chain.layers, reduced, strict=True):
        same_shape = tuple(new.weight.shape) == tuple(layer.shape)
        if (
            same_shape
            and np.array_equal(new.weight, layer.weight)
            and np.array_equal(new.bias, layer.bias)
        ):
            continue
        changed = True
        if layer.batch_norm is not None:
            _drop_batch_norm(graph, layer)
        _write_weight(graph, layer, new.weight, names)
        _write_bias(graph, layer, new.bias, names)
    for index, (layer, new) in enumerate(zip(chain.layers[:-1], reduced, strict=False)):
        if new.out_features != layer.out_features:
            for tensor in hidden[index]:
                tensor.shape = None
            # Reshape targets that spell the width, per-feature activation constants
            for ref, value in chain.resized_constants(index, new.out_features):
                _write_constant(graph, ref, value, names)
    for shortcut in shortcuts:
        _add_shortcut(graph, chain, shortcut, names)
    return changed


class _SpilledValues(LazyValues):
    """Values the rewrite wrote, moved to a spill file; exported as the external
    reference they are, read back only if someone asks for them."""

    def load(self) -> np.ndarray:
        return tensor_array(self.tensor)

    def map_values(self, shared: bool = False) -> np.ndarray:
        return tensor_view(self.tensor, None, shared)


def _spill_constant(constant: gs.Constant, spill: Spill) -> None:
    values = constant._values
    if not isinstance(values, np.ndarray):
        return
    tensor = spill.tensor(constant.name, values)
    if tensor is not None:
        constant._values = _SpilledValues(tensor)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``gs.import_onnx(model)``, with each node tagged by its position in ``model`` and
    every constant loaded lazily: external data is read from the model's folder (see
    :func:`onnx_lump.graph.modelio.load_model`) only when a value is needed, and
    :func:`release_chain` can hand an unchanged value's memory back."""
    graph = gs.import_onnx(model)
    base = external_data_dir(model)
    for index, node in enumerate(graph.nodes):
        setattr(node, _INDEX, index)
    for constant in _graph_constants(graph):
        values = constant._values
        if isinstance(values, LazyValues) and not isinstance(values, SparseValues):
            constant._values = _PristineValues(values.tensor, constant, base)
    return graph


class _PristineValues(LazyValues):
    """Lazy values that read external data from a known folder and remember the array
    they produced, so an unchanged constant can be told apart and released."""

    def __init__(self, tensor: onnx.TensorProto, owner: gs.Constant, base) -> None:
        super().__init__(tensor)
        self._owner = weakref.ref(owner)
        self._base = base

    def load(self) -> np.ndarray:
        if uses_external_data(self.tensor):
            array = tensor_array(self.tensor, self._base)
        else:
            array = np.array(onnx.numpy_helper.to_array(self.tensor))
        owner = self._owner()
        if owner is not None:
            setattr(owner, _PRISTINE, (weakref.ref(array), self))
        return array

    def map_values(self, shared: bool = False) -> np.ndarray:
        """The values without loading them into the constant: a memory map of external
        data (see :func:`onnx_lump.graph.modelio.tensor_view`), else the proto's values."""
        if uses_external_data(self.tensor):
            return tensor_view(self.tensor, self._base, shared)
        return onnx.numpy_helper.to_array(self.tensor)


def _graph_constants(graph: gs.Graph) -> list[gs.Constant]:
    found = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Constant):
                found.append(value)
            for sub in value if isinstance(value, list) else [value]:
                if isinstance(sub, gs.Graph):
                    found += _graph_constants(sub)
    return found


def release_chain(chain: DenseChain) -> None:
    """Return the memory of the chain: the layers' float64 weights, and the values of the
    constants the rewrite did not change (lazy again, read from disk or proto if needed
    later)."""
    for layer in chain.layers:
        layer.release()
        for ref in (layer.weight_ref, layer.bias_ref):
            if ref is None:
                continue
            root = ref.root
            constant = root if isinstance(root, gs.Constant) else root.attrs.get("value")
            if isinstance(constant, gs.Constant) and isinstance(constant._values, LazyValues):
                continue  # never read, or already handed back
            if isinstance(constant, gs.Constant) and _is_pristine(constant):
                constant._values = getattr(constant, _PRISTINE)[1]


def _is_pristine(constant: gs.Constant) -> bool:
    """True when the constant's values are still what was loaded, or were never loaded."""
    if getattr(constant, _WRITTEN, False):
        return False
    if isinstance(constant._values, LazyValues):
        return True
    pristine = getattr(constant, _PRISTINE, None)
    return pristine is not None and pristine[0]() is constant._values


def export_model(
    graph: gs.Graph | None, original: onnx.ModelProto, metadata: dict[str, str]
) -> onnx.ModelProto:
    """``original`` with the changes made to ``graph`` (imported from it) applied, and
    ``metadata`` added; with no graph (nothing was rewritten), a copy of ``original``."""
    model = onnx.ModelProto()
    if graph is None:
        model.CopyFrom(original)
        _set_metadata(model, metadata)
        return model
    for descriptor, value in original.ListFields():  # all but the graph, without copying it
        if descriptor.name == "graph":
            continue
        if _is_repeated(descriptor):
            getattr(model, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(model, descriptor.name).CopyFrom(value)
        else:
            setattr(model, descriptor.name, value)
    _Merger(graph, original.graph, external_data_dir(original)).into(model.graph)
    _set_metadata(model, metadata)
    return model


class _Merger:
    """Applies what differs between a graphsurgeon graph and the GraphProto it was
    imported from onto a copy of that GraphProto."""

    def __init__(self, graph: gs.Graph, original: onnx.GraphProto, base) -> None:
        self.graph = graph
        self.original = original
        self.base = base
        self.tensors = graph.tensors()

    def into(self, out: onnx.GraphProto) -> None:
        original = self.original
        for descriptor, value in original.ListFields():
            if descriptor.name in ("node", "initializer", "value_info", "input", "output"):
                continue
            if _is_repeated(descriptor):
                getattr(out, descriptor.name).extend(value)
            elif descriptor.message_type is not None:
                getattr(out, descriptor.name).CopyFrom(value)
            else:
                setattr(out, descriptor.name, value)
        out.node.extend(self._nodes())
        changed_shapes = self._initializers(out)
        self._values_info(out)
        kept = {t.name for t in out.initializer}
        out.input.extend(self._io(self.graph.inputs, original.input, changed_shapes, kept))
        out.output.extend(self._io(self.graph.outputs, original.output, changed_shapes, kept))

    # -- nodes -------------------------------------------------------------------------
    def _nodes(self) -> list[onnx.NodeProto]:
        original = self.original.node
        by_name: dict[str, int] = {}
        for index, node in enumerate(original):
            by_name[node.name] = -1 if node.name in by_name else index
        by_outputs = {tuple(node.output): index for index, node in enumerate(original)}
        out = []
        for node in self.graph.nodes:
            index = getattr(node, _INDEX, None)
            if index is None:  # a graph that did not come from import_graph
                index = by_name.get(node.name, -1) if node.name else -1
                if index < 0:
                    outputs = getattr(node, _OUTPUTS, None) or tuple(t.name for t in node.outputs)
                    index = by_outputs.get(tuple(outputs), -1)
            if 0 <= index < len(original) and original[index].op_type == node.op:
                out.append(self._patched(node, original[index]))
            else:
                out.append(OnnxExporter.export_node(node))
        return out

    def _patched(self, node: gs.Node, before: onnx.NodeProto) -> onnx.NodeProto:
        proto = onnx.NodeProto()
        proto.CopyFrom(before)
        inputs = [t.name for t in node.inputs]
        if list(proto.input) != inputs:
            del proto.input[:]
            proto.input.extend(inputs)
        outputs = [t.name for t in node.outputs]
        if list(proto.output) != outputs:
            del proto.output[:]
            proto.output.extend(outputs)
        if node.name != proto.name:
            proto.name = node.name
        kept, seen, modified = [], set(), False
        for attr in proto.attribute:
            seen.add(attr.name)
            if attr.name not in node.attrs:
                modified = True  # the rewrite removed it
                continue
            value = node.attrs[attr.name]
            if self._same_attribute(attr, value):
                kept.append(attr)
            else:
                kept += OnnxExporter.export_attributes({attr.name: value})
                modified = True
        added = {k: v for k, v in node.attrs.items() if k not in seen}
        if added:
            kept += OnnxExporter.export_attributes(added)
            modified = True
        if modified:
            copies = []
            for attr in kept:
                item = onnx.AttributeProto()
                item.CopyFrom(attr)
                copies.append(item)
            del proto.attribute[:]
            proto.attribute.extend(copies)
        return proto

    def _same_attribute(self, attr: onnx.AttributeProto, value) -> bool:
        kind = onnx.AttributeProto
        if attr.ref_attr_name or attr.type not in (
            kind.FLOAT,
            kind.INT,
            kind.STRING,
            kind.FLOATS,
            kind.INTS,
            kind.STRINGS,
            kind.TENSOR,
        ):
            return True  # subgraphs, sparse tensors, types: the pass never edits them
        if attr.type == kind.TENSOR:
            return isinstance(value, gs.Constant) and not self._changed(value, attr.t)
        before = helper.get_attribute_value(attr)
        if attr.type == kind.STRING:
            before = before.decode("utf-8", "replace")
        elif attr.type == kind.STRINGS:
            before = [b.decode("utf-8", "replace") for b in before]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, tuple):
            value = list(value)
        if attr.type == kind.FLOAT:
            return isinstance(value, (int, float)) and (
                float(value) == before or (np.isnan(before) and np.isnan(float(value)))
            )
        return before == value

    # -- tensors -----------------------------------------------------------------------
    def _changed(self, constant: gs.Constant, before: onnx.TensorProto) -> bool:
        if getattr(constant, _WRITTEN, False):
            return True
        if _is_pristine(constant):
            return False
        values = np.asarray(constant.values)
        if tuple(values.shape) != tuple(before.dims):
            return True
        old = tensor_array(before, self.base)
        if values.dtype != old.dtype:
            return True
        return not np.array_equal(values, old, equal_nan=values.dtype.kind in "fc")

    def _initializers(self, out: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
        """Fill out.initializer; returns the tensors whose shape changed, by name."""
        constants = {
            name: t
            for name, t in self.tensors.items()
            if isinstance(t, gs.Constant) and not isinstance(t._values, SparseValues)
        }
        inputs = {v.name for v in self.original.input}
        read_now = _names_read(out) | inputs | {t.name for t in self.graph.outputs}
        read_before = _names_read(self.original) | inputs
        sparse = {t.values.name for t in self.original.sparse_initializer}
        reshaped, present = {}, set()
        for tensor in self.original.initializer:
            present.add(tensor.name)
            if tensor.name in read_before and tensor.name not in read_now:
                continue  # the rewrite left it without readers
            constant = constants.get(tensor.name)
            if constant is None or not self._changed(constant, tensor):
                out.initializer.append(tensor)
                continue
            new = _tensor_like(constant, tensor, out.initializer.add())
            if tuple(new.dims) != tuple(tensor.dims):
                reshaped[tensor.name] = new
        for name, constant in constants.items():
            if name not in present and name not in sparse and name in read_now:
                out.initializer.append(OnnxExporter.export_tensor_proto(constant))
        return reshaped

    def _values_info(self, out: onnx.GraphProto) -> None:
        for info in self.original.value_info:
            tensor = self.tensors.get(info.name)
            if tensor is None or isinstance(tensor, gs.Constant):
                continue  # the tensor is gone
            had_shape = info.type.HasField("tensor_type") and info.type.tensor_type.HasField(
                "shape"
            )
            if had_shape and tensor.shape is None:
                continue  # the rewrite dropped a shape that changed
            out.value_info.append(info)

    def _io(
        self,
        tensors: Sequence[gs.Tensor],
        before: Sequence[onnx.ValueInfoProto],
        reshaped: dict[str, onnx.TensorProto],
        kept: set[str],
    ) -> list[onnx.ValueInfoProto]:
        """The graph's inputs or outputs as the original protos. Initializers listed as
        inputs (IR 3), which graphsurgeon does not list, stay while the initializer does."""
        initializers = {t.name for t in self.original.initializer}
        by_name = {v.name: v for v in before}
        names = [t.name for t in tensors]
        if names == [v.name for v in before if v.name not in initializers or v.name in names]:
            chosen = [v for v in before if v.name not in initializers or v.name in kept]
        else:  # someone changed the graph's interface: follow the graph
            chosen = [
                by_name.get(t.name) or OnnxExporter.export_value_info_proto(t, do_type_check=False)
                for t in tensors
            ]
        result = []
        for info in chosen:
            if info.name in reshaped:  # an IR 3 initializer input the rewrite resized
                info = _resized(info, reshaped[info.name].dims)
            result.append(info)
        return result


def _resized(info: onnx.ValueInfoProto, dims: Sequence[int]) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    shape = copy.type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        shape.dim.add(dim_value=dim)
    return copy


def _tensor_like(
    constant: gs.Constant, before: onnx.TensorProto, into: onnx.TensorProto
) -> onnx.TensorProto:
    """Fill ``into`` with the constant's new values, keeping ``before``'s name, type, doc
    string and metadata; the bytes are copied once, straight into the output proto (a
    spilled constant keeps its external reference: its bytes are copied on save)."""
    if isinstance(constant._values, _SpilledValues) and (
        constant._values.tensor.data_type == before.data_type
    ):
        spilled = constant._values.tensor
        into.name = before.name
        into.data_type = before.data_type
        into.dims.extend(spilled.dims)
        into.data_location = onnx.TensorProto.EXTERNAL
        into.external_data.extend(spilled.external_data)
        into.doc_string = before.doc_string
        if hasattr(before, "metadata_props"):
            into.metadata_props.extend(before.metadata_props)
        return into
    values = np.asarray(constant.values)
    dtype = helper.tensor_dtype_to_np_dtype(before.data_type)
    values = np.ascontiguousarray(values.astype(dtype, copy=False))  # no copy when cast already
    if values.dtype.byteorder == ">":
        values = values.astype(values.dtype.newbyteorder("<"))
    into.name = before.name
    into.data_type = before.data_type
    into.dims.extend(values.shape)
    into.raw_data = values.tobytes()
    into.doc_string = before.doc_string
    if hasattr(before, "metadata_props"):
        into.metadata_props.extend(before.metadata_props)
    return into


def _set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Names read by any node (subgraphs included) or exposed as graph outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _names_read(sub)
    return names


def _is_repeated(descriptor) -> bool:
    if hasattr(descriptor, "is_repeated"):  # protobuf >= 5.28 dropped `label` in upb
        return bool(descriptor.is_repeated)
    return descriptor.label == descriptor.LABEL_REPEATED


class _NameSource:
    """Fresh names, and where the constants one rewrite writes go (the spill, if any)."""

    def __init__(self, graph: gs.Graph, spill: Spill | None = None) -> None:
        self._taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
        self._spill = spill

    def wrote(self, constant: gs.Constant) -> None:
        """A constant was written: with a spill, its values leave memory now."""
        if self._spill is not None:
            _spill_constant(constant, self._spill)

    def fresh(self, base: str) -> str:
        name, counter = base, 1
        while name in self._taken:
            counter += 1
            name = f"{base}_{counter}"
        self._taken.add(name)
        return name


def _write_weight(
    graph: gs.Graph, layer: DenseLayer, weight: np.ndarray, names: _NameSource
) -> None:
    if layer.node.op == "Gemm":
        stored = weight / layer.alpha if layer.alpha != 1.0 else weight  # x / 1 is x: no copy
        stored = stored if layer.trans_b else stored.T
    else:
        stored = weight.T
    _write_constant(graph, layer.weight_ref, stored, names)


def _write_bias(graph: gs.Graph, layer: DenseLayer, bias: np.ndarray, names: _NameSource) -> None:
    is_gemm = layer.node.op == "Gemm"
    beta = layer.beta if is_gemm else 1.0
    if is_gemm and beta == 0.0 and bias.any():
        layer.node.attrs["beta"] = beta = 1.0  # C was ignored; now it carries folded constants
    stored = bias / beta if beta != 0.0 else bias
    ref = layer.bias_ref
    if ref is not None:
        _write_constant(graph, ref, _bias_layout(stored, ref.shape), names)
        return
    if not bias.any():
        return
    constant = gs.Constant(names.fresh(f"{layer.name}_bias_lumped"), stored.astype(layer.dtype))
    names.wrote(constant)
    if is_gemm:
        layer.node.inputs.append(constant)
        return
    # A bias-free MatMul: route its output through a new Add that keeps the output's name.
    result = layer.node.outputs[0]
    product = gs.Variable(names.fresh(f"{result.name}_matmul"), dtype=result.dtype)
    _remember_outputs(layer.node)
    layer.node.outputs[0] = product
    add = gs.Node(
        "Add", names.fresh(f"{layer.name}_bias_add"), inputs=[product, constant], outputs=[result]
    )
    graph.nodes.insert(graph.nodes.index(layer.node) + 1, add)


def _add_shortcut(
    graph: gs.Graph, chain: DenseChain, shortcut: Shortcut, names: _NameSource
) -> None:
    """input of layer ``source`` -> MatMul -> Add onto the output of layer ``target``."""
    source = chain.layers[shortcut.source].entry  # before an onnxsim Reshape: same rank
    target = chain.layers[shortcut.target]
    result = target.output
    producer = result.inputs[0]
    weight = gs.Constant(
        names.fresh(f"{target.name}_shortcut_weight"),
        np.ascontiguousarray(shortcut.weight.T.astype(target.dtype)),
    )
    names.wrote(weight)
    linear = gs.Variable(names.fresh(f"{result.name}_shortcut"), dtype=result.dtype)
    dense = gs.Variable(names.fresh(f"{result.name}_dense"), dtype=result.dtype)
    _remember_outputs(producer)
    producer.outputs[producer.outputs.index(result)] = dense
    matmul = gs.Node(
        "MatMul", names.fresh(f"{target.name}_shortcut"), inputs=[source, weight], outputs=[linear]
    )
    add = gs.Node(
        "Add", names.fresh(f"{target.name}_shortcut_add"), inputs=[dense, linear], outputs=[result]
    )
    position = graph.nodes.index(producer) + 1
    graph.nodes[position:position] = [matmul, add]


def _drop_batch_norm(graph: gs.Graph, layer: DenseLayer) -> None:
    """Remove a BatchNormalization the reader folded into ``layer`` (its new weights
    carry it): the layer's last node takes over the normalised output."""
    bn = layer.batch_norm
    producer = layer.bias_add or layer.node
    result = bn.outputs[0]
    bn.inputs.clear()
    bn.outputs.clear()
    graph.nodes.remove(bn)
    _remember_outputs(producer)
    producer.outputs[0] = result
    for ref in layer.batch_norm_refs:
        _drop_unread(graph, ref.path)
    layer.batch_norm = None


def _remember_outputs(node: gs.Node) -> None:
    """Keep the output names a node had before the rewrite renames one (for export)."""
    if not hasattr(node, _OUTPUTS):
        setattr(node, _OUTPUTS, tuple(t.name for t in node.outputs))


def _bias_layout(bias: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The bias in the layout of the original: scalar if still uniform, else the last
    axis resized."""
    if int(np.prod(shape)) == 1 and np.all(bias == bias[0]):
        return np.full(shape, bias[0])
    if len(shape) == 0:
        return bias
    return bias.reshape((1,) * (len(shape) - 1) + (bias.size,))


def _write_constant(
    graph: gs.Graph, ref: ConstantRef, value: np.ndarray, names: _NameSource
) -> None:
    dtype = ref.dtype
    if not ref.exclusive:
        constant = gs.Constant(names.fresh(f"{ref.name}_lumped"), value.astype(dtype, order="C"))
        names.wrote(constant)
        ref.consumer.inputs[ref.input_index] = constant
        _drop_unread(graph, ref.path)
        logger.info("'%s' is shared: wrote '%s' for %s", ref.name, constant.name, ref.consumer.name)
        return
    for step in ref.path:  # undo Identity/Transpose from the consumer side to the root
        step.outputs[0].shape = None
        if step.op == "Transpose":
            perm = step.attrs.get("perm")
            value = np.transpose(value, None if perm is None else np.argsort(perm))
    value = value.astype(dtype, order="C")  # one copy, C-ordered, in the model's dtype
    if isinstance(ref.root, gs.Constant):
        ref.root.values = value
        setattr(ref.root, _WRITTEN, True)
        names.wrote(ref.root)
    else:
        written = gs.Constant(ref.root.attrs["value"].name, value)
        setattr(written, _WRITTEN, True)
        ref.root.attrs["value"] = written
        ref.root.outputs[0].shape = None
        names.wrote(written)
    ref.release()  # what the consumer sees now is the new value


def _drop_unread(graph: gs.Graph, path: tuple[gs.Node, ...]) -> None:
    outputs = {t.name for t in graph.outputs}
    for node in path:
        if any(t.outputs or t.name in outputs for t in node.outputs):
            return
        node.inputs.clear()
        graph.nodes.remove(node)
