"""Linear lumping (``--reduction span``) against partitions, after refinement, side by side.

For each benchmark network (from the bench cache, trained by ``python -m tools.bench``) and
each target size, both reductions are searched to that size with ``--target-params``
semantics (onnx_lump.search), refined with the same budget (the command line's default,
as the benchmark's lump+refine), and measured on the task's test split with onnxruntime:
test-RMSE increase (dRMSE%) and fidelity (RMSE of the output change / std of the
original's test outputs). Calibration = 2,048 training inputs.

The target sizes are fixed (``--targets``) or, with ``--targets-from points.json``, taken
per network from the benchmark's lump+refine: the smallest size it kept within dRMSE 5%
and 0.6 times that (where it has none, 50% and 80%), so the comparison sits where the
benchmark's headline is decided. Rows are written as they come.

    python -m tools.compare_span [--networks all|rn_2x64_tanh,...] [--targets-from FILE]
        [--cache DIR] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_lump.data.refine import RefineOptions
from onnx_lump.methods import Lump, Reduction
from onnx_lump.ode.partition import PartitionOptions, Similarity
from onnx_lump.search import Evaluator, bisect
from tools.benchdata import DEFAULT_DATA_DIR, TASKS, load_task

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_NETWORKS = (
    "rn_2x64_tanh,rn_3x128_relu,protein_3x128_tanh,metro_2x64_relu,glycolytic_3x128_tanh,"
    "hepc_2x64_relu"
)
TARGETS = (0.1, 0.2, 0.35, 0.5)
REFINE = RefineOptions(progress=False)  # the command line's default budget


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


def all_networks() -> str:
    return ",".join(
        f"{task}_{'x'.join([str(len(h)), str(h[0])])}_{act}"
        for task in TASKS
        for h in ((64, 64), (128, 128, 128))
        for act in ("tanh", "relu")
    )


def targets_for(network: str, points: list[dict] | None) -> list[float]:
    """The target sizes (shares) for ``network`` ('rn_2x64_tanh'): fixed, or around the
    benchmark lump+refine's smallest size within dRMSE 5%."""
    if points is None:
        return list(TARGETS)
    task, size, activation = network.split("_")
    mine = [
        p["grp"]
        for p in points
        if p["task"] == task
        and p["network"] == f"{size} {activation}"
        and p["method"] == "lump+refine"
        and p["drmse"] <= 5.0
    ]
    if not mine:
        return [0.5, 0.8]
    best = min(mine) / 100
    return sorted({round(max(0.6 * best, 0.005), 4), round(best, 4)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default=DEFAULT_NETWORKS, help="comma-separated, or all")
    parser.add_argument("--targets-from", type=Path, help="the benchmark's points.json")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--cache", type=Path, default=ROOT / "tools" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results" / "span.md")
    args = parser.parse_args()
    points = json.loads(args.targets_from.read_text()) if args.targets_from else None
    networks = all_networks() if args.networks == "all" else args.networks
    lines = [
        "# Linear lumping (span) against partitions, after refinement",
        "",
        f"`python -m tools.compare_span {' '.join(sys.argv[1:])}` (started "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). Both reductions searched "
        f"to each target size and refined with the command line's default budget "
        f"({REFINE.max_iters} iterations, {REFINE.max_seconds:g} s cap); calibration 2,048 "
        "training inputs (20% held out); test split of each task; onnxruntime. Lower is "
        "better. Fidelity = RMSE of the output change / std of the original's test outputs.",
        "",
        "| network | target | partition kept | span kept | partition dRMSE% | span dRMSE% "
        "| partition fidelity | span fidelity | partition s | span s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    results = []
    for network in networks.split(","):
        task_name, size, activation = network.split("_")
        path = next(args.cache.glob(f"{task_name}_{size}_{activation}_*.onnx"))
        task = load_task(task_name, args.data)
        rows = np.random.default_rng(0).choice(len(task.x_train), 2048, replace=False)
        name = onnx.load(path).graph.input[0].name
        calib = {name: task.x_train[rows].astype(np.float32)}
        for target in targets_for(network, points):
            part = evaluate(path, task, calib, Reduction.PARTITION, target)
            span = evaluate(path, task, calib, Reduction.SPAN, target)
            results.append((part, span))
            lines.append(
                f"| {task_name} {size} {activation} | {100 * target:g}% "
                f"| {100 * part['kept']:.1f} | {100 * span['kept']:.1f} "
                f"| {part['drmse']:.1f} | {span['drmse']:.1f} "
                f"| {part['fidelity']:.4f} | {span['fidelity']:.4f} "
                f"| {part['seconds']:.1f} | {span['seconds']:.1f} |"
            )
            print(lines[-1], flush=True)
            with args.out.open("a") as out:
                out.write(lines[-1] + "\n")
    lines = ["", *summary(results)]
    with args.out.open("a") as out:
        out.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def summary(results: list[tuple[dict, dict]]) -> list[str]:
    """Counts over the comparisons: better fidelity, better dRMSE, within 5% and 1%."""
    total = len(results)
    fidelity = sum(s["fidelity"] < p["fidelity"] for p, s in results)
    drmse = sum(s["drmse"] < p["drmse"] for p, s in results)
    lines = [
        f"span has the better fidelity in {fidelity} of {total} comparisons and the lower "
        f"dRMSE in {drmse}.",
    ]
    for limit in (5.0, 1.0):
        only_span = sum(s["drmse"] <= limit < p["drmse"] for p, s in results)
        only_part = sum(p["drmse"] <= limit < s["drmse"] for p, s in results)
        lines.append(
            f"Within dRMSE {limit:g}%: span only in {only_span}, partition only in {only_part}."
        )
    seconds = [(p["seconds"], s["seconds"]) for p, s in results]
    if seconds:
        lines.append(
            f"Median seconds: partition {np.median([a for a, _ in seconds]):.1f}, span "
            f"{np.median([b for _, b in seconds]):.1f}."
        )
    return lines


if __name__ == "__main__":
    main()
