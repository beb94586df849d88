"""Stage 5: write reduced weights back into the graph and export the model.

Rules, in the order they apply to each constant input of a dense layer:

1. the new value is cast to the dtype the model already uses and laid out as the node
   expects it (``transB``, ``alpha``/``beta`` and any Identity/Transpose in between);
2. a constant read only by this layer is rewritten in place and keeps its name;
3. a constant shared with other nodes is left intact, and the layer gets a new
   initializer named ``<name>_lumped``; Identity/Transpose nodes left without readers go;
4. a bias is written where it lives, also where onnxruntime's optimizer fused it into
   the next node (``BiasGelu``/``FastGelu``'s input 1, ``SkipLayerNormalization``'s 5th
   input); one that must appear where there was none becomes Gemm's ``C`` or a new
   ``Add``;
5. shapes recorded for tensors whose width changed are dropped, so no stale
   ``value_info`` survives.

Importing the graph lives in :mod:`onnx_lump.graph.write.importer` and applying the edits onto
the original proto in :mod:`onnx_lump.graph.write.export` (callers import
:func:`~onnx_lump.graph.write.importer.import_graph`,
:func:`~onnx_lump.graph.write.importer.release_chain` and
:func:`~onnx_lump.graph.write.export.export_model` from there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from onnx_lump.graph.read.dense import ConstantRef, DenseChain, DenseLayer
from onnx_lump.graph.write.importer import (
    OUTPUTS_ATTR,
    WRITTEN_ATTR,
    SpilledValues,
)
from onnx_lump.types import ReducedLayer, Shortcut

if TYPE_CHECKING:
    from onnx_lump.graph.write.spill import Spill

__all__ = ["rewrite_chain"]

logger = logging.getLogger("onnx_lump.graph.rewrite")  # the notes keep their name


def rewrite_chain(
    graph: gs.Graph,
    chain: DenseChain,
    reduced: list[ReducedLayer],
    shortcuts: Sequence[Shortcut] = (),
    spill: Spill | None = None,
    gate: ReducedLayer | None = None,
) -> bool:
    """Replace the parameters of every layer of ``chain`` by ``reduced`` (and of a gated
    FFN's gate by ``gate``: its rows are sliced as the up rows are) and add
    ``shortcuts``, in place; returns whether anything changed. With ``spill``, every
    tensor written is moved to its file at once, so the graph holds references only."""
    names = _NameSource(graph, spill)
    changed = bool(shortcuts)
    # Listed before the writes: a bias Add given to a bias-free MatMul takes over its output.
    hidden = [chain.hidden_tensors(index) for index in range(len(chain.layers) - 1)]
    pairs = list(zip(chain.layers, reduced, strict=True))
    if chain.gate is not None:
        assert gate is not None, "a gated FFN's result has the gate's parameters"
        pairs.append((chain.gate, gate))
    for layer, new in pairs:
        if layer.holds(new.weight, new.bias):
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


def _spill_constant(constant: gs.Constant, spill: Spill) -> None:
    values = constant._values
    if not isinstance(values, np.ndarray):
        return
    tensor = spill.tensor(constant.name, values)
    if tensor is not None:
        constant._values = SpilledValues(tensor)


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
    # a bias held by the next node (BiasGelu, SkipLayerNormalization...) is no Gemm's C
    is_gemm = layer.node.op == "Gemm" and layer.bias_holder is None
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
    assert bn is not None, "only a layer with a folded BatchNormalization"
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
    if not hasattr(node, OUTPUTS_ATTR):
        setattr(node, OUTPUTS_ATTR, tuple(t.name for t in node.outputs))


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
        setattr(ref.root, WRITTEN_ATTR, True)
        names.wrote(ref.root)
    else:
        written = gs.Constant(ref.root.attrs["value"].name, value)
        setattr(written, WRITTEN_ATTR, True)
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
