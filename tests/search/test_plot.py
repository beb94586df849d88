"""--plot: the sweep's size/error curve as a picture."""

from __future__ import annotations

import csv

import numpy as np
import onnx
import pytest
from builders import mlp, random_layers

from onnx_lump.cli import main
from onnx_lump.errors import LumpError
from onnx_lump.search.sweeps import plot_sweep
from onnx_lump.types import SweepPoint

pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install matplotlib)")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def workspace(tmp_path):
    model = mlp(random_layers([4, 24, 16, 2], seed=4), ["Tanh", "Tanh"])
    onnx.save_model(model, tmp_path / "model.onnx")
    x = np.random.default_rng(1).standard_normal((256, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    return tmp_path


def test_sweep_writes_the_table_and_the_picture(workspace, capsys):
    table, picture = workspace / "sweep.csv", workspace / "curve.png"
    code = main(
        [
            str(workspace / "model.onnx"),
            str(table),
            "--calib",
            str(workspace / "calib.npz"),
            "--sweep",
            "0,0.01,0.1,0.5",
            "--plot",
            str(picture),
            "--no-refine",
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 4
    data = picture.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    from matplotlib.image import imread

    height, width = imread(str(picture)).shape[:2]
    assert (width, height) == (768, 504)  # 6.4 x 4.2 inches at 120 dpi


def test_a_bad_plot_name_is_refused_before_any_work(workspace, capsys):
    table = workspace / "sweep.csv"
    code = main(
        [
            str(workspace / "model.onnx"),
            str(table),
            "--calib",
            str(workspace / "calib.npz"),
            "--sweep",
            "0,1",
            "--plot",
            str(workspace / "curve.txt"),
        ]
    )
    assert code == 2
    assert "not a picture file" in capsys.readouterr().err
    assert not table.exists()


def test_plot_without_sweep_warns(workspace, capsys):
    code = main(
        [
            str(workspace / "model.onnx"),
            str(workspace / "out.onnx"),
            "--plot",
            str(workspace / "curve.png"),
            "-q",
        ]
    )
    assert code == 0
    assert "--plot has no effect without --sweep" in capsys.readouterr().err
    assert not (workspace / "curve.png").exists()


def test_plot_sweep_formats_and_errors(tmp_path):
    points = [SweepPoint(k, 100, 100 - 30 * k, 1 - 0.3 * k, 0.01 * k, 0.1) for k in (0, 1, 2)]
    svg = plot_sweep(points, tmp_path / "c.svg", "eps")
    assert svg.read_text().lstrip().startswith("<?xml") and "parameters kept" in svg.read_text()
    with pytest.raises(LumpError, match="no points"):
        plot_sweep([], tmp_path / "empty.png")
    with pytest.raises(LumpError, match="cannot write"):
        plot_sweep(points, tmp_path / "missing" / "c.png")
