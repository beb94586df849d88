"""Stage 5, writing the graph: import it so that edits can be told apart (``importer``),
write the reduced weights into it (``rewrite``), apply the edits onto the original proto
(``export``), and park rewritten tensors on disk (``spill``, imported from its module)."""

from onnx_lump.graph.write.export import export_model
from onnx_lump.graph.write.importer import import_graph, release_chain
from onnx_lump.graph.write.rewrite import rewrite_chain

__all__ = ["export_model", "import_graph", "release_chain", "rewrite_chain"]
