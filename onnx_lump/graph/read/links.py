"""Linking dense layers: the walk from a layer's input back to the previous one.

Between two dense layers there may be nothing or any element-wise subgraph; the walk
reads that subgraph as one expression (through :mod:`onnx_lump.graph.read.elementwise`) and
asks the activation registry what it computes. It also decides where a chain must end:
a tensor that is read outside the subgraph, or a constant that varies per feature,
would make merging neurons observable, so the walk notes why and gives up there.

A subgraph that reads two dense layers of the same input is a gated FFN when it computes
``act(gate) * up`` (SwiGLU, GeGLU): the link is then from the up projection, and its
region carries the gate layer, whose rows pair with the up rows neuron by neuron.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnx_lump import activations as act
from onnx_lump.activations import Activation
from onnx_lump.activations import expressions as ex
from onnx_lump.activations.matching import hint_for_ops, match_expression
from onnx_lump.graph.read.dense import (
    ActivationRegion,
    ConstantRef,
    DenseChain,
    DenseLayer,
    qualified,
)
from onnx_lump.graph.read.dense_reader import DenseReader
from onnx_lump.graph.read.elementwise import HANDLERS, NoMatch, Walk, op_domain, tensor_rank

__all__ = ["ChainReader"]

_MAX_REGION = 48  # nodes in one activation subgraph; the walk gives up past this


@dataclass
class _Walk:
    """State of one backward walk from a dense layer's input."""

    by_output: dict[int, DenseLayer]
    source: gs.Tensor | None = None
    second: gs.Tensor | None = None  # another dense layer's output: a gated FFN's
    nodes: dict[int, gs.Node] = field(default_factory=dict)
    memo: dict[int, tuple] = field(default_factory=dict)
    constants: list[ConstantRef] = field(default_factory=list)


class ChainReader:
    """The walk that links each dense layer to the one before it. It holds the dense
    reader that read the layers, for the graph facts (what is observable), the constant
    resolver and the notes, which both readings share."""

    def __init__(self, dense: DenseReader) -> None:
        self.dense = dense
        self.graph = dense.graph
        self.opset = dense.opset  # what the element-wise handlers ask (``Operands``)
        self.stops: list[str] = []  # why a link between two dense layers was refused

    def stop(self, reason: str, detail: str = "") -> None:
        """Note why the chain ends between two dense layers: the note is ``reason`` and
        ``detail``; ``reason`` alone is kept for :meth:`GraphScan.why_no_chain`."""
        self.dense.note(reason + detail)
        if reason not in self.stops:
            self.stops.append(reason)

    def _readers(self, tensor: gs.Tensor) -> list[gs.Node]:
        """The consumers of ``tensor`` that read more than its leading dimensions."""
        return [n for n in tensor.outputs if not self._reads_leading_dims(n, tensor)]

    def _reads_leading_dims(self, node: gs.Node, tensor: gs.Tensor) -> bool:
        """A ``Shape`` whose result only feeds Slices of the leading dims (onnxsim's
        reshape targets): it does not see the width, so it may stay when it changes."""
        if node.op != "Shape" or op_domain(node):
            return False
        rank = tensor_rank(tensor)
        if rank is None and node.outputs[0].shape:
            rank = node.outputs[0].shape[0] if isinstance(node.outputs[0].shape[0], int) else None
        if rank is None:
            return False
        start, end = node.attrs.get("start", 0), node.attrs.get("end")
        if end is not None:
            return _normalised(end, rank) <= rank - 1
        result = node.outputs[0]
        if self.dense.exposed(result) or not result.outputs:
            return False
        for user in result.outputs:
            if user.op != "Slice" or user.inputs[0] is not result or len(user.inputs) < 3:
                return False
            found = [self._int_constant(user, i) for i in range(1, len(user.inputs))]
            bounds = [b for b in found if b is not None and b.size == 1]
            if len(bounds) < len(found):
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
        ref = self.dense.resolve_constant(node, index)
        if ref is None or not np.issubdtype(ref.dtype, np.integer):
            return None
        return ref.value.reshape(-1)

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
        except NoMatch as failure:
            self._note_no_match(failure, walk, nxt)
            return None
        prev = by_output[id(walk.source)]
        gate = None
        if walk.second is not None:
            found = self._gated(expression, walk, nxt)
            if found is None:
                return None
            gate, prev, expression = found
        if prev.dtype != nxt.dtype or not self._region_is_closed(walk, prev, nxt):
            return None
        activation = match_expression(expression)
        region_ops = {n.op for n in walk.nodes.values()}
        if activation is None:
            self.stop(
                f"the element-wise subgraph between {prev.describe()} and {nxt.describe()} "
                f"computes {ex.render(expression)}, which is no registered activation",
                f"; the chain ends there (nearest patterns: {hint_for_ops(region_ops)})",
            )
            return None
        features = self._feature_constants(walk, prev)
        if features is None:
            return None
        ordered = tuple(n for n in self.graph.nodes if id(n) in walk.nodes)
        tensors = tuple(t for n in ordered for t in n.outputs)
        region = ActivationRegion(ordered, tensors, features, expression, gate)
        return prev, activation, region

    def _gated(
        self, expression: tuple, walk: _Walk, nxt: DenseLayer
    ) -> tuple[DenseLayer, DenseLayer, tuple] | None:
        """(gate, up, the gate's activation as an expression in x) of a subgraph that
        reads two dense layers, or None (noted) when it is no ``act(gate) * up`` of one
        input."""
        assert walk.source is not None and walk.second is not None, "two dense layers read"
        first, second = walk.by_output[id(walk.source)], walk.by_output[id(walk.second)]
        for expr, gate, up in (
            (expression, first, second),
            (ex.swapped(expression), second, first),
        ):
            coef, factors = ex.factors_of(expr)
            if factors.count(ex.Y) != 1:
                continue
            rest = list(factors)
            rest.remove(ex.Y)
            gated = ex.mul(ex.constant(coef), *rest)
            if ex.mentions(gated, ex.Y) or not ex.mentions(gated, ex.X):
                continue
            if match_expression(gated) is None:
                continue
            same_input = gate.input is up.input and gate.in_reshape is None
            if not same_input or up.in_reshape is not None or gate.shape != up.shape:
                self.stop(
                    f"the gated FFN {gate.describe()} * {up.describe()} before "
                    f"{nxt.describe()} reads two inputs or two shapes",
                    "; only act(x Wg) * (x Wu) of one input x is read",
                )
                return None
            if gate.dtype != up.dtype:
                return None
            return gate, up, gated
        self.stop(
            f"the subgraph between {first.describe()}, {second.describe()} and "
            f"{nxt.describe()} computes {ex.render(expression)}, which is no gated FFN "
            "act(gate) * up of a registered activation",
            "; the chain ends there",
        )
        return None

    def _only_reader(self, tensor: gs.Tensor, reader: gs.Node, prev: DenseLayer) -> bool:
        readers = self._readers(tensor)
        if self.dense.exposed(tensor) or readers != [reader]:
            self._note_observable(prev, tensor, len(readers))
            return False
        return True

    def _region_is_closed(self, walk: _Walk, prev: DenseLayer, nxt: DenseLayer) -> bool:
        """No tensor of the subgraph is read outside it (but the last, by ``nxt`` only)."""
        inside = walk.nodes
        last = nxt.entry
        sources = [walk.source] if walk.second is None else [walk.source, walk.second]
        for tensor in [*sources, *(t for n in inside.values() for t in n.outputs)]:
            readers = self._readers(tensor)
            if tensor is last:
                ok = readers == [nxt.entry_node]
            else:
                ok = all(id(r) in inside for r in readers)
            if self.dense.exposed(tensor) or not ok:
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
                self.stop(
                    f"constant '{ref.name}' of shape {value.shape} in the activation after "
                    f"{prev.describe()} does not broadcast along the features",
                    "; the chain ends",
                )
                return None
            resized.append(ref)
        return tuple(resized)

    def _note_observable(self, layer: DenseLayer, tensor: gs.Tensor, readers: int) -> None:
        if tensor.name in self.dense.graph_outputs:
            why = "is a graph output"
        elif tensor.name in self.dense.used_in_subgraphs:
            why = "is read inside a subgraph"
        elif readers > 1:
            why = f"has {readers} consumers"
        else:
            why = "is read outside the activation"
        self.stop(
            f"tensor '{tensor.name}' after {layer.describe()} {why}",
            ": a chain ends there and its neurons are kept",
        )

    def _note_no_match(self, failure: NoMatch, walk: _Walk, nxt: DenseLayer) -> None:
        """Report an unknown op only where it sits between two dense layers."""
        node = failure.node
        if node is None:
            if walk.source is not None or walk.nodes:
                prev = walk.source and walk.by_output.get(id(walk.source))
                where = f"after {prev.describe()} " if prev else ""
                self.stop(f"activation {where}before {nxt.describe()}: {failure.reason}")
            return
        prev = self._dense_behind(node, walk.by_output)
        if prev is None:
            return
        ops = {n.op for n in walk.nodes.values()} | {node.op}
        self.stop(
            f"'{qualified(node)}' (node '{node.name}') between {prev.describe()} and "
            f"{nxt.describe()} is not a registered element-wise activation",
            f", so the chain ends there; it would need {hint_for_ops(ops)}",
        )

    def note_untouched(self, chains: list[DenseChain]) -> None:
        in_chains: set[int] = set()
        for chain in chains:
            for layer in chain.layers:
                in_chains.update(id(n) for n in layer.nodes)
            for region in chain.regions:
                if region is not None:
                    in_chains.update(id(n) for n in region.nodes)
                if region is not None and region.gate is not None:
                    in_chains.update(id(n) for n in region.gate.nodes)
            in_chains.update(id(n) for n in chain.activation_nodes if n is not None)
        others = collections.Counter(
            qualified(n) for n in self.graph.nodes if id(n) not in in_chains and n.op != "Constant"
        )
        if others:
            listed = ", ".join(f"{op} x{count}" for op, count in sorted(others.items()))
            self.dense.note(f"left unchanged outside dense chains: {listed}")

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
            if walk.source is None or walk.source is tensor:
                walk.source = tensor
                return ex.X
            if walk.second is None or walk.second is tensor:
                # act(x Wg) * (x Wu), SwiGLU/GeGLU: :meth:`_gated` tells gate from up
                walk.second = tensor
                return ex.Y
            raise NoMatch("it reads three dense layers (only a gated FFN's two are read)")
        if isinstance(tensor, gs.Constant) or len(tensor.inputs) != 1:
            raise NoMatch("it reads a graph input or a constant only")
        node = tensor.inputs[0]
        if node.op == "Constant":
            raise NoMatch("it is a constant")
        handler = HANDLERS.get((op_domain(node), node.op))
        if handler is None or len(node.outputs) != 1:
            raise NoMatch(f"'{node.op}' is not a registered element-wise op", node)
        if len(walk.nodes) >= _MAX_REGION:
            raise NoMatch("the subgraph is larger than any registered activation")
        walk.nodes[id(node)] = node
        expression = handler(self, node, walk)
        walk.memo[key] = expression
        return expression

    def operand(self, node: gs.Node, index: int, walk: Walk) -> tuple:
        """Input ``index`` of ``node`` as an expression: a scalar constant or a subgraph."""
        assert isinstance(walk, _Walk), "handlers pass back the walk they were given"
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
        ref = self.dense.resolve_constant(node, index)
        if ref is None:
            return self._expression(tensor, walk)
        value = np.asarray(ref.value)
        if value.size == 0 or value.dtype.kind not in "fiub":
            raise NoMatch(f"constant '{ref.name}' of {node.op} is not numeric", None)
        first = value.reshape(-1)[0]
        if not np.all(value == first):
            raise NoMatch(
                f"constant '{ref.name}' of {node.op} '{node.name}' varies per feature "
                f"(shape {value.shape}); only one repeated value can stay in a narrower layer"
            )
        walk.constants.append(ref)
        return ex.constant(float(first))

    def scalar(self, node: gs.Node, index: int, walk: Walk, default: float) -> float:
        if index >= len(node.inputs) or not node.inputs[index].name:
            return default
        value = self.operand(node, index, walk)
        if value[0] != "const":
            raise NoMatch(f"input {index} of {node.op} '{node.name}' is not a constant")
        return value[1]


def _normalised(index: int, rank: int) -> int:
    return min(index + rank if index < 0 else index, rank)
