"""Stage 1, reading the graph: the dense chains (``chains``), the layers and chains it
hands on (``dense``), the forms exporters give a dense layer (``dense_reader``), the
walk from one layer to the next (``links``) and the element-wise ops it reads
(``elementwise``)."""

from onnx_lump.graph.read.chains import GraphScan, scan_graph
from onnx_lump.graph.read.dense import DenseChain, DenseLayer

__all__ = ["DenseChain", "DenseLayer", "GraphScan", "scan_graph"]
