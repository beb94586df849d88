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
   (TorchScript's ``Linear -> BatchNorm1d``), folded into the layer's weight and bias;
6. a bias-free layer whose bias onnxruntime's transformer optimizer fused into the next
   node: ``com.microsoft:BiasGelu(x, b)`` and ``FastGelu(x, b)`` (the activation then reads
   ``Gelu(x)`` of the layer's output with its bias) or ``SkipLayerNormalization``'s 5th
   input ``b`` after an FFN's down projection; the bias is rewritten where it lives.

7. a gated FFN (SwiGLU/GeGLU): ``down(act(gate(x)) * up(x))`` with gate and up dense
   layers of the same input and ``act`` any registered activation on the gate branch; it
   is a chain ``[up, down]`` of its own whose link carries the gate (see
   :class:`DenseChain`), and is read only where no other dense layer joins it through
   an activation.

A chain is a maximal run ``dense -> activation -> dense -> ...`` where the activation is
absent or any element-wise subgraph that ``onnx_lump.activations`` recognises (a single
op or a decomposed form such as the erf Gelu). The reader reads a subgraph as a
canonical expression in its input and asks the registry which activation it is. An
intermediate tensor that is a graph output or has a consumer outside the activation
ends the chain there, so its neurons are never merged. The reader knows nothing of
epsilon: it only returns numbers in float64 plus handles for the rewrite. Why a candidate
chain ended (an op between two dense layers that is no activation, an observable hidden
tensor) is noted, and :meth:`GraphScan.why_no_chain` says it in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from onnx_lump.graph.read.dense import DenseChain, DenseLayer
from onnx_lump.graph.read.dense_reader import DenseReader
from onnx_lump.graph.read.links import ChainReader

__all__ = [
    "GraphScan",
    "scan_graph",
]


@dataclass
class GraphScan:
    """The chains found in a graph, and notes on what the reader left untouched.

    ``stops`` are the reasons, one line each, why a link between two dense layers was
    refused (each is also in ``notes``, with detail); ``dense_layers`` counts the layers
    read, ``layer_notes`` the notes on reading them (a weight that is not 2-D...).
    """

    chains: list[DenseChain]
    notes: list[str] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    dense_layers: int = 0
    layer_notes: list[str] = field(default_factory=list)

    def why_no_chain(self, limit: int = 2) -> str:
        """What kept the graph from having a chain, to append to the "no dense chain
        found" message: "" when there are chains or nothing more to say, else ". In this
        graph: " and the first ``limit`` reasons, e.g. ``'com.microsoft:BiasGelu' (node
        'n') between MatMul 'a' (32->64) and MatMul 'b' (64->32) is not a registered
        element-wise activation``."""
        if self.chains:
            return ""
        if self.stops:
            reasons = self.stops
        elif self.dense_layers < 2:
            plural = "layer was" if self.dense_layers == 1 else "layers were"
            reasons = [f"{self.dense_layers} dense {plural} read", *self.layer_notes]
        else:
            reasons = [
                f"none of the {self.dense_layers} dense layers read reads another's output "
                "through element-wise ops only"
            ]
        shown = "; ".join(reasons[:limit])
        more = len(reasons) - limit
        return f". In this graph: {shown}" + (f" (and {more} more)" if more > 0 else "")


def scan_graph(graph: gs.Graph) -> GraphScan:
    """Find every maximal dense chain (two or more dense layers) in ``graph``."""
    dense_reader = DenseReader(graph)
    dense = []
    for node in graph.nodes:
        if node.op in ("Gemm", "MatMul"):
            layer = dense_reader.read_dense(node)
            if layer is not None:
                dense.append(layer)
    layer_notes = list(dense_reader.notes)
    reader = ChainReader(dense_reader)  # its notes go to the same list
    by_output = {id(layer.output): layer for layer in dense}
    links = {}
    for nxt in dense:
        found = reader.link(nxt, by_output)
        if found is not None and id(found[0]) not in links:
            prev, activation, region = found
            links[id(prev)] = (activation, region, nxt)
    _drop_joined_gates(reader, links, {id(layer): layer for layer in dense})
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
    return GraphScan(chains, dense_reader.notes, reader.stops, len(dense), layer_notes)


def _drop_joined_gates(reader: ChainReader, links: dict, layers: dict[int, DenseLayer]) -> None:
    """Remove the gated links whose layers are joined to other dense layers (an input
    from an activation after another layer, an output into another's activation): a
    gated FFN is compressed on its own, as three layers."""
    targets = {id(nxt) for _, _, nxt in links.values()}
    for key, (_, region, nxt) in list(links.items()):
        gate = None if region is None else region.gate
        if gate is None:
            continue
        if key in targets or id(gate) in targets or id(nxt) in links:
            del links[key]
            reader.stop(
                f"the gated FFN {gate.describe()} * {layers[key].describe()} -> "
                f"{nxt.describe()} is joined to other dense layers through activations",
                "; it is left unchanged (a gated FFN is read on its own only)",
            )
