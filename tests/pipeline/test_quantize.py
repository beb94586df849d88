"""--quantize int8: onnxruntime's dynamic quantization of the written file, under the same
error budget. The error the CLI prints is onnxruntime's on the quantized file it wrote."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import mlp, random_layers
from conftest import FIXTURES, MODELS, run_ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from onnx_lump.cli import main
from onnx_lump.data.holdout import error_rows, output_error, split_calibration, stacked_outputs
from onnx_lump.errors import LumpError
from onnx_lump.graph.io.tensordata import file_size
from onnx_lump.pipeline.quantize import gemm_as_matmul, quantize_file, quantized_copy
from onnx_lump.search import Evaluator

TANH = MODELS / "rn_tanh_2x64.onnx"
CALIB = MODELS / "rn_calib.npz"


def ort_outputs(path, feeds) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0].astype(np.float64)


def held_out_error(path, calib=CALIB) -> float:
    """The error the CLI reports, measured here independently: onnxruntime on ``path``
    against the original on the rows it measures on by default (the audit rows)."""
    rows = error_rows(dict(np.load(calib)), 0.2, 0)
    return output_error(ort_outputs(TANH, rows), ort_outputs(path, rows))


def run_cli(tmp_path, *options, name="out"):
    out, report = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
    code = main([str(TANH), str(out), "--report-json", str(report), "-q", *options])
    return code, out, json.loads(report.read_text()) if report.exists() else None


def test_quantize_int8_error_equals_onnxruntime_on_the_quantized_file(tmp_path):
    options = ["--calib", str(CALIB), "--eps", "0.2", "--no-refine", "--reduction", "partition"]
    code, out, report = run_cli(tmp_path, *options, "--quantize", "int8")
    assert code == 0
    written = onnx.load(str(out))
    ops = {n.op_type for n in written.graph.node}
    assert "MatMulInteger" in ops and "Gemm" not in ops  # really quantized, every layer
    # the printed error is onnxruntime's on the written (quantized) file
    assert report["holdout_error"] == pytest.approx(held_out_error(out), rel=1e-9, abs=1e-12)
    quant = report["quantization"]
    assert quant["int8_error"] == report["holdout_error"]
    assert quant["bytes_input"] == file_size(TANH)
    assert quant["bytes_int8"] == file_size(out) < quant["bytes_lumped"]
    assert quant["info"]["quantized"] == 3 and quant["info"]["gemms_converted"] == 3
    assert quant["info"]["per_channel"] is True and quant["info"]["left_float"] == []
    # and the file is onnxruntime's own quantize_dynamic (per channel) of the pass's output
    code, plain, float_report = run_cli(tmp_path, *options, name="float")
    assert code == 0
    assert quant["lumped_error"] == pytest.approx(float_report["holdout_error"], rel=1e-9)
    model = onnx.load(str(plain))
    gemm_as_matmul(model)
    theirs = tmp_path / "theirs.onnx"
    quantize_dynamic(model, theirs, per_channel=True, weight_type=QuantType.QInt8)
    feeds = {"input": np.load(CALIB)["input"]}
    np.testing.assert_array_equal(ort_outputs(out, feeds), ort_outputs(theirs, feeds))


def test_eps_0_int8_is_the_quantization_error_alone(tmp_path, capsys):
    code, _, report = run_cli(tmp_path, "--calib", str(CALIB), "--quantize", "int8")
    assert code == 0
    quant = report["quantization"]
    assert quant["lumped_error"] < 1e-6 < 1e-3 < quant["int8_error"] < 0.1
    assert any("int8 is lossy" in note for note in report["notes"])
    verified = max(o["max_abs"] for o in report["verification"]["outputs"])
    assert verified == quant["int8_max_abs"] > 0
    # a tolerance judges the int8 file against the original: too tight, nothing written
    out2 = tmp_path / "tight.onnx"
    code = main(
        [str(TANH), str(out2), "--calib", str(CALIB), "--quantize", "int8", "--atol", "1e-4"]
    )
    assert code == 1 and not out2.exists()
    assert "tolerance exceeded" in capsys.readouterr().out


def test_max_error_search_judges_the_quantized_steps(tmp_path):
    budget = 0.06
    code, out, report = run_cli(
        tmp_path,
        "--calib",
        str(CALIB),
        "--max-error",
        str(budget),
        "--refine-iters",
        "30",
        "--quantize",
        "int8",
    )
    assert code == 0
    measured = held_out_error(out)
    assert report["holdout_error"] == pytest.approx(measured, rel=1e-9, abs=1e-12)
    assert measured <= budget
    assert report["retained"] < 1.0  # the budget left room for some lumping


def test_evaluator_steps_measure_the_quantized_network():
    model = onnx.load(str(TANH))
    calib = dict(np.load(CALIB))
    from onnx_lump.cli import build_method
    from onnx_lump.cli.parser import make_parser

    args = make_parser("x\n\ny").parse_args([str(TANH), "out.onnx", "--calib", str(CALIB)])
    evaluate = Evaluator(
        model, lambda knob: build_method("lump", knob, args), calib, refine=False, quantize="int8"
    )
    reduced, _, point = evaluate(0.2)
    split = split_calibration(calib, 0.2, 0)
    with quantized_copy(reduced) as (path, info):
        assert info.quantized == 3
        expected = output_error(
            stacked_outputs(model, split.holdout, ["CPUExecutionProvider"]),
            stacked_outputs(path, split.holdout, ["CPUExecutionProvider"]),
        )
    assert point.error == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("trans_b", "alpha", "beta", "bias_shape"),
    [(1, 1.0, 1.0, (5,)), (0, 0.5, 2.0, (1, 5)), (1, 2.0, 0.25, ()), (0, 1.0, 1.0, None)],
)
def test_gemm_as_matmul_computes_the_same(trans_b, alpha, beta, bias_shape):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((5, 4) if trans_b else (4, 5)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(weight, "B")]
    inputs = ["x", "B"]
    if bias_shape is not None:
        inits.append(
            onnx.numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "C")
        )
        inputs.append("C")
    node = onnx.helper.make_node("Gemm", inputs, ["y"], "g", transB=trans_b, alpha=alpha, beta=beta)
    graph = onnx.helper.make_graph(
        [node],
        "gemm",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal((7, 4)).astype(np.float32)}
    (before,) = run_ort(model, feeds)
    assert gemm_as_matmul(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["MatMul"] + ["Add"] * (bias_shape is not None)
    (after,) = run_ort(model, feeds)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_matmul_model_is_quantized_as_it_is(tmp_path):
    model = mlp(random_layers([8, 16, 4], seed=1), ["Relu"], op="MatMul")
    source, target = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    onnx.save_model(model, source)
    info = quantize_file(source, target)
    assert info.gemms_converted == 0 and info.quantized == 2 and info.left_float == []


def test_unknown_scheme_is_one_line_exit_2(tmp_path, capsys):
    code = main([str(TANH), str(tmp_path / "o.onnx"), "--quantize", "int4"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--quantize" in err[0] and "int8" in err[0]


@pytest.mark.parametrize("fixture", ["fp16.onnx", "fp64.onnx"])
def test_non_float32_model_is_refused_up_front(fixture, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    code = main([str(FIXTURES / fixture), str(out), "--quantize", "int8"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "float32" in err[0], err


def test_quantize_file_refuses_an_unknown_scheme(tmp_path):
    with pytest.raises(LumpError, match="unknown quantization"):
        quantize_file(TANH, tmp_path / "x.onnx", "int4")


def test_a_search_chosen_again_keeps_int8s_own_error_out_of_the_tightening(tmp_path, capsys):
    """Bug found by hand: when the audit rows disagreed, the search chose again within
    the chosen point's error times 0.8, which under --quantize could fall below the error
    of int8 alone (Tanh demo, span: 4.64% -> 3.71%, int8 alone 3.81%), so no point met it
    and a 5% budget that a 52%-kept network meets FAILED. Only the lumping's share above
    int8's own error is tightened now."""
    calib = MODELS / "rn_calib_2048.npz"
    out, report_path = tmp_path / "out.onnx", tmp_path / "out.json"
    options = ["--calib", str(calib), "--max-error", "0.05", "--quantize", "int8"]
    code = main([str(TANH), str(out), "--report-json", str(report_path), *options])
    printed = capsys.readouterr().out
    assert "searching again within" in printed, "the audit rows agreed: no retry exercised"
    assert code == 0, printed
    report = json.loads(report_path.read_text())
    assert report["retained"] < 1.0
    assert held_out_error(out, calib) == pytest.approx(report["holdout_error"], rel=1e-9)
    assert report["holdout_error"] <= 0.05
