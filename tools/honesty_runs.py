"""How far the error a ``--max-error`` run prints can be trusted, by calibration size.

For each demo network and ``--seed`` it runs the README's first command (``--max-error``,
refinement on) twice: on the demo's 2,048 calibration rows and on a seeded half of them
(1,024 rows). Each written model is then measured on the demo's 1,600 test rows (new
trajectories) and, for the half, on the other 1,024 calibration rows as well. A run is
"honest" here when the test error is within 1.5x the printed error or within the budget.

    python -m tools.honesty_runs [--seeds 4] [--budget 0.05] [--options "--reduction span"]
                                 [--out FILE.md]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnx_lump.data.holdout import output_error
from tools.check_demo import CALIB, DEMO_MODELS, MODELS, run

HALF_SEED = 0


def half_split(folder: Path) -> tuple[Path, np.ndarray]:
    """A seeded half of the demo calibration rows as a file, and the other half's rows."""
    rows = np.load(CALIB)["input"]
    order = np.random.default_rng(HALF_SEED).permutation(len(rows))
    half = folder / "rn_calib_1024.npz"
    np.savez(half, input=rows[np.sort(order[: len(rows) // 2])])
    return half, rows[np.sort(order[len(rows) // 2 :])]


def relative_error(model: Path, written: str, rows: np.ndarray) -> float:
    """The CLI's error measure of the written model on ``rows``, through onnxruntime."""
    feeds = {"input": rows.astype(np.float32)}
    original = ort.InferenceSession(str(model)).run(None, feeds)[0]
    return output_error(original, ort.InferenceSession(written).run(None, feeds)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--options", default="", help="more CLI options, as one string")
    args = parser.parse_args()
    lines = [
        "| network | calibration rows | --seed | kept | printed | test rows | other half |"
        " honest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        half, other = half_split(folder)
        for name in DEMO_MODELS:
            model = MODELS / name
            for seed in range(args.seeds):
                for calib in (CALIB, half):
                    extra = ("--seed", str(seed), *args.options.split())
                    result = run(model, args.budget, calib, folder, *extra)
                    rows = len(np.load(calib)["input"])
                    if "exit" in result:
                        lines.append(f"| {name} | {rows} | {seed} | exit {result['exit']} |")
                        print(lines[-1], flush=True)
                        continue
                    printed, test = result["held_out_error"], result["test_error"]
                    rest = "-"
                    if calib == half:
                        rest = f"{100 * relative_error(model, result['path'], other):.2f}%"
                    honest = test <= max(1.5 * printed, args.budget)
                    lines.append(
                        f"| {name} | {rows} | {seed} | {100 * result['kept']:.1f}% |"
                        f" {100 * printed:.2f}% | {100 * test:.2f}% | {rest} |"
                        f" {'yes' if honest else 'no'} |"
                    )
                    print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
