"""Export by applying the rewrite's edits onto the original ModelProto.

The output is the ORIGINAL ModelProto with the rewrite's changes applied to it, not an
export of the graphsurgeon graph: every node keeps its doc string, metadata and attributes
unless the rewrite changed them; initializers, sparse initializers, graph inputs/outputs
(IR 3 initializer inputs, skl2onnx's ZipMap sequence types) and value_info keep their
protos; an unchanged tensor stays what it was, external-data reference included, so a
model that lives on disk is never read whole. Model-level fields (ir_version, opsets,
metadata, doc strings, functions) are copied unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import SparseValues

from onnx_lump.graph.io.tensordata import copy_fields, external_data_dir, tensor_array
from onnx_lump.graph.write.importer import (
    INDEX_ATTR,
    OUTPUTS_ATTR,
    WRITTEN_ATTR,
    SpilledValues,
    is_pristine,
)

__all__ = ["export_model"]


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
    copy_fields(original, model, skip=("graph",))  # all but the graph, without copying it
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
        copy_fields(original, out, skip=("node", "initializer", "value_info", "input", "output"))
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
        for position, proto in enumerate(original):
            by_name[proto.name] = -1 if proto.name in by_name else position
        by_outputs = {tuple(proto.output): position for position, proto in enumerate(original)}
        out = []
        for node in self.graph.nodes:
            index = getattr(node, INDEX_ATTR, None)
            if index is None:  # a graph that did not come from import_graph
                index = by_name.get(node.name, -1) if node.name else -1
                if index < 0:
                    outputs = getattr(node, OUTPUTS_ATTR, None) or tuple(
                        t.name for t in node.outputs
                    )
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
        if getattr(constant, WRITTEN_ATTR, False):
            return True
        if is_pristine(constant):
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
    if isinstance(constant._values, SpilledValues) and (
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
