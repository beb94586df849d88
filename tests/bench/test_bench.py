"""The benchmark's quick variant writes its tables, points and plots with sane content,
and covers the refined methods (lump+refine, distill, onnxsim when installed)."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
HAS_ONNXSIM = importlib.util.find_spec("onnxsim") is not None
METHODS = (
    "lump",
    "lump+refit",
    "lump+refit+data",
    "exact",
    "magnitude",
    "wanda",
    "ec",
    "linear",
    "scratch",
    "lump+refine",
    "distill",
    *(("onnxsim",) if HAS_ONNXSIM else ()),
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    data = DATA if DATA.is_dir() else out / "no-data"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.bench",
            "--data",
            str(data),
            "--out",
            str(out),
            "--cache",
            str(out / "cache"),
            "--quick",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    if not HAS_ONNXSIM:
        assert "SKIPPED onnxsim" in result.stdout
    return out


@pytest.fixture(scope="module")
def rows(quick_run) -> list[dict]:
    return list(csv.DictReader((quick_run / "points.csv").open()))


def expected_tasks() -> list[str]:
    return ["rn", "abalone"] if (DATA / "abalone.data").is_file() else ["rn"]


def test_tables_and_plots_exist(quick_run):
    for task in expected_tasks():
        table = (quick_run / f"{task}.md").read_text()
        for method in METHODS:
            assert f"| {method}" in table
        assert "unstructured: graph not smaller" in table
        png = (quick_run / f"{task}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
    summary = (quick_run / "summary.md").read_text()
    for needle in (
        "| lump+refine <=1% |",
        "| distill <=5% |",
        "| onnxsim <=5% |",
        "## Targets (issue 8)",
        "## Fidelity at equal size",
        "## Refinement wall time per network",
        "## Speed",
        "batch 1024 ratio",
        "Refine + search",
    ):
        assert needle in summary, needle
    assert "test RMSE" in (quick_run / "references.md").read_text()


def test_sweep_points_are_sane(rows):
    assert {r["task"] for r in rows} == set(expected_tasks())
    assert {"original", *METHODS} <= {r["method"] for r in rows}
    for row in rows:
        grp, drmse, fidelity = float(row["grp"]), float(row["drmse"]), float(row["fidelity"])
        assert 0.0 <= grp <= 100.0 + 1e-9
        assert drmse >= -100.0 and fidelity >= 0.0
        if row["method"] in ("exact", "original"):
            assert abs(drmse) < 1e-3 and fidelity < 1e-4  # lossless
    lump = sorted(
        (float(r["knob"]), float(r["grp"]))
        for r in rows
        if r["method"] == "lump" and r["task"] == "rn"
    )
    assert lump[0][1] == pytest.approx(100.0) and lump[-1][1] < 20.0


def test_refined_methods(rows):
    """distill runs at exactly lump+refine's widths; both refine and say for how long;
    onnxsim's channel removal really shrinks the graph."""
    by_knob = defaultdict(dict)
    for row in rows:
        if row["method"] in ("lump+refine", "distill"):
            by_knob[(row["task"], row["network"], row["knob"])][row["method"]] = row
            assert float(row["refine_seconds"]) > 0.0 and row["holdout"] != ""
            assert float(row["grp"]) < 100.0
    assert by_knob and all("lump+refine" in pair for pair in by_knob.values())
    for pair in by_knob.values():
        if "distill" in pair:
            mine, theirs = pair["lump+refine"], pair["distill"]
            assert mine["widths"] == theirs["widths"] and mine["grp"] == theirs["grp"]
    assert any(len(pair) == 2 for pair in by_knob.values())
    for row in rows:
        if row["method"] == "onnxsim":
            assert float(row["grp"]) < 100.0 and float(row["refine_seconds"]) > 0.0


def test_fidelity_is_relative_output_change():
    from tools.bench.common import fidelity

    original = np.random.default_rng(0).standard_normal((500, 3))
    assert fidelity(original, original) == 0.0
    constant = np.broadcast_to(original.mean(axis=0), original.shape)
    assert fidelity(constant, original) == pytest.approx(1.0)
    assert fidelity(original + 0.1, original) == pytest.approx(0.1 / original.std(), rel=0.05)


def test_int8_points_and_the_bytes_plot(quick_run, rows):
    """The int8 group: the original and lump+refine quantized, sized in bytes, drawn
    against bytes as well."""
    for task in expected_tasks():
        mine = [r for r in rows if r["task"] == task]
        int8 = [r for r in mine if r["method"] == "int8"]
        original = [r for r in mine if r["method"] == "original"]
        assert int8 and [r for r in mine if r["method"] == "lump+int8"]
        for quantized, float_one in zip(int8, original, strict=False):
            assert float(quantized["grp"]) == 100.0
            assert 0 < int(quantized["bytes"]) < int(float_one["bytes"])
        png = (quick_run / f"{task}_bytes.png").read_bytes()
        assert png.startswith(b"\x89PNG")


def test_the_work_bound_leaves_the_benchmark_its_iteration_budget():
    """The protocol's budget is REFINE_ITERS iterations: the bound in work, meant for
    wide chains (a transformer's FFN), must not bind on the widest benchmark chain
    (3 x 128; Metro's 22 inputs, the widest; 10 outputs, the widest system; 1,638 fitting
    rows and their jittered copy, 410 held out: the float64 path)."""
    from onnx_lump.activations import IDENTITY, Activation, ActivationKind
    from onnx_lump.data.refine import (
        REFINE_ITERS,
        ChainNetwork,
        iteration_budget,
        iteration_work,
    )
    from onnx_lump.types import ChainResult, ReducedLayer
    from tools.bench.common import ARCHITECTURES
    from tools.bench.refined import refine_budget

    widths = [22, *max(ARCHITECTURES, key=sum), 10]
    layers = [ReducedLayer(np.zeros((o, i)), np.zeros(o)) for i, o in itertools.pairwise(widths)]
    tanh = [Activation(ActivationKind.TANH)] * (len(layers) - 1)
    network = ChainNetwork(ChainResult(layers), [*tanh, IDENTITY], None)
    work = iteration_work(network, 2 * 1638, 410)
    assert iteration_budget(refine_budget(quick=False), work) == REFINE_ITERS


def test_a_latency_example_is_rebuilt_with_the_method_of_its_point(monkeypatch):
    """The speed section rebuilds lump+refine's smallest point within 5% for timing: with
    the sweep's own method (span with data), not a partition at span's knob, which kept
    100% of every network (found by hand in the 2026-12-08 speed rerun)."""
    import types

    import tools.bench.speed as speed
    from onnx_lump.methods.lumping import DEFAULT_REDUCTION_WITH_DATA
    from tools.bench.common import Point

    built = []

    def fake_compress(model, method, calibration, refine=None):
        built.append(method)
        return model, None, 0.0

    monkeypatch.setattr(speed, "run_compress", fake_compress)
    net = types.SimpleNamespace(
        model=None,
        calibration=None,
        ref=types.SimpleNamespace(task="rn", network="3x128 tanh"),
    )
    points = [
        Point("rn", "3x128 tanh", "lump+refine", knob, grp, 0.1, drmse, True, 1.0)
        for knob, grp, drmse in [(0.2, 40.0, 4.0), (0.5, 10.0, 9.0), (0.1, 60.0, 1.0)]
    ]
    example = speed.latency_example(net, points, "lump+refine", refine=False)
    assert example is not None and "dRMSE 4.0%" in example[0]
    (method,) = built
    assert method.reduction is DEFAULT_REDUCTION_WITH_DATA and method.options.eps == 0.2
