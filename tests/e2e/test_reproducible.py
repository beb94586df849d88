"""The same command gives the same file: a --max-error search with refinement (jitter
probes, audit rows, mini-batches) run twice writes byte-identical models, and the same
held-out figures."""

from __future__ import annotations

import json

from conftest import MODELS

from onnx_lump.cli import main

DEMO = MODELS / "rn_tanh_2x64.onnx"
CALIB = MODELS / "rn_calib_2048.npz"


def test_the_same_command_writes_the_same_file(tmp_path):
    runs = []
    for name in ("a", "b"):
        out, report = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
        options = ["--max-error", "0.05", "--refine-iters", "20", "-q"]
        code = main(
            [str(DEMO), str(out), "--calib", str(CALIB), *options, "--report-json", str(report)]
        )
        assert code == 0
        data = json.loads(report.read_text())
        runs.append(
            (out.read_bytes(), data["holdout_error"], data["chosen_error"], data["retained"])
        )
    assert runs[0] == runs[1]
