"""Sweep epsilon on the shipped demo models and compare the equivalences and linkages.

For every demo model in ``models/`` and every (equivalence, linkage) pair, run the pass
over a grid of epsilons and measure, through onnxruntime on the held-out test split of
the demo task, the retained parameters and the relative test-RMSE increase (dRMSE%).
Prints a Markdown table of the smallest retained share at dRMSE <= 1% and <= 5%, and
writes the table and every sweep point under ``tools/results/``.

    python -m tools.sweep_demo [--out tools/results]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx

from onnx_lump import lump
from onnx_lump.runtime import run_model
from tools.benchdata import simulate_system

ROOT = Path(__file__).resolve().parent.parent

MODELS = ("rn_tanh_2x64.onnx", "rn_relu_2x64.onnx")
SETTINGS = [
    ("backward", "single"),
    ("backward", "complete"),
    ("forward", "single"),
    ("forward", "complete"),
]
EPSILONS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0]


def test_rmse(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    (prediction,) = run_model(model, {"input": x}, ["CPUExecutionProvider"]).values()
    return float(np.sqrt(np.mean((prediction - y) ** 2)))


def best_at(points: list[dict], limit: float) -> float | None:
    within = [p["retained_pct"] for p in points if p["drmse_pct"] <= limit]
    return min(within) if within else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results")
    args = parser.parse_args()
    data = simulate_system("rn")
    points, rows = [], []
    for name in MODELS:
        model = onnx.load(ROOT / "models" / name)
        base = test_rmse(model, data.x_test, data.y_test)
        for equivalence, linkage in SETTINGS:
            sweep = []
            for eps in EPSILONS:
                started = time.perf_counter()
                reduced, report = lump(
                    model, eps, equivalence=equivalence, linkage=linkage, verify=False
                )
                seconds = time.perf_counter() - started
                rmse = test_rmse(reduced, data.x_test, data.y_test)
                sweep.append(
                    {
                        "model": name,
                        "equivalence": equivalence,
                        "linkage": linkage,
                        "eps": eps,
                        "retained_pct": 100 * report.retained,
                        "test_rmse": rmse,
                        "drmse_pct": 100 * (rmse - base) / base,
                        "seconds": seconds,
                    }
                )
            points += sweep
            fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
            rows.append(
                f"| {name} | {equivalence} | {linkage} | {fmt(best_at(sweep, 1.0))} | "
                f"{fmt(best_at(sweep, 5.0))} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| model | equivalence | linkage | min retained % at dRMSE <= 1% | at dRMSE <= 5% |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    header = "Data-free lumping of the demo models, on the test split of the rn task"
    (args.out / "demo_sweep.md").write_text(f"{header} (eps grid {EPSILONS}).\n\n{table}\n")
    (args.out / "demo_sweep.json").write_text(json.dumps(points, indent=1) + "\n")
    print(table)


if __name__ == "__main__":
    main()
