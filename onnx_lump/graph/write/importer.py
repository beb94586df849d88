"""Importing a graph so that the rewrite and the export can tell what it changed.

Every node is tagged with its position in the original proto and every constant loads
lazily, remembering the array it produced: the export can then keep untouched protos as
they were, and :func:`release_chain` can hand an unchanged value's memory back, so a model
that lives on disk is never read whole.
"""

from __future__ import annotations

import weakref

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.external_data_helper import uses_external_data
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnx_lump.graph.io.tensordata import external_data_dir, tensor_array, tensor_view
from onnx_lump.graph.read.dense import DenseChain

__all__ = [
    "INDEX_ATTR",
    "OUTPUTS_ATTR",
    "WRITTEN_ATTR",
    "SpilledValues",
    "import_graph",
    "is_pristine",
    "release_chain",
]

# Attributes this module sets on graphsurgeon objects (they are plain Python objects).
INDEX_ATTR = "_onnx_lump_index"  # position of a node in the original graph
OUTPUTS_ATTR = "_onnx_lump_outputs"  # a node's output names before the rewrite renamed one
WRITTEN_ATTR = "_onnx_lump_written"  # a constant whose values the rewrite replaced
_PRISTINE = "_onnx_lump_pristine"  # (weakref to the loaded array, its lazy source)


class SpilledValues(LazyValues):
    """Values the rewrite wrote, moved to a spill file; exported as the external
    reference they are, read back only if someone asks for them."""

    def load(self) -> np.ndarray:
        return tensor_array(self.tensor)

    def map_values(self, shared: bool = False) -> np.ndarray:
        return tensor_view(self.tensor, None, shared)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``gs.import_onnx(model)``, with each node tagged by its position in ``model`` and
    every constant loaded lazily: external data is read from the model's folder (see
    :func:`onnx_lump.graph.io.load.load_model`) only when a value is needed, and
    :func:`release_chain` can hand an unchanged value's memory back."""
    graph = gs.import_onnx(model)
    base = external_data_dir(model)
    for index, node in enumerate(graph.nodes):
        setattr(node, INDEX_ATTR, index)
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
        data (see :func:`onnx_lump.graph.io.tensordata.tensor_view`), else the proto's values."""
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
    for layer in chain.all_layers:
        layer.release()
        for ref in (layer.weight_ref, layer.bias_ref):
            if ref is None:
                continue
            root = ref.root
            constant = root if isinstance(root, gs.Constant) else root.attrs.get("value")
            if isinstance(constant, gs.Constant) and isinstance(constant._values, LazyValues):
                continue  # never read, or already handed back
            if isinstance(constant, gs.Constant) and is_pristine(constant):
                constant._values = getattr(constant, _PRISTINE)[1]


def is_pristine(constant: gs.Constant) -> bool:
    """True when the constant's values are still what was loaded, or were never loaded."""
    if getattr(constant, WRITTEN_ATTR, False):
        return False
    if isinstance(constant._values, LazyValues):
        return True
    pristine = getattr(constant, _PRISTINE, None)
    return pristine is not None and pristine[0]() is constant._values
