"""Run the README's first command and measure its model on the demo's test trajectories.

The README promises that the model its first command writes stays within the error budget
the command asks for, on inputs the tool never saw. This prints, for that command (or for
the model and budgets given), the held-out error the tool reported, the error on the
1,600 test rows of ``models/rn_test.npz`` (RMSE of the output change relative to the
standard deviation of the original's test outputs) and the test-RMSE increase against the
true targets.

    python tools/check_demo.py [--model models/rn_tanh_2x64.onnx] [--budgets 0.01,0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnx_lump.cli import main as cli  # noqa: E402


def run(model: Path, budget: float, calib: Path, folder: Path) -> dict:
    out, report = folder / f"{model.stem}_{budget:g}.onnx", folder / f"{model.stem}_{budget:g}.json"
    code = cli(
        [
            str(model),
            str(out),
            "--calib",
            str(calib),
            "--max-error",
            str(budget),
            "-q",
            "--report-json",
            str(report),
        ]
    )
    if code != 0:
        return {"model": model.name, "budget": budget, "exit": code}
    test = np.load(ROOT / "models" / "rn_test.npz")
    feeds = {"input": test["input"]}
    original = ort.InferenceSession(str(model)).run(None, feeds)[0].astype(np.float64)
    reduced = ort.InferenceSession(str(out)).run(None, feeds)[0].astype(np.float64)
    rmse = [float(np.sqrt(np.mean((y - test["target"]) ** 2))) for y in (original, reduced)]
    summary = json.loads(report.read_text())
    return {
        "model": model.name,
        "budget": budget,
        "kept": summary["retained"],
        "held_out_error": summary["holdout_error"],
        "test_error": float(np.sqrt(np.mean((reduced - original) ** 2)) / original.std()),
        "test_drmse": (rmse[1] - rmse[0]) / rmse[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append")
    parser.add_argument("--budgets", default="0.05")
    parser.add_argument("--calib", type=Path, default=ROOT / "models" / "rn_calib_2048.npz")
    args = parser.parse_args()
    models = args.model or [ROOT / "models" / "rn_tanh_2x64.onnx"]
    with tempfile.TemporaryDirectory() as folder:
        for model in models:
            for budget in (float(b) for b in args.budgets.split(",")):
                row = run(model, budget, args.calib, Path(folder))
                print(
                    " | ".join(
                        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in row.items()
                    )
                )


if __name__ == "__main__":
    main()
