"""The benchmark's quick variant writes its tables, points and plots with sane content."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
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
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    data = DATA if DATA.is_dir() else out / "no-data"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "bench.py"),
            "--data",
            str(data),
            "--out",
            str(out),
            "--cache",
            str(out / "cache"),
            "--quick",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out


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
    assert "| lump+refit+data <=1% |" in summary and "## Speed" in summary
    assert "batch 1024 ratio" in summary
    assert "test RMSE" in (quick_run / "references.md").read_text()


def test_sweep_points_are_sane(quick_run):
    rows = list(csv.DictReader((quick_run / "points.csv").open()))
    assert {r["task"] for r in rows} == set(expected_tasks())
    methods = {r["method"] for r in rows}
    assert {"original", *METHODS} <= methods
    for row in rows:
        grp, drmse = float(row["grp"]), float(row["drmse"])
        assert 0.0 <= grp <= 100.0 + 1e-9
        assert drmse >= -100.0
        if row["method"] in ("exact", "original"):
            assert abs(drmse) < 1e-3  # lossless
    lump = sorted(
        (float(r["knob"]), float(r["grp"]))
        for r in rows
        if r["method"] == "lump" and r["task"] == "rn"
    )
    assert lump[0][1] == pytest.approx(100.0) and lump[-1][1] < 20.0
