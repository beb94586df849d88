"""Gated FFNs (SwiGLU/GeGLU): reading them, merging (gate, up) pairs, selecting pairs on data.

The fixture (``tools/make_gated_fixtures.py``) is a tiny trained LLaMA-style model whose
MLPs hold planted duplicate pairs (copied gate rows, up rows copied or scaled, down
columns split over the copies); the hand-built graphs below cover the layouts exporters
rarely emit (Gemm gate with its bias, MatMul + Add up, erf-decomposed Gelu gate).
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, run_ort
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnx_lump import lump
from onnx_lump.cli import main
from onnx_lump.graph.read.chains import scan_graph
from onnx_lump.graph.write.importer import import_graph

MANIFEST = json.loads((FIXTURES / "gated_manifest.json").read_text())[0]
MODEL = FIXTURES / MANIFEST["file"]
CALIB = np.load(FIXTURES / MANIFEST["calibration"])["input_ids"]


def _tokens(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, MANIFEST["vocab"], (batch, seq), dtype=np.int64)}


def _gated_widths(model: onnx.ModelProto) -> list[int]:
    return [chain.hidden_widths[0] for chain in scan_graph(import_graph(model)).chains]


def test_the_reader_finds_every_gated_ffn():
    scan = scan_graph(import_graph(onnx.load(MODEL)))

    assert len(scan.chains) == len(MANIFEST["ffn_widths"])
    for chain, width in zip(scan.chains, MANIFEST["ffn_widths"], strict=True):
        assert chain.gate is not None
        assert chain.hidden_widths == [width]
        assert chain.activations[0].describe() == "SiLU"
        assert chain.gate.input is chain.layers[0].input  # gate and up read one x
        assert chain.describe().startswith("gated FFN SiLU(")
        assert chain.n_params == 3 * width * MANIFEST["hidden"]  # bias-free MatMuls


def test_eps0_removes_exactly_the_planted_duplicates():
    model = onnx.load(MODEL)

    reduced, report = lump(model, 0.0, verify=False)

    onnx.checker.check_model(reduced, full_check=True)
    assert report.widths_after == [[w] for w in MANIFEST["expected_ffn_widths"]]
    assert _gated_widths(reduced) == MANIFEST["expected_ffn_widths"]
    for batch, seq, seed in ((3, 11, 1), (1, 4, 2), (5, 16, 3)):
        feeds = _tokens(batch, seq, seed)
        (expected,), (actual,) = run_ort(model, feeds), run_ort(reduced, feeds)
        assert actual.shape == expected.shape
        assert float(np.abs(actual - expected).max()) <= 1e-5 * float(np.abs(expected).max())


def test_calibrated_target_params_through_the_cli(tmp_path):
    out, report_path = tmp_path / "small.onnx", tmp_path / "report.json"
    # the last quarter of the rows as --val: the reported error is measured on them
    split = 3 * CALIB.shape[0] // 4
    np.savez(tmp_path / "fit.npz", input_ids=CALIB[:split])
    np.savez(tmp_path / "val.npz", input_ids=CALIB[split:])

    code = main(
        [
            str(MODEL),
            str(out),
            "--calib",
            str(tmp_path / "fit.npz"),
            "--val",
            str(tmp_path / "val.npz"),
            "--target-params",
            "0.5",
            "--report-json",
            str(report_path),
            "--no-refine",  # refined: tests/methods/test_gated_refine.py
            "-q",
        ]
    )

    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["retained"] <= 0.5
    reduced = onnx.load(out)
    widths = _gated_widths(reduced)
    assert [[w] for w in widths] == report["widths_after"]
    assert sum(widths) < sum(MANIFEST["expected_ffn_widths"])  # beyond the exact merges
    assert report["refine"] == []
    reported = report["holdout_error"]
    assert reported is not None and 0.0 < reported < 0.2
    # the written file, through onnxruntime, on the held-out rows
    feeds = {"input_ids": CALIB[split:]}
    (expected,), (actual,) = run_ort(onnx.load(MODEL), feeds), run_ort(reduced, feeds)
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    measured = math.sqrt(float(np.mean((actual - expected) ** 2))) / float(expected.std())
    assert measured <= reported * 1.05 + 1e-6


# -- hand-built gated FFNs -------------------------------------------------------------


def _gelu_erf(nodes: list, inits: list, x: str, out: str) -> None:
    inits += [
        numpy_helper.from_array(np.array(math.sqrt(2.0), np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes += [
        helper.make_node("Div", [x, "sqrt2"], ["g_div"]),
        helper.make_node("Erf", ["g_div"], ["g_erf"]),
        helper.make_node("Add", ["g_erf", "one"], ["g_add"]),
        helper.make_node("Mul", [x, "g_add"], ["g_mul"]),
        helper.make_node("Mul", ["g_mul", "half"], [out]),
    ]


def gated_model(
    gate: tuple[np.ndarray, np.ndarray],
    up: tuple[np.ndarray, np.ndarray],
    down: tuple[np.ndarray, np.ndarray],
    activation: str,
) -> onnx.ModelProto:
    """x -> gate as Gemm(transB=1, C), up as Add(b, MatMul) (PyTorch's operand order),
    ``act(gate) * up`` (SwiGLU as x * Sigmoid(x), or the erf Gelu), down as Gemm
    (transB=0) with its bias; weights are (out, in)."""
    (wg, bg), (wu, bu), (wd, bd) = gate, up, down
    f32 = np.float32
    inits = [
        numpy_helper.from_array(wg.astype(f32), "Wg"),
        numpy_helper.from_array(bg.astype(f32), "bg"),
        numpy_helper.from_array(wu.T.astype(f32), "Wu"),
        numpy_helper.from_array(bu.astype(f32), "bu"),
        numpy_helper.from_array(wd.T.astype(f32), "Wd"),
        numpy_helper.from_array(bd.astype(f32), "bd"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "Wg", "bg"], ["g"], name="gate", transB=1),
        helper.make_node("MatMul", ["x", "Wu"], ["u_mm"], name="up"),
        helper.make_node("Add", ["bu", "u_mm"], ["u"], name="up_bias"),
    ]
    if activation == "swiglu":
        nodes += [
            helper.make_node("Sigmoid", ["g"], ["g_sig"]),
            helper.make_node("Mul", ["g", "g_sig"], ["g_act"]),
        ]
    elif activation == "reglu":
        nodes.append(helper.make_node("Relu", ["g"], ["g_act"]))
    else:
        _gelu_erf(nodes, inits, "g", "g_act")
    nodes += [
        helper.make_node("Mul", ["u", "g_act"], ["h"]),  # up first: either order is read
        helper.make_node("Gemm", ["h", "Wd", "bd"], ["y"], name="down"),
    ]
    graph = helper.make_graph(
        nodes,
        "gated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", wg.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", wd.shape[0]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def planted_ffn(
    rng: np.random.Generator, n_in: int, distinct: int, width: int, n_out: int
) -> tuple[tuple, tuple, tuple]:
    """A gated FFN of ``width`` pairs that computes what ``distinct`` of them do: copies
    of a distinct pair's gate row, its up row times a signed scale, and the down column
    split over the copies (divided by their scale)."""
    wg, bg = rng.standard_normal((distinct, n_in)), rng.standard_normal(distinct)
    wu, bu = rng.standard_normal((distinct, n_in)), rng.standard_normal(distinct)
    wd, bd = rng.standard_normal((n_out, distinct)), rng.standard_normal(n_out)
    source = np.concatenate([np.arange(distinct), rng.integers(0, distinct, width - distinct)])
    source = source[rng.permutation(width)]
    scale = rng.choice([1.0, 1.0, -0.5, 2.0, 0.25], width)
    share = rng.uniform(0.1, 1.0, width)
    share /= np.bincount(source, weights=share, minlength=distinct)[source]
    down = wd[:, source] * (share / scale)
    return (
        (wg[source], bg[source]),
        (wu[source] * scale[:, None], bu[source] * scale),
        (down, bd),
    )


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_pairs_merge_exactly_in_a_hand_built_graph(activation):
    rng = np.random.default_rng(7)
    model = gated_model(*planted_ffn(rng, 6, 5, 12, 4), activation)

    scan = scan_graph(import_graph(model))
    assert len(scan.chains) == 1 and scan.chains[0].gate is not None
    assert scan.chains[0].activations[0].describe() == (
        "SiLU" if activation == "swiglu" else "Gelu"
    )
    reduced, report = lump(model, 0.0, verify=False)

    assert report.widths_after == [[5]]
    onnx.checker.check_model(reduced, full_check=True)
    weights = {t.name: numpy_helper.to_array(t) for t in reduced.graph.initializer}
    assert weights["Wg"].shape == (5, 6) and weights["bg"].shape == (5,)  # Gemm transB=1
    assert weights["Wu"].shape == (6, 5) and weights["bu"].shape == (5,)  # MatMul
    assert weights["Wd"].shape == (5, 4)
    feeds = {"x": rng.standard_normal((64, 6)).astype(np.float32) * 3}
    (expected,), (actual,) = run_ort(model, feeds), run_ort(reduced, feeds)
    assert float(np.abs(actual - expected).max()) <= 1e-5 * float(np.abs(expected).max())


def test_a_gated_chain_with_data_selects_pairs_and_stays_close():
    rng = np.random.default_rng(3)
    model = gated_model(*planted_ffn(rng, 8, 16, 24, 6), "swiglu")
    calib = {"x": rng.standard_normal((400, 8)).astype(np.float32)}

    _, exact = lump(model, 0.01, calibration=calib, refine=False, verify=False)
    # the pairs are chosen by span whatever the reduction; partitions say so in a note
    _, report = lump(
        model, 0.1, calibration=calib, refine=False, verify=False, reduction="partition"
    )

    # a little energy left out keeps the 16 distinct pairs, exactly; more drops pairs
    assert exact.widths_after == [[16]] and exact.holdout_error < 1e-5
    assert 1 <= report.widths_after[0][0] < 16
    assert report.holdout_error is not None and report.holdout_error < 0.2
    assert any("span of their activations" in note for note in report.notes)


def test_other_methods_leave_a_gated_ffn_as_it_is():
    from onnx_lump.api import compress
    from onnx_lump.methods import Magnitude

    rng = np.random.default_rng(5)
    model = gated_model(*planted_ffn(rng, 6, 5, 12, 4), "swiglu")

    _, report = compress(model, Magnitude(0.5), verify=False)

    assert report.widths_after == [[12]]
    assert any("does not compress gated FFNs yet" in note for note in report.notes)


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**31 - 1),
    distinct=st.integers(1, 8),
    copies=st.integers(0, 10),
    activation=st.sampled_from(["swiglu", "gelu"]),
)
def test_planted_duplicate_pairs_always_merge_exactly(seed, distinct, copies, activation):
    rng = np.random.default_rng(seed)
    model = gated_model(*planted_ffn(rng, 5, distinct, distinct + copies, 3), activation)

    reduced, report = lump(model, 0.0, verify=False)

    assert report.widths_after == [[distinct]]
    feeds = {"x": rng.standard_normal((32, 5)).astype(np.float32)}
    (expected,), (actual,) = run_ort(model, feeds), run_ort(reduced, feeds)
    assert float(np.abs(actual - expected).max()) <= 1e-5 * max(1.0, float(np.abs(expected).max()))


def test_a_gated_ffn_joined_to_another_layer_is_left_and_named():
    """A dense layer with an activation after the down projection would join the gated
    FFN to a longer chain: it is not read, and the note says why."""
    rng = np.random.default_rng(2)
    model = gated_model(*planted_ffn(rng, 6, 5, 12, 4), "swiglu")
    graph = model.graph
    graph.initializer.append(
        numpy_helper.from_array(rng.standard_normal((4, 3)).astype("f4"), "W2")
    )
    graph.node[-1].output[0] = "y_down"
    graph.node.extend(
        [
            helper.make_node("Relu", ["y_down"], ["r"]),
            helper.make_node("MatMul", ["r", "W2"], ["y"], name="after"),
        ]
    )
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = 3

    scan = scan_graph(import_graph(model))

    assert all(chain.gate is None for chain in scan.chains)
    assert any("joined to other dense layers" in stop for stop in scan.stops)


def test_the_knob_hint_reads_a_gated_ffn():
    from onnx_lump.data.cache import SearchCache
    from onnx_lump.methods import Lump
    from onnx_lump.search.hints import knob_hint

    calib = {"input_ids": CALIB}
    hint = knob_hint(onnx.load(MODEL), Lump(), 0.5, calib, SearchCache())

    assert hint is not None and 0.0 < hint < 1.0


def test_a_pair_whose_gate_is_off_on_the_fitting_rows_is_kept():
    """ReGLU: pair 7's gate opens only past x0 = 2.6, which the calibration never
    reaches. Span saw no energy in it and folded it in as a constant (bug found by hand,
    as for ordinary span); without a margin in the data it is kept, and the output stays
    exact where the gate opens."""
    rng = np.random.default_rng(5)
    (wg, bg), (wu, bu), (wd, bd) = planted_ffn(rng, 6, 10, 10, 4)
    wg[7], bg[7] = np.eye(6)[0], -2.6
    wd[:, 7] *= 50.0  # and it matters when it opens
    model = gated_model((wg, bg), (wu, bu), (wd, bd), "reglu")
    calib = {"x": rng.standard_normal((400, 6)).astype(np.float32)}
    calib["x"][:, 0] = np.clip(calib["x"][:, 0], -5, 2.5)
    reduced, report = lump(model, 1e-9, calibration=calib, refine=False, verify=False)
    assert report.widths_after == [[10]]
    firing = {"x": rng.standard_normal((200, 6)).astype(np.float32)}
    firing["x"][:, 0] = 4.0
    expected, actual = run_ort(model, firing)[0], run_ort(reduced, firing)[0]
    np.testing.assert_allclose(actual, expected, atol=1e-3 * np.abs(expected).max())
