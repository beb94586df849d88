"""Constants of the protocol, the records every stage passes on, and logging."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "BASELINES",
    "CALIBRATION_ROWS",
    "EPS_FRACTIONS",
    "INT8_TARGETS",
    "MAX_TRAIN_ROWS",
    "METHOD_ORDER",
    "ONNXSIM_FLOOR_SPARSITIES",
    "ONNXSIM_LOW_SPARSITIES",
    "ONNXSIM_SPARSITIES",
    "ONNXSIM_STACK",
    "PROTOCOL_VERSION",
    "QUANTIZED",
    "REFINED",
    "REFINE_FLOOR_TARGETS",
    "REFINE_MID_TARGETS",
    "REFINE_TARGETS",
    "SCRATCH_FRACTIONS",
    "SPARSITIES",
    "TAUS",
    "UNSTRUCTURED",
    "Point",
    "Reference",
    "fidelity",
    "log",
    "onnxsim_stack",
    "point_from_dict",
]

# Bumped whenever what a network's sweep computes changes: cached sweeps are then redone.
PROTOCOL_VERSION = "v4"
MAX_TRAIN_ROWS = 20000
CALIBRATION_ROWS = 2048
ARCHITECTURES = ((64, 64), (128, 128, 128))
ACTIVATIONS = ("tanh", "relu")
SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
TAUS = (1.0, 0.99, 0.97, 0.95, 0.9, 0.8, 0.7, 0.5)
EPS_FRACTIONS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
SCRATCH_FRACTIONS = (0.5, 0.25, 0.125)
# lump+refine (and distill at its widths) is refined at the epsilons whose unrefined
# lumping keeps about these shares of the parameters (GRP%): a log-spaced grid, because
# refinement is what makes the small sizes usable and each point costs one refinement.
REFINE_TARGETS = (1.5, 3.0, 5.0, 8.0, 12.0, 18.0, 27.0, 40.0, 60.0, 80.0, 92.0)
# A second pass (its own cache group) adds sizes between those of the first where they
# can still matter, and below the first where even its smallest size was within 1%.
REFINE_MID_TARGETS = (33.0, 50.0, 70.0)
REFINE_FLOOR_TARGETS = (0.3, 0.7)
# onnxsim's channel sparsity: its GRP is about (1 - s)^2, so this covers the same range.
ONNXSIM_SPARSITIES = (0.3, 0.5, 0.65, 0.75, 0.82, 0.88, 0.92, 0.95)
# ... and, where none of those is within dRMSE 1%, these (the largest sizes, the dearest).
ONNXSIM_LOW_SPARSITIES = (0.2, 0.1)
# ... and where even the highest was within 1%, these.
ONNXSIM_FLOOR_SPARSITIES = (0.97, 0.985)
UNSTRUCTURED = ("magnitude", "wanda", "ec")
BASELINES = ("magnitude", "wanda", "ec", "linear")
REFINED = ("lump+refine", "distill", "onnxsim")
# onnxruntime's dynamic int8 quantization (onnx_lump's --quantize int8) of the original
# and of lump+refine at these sizes (GRP% targets, as REFINE_TARGETS)
QUANTIZED = ("int8", "lump+int8")
INT8_TARGETS = (8.0, 18.0, 40.0, 60.0, 80.0)
METHOD_ORDER = (
    "lump",
    "lump+refit",
    "lump+refit+data",
    "lump+refit+affine",
    "exact",
    "magnitude",
    "wanda",
    "ec",
    "linear",
    "scratch",
    *REFINED,
    *QUANTIZED,
)


@dataclass(frozen=True)
class Point:
    """One sweep point, measured on the test split.

    ``seconds`` is the whole compression's wall time, ``refine_seconds`` the part spent
    refining (onnxsim: its ridge refit and block distillation); ``widths`` the hidden
    widths after ("-" joined); ``holdout`` the error onnx_lump reports on its held-out
    calibration rows (None where it reports none)."""

    task: str
    network: str
    method: str
    knob: float
    grp: float
    test_rmse: float
    drmse: float
    structured: bool
    seconds: float
    fidelity: float = 0.0
    refine_seconds: float = 0.0
    widths: str = ""
    holdout: float | None = None
    bytes: int | None = None  # the serialized model's size (None: not recorded)


def point_from_dict(row: dict) -> Point:
    """A Point from a JSON row, also one written before a field existed."""
    names = {f.name for f in fields(Point)}
    return Point(**{k: v for k, v in row.items() if k in names})


@dataclass(frozen=True)
class Reference:
    task: str
    network: str
    path: Path
    test_rmse: float
    r2: float
    rmse_units: float  # in the target's original units
    params: int
    iterations: int
    hidden: tuple[int, ...] = field(default=())
    activation: str = ""


def fidelity(outputs: np.ndarray, original: np.ndarray) -> float:
    """RMSE of the output change relative to the spread (standard deviation, pooled over
    the output columns) of the original's outputs."""
    spread = float(np.sqrt(np.mean((original - original.mean(axis=0)) ** 2)))
    change = float(np.sqrt(np.mean((outputs - original) ** 2)))
    return change / spread if spread > 0 else change


# The public API of onnxsim 0.8's structured stack, which both benchmarks run.
ONNXSIM_STACK = ("apply_structured_wanda_pruning", "apply_pruning_finetune", "apply_block_finetune")


def onnxsim_stack(say=None):
    """The onnxsim module when it has the 0.8 structured stack (:data:`ONNXSIM_STACK`),
    else None, with a SKIPPED line through ``say`` (default :func:`log`) saying why."""
    say = say or log
    try:
        import onnxsim
    except ImportError:
        say("  SKIPPED onnxsim: not importable (pip install 'onnx_lump[tools]' or 'onnxsim>=0.8')")
        return None
    if not all(hasattr(onnxsim, name) for name in ONNXSIM_STACK):
        version = getattr(onnxsim, "__version__", "?")
        say(f"  SKIPPED onnxsim {version}: needs >= 0.8 ({ONNXSIM_STACK})")
        return None
    return onnxsim


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
