"""Benchmark, transformer task: compress the FFN blocks of the character model and report
FFN parameters kept against the held-out loss and accuracy.

The model, calibration windows and held-out windows come from ``tools/train_transformer.py``
(``tools/cache/transformer/``; run it first). Only the FFN blocks are compressed: they are
the model's only dense chains (``MatMul+Add -> Gelu -> MatMul+Add``; the attention and the
head are not chains), which the script checks. Calibration is the 256 training-text
windows in ``calib.npz`` (the library holds out 20% of them itself); every number below
is measured by onnxruntime on the written model over the 512 held-out windows (32,768
next-character predictions from files never trained on).

Methods: ``lump`` (data-aware lumping with data similarity and refit, no refinement) on a
grid of eps; ``lump+refine`` (the same lumping, warm
started, then L-BFGS refinement of each FFN onto the original FFN's outputs); the
unstructured ``magnitude``, ``wanda`` and ``ec`` (their dense graph does not shrink: the
size is non-zero weights plus biases); ``linear`` (linearity folding: GELU is not
positively homogeneous, so it folds nothing); ``onnxsim-ridge`` and ``onnxsim`` (the peer's
structured Wanda channel removal and ridge refit, then for ``onnxsim`` its block
distillation of each FFN, public API; see :func:`onnxsim_points`).

Writes ``tools/results/transformer.md``, ``transformer.json`` and ``transformer.png``.
Run from the project root (about 20 to 40 minutes on 2 shared cores)::

    python tools/transformer_bench.py [--cache tools/cache/transformer] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from onnx_lump import compress
from onnx_lump.data.refine import RefineOptions
from onnx_lump.graph.chains import scan_graph
from onnx_lump.graph.rewrite import import_graph
from onnx_lump.methods import (
    EliminationCompensation,
    LinearFolding,
    Lump,
    Magnitude,
    Scope,
    Wanda,
)
from onnx_lump.ode.equivalence import PartitionOptions, Similarity

__all__ = ["Point", "main"]

ROOT = Path(__file__).resolve().parent
DEFAULT_CACHE = ROOT / "cache" / "transformer"
RESULTS = ROOT / "results"
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


class Task:
    """The model, its calibration feeds, and the held-out scorer."""

    def __init__(self, cache: Path) -> None:
        path = cache / "charlm_2x128.onnx"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run python tools/train_transformer.py first")
        self.path = path
        self.model = onnx.load(str(path))
        self.meta = json.loads((cache / "meta.json").read_text())
        self.calibration = {INPUT_NAME: np.load(cache / "calib.npz")[INPUT_NAME]}
        held = np.load(cache / "heldout.npz")
        self.tokens, self.next_chars = held[INPUT_NAME], held["next_chars"]
        chains = scan_graph(import_graph(self.model)).chains
        self.n_chains = len(chains)
        self.ffn_params = sum(c.n_params for c in chains)
        self.chain_names = [c.describe() for c in chains]
        self.reference_logits = self.logits(self.model)
        self.loss, self.accuracy = self.score(self.reference_logits)
        self.spread = float(self.reference_logits.std())

    def logits(self, model: onnx.ModelProto) -> np.ndarray:
        """The model's logits on the held-out windows, from a file written to disk."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.log_severity_level = 3
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path))
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            parts = [
                session.run([OUTPUT_NAME], {INPUT_NAME: self.tokens[i : i + 128]})[0]
                for i in range(0, len(self.tokens), 128)
            ]
        return np.concatenate(parts)

    def score(self, logits: np.ndarray) -> tuple[float, float]:
        flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
        flat -= flat.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(flat).sum(axis=1))
        targets = self.next_chars.reshape(-1)
        picked = flat[np.arange(flat.shape[0]), targets]
        return float(np.mean(log_norm - picked)), float(np.mean(flat.argmax(axis=1) == targets))

    def measure(self, method: str, knob: float, model, ffn_params, structured, seconds, **extra):
        logits = self.logits(model)
        loss, accuracy = self.score(logits)
        fidelity = float(np.sqrt(np.mean((logits - self.reference_logits) ** 2))) / self.spread
        point = Point(
            method,
            float(knob),
            int(ffn_params),
            self.ffn_params,
            structured,
            loss,
            accuracy,
            float(seconds),
            fidelity=fidelity,
            **extra,
        )
        log(
            f"  {method:<12} knob={knob:<10.4g} FFN {point.kept:5.1f}%  loss {loss:.4f} "
            f"(+{100 * (loss / self.loss - 1):6.2f}%)  acc {accuracy:.4f}  "
            f"fidelity {fidelity:.3g}  {seconds:.1f}s"
        )
        return point


def log(message: str) -> None:
    print(message, flush=True)


def _lump(eps: float) -> Lump:
    return Lump(PartitionOptions(eps, similarity=Similarity.DATA))


def lump_points(task: Task, eps_values, refine: RefineOptions, max_refined: int) -> list[Point]:
    """Lumping (data similarity, refit, no refinement) at each eps, then lump+refine warm
    started from the lumping at up to ``max_refined`` of those eps whose size lies
    between 5% and 95%. Seconds of lump+refine include its lumping's."""
    points, runs = [], []
    for eps in eps_values:
        started = time.perf_counter()
        model, report = compress(
            task.model, _lump(eps), calibration=task.calibration, refine=False, verify=False
        )
        seconds = time.perf_counter() - started
        widths = [w for ws in report.widths_after for w in ws]
        points.append(
            task.measure("lump", eps, model, report.params_after, True, seconds, widths=widths)
        )
        runs.append((eps, report, seconds))
        if report.retained < 0.05:
            break  # larger eps only shrink further
    useful = [r for r in runs if 0.05 <= r[1].retained <= 0.95]
    if len(useful) > max_refined:  # spread the refined points over the sizes
        picks = np.linspace(0, len(useful) - 1, max_refined).round().astype(int)
        useful = [useful[i] for i in sorted(set(picks))]
    for eps, report, seconds in useful:
        started = time.perf_counter()
        model, refined = compress(
            task.model,
            _lump(eps),
            calibration=task.calibration,
            refine=refine,
            warm_start=report.results,
            verify=False,
        )
        refine_seconds = time.perf_counter() - started
        widths = [w for ws in refined.widths_after for w in ws]
        points.append(
            task.measure(
                "lump+refine",
                eps,
                model,
                refined.params_after,
                True,
                seconds + refine_seconds,
                widths=widths,
                refine_seconds=refine_seconds,
            )
        )
    return points


def pruning_points(task: Task, sparsities, names=("magnitude", "wanda")) -> list[Point]:
    points = []
    makers = {
        "magnitude": lambda s: Magnitude(s, Scope.LAYER),
        "wanda": Wanda,
        "ec": lambda s: EliminationCompensation(s, Scope.GLOBAL),
    }
    for name in names:
        make = makers[name]
        for sparsity in sparsities:
            started = time.perf_counter()
            try:
                model, report = compress(
                    task.model, make(sparsity), calibration=task.calibration, verify=False
                )
            except Exception as exc:  # a baseline's failure is a result, not a crash
                log(f"  {name} failed at sparsity {sparsity}: {type(exc).__name__}: {exc}")
                continue
            seconds = time.perf_counter() - started
            points.append(task.measure(name, sparsity, model, report.params_after, False, seconds))
    return points


def linear_points(task: Task) -> list[Point]:
    started = time.perf_counter()
    model, report = compress(
        task.model, LinearFolding(1.0), calibration=task.calibration, verify=False
    )
    seconds = time.perf_counter() - started
    return [task.measure("linear", 0.0, model, report.params_after, True, seconds)]


def _ffn_params(model: onnx.ModelProto) -> tuple[int, list[int]]:
    chains = scan_graph(import_graph(model)).chains
    return sum(c.n_params for c in chains), [w for c in chains for w in c.hidden_widths]


def _other_params(model: onnx.ModelProto) -> int:
    """Stored parameters outside the FFN chains (must not change: FFN blocks only)."""
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return total - _ffn_params(model)[0]


def onnxsim_points(task: Task, sparsities, steps: int) -> list[Point]:
    """onnxsim's structured stack at each channel sparsity, public API only.

    ``onnxsim-ridge``: Wanda channel removal and its closed-form ridge refit of the
    surviving layers, on the dynamo export. ``onnxsim``: the same, then Adam distillation
    of each FFN block (LayerNorm output to FFN output) onto the original's; onnxsim 0.8
    cannot differentiate the ``Gelu`` op, so this runs on the TorchScript opset-17 export
    of the same weights (GELU written with ``Erf``, which it can). Same calibration."""
    try:
        import onnxsim
    except ImportError:
        log("  SKIPPED onnxsim: not importable (pip install 'onnxsim>=0.8')")
        return []
    needed = ("apply_structured_wanda_pruning", "apply_pruning_finetune", "apply_block_finetune")
    if not all(hasattr(onnxsim, name) for name in needed):
        log(f"  SKIPPED onnxsim {getattr(onnxsim, '__version__', '?')}: needs >= 0.8")
        return []
    feeds = [task.calibration]
    points = []
    scripted = task.path.with_name("charlm_2x128_ts.onnx")
    sources = [("onnxsim-ridge", task.model, False)]
    if scripted.is_file():
        sources.append(("onnxsim", onnx.load(str(scripted)), True))
    for name, original, distill in sources:
        chains = scan_graph(import_graph(original)).chains
        blocks = [(c.layers[0].input.name, c.layers[-1].output.name) for c in chains]
        others = _other_params(original)
        for sparsity in sparsities:
            started = time.perf_counter()
            try:
                pruned = onnxsim.apply_structured_wanda_pruning(
                    _copy(original), calibration_data=feeds, sparsity=float(sparsity)
                )
                model = onnxsim.apply_pruning_finetune(
                    _copy(original), pruned, calibration_data=feeds
                )
                for block_in, block_out in blocks if distill else []:
                    model = onnxsim.apply_block_finetune(
                        _copy(original),
                        model,
                        block_in,
                        block_out,
                        calibration_data=feeds,
                        num_iterations=steps,
                        learning_rate=ONNXSIM_LEARNING_RATE,
                        batch_size=ONNXSIM_BATCH,
                    )
            except Exception as exc:  # the peer's failure is a result to report, not a crash
                log(f"  {name} failed at sparsity {sparsity}: {type(exc).__name__}: {exc}"[:400])
                continue
            seconds = time.perf_counter() - started
            ffn, widths = _ffn_params(model)
            if _other_params(model) != others:
                log(f"  {name} at sparsity {sparsity} also pruned outside the FFNs; left out")
                continue
            points.append(task.measure(name, sparsity, model, ffn, True, seconds, widths=widths))
    return points


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


# -- report ---------------------------------------------------------------------------
_ORDER = ("lump", "lump+refine", "onnxsim", "onnxsim-ridge", "linear", "magnitude", "wanda", "ec")


def headline(task: Task, points: list[Point], method: str, bound: float) -> Point | None:
    good = [p for p in points if p.method == method and p.loss <= task.loss * (1 + bound)]
    return min(good, key=lambda p: p.ffn_params, default=None)


def write_markdown(task: Task, points: list[Point], path: Path, quick: bool, seconds: float):
    meta = task.meta
    lines = [
        "# Transformer task: FFN blocks of a character-level language model",
        "",
        f"Model: {meta['architecture']}; {meta['parameters']:,} parameters, of which "
        f"{task.ffn_params:,} in the {task.n_chains} FFN blocks. Trained by "
        f"`tools/train_transformer.py` ({meta['steps']} steps of {meta['batch']} x "
        f"{meta['train_len']} characters, {meta['train_seconds']:.0f} s on 2 shared cores; "
        f"Python {meta['python']}, torch {meta['torch']}) on "
        f"{len(meta['train_files'])} standard-library files ({meta['train_characters']:,} "
        f"characters); held out by file: {', '.join(meta['heldout_files'])}. "
        "Exported by the dynamo exporter (opset 20, `Gelu` op), dynamic batch and sequence.",
        "",
        "Chains found by onnx_lump (only the FFNs; attention and head are not chains):",
        "",
        *[f"- `{name}`" for name in task.chain_names],
        "",
        f"Original on the 512 held-out windows ({task.tokens.size:,} predictions): "
        f"**cross-entropy {task.loss:.4f} nats/char, next-char accuracy "
        f"{100 * task.accuracy:.2f}%**. Calibration: the 256 training windows of "
        "`calib.npz` only (the library holds 20% of them out for its own choices). Every "
        "number is measured by onnxruntime on the written model.",
        "",
        f"Run: `python tools/transformer_bench.py{' --quick' if quick else ''}` "
        f"({seconds / 60:.0f} min).",
        "",
        "## Headline",
        "",
        "Smallest FFN share kept with held-out loss within +1% / +5% of the original "
        "(unstructured methods: non-zero weights, the dense graph does not shrink):",
        "",
        "| method | FFN kept, loss <= +1% | FFN kept, loss <= +5% |",
        "|---|---|---|",
    ]
    for method in _ORDER:
        if not any(p.method == method for p in points):
            continue
        cells = []
        for bound in HEADLINE_LOSS:
            best = headline(task, points, method, bound)
            cells.append("none" if best is None else f"{best.kept:.1f}%")
        lines.append(f"| {method} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "## All points",
        "",
        "dloss = relative increase of the held-out cross-entropy; dacc = accuracy change in "
        "percentage points; fidelity = RMSE of the logits' change / std of the original "
        "logits; widths = FFN hidden widths after (512 each before).",
        "",
        "| method | knob | FFN params | FFN kept | loss | dloss | accuracy | dacc | "
        "fidelity | widths | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in _ORDER:
        for p in sorted((p for p in points if p.method == method), key=lambda p: -p.ffn_params):
            unstructured = "" if p.structured else " (nnz)"
            lines.append(
                f"| {p.method} | {p.knob:.4g} | {p.ffn_params:,}{unstructured} | {p.kept:.1f}% | "
                f"{p.loss:.4f} | {100 * (p.loss / task.loss - 1):+.2f}% | "
                f"{100 * p.accuracy:.2f}% | {100 * (p.accuracy - task.accuracy):+.2f} | "
                f"{p.fidelity:.3g} | {'-'.join(map(str, p.widths)) or '-'} | "
                f"{p.seconds:.1f} |"
            )
    methods = {p.method for p in points}
    lines += ["", "## Notes", ""]
    if "ec" not in methods:
        lines.append(
            "- `ec` (elimination-compensation) has no point: in the committed run its first "
            "sparsity had not finished after 20 minutes on the 2 shared cores (512-wide layers)."
        )
    if "onnxsim" not in methods:
        lines.append(
            "- `onnxsim` (full stack with block distillation) has no point: onnxsim 0.8 cannot "
            "differentiate `Gelu`, and on the TorchScript opset-17 export (GELU via `Erf`) its "
            "stack raised `ValueError: zero-dimensional arrays cannot be concatenated` at every "
            "sparsity. `onnxsim-ridge` is its channel removal + ridge refit alone."
        )
    if "linear" in methods:
        lines.append(
            "- `linear` folds nothing: GELU is not positively homogeneous, so no neuron is "
            "linear on its active side; it is listed at 100%."
        )
    lines.append(
        "- Unstructured methods (`magnitude`, `wanda`) count non-zero weights plus biases; "
        "their ONNX graph keeps its dense size."
    )
    path.write_text("\n".join(lines) + "\n")


def plot(task: Task, points: list[Point], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("  no plot: matplotlib is not installed")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in _ORDER:
        chosen = sorted((p for p in points if p.method == method), key=lambda p: p.kept)
        if not chosen:
            continue
        style = "-o" if chosen[0].structured else "--x"
        kept = [p.kept for p in chosen]
        left.plot(kept, [100 * (p.loss / task.loss - 1) for p in chosen], style, label=method)
        right.plot(kept, [100 * (task.accuracy - p.accuracy) for p in chosen], style, label=method)
    for axis, label in ((left, "held-out loss increase (%)"), (right, "accuracy drop (pp)")):
        axis.set_xlabel("FFN parameters kept (%)")
        axis.set_ylabel(label)
        axis.set_yscale("symlog", linthresh=1.0)
        axis.axhline(0.0, color="grey", lw=0.5)
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle("char-LM 2x128, FFN blocks only (dashed: unstructured, nnz)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="few points, small budgets")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated parts to run: lump,pruning,ec,linear,onnxsim; the other methods' "
        "points of an earlier run are kept ('report' runs nothing, rewrites the report)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    started = time.perf_counter()
    task = Task(args.cache)
    log(
        f"model: {task.n_chains} FFN chains, {task.ffn_params:,} FFN params; held-out loss "
        f"{task.loss:.4f}, accuracy {task.accuracy:.4f}"
    )
    everything = {"lump", "pruning", "ec", "linear", "onnxsim"}
    only = set(args.only.split(",")) if args.only else everything
    points: list[Point] = []
    if "lump" in only:
        log("lump and lump+refine")
        points += lump_points(
            task,
            QUICK_EPS if args.quick else EPS,
            QUICK_REFINE if args.quick else REFINE,
            QUICK_MAX_REFINED if args.quick else MAX_REFINED,
        )
    if "linear" in only:
        log("linear")
        points += linear_points(task)
    if "onnxsim" in only:
        log("onnxsim")
        points += onnxsim_points(
            task,
            QUICK_SPARSITIES if args.quick else SPARSITIES,
            QUICK_ONNXSIM_STEPS if args.quick else ONNXSIM_STEPS,
        )
    if "pruning" in only:
        log("magnitude, wanda")
        points += pruning_points(task, QUICK_SPARSITIES if args.quick else SPARSITIES)
    if "ec" in only:  # elimination-compensation: slow on 512-wide layers, a part of its own
        log("ec")
        points += pruning_points(task, QUICK_SPARSITIES if args.quick else SPARSITIES, ("ec",))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "transformer_quick" if args.quick else "transformer"
    seconds = time.perf_counter() - started
    previous = args.out / f"{stem}.json"
    if args.only and previous.is_file():  # keep the other methods' points of an earlier run
        ran = {p.method for p in points}
        kept = [Point(**p) for p in json.loads(previous.read_text())["points"]]
        points = [p for p in kept if p.method not in ran] + points
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "original": {"loss": task.loss, "accuracy": task.accuracy},
                "ffn_params": task.ffn_params,
                "points": [asdict(p) for p in points],
            },
            indent=1,
        )
        + "\n"
    )
    write_markdown(task, points, args.out / f"{stem}.md", args.quick, seconds)
    plot(task, points, args.out / f"{stem}.png")
    log(f"wrote {args.out / stem}.md/.json/.png in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
