"""onnx_lump: shrink dense ONNX networks by merging neurons with equivalent dynamics.

The pass runs in stages, one module each, data flowing one way:
``chains`` (read the graph) -> ``ode`` (encode) -> ``equivalence`` (partition) ->
``reduction`` (new weights) -> ``rewrite`` (graph surgery) -> ``verify`` (onnxruntime);
``api.lump`` strings them together and ``cli`` is ``python -m onnx_lump``.
"""

__version__ = "0.1.0"

from onnx_lump.api import LayerStats, Report, compress, lump
from onnx_lump.chains import DenseChain, DenseLayer, scan_graph
from onnx_lump.equivalence import (
    Equivalence,
    Partition,
    PartitionOptions,
    compute_partition,
)
from onnx_lump.errors import LumpError
from onnx_lump.grouping import Linkage
from onnx_lump.ode import Lumping, OdeSystem, encode_chain
from onnx_lump.reduction import ReducedLayer, reduce_system
from onnx_lump.verify import VerificationResult, compare_models

__all__ = [
    "DenseChain",
    "DenseLayer",
    "Equivalence",
    "LayerStats",
    "Linkage",
    "LumpError",
    "Lumping",
    "OdeSystem",
    "Partition",
    "PartitionOptions",
    "ReducedLayer",
    "Report",
    "VerificationResult",
    "__version__",
    "compare_models",
    "compress",
    "compute_partition",
    "encode_chain",
    "lump",
    "reduce_system",
    "scan_graph",
]
