"""Transformer FFN blocks: PyTorch dynamo and TorchScript exports of TransformerEncoderLayer.

The fixtures (``tools/make_transformer_fixtures.py``) are a tiny character model, embedding
-> a post-norm and a pre-norm ``nn.TransformerEncoderLayer`` with GELU -> linear head,
whose FFNs hold planted duplicate neurons (copied ``linear1`` rows, ``linear2`` columns
split over the copies). Each FFN sits inside the bigger graph: input from a LayerNorm,
output into a residual Add, rank-3 data with dynamic batch (and, for dynamo, sequence).
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, run_ort

from onnx_lump import lump
from onnx_lump.cli import main

MANIFEST = json.loads((FIXTURES / "transformer_manifest.json").read_text())
D_MODEL = MANIFEST[0]["d_model"]
VOCAB = MANIFEST[0]["vocab"]
CALIB = np.load(FIXTURES / MANIFEST[0]["calibration"])["tokens"]


@pytest.fixture(params=MANIFEST, ids=[entry["file"] for entry in MANIFEST])
def entry(request) -> dict:
    return request.param


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            values[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    return values


def ffn_widths(model: onnx.ModelProto) -> list[int]:
    """Hidden width of every FFN in graph order, read off the graph independently of the
    pass: the rows of each down projection, a MatMul by a constant with d_model columns
    whose data comes from the activation (the up projection reads a LayerNormalization,
    attention's in-projection has 3 d_model columns, the head vocab ones, and both exporters
    write the out-projection as Gemm)."""
    constants = _constants(model)
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    widths = []
    for node in model.graph.node:
        weight = constants.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or weight.ndim != 2 or weight.shape[1] != D_MODEL:
            continue
        if producers.get(node.input[0]) != "LayerNormalization":
            widths.append(int(weight.shape[0]))
    return widths


def tokens(entry: dict, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded token ids; TorchScript exports only run at their traced length."""
    length = seq if entry["dynamic_seq"] else CALIB.shape[1]
    rng = np.random.default_rng(seed)
    return {"tokens": rng.integers(0, VOCAB, (batch, length), dtype=np.int64)}


def relative_rmse(expected: np.ndarray, actual: np.ndarray) -> float:
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    return float(np.sqrt(np.mean((expected - actual) ** 2)) / expected.std())


def test_fixtures_are_the_exporters_graphs(entry):
    model = onnx.load(FIXTURES / entry["file"])
    ops = {n.op_type for n in model.graph.node}
    assert {"LayerNormalization", "MatMul", "Add", "Softmax", "Gather"} <= ops
    # opset 20 exports hold the Gelu op; older opsets the exporter's erf decomposition
    assert ("Gelu" in ops) == (entry["opset"] >= 20)
    assert ("Erf" in ops) == (entry["opset"] < 20)
    assert ffn_widths(model) == entry["ffn_widths"]


def test_every_ffn_is_reduced_exactly_at_eps0(entry):
    model = onnx.load(FIXTURES / entry["file"])

    reduced, report = lump(model, 0.0, verify=False)

    onnx.checker.check_model(reduced, full_check=True)
    assert ffn_widths(reduced) == entry["expected_ffn_widths"]
    hidden = [s for s in report.layers if s.width_before in entry["ffn_widths"]]
    assert len({s.chain for s in hidden}) == len(entry["ffn_widths"])
    assert all("gelu" in s.activation.lower() for s in hidden)
    assert sorted(s.width_after for s in hidden) == sorted(entry["expected_ffn_widths"])
    ffn_params = sum(2 * w * D_MODEL + w + D_MODEL for w in entry["ffn_widths"])
    assert report.params_before == ffn_params  # only the FFNs are chains
    # exact through onnxruntime, at a batch (and length) other than the trace's
    for batch, seq, seed in ((3, 11, 1), (1, 4, 2), (5, 8, 3)):
        feeds = tokens(entry, batch, seq, seed)
        (expected,), (actual,) = run_ort(model, feeds), run_ort(reduced, feeds)
        assert actual.shape == expected.shape
        scale = float(np.abs(expected).max())
        assert float(np.abs(actual - expected).max()) <= 1e-5 * scale


def _knob(entry: dict) -> list[str]:
    """A moderate target beyond exact merging: the size search on the dynamo export (the
    benchmark's exporter), a fixed eps on the others (each search step is a full run)."""
    if entry["file"] == "transformer_dynamo.onnx":
        exact_share = sum(entry["expected_ffn_widths"]) / sum(entry["ffn_widths"])
        return ["--target-params", f"{0.8 * exact_share:.2f}"]
    return ["--eps", "0.8"]


def test_calibrated_target_through_the_cli(entry, tmp_path):
    source = FIXTURES / entry["file"]
    out, report_path = tmp_path / "small.onnx", tmp_path / "report.json"
    knob = _knob(entry)

    code = main(
        [
            str(source),
            str(out),
            "--calib",
            str(FIXTURES / entry["calibration"]),
            *knob,
            "--refine-seconds",
            "2",
            "--report-json",
            str(report_path),
            "-q",
        ]
    )

    assert code == 0
    report = json.loads(report_path.read_text())
    if knob[0] == "--target-params":
        assert report["retained"] <= float(knob[1])
    widths = ffn_widths(onnx.load(out))
    assert len(widths) == len(entry["ffn_widths"])
    assert sum(widths) < sum(entry["expected_ffn_widths"])  # beyond the exact merges
    reported = report["holdout_error"]
    assert reported is not None and math.isfinite(reported)
    assert 0.0 < reported < 0.2
    for output in report["verification"]["outputs"]:
        assert math.isfinite(output["rmse"]) and output["rmse"] < 0.2 * output["reference_rms"]
    # the written model runs with another batch and length than the calibration's
    model, reduced = onnx.load(source), onnx.load(out)
    feeds = tokens(entry, 3, 13, seed=4)
    (expected,), (actual,) = run_ort(model, feeds), run_ort(reduced, feeds)
    assert actual.shape == expected.shape == (3, feeds["tokens"].shape[1], VOCAB)
    assert np.isfinite(actual).all()
    assert relative_rmse(expected, actual) < 0.2
