"""Linear lumping (``--reduction span``) against partitions, after refinement, side by side.

For each benchmark network (from ``tools/cache/``, trained by ``python -m tools.bench``) and
each target size, both reductions are searched to that size with ``--target-params``
semantics (onnx_lump.search), refined with the same budget, and measured on the task's
test split with onnxruntime: test-RMSE increase (dRMSE%) and fidelity (RMSE of the output
change / std of the original's test outputs). Calibration = 2,048 training inputs.

    python tools/compare_span.py [--networks rn_2x64_tanh,protein_3x128_tanh] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from benchdata import DEFAULT_DATA_DIR, load_task  # noqa: E402

from onnx_lump.data.refine import RefineOptions  # noqa: E402
from onnx_lump.methods import Lump, Reduction  # noqa: E402
from onnx_lump.ode.partition import PartitionOptions, Similarity  # noqa: E402
from onnx_lump.search import Evaluator, bisect  # noqa: E402

DEFAULT_NETWORKS = (
    "rn_2x64_tanh,rn_3x128_relu,protein_3x128_tanh,metro_2x64_relu,glycolytic_3x128_tanh,"
    "hepc_2x64_relu"
)
TARGETS = (0.1, 0.2, 0.35, 0.5)
REFINE = RefineOptions(max_iters=300, max_seconds=60.0)


def evaluate(path: Path, task, calib, reduction: Reduction, target: float) -> dict:
    model = onnx.load(path)
    limit = 1.0 if reduction is Reduction.SPAN else None

    def make(eps: float) -> Lump:
        return Lump(PartitionOptions(eps, similarity=Similarity.DATA), reduction=reduction)

    started = time.perf_counter()
    evaluator = Evaluator(model, make, calib, refine=REFINE)
    knob, _, _ = bisect(evaluator, limit, target_params=target)
    reduced, report = evaluator.finish(knob, verify=False)
    seconds = time.perf_counter() - started
    name = model.graph.input[0].name
    x = task.x_test.astype(np.float32)
    original = ort.InferenceSession(str(path)).run(None, {name: x})[0].astype(np.float64)
    output = ort.InferenceSession(reduced.SerializeToString()).run(None, {name: x})[0]
    output = output.astype(np.float64)
    y = task.y_test.reshape(original.shape)
    base = float(np.sqrt(np.mean((original - y) ** 2)))
    now = float(np.sqrt(np.mean((output - y) ** 2)))
    return {
        "kept": report.retained,
        "drmse": 100 * (now - base) / base,
        "fidelity": float(np.sqrt(np.mean((output - original) ** 2)) / original.std()),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default=DEFAULT_NETWORKS)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--cache", type=Path, default=ROOT / "tools" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results" / "span.md")
    args = parser.parse_args()
    lines = [
        "# Linear lumping (span) against partitions, after refinement",
        "",
        f"Both refined with {REFINE.max_iters} L-BFGS iterations; calibration 2,048 training "
        "inputs (20% held out); test split of each task; onnxruntime. Lower is better.",
        "",
        "| network | target | partition kept | span kept | partition dRMSE% | span dRMSE% "
        "| partition fidelity | span fidelity | partition s | span s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    wins = total = 0
    for network in args.networks.split(","):
        task_name, size, activation = network.split("_")
        path = next(args.cache.glob(f"{task_name}_{size}_{activation}_*.onnx"))
        task = load_task(task_name, args.data)
        rows = np.random.default_rng(0).choice(len(task.x_train), 2048, replace=False)
        name = onnx.load(path).graph.input[0].name
        calib = {name: task.x_train[rows].astype(np.float32)}
        for target in TARGETS:
            part = evaluate(path, task, calib, Reduction.PARTITION, target)
            span = evaluate(path, task, calib, Reduction.SPAN, target)
            total += 1
            wins += span["fidelity"] < part["fidelity"]
            lines.append(
                f"| {task_name} {size} {activation} | {100 * target:g}% "
                f"| {100 * part['kept']:.1f} | {100 * span['kept']:.1f} "
                f"| {part['drmse']:.1f} | {span['drmse']:.1f} "
                f"| {part['fidelity']:.4f} | {span['fidelity']:.4f} "
                f"| {part['seconds']:.1f} | {span['seconds']:.1f} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"span has the better fidelity in {wins} of {total} comparisons."]
    args.out.write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
