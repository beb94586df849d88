"""Constants of the transformer task's protocol, the :class:`Point` every method yields,
and logging."""

from __future__ import annotations

from dataclasses import dataclass, field

from onnx_lump.data.refine import RefineOptions
from tools.transformer_bench import TOOLS

__all__ = [
    "DEFAULT_CACHE",
    "EPS",
    "HEADLINE_LOSS",
    "INPUT_NAME",
    "MAX_REFINED",
    "ONNXSIM_BATCH",
    "ONNXSIM_LEARNING_RATE",
    "ONNXSIM_STEPS",
    "OUTPUT_NAME",
    "QUICK_EPS",
    "QUICK_MAX_REFINED",
    "QUICK_ONNXSIM_STEPS",
    "QUICK_REFINE",
    "QUICK_SPARSITIES",
    "REFINE",
    "RESULTS",
    "SPARSITIES",
    "THREADS",
    "Point",
    "log",
]

DEFAULT_CACHE = TOOLS / "cache" / "transformer"
RESULTS = TOOLS / "results"
INPUT_NAME, OUTPUT_NAME = "tokens", "logits"
THREADS = 2
# eps of data-similarity lumping (a search per size costs a full run per step; one run
# is about a minute on 2 shared cores); lump+refine runs at up to MAX_REFINED of them.
EPS = (0.6, 0.65, 0.7, 0.75, 0.8, 0.9)  # 0.6 keeps 83%, 0.9 keeps 4% of the FFNs
QUICK_EPS = (0.65, 0.75)
MAX_REFINED, QUICK_MAX_REFINED = 4, 1
SPARSITIES = (0.25, 0.5, 0.75, 0.9)
QUICK_SPARSITIES = (0.5, 0.9)
REFINE = RefineOptions(max_iters=400, max_seconds=60.0, patience=50)
QUICK_REFINE = RefineOptions(max_iters=30, max_seconds=10.0, patience=10)
ONNXSIM_STEPS, QUICK_ONNXSIM_STEPS = 200, 20
ONNXSIM_LEARNING_RATE = 3e-3
ONNXSIM_BATCH = 2048
# Headline: the smallest FFN share whose held-out loss is within this relative increase.
HEADLINE_LOSS = (0.01, 0.05)


@dataclass
class Point:
    method: str
    knob: float
    ffn_params: int
    ffn_params_before: int
    structured: bool
    loss: float
    accuracy: float
    seconds: float
    widths: list[int] = field(default_factory=list)
    fidelity: float = 0.0  # RMSE of the logits' change / std of the original logits
    refine_seconds: float = 0.0

    @property
    def kept(self) -> float:
        return 100.0 * self.ffn_params / self.ffn_params_before


def log(message: str) -> None:
    print(message, flush=True)
