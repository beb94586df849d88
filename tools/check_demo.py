"""Run the README's first command and measure its model on the demo's test trajectories.

The README promises that the model its first command writes stays within the error budget
the command asks for, on inputs the tool never saw. This prints, for that command (or for
the model and budgets given), the held-out error the tool reported, the error on the
1,600 test rows of ``models/rn_test.npz`` (RMSE of the output change relative to the
standard deviation of the original's test outputs) and the test-RMSE increase against the
true targets.

With ``--readme`` it runs the command on both demo models (Tanh and Relu, budget 0.05)
and the ``--quantize int8`` examples on the Tanh one, prints every figure the README
quotes about them as the README writes it, and compares them with README.md (exit 1 on
a difference); tests/e2e/test_readme_figures.py does the same,
so the README's demo figures cannot drift from what the command does.

    python -m tools.check_demo [--model models/rn_tanh_2x64.onnx] [--budgets 0.01,0.05]
    python -m tools.check_demo --readme
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnx_lump.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent

MODELS = ROOT / "models"
CALIB = MODELS / "rn_calib_2048.npz"
README = ROOT / "README.md"
DEMO_MODELS = ("rn_tanh_2x64.onnx", "rn_relu_2x64.onnx")
DEMO_BUDGET = 0.05


def run(model: Path, budget: float, calib: Path, folder: Path, *extra: str) -> dict:
    """The CLI at ``--max-error budget`` on ``calib`` (``extra``: more options), and its
    model measured on the demo's test rows."""
    name = "_".join([model.stem, f"{budget:g}", calib.stem, *extra]).replace("-", "")
    out, report = folder / f"{name}.onnx", folder / f"{name}.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
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
                *extra,
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
        "params_before": summary["params_before"],
        "params_after": summary["params_after"],
        "held_out_error": summary["holdout_error"],
        "held_out_rows": summary["holdout_rows"],
        "test_rows": len(test["input"]),
        "test_error": float(np.sqrt(np.mean((reduced - original) ** 2)) / original.std()),
        "test_drmse": (rmse[1] - rmse[0]) / rmse[0],
        "final_line": printed.getvalue().strip().splitlines()[-1],
        "path": str(out),
    }


def _quantized_run(model: Path, folder: Path, name: str, *options: str) -> dict:
    """The CLI with --quantize int8 and ``options`` on the demo calibration rows: its
    report's quantization record, and the share of parameters kept."""
    out, report = folder / f"{name}.onnx", folder / f"{name}.json"
    with contextlib.redirect_stdout(io.StringIO()):
        arguments = [str(model), str(out), "--calib", str(CALIB), "--quantize", "int8", "-q"]
        code = cli([*arguments, "--report-json", str(report), *options])
    if code != 0:
        return {"exit": code}
    summary = json.loads(report.read_text())
    return {"kept": summary["retained"], **summary["quantization"]}


def int8_rows(tanh: dict, folder: Path) -> dict:
    """The README's int8 figures on the Tanh demo: the original quantized (``--eps 0
    --quantize int8``), the first command's network quantized afterwards (outside its
    budget), and the first command with ``--quantize int8`` (one budget for both)."""
    from onnx_lump.data.holdout import error_rows, output_error, stacked_outputs
    from onnx_lump.pipeline.quantize import quantize_file

    model = MODELS / DEMO_MODELS[0]
    alone = _quantized_run(model, folder, "int8_alone")
    after = folder / "first_command.int8.onnx"
    quantize_file(tanh["path"], after)
    rows = error_rows(dict(np.load(CALIB)), 0.2, 0)  # the rows the CLI prints its error on
    cpu = ["CPUExecutionProvider"]
    reference = stacked_outputs(model, rows, cpu)
    afterwards = output_error(reference, stacked_outputs(after, rows, cpu))
    budget = _quantized_run(model, folder, "int8_budget", "--max-error", str(DEMO_BUDGET))
    return {"alone": alone, "afterwards": afterwards, "budget": budget}


def int8_figures(rows: dict) -> dict[str, str]:
    """The int8 figures as the README quotes them, from :func:`int8_rows`."""
    alone, budget = rows["alone"], rows["budget"]
    return {
        "int8 input bytes": f"{alone['bytes_input']:,}",
        "int8 alone bytes": f"{alone['bytes_int8']:,}",
        "int8 alone held-out": f"{100 * alone['int8_error']:.2f}%",
        "int8 afterwards held-out": f"{100 * rows['afterwards']:.2f}%",
        "int8 budget kept": f"{100 * budget['kept']:.1f}%",
        "int8 budget lumped held-out": f"{100 * budget['lumped_error']:.2f}%",
        "int8 budget held-out": f"{100 * budget['int8_error']:.2f}%",
        "int8 budget lumped bytes": f"{budget['bytes_lumped']:,}",
        "int8 budget bytes": f"{budget['bytes_int8']:,}",
    }


def figures(tanh: dict, relu: dict) -> dict[str, str]:
    """Every figure the README quotes about its first command, formatted as it quotes
    them, from :func:`run` on the Tanh and the Relu demo model (budget 0.05)."""
    final = tanh["final_line"].split(" | ")
    return {
        "tanh kept": f"{100 * tanh['kept']:.1f}%",
        "tanh params": f"{tanh['params_before']:,} -> {tanh['params_after']:,}",
        "tanh held-out": f"{100 * tanh['held_out_error']:.2f}%",
        "held-out rows": str(tanh["held_out_rows"]),
        "test rows": f"{tanh['test_rows']:,}",
        "tanh test": f"{100 * tanh['test_error']:.2f}%",
        "tanh test dRMSE": f"{100 * tanh['test_drmse']:.1f}%",
        "relu kept": f"{100 * relu['kept']:.1f}%",
        "relu held-out": f"{100 * relu['held_out_error']:.2f}%",
        "relu test": f"{100 * relu['test_error']:.2f}%",
        "test / held-out": (
            f"{tanh['test_error'] / tanh['held_out_error']:.2f}x and "
            f"{relu['test_error'] / relu['held_out_error']:.2f}x"
        ),
        # the command's own final line, as the CLI section quotes it
        "final line": " | ".join(final[1:3]),
    }


# Where each figure sits in README.md (whitespace collapsed to single spaces).
_QUOTED = (
    r"keeps \*\*(?P<tanh_kept>[\d.]+%)\*\* of the parameters \((?P<tanh_params>[\d,]+ -> "
    r"[\d,]+)\) with a held-out error of (?P<tanh_held_out>[\d.]+%) on (?P<held_out_rows>\d+) "
    r"audit rows .*?; on the demo's own (?P<test_rows>[\d,]+) test rows "
    r".*? the output error is \*\*(?P<tanh_test>[\d.]+%)\*\*, .*? the test RMSE against the "
    r"true targets rises by (?P<tanh_test_dRMSE>[\d.]+%) .*? The same budget on the Relu demo "
    r"keeps (?P<relu_kept>[\d.]+%) at (?P<relu_held_out>[\d.]+%) held-out and "
    r"(?P<relu_test>[\d.]+%) on the test rows: .*? \(within 2x in a test; "
    r"(?P<test_over_held_out>[\d.]+x and [\d.]+x) for these two commands;",
    r"otherwise `DONE \| (?P<final_line>params \d+ -> \d+ \([\d.]+% kept\) \| held-out error "
    r"[\d.]+% on \d+ audit rows) \|",
    r"int8 alone \(`--eps 0 --quantize int8`\) takes the file from (?P<int8_input_bytes>[\d,]+) "
    r"to (?P<int8_alone_bytes>[\d,]+) bytes at (?P<int8_alone_held_out>[\d.]+%) held-out error\. "
    r"The first command's network \([\d.]+% kept, [\d.]+%\) quantized afterwards errs "
    r"(?P<int8_afterwards_held_out>[\d.]+%), .*? the search keeps (?P<int8_budget_kept>[\d.]+%) "
    r"of the parameters \(held-out error (?P<int8_budget_lumped_held_out>[\d.]+%) before int8, "
    r"(?P<int8_budget_held_out>[\d.]+%) after\) and writes (?P<int8_budget_bytes>[\d,]+) bytes "
    r"\((?P<int8_budget_lumped_bytes>[\d,]+) after the pass\)",
)


def quoted(readme: str) -> dict[str, str]:
    """The demo figures as README.md quotes them (keys as :func:`figures`'s); a figure
    whose sentence no longer reads as expected is missing from the result."""
    text = " ".join(readme.split())
    found: dict[str, str] = {}
    for pattern in _QUOTED:
        match = re.search(pattern, text)
        if match:
            for key, value in match.groupdict().items():
                found[key.replace("_", " ").replace("held out", "held-out")] = value
    renames = {"test over held-out": "test / held-out"}
    return {renames.get(k, k): v for k, v in found.items()}


def readme_figures(folder: Path) -> dict[str, str]:
    """Every figure the README quotes about the demo, measured: :func:`run` on both demo
    models at the README's budget (:func:`figures`), then the int8 runs
    (:func:`int8_figures`). A run that fails its budget is an error."""
    tanh, relu = (run(MODELS / name, DEMO_BUDGET, CALIB, folder) for name in DEMO_MODELS)
    int8 = int8_rows(tanh, folder)
    for row in (tanh, relu, int8["alone"], int8["budget"]):
        if "exit" in row:
            raise SystemExit(f"a demo command exited {row['exit']}: {row}")
    return {**figures(tanh, relu), **int8_figures(int8)}


def compare(measured: dict[str, str], readme: dict[str, str]) -> list[str]:
    """One line per figure where README.md and the measurement differ."""
    return [
        f"{key}: README says {readme.get(key, '(not found)')!r}, the command gives {value!r}"
        for key, value in measured.items()
        if readme.get(key) != value
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append")
    parser.add_argument("--budgets", default="0.05")
    parser.add_argument("--calib", type=Path, default=CALIB)
    parser.add_argument(
        "--readme", action="store_true", help="the README's figures, compared with README.md"
    )
    parser.add_argument("--json", action="store_true", help="one JSON row per run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.readme:
            measured = readme_figures(Path(folder))
            for key, value in measured.items():
                print(f"{key}: {value}")
            differences = compare(measured, quoted(README.read_text()))
            for line in differences:
                print(f"DIFFERS {line}")
            return 1 if differences else 0
        models = args.model or [MODELS / DEMO_MODELS[0]]
        for model in models:
            for budget in (float(b) for b in args.budgets.split(",")):
                row = run(model, budget, args.calib, Path(folder))
                if args.json:
                    print(json.dumps(row))
                    continue
                print(
                    " | ".join(
                        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in row.items()
                    )
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
