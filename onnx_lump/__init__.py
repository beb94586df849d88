"""onnx_lump: shrink dense ONNX networks by merging neurons with equivalent dynamics.

The pass runs in stages, one module each, data flowing one way:
``graph.read`` (read the graph) -> ``ode.encoding`` (encode) -> ``ode.equivalence``
(partition) -> ``ode.reduction`` (new weights) -> ``data.refine`` (with calibration data:
refine onto the original) -> ``graph.write`` (graph surgery) -> ``pipeline.verify``
(onnxruntime). ``data.holdout`` splits the calibration inputs, ``methods`` holds the
compression methods, ``pipeline.run`` strings the stages together (``api.compress`` and
``api.lump`` are its keyword front), ``search`` chooses the
knob, ``cli`` is ``python -m onnx_lump`` and ``integrations`` the onnx-ir and Olive passes.
"""

from onnx_lump._version import __version__
from onnx_lump.api import compress, lump
from onnx_lump.errors import LumpError
from onnx_lump.graph.read import DenseChain, DenseLayer, scan_graph
from onnx_lump.methods.lumping import LumpOptions
from onnx_lump.ode.encoding import Lumping, OdeSystem, encode_chain
from onnx_lump.ode.equivalence import compute_partition
from onnx_lump.ode.grouping import Linkage
from onnx_lump.ode.partition import Equivalence, Partition, PartitionOptions
from onnx_lump.ode.reduction import reduce_system
from onnx_lump.pipeline.report import LayerStats, Report
from onnx_lump.pipeline.verify import VerificationResult, compare_models
from onnx_lump.types import ReducedLayer

__all__ = [
    "DenseChain",
    "DenseLayer",
    "Equivalence",
    "LayerStats",
    "Linkage",
    "LumpError",
    "LumpOptions",
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
