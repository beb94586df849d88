"""Constants of the MiniLM task's protocol, the :class:`Point` every run yields, and logging."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

from tools.minilm_bench import TOOLS

__all__ = [
    "BATCH",
    "BLOCKS",
    "CALIB_COUNT",
    "DEFAULT_CACHE",
    "EVAL_COUNT",
    "EXPORTS",
    "HIDDEN",
    "INNER",
    "INPUT_NAMES",
    "LATENCY_BATCHES",
    "LATENCY_SEQ",
    "MAX_WORDS",
    "METHODS",
    "MIN_WORDS",
    "ONNXSIM_BATCH",
    "ONNXSIM_LEARNING_RATE",
    "ONNXSIM_STEPS",
    "OURS_VARIANTS",
    "OUTPUT_NAME",
    "PAIRS",
    "QUERIES",
    "RESULTS",
    "SEED",
    "SEQ",
    "SHARES",
    "TIMEOUT",
    "Point",
    "log",
    "point_from_dict",
]

DEFAULT_CACHE = TOOLS / "cache" / "minilm"
RESULTS = TOOLS / "results"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"  # "embedding" clashes with a dynamo tensor name
HIDDEN, INNER, BLOCKS = 384, 1536, 6  # all-MiniLM-L6-v2: 6 blocks, FFN 384 -> 1536 -> 384
SEED = 0
SEQ = 64  # calibration and evaluation sentences: truncated and padded to 64 tokens
MIN_WORDS, MAX_WORDS = 5, 60
CALIB_COUNT = 500
EVAL_COUNT = 1000
QUERIES = 200  # recall@10 queries (seeded), each against the other evaluation sentences
PAIRS = 20000  # seeded sentence pairs for the Spearman correlation of similarities
BATCH = 50  # evaluation batch (and calibration batch of the peer)
LATENCY_SEQ = 128
LATENCY_BATCHES = (1, 32)
SHARES = (0.7, 0.5, 0.3)  # FFN parameters kept
TIMEOUT = 900.0  # seconds, each compression
EXPORTS = ("dynamo", "torchscript", "ortopt")
# The command line's variants: label -> flags added to
# ``python -m onnx_lump IN OUT --calib CALIB --target-params F --report-json R``.
OURS_VARIANTS = {"ours": (), "lump": ("--no-refine",), "span": ("--reduction", "span")}
# Every method, in the report's order; "int8" quantizes the original and ours at 50%.
METHODS = ("ours", "lump", "span", "onnxsim", "topact", "id", "int8")
# The peer's block finetune (Adam distillation of each FFN block), as in the transformer
# task: steps per block, learning rate and rows per step.
ONNXSIM_STEPS = 200
ONNXSIM_LEARNING_RATE = 3e-3
ONNXSIM_BATCH = 2048


@dataclass
class Point:
    """One compressed model, measured on the evaluation sentences.

    ``status`` is "ok", "timeout", "failed" (the compression exited non-zero or wrote
    nothing) or "skipped"; only "ok" points carry metrics. ``seconds`` and ``peak_mb`` are
    the compression child's wall time and peak RSS; ``exit_code`` and ``last_line`` its exit
    status and last line of output. Parameter counts: ``ffn_params`` over the 6 FFN blocks
    (both dense layers' weights and biases), ``model_params`` every float (or 8-bit)
    initializer's elements. Latencies are medians in ms; ``*_ratio`` compressed/original."""

    export: str
    method: str
    share: float  # FFN share asked for (1.0: the original's size)
    status: str = "ok"
    seconds: float = 0.0
    peak_mb: float | None = None
    exit_code: int | None = None
    last_line: str = ""
    note: str = ""
    ffn_params: int = 0
    ffn_params_before: int = 0
    model_params: int = 0
    model_params_before: int = 0
    bytes: int = 0
    bytes_before: int = 0
    widths: list[int] = field(default_factory=list)
    cosine_mean: float | None = None
    cosine_p5: float | None = None
    cosine_min: float | None = None
    recall10: float | None = None
    spearman: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_ratio: dict[str, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)  # the command line's report JSON, abridged
    measured_at: str = ""

    @property
    def key(self) -> tuple[str, str, float]:
        return (self.export, self.method, round(self.share, 4))

    @property
    def ffn_kept(self) -> float | None:
        return 100.0 * self.ffn_params / self.ffn_params_before if self.ffn_params_before else None

    @property
    def model_kept(self) -> float | None:
        if not self.model_params_before:
            return None
        return 100.0 * self.model_params / self.model_params_before


def point_from_dict(row: dict) -> Point:
    """A Point from a JSON row, also one written before a field existed."""
    names = {f.name for f in fields(Point)}
    return Point(**{k: v for k, v in row.items() if k in names})


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
