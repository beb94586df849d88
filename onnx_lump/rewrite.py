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

Everything the reader did not claim, and every model-level field (ir_version, opsets,
metadata, doc strings, functions), is carried over from the input model unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_lump.chains import ConstantRef, DenseChain, DenseLayer
from onnx_lump.methods.base import Shortcut
from onnx_lump.reduction import ReducedLayer

__all__ = ["export_model", "rewrite_chain"]

logger = logging.getLogger(__name__)


def rewrite_chain(
    graph: gs.Graph,
    chain: DenseChain,
    reduced: list[ReducedLayer],
    shortcuts: Sequence[Shortcut] = (),
) -> bool:
    """Replace the parameters of every layer of ``chain`` by ``reduced`` and add
    ``shortcuts``, in place; returns whether anything changed."""
    names = _NameSource(graph)
    changed = bool(shortcuts)
    for layer, new in zip(chain.layers, reduced, strict=True):
        same_shape = new.weight.shape == layer.weight.shape
        if (
            same_shape
            and np.array_equal(new.weight, layer.weight)
            and np.array_equal(new.bias, layer.bias)
        ):
            continue
        changed = True
        _write_weight(graph, layer, new.weight, names)
        _write_bias(graph, layer, new.bias, names)
    for layer, act_node, new in zip(chain.layers, chain.activation_nodes, reduced, strict=False):
        if new.out_features != layer.out_features:
            hidden = [layer.node.outputs[0], layer.output]
            if act_node is not None:
                hidden.append(act_node.outputs[0])
            for tensor in hidden:
                tensor.shape = None
    for shortcut in shortcuts:
        _add_shortcut(graph, chain, shortcut, names)
    return changed


def export_model(
    graph: gs.Graph | None, original: onnx.ModelProto, metadata: dict[str, str]
) -> onnx.ModelProto:
    """The rewritten graph inside a copy of ``original``'s model-level fields; with no
    graph (nothing was rewritten), a copy of ``original``, with ``metadata`` added."""
    model = onnx.ModelProto()
    if graph is None:
        model.CopyFrom(original)
        _set_metadata(model, metadata)
        return model
    exported = gs.export_onnx(graph, do_type_check=False)
    for descriptor, value in original.ListFields():  # all but the graph, without copying it
        if descriptor.name == "graph":
            continue
        if _is_repeated(descriptor):
            getattr(model, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(model, descriptor.name).CopyFrom(value)
        else:
            setattr(model, descriptor.name, value)
    model.graph.CopyFrom(exported.graph)
    # onnx-graphsurgeon drops initializers no node reads; they were not ours to remove.
    kept = {t.name for t in model.graph.initializer}
    read = _names_read(original.graph)
    model.graph.initializer.extend(
        t for t in original.graph.initializer if t.name not in read and t.name not in kept
    )
    _set_metadata(model, metadata)
    return model


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
    def __init__(self, graph: gs.Graph) -> None:
        self._taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}

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
        stored = weight / layer.alpha
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
        _write_constant(graph, ref, _bias_layout(stored, ref.value.shape), names)
        return
    if not bias.any():
        return
    constant = gs.Constant(names.fresh(f"{layer.name}_bias_lumped"), stored.astype(layer.dtype))
    if is_gemm:
        layer.node.inputs.append(constant)
        return
    # A bias-free MatMul: route its output through a new Add that keeps the output's name.
    result = layer.node.outputs[0]
    product = gs.Variable(names.fresh(f"{result.name}_matmul"), dtype=result.dtype)
    layer.node.outputs[0] = product
    add = gs.Node(
        "Add", names.fresh(f"{layer.name}_bias_add"), inputs=[product, constant], outputs=[result]
    )
    graph.nodes.insert(graph.nodes.index(layer.node) + 1, add)


def _add_shortcut(
    graph: gs.Graph, chain: DenseChain, shortcut: Shortcut, names: _NameSource
) -> None:
    """input of layer ``source`` -> MatMul -> Add onto the output of layer ``target``."""
    source = chain.layers[shortcut.source].input
    target = chain.layers[shortcut.target]
    result = target.output
    producer = result.inputs[0]
    weight = gs.Constant(
        names.fresh(f"{target.name}_shortcut_weight"),
        np.ascontiguousarray(shortcut.weight.T.astype(target.dtype)),
    )
    linear = gs.Variable(names.fresh(f"{result.name}_shortcut"), dtype=result.dtype)
    dense = gs.Variable(names.fresh(f"{result.name}_dense"), dtype=result.dtype)
    producer.outputs[producer.outputs.index(result)] = dense
    matmul = gs.Node(
        "MatMul", names.fresh(f"{target.name}_shortcut"), inputs=[source, weight], outputs=[linear]
    )
    add = gs.Node(
        "Add", names.fresh(f"{target.name}_shortcut_add"), inputs=[dense, linear], outputs=[result]
    )
    position = graph.nodes.index(producer) + 1
    graph.nodes[position:position] = [matmul, add]


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
    dtype = ref.value.dtype
    if not ref.exclusive:
        constant = gs.Constant(
            names.fresh(f"{ref.name}_lumped"), np.ascontiguousarray(value.astype(dtype))
        )
        ref.consumer.inputs[ref.input_index] = constant
        _drop_unread(graph, ref.path)
        logger.info("'%s' is shared: wrote '%s' for %s", ref.name, constant.name, ref.consumer.name)
        return
    for step in ref.path:  # undo Identity/Transpose from the consumer side to the root
        step.outputs[0].shape = None
        if step.op == "Transpose":
            perm = step.attrs.get("perm")
            value = np.transpose(value, None if perm is None else np.argsort(perm))
    value = np.ascontiguousarray(value.astype(dtype))
    if isinstance(ref.root, gs.Constant):
        ref.root.values = value
    else:
        ref.root.attrs["value"] = gs.Constant(ref.root.attrs["value"].name, value)
        ref.root.outputs[0].shape = None


def _drop_unread(graph: gs.Graph, path: tuple[gs.Node, ...]) -> None:
    outputs = {t.name for t in graph.outputs}
    for node in path:
        if any(t.outputs or t.name in outputs for t in node.outputs):
            return
        node.inputs.clear()
        graph.nodes.remove(node)
