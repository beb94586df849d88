"""--metric cosine: the error of a float output as the mean 1 - cosine of its rows (the
last axis) to the original's, padding positions left out; checked against numpy on
onnxruntime's outputs of the written files, and the summary's whole-model line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, MODELS, run_ort
from hypothesis import given
from hypothesis import strategies as st

from onnx_lump.api import compress, lump
from onnx_lump.cli import main
from onnx_lump.data.holdout import (
    error_rows,
    output_error,
    split_calibration,
    stack_outputs,
)
from onnx_lump.errors import LumpError
from onnx_lump.graph.io.tensordata import file_size, stored_parameters
from onnx_lump.methods import Lump
from onnx_lump.methods.lumping import LumpOptions
from onnx_lump.search import Evaluator

TANH = MODELS / "rn_tanh_2x64.onnx"
CALIB = MODELS / "rn_calib_2048.npz"
BERT = FIXTURES / "bert_torchscript.onnx"
BERT_CALIB = FIXTURES / "bert_calib.npz"


def numpy_cosine_distance(expected, actual, keep=None) -> float:
    """mean(1 - cos) over the rows of the last axis, written out independently."""
    e = np.asarray(expected, np.float64)
    a = np.asarray(actual, np.float64)
    e, a = e.reshape(-1, e.shape[-1]), a.reshape(-1, a.shape[-1])
    if keep is not None:
        e, a = e[keep.reshape(-1)], a[keep.reshape(-1)]
    distances = []
    for x, y in zip(e, a, strict=True):
        nx, ny = np.sqrt(x @ x), np.sqrt(y @ y)
        if nx == 0 and ny == 0:
            distances.append(0.0)
        elif nx == 0 or ny == 0:
            distances.append(1.0)
        else:
            distances.append(1.0 - (x @ y) / (nx * ny))
    return float(np.mean(distances))


def test_cli_cosine_error_is_numpys_on_the_written_file(tmp_path, capsys):
    out, report_path = tmp_path / "out.onnx", tmp_path / "r.json"
    argv = [TANH, out, "--calib", CALIB, "--eps", "0.5", "--no-refine", "--metric", "cosine"]
    assert main([*argv, "--report-json", report_path]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    rows = error_rows(dict(np.load(CALIB)))
    (expected,), (actual,) = run_ort(onnx.load(TANH), rows), run_ort(onnx.load(out), rows)
    distance = numpy_cosine_distance(expected, actual)
    assert report["metric"] == "cosine"
    assert report["holdout_error"] == pytest.approx(distance, rel=1e-9)
    assert 0 < distance < 0.5
    final = printed.strip().splitlines()[-1]
    assert f"held-out 1-cos {distance:.3g} (cosine {1 - distance:.4g}) on 205 audit rows" in final
    assert "held-out error" not in final
    # the whole model, beside the chains: stored parameters and bytes, before -> after
    model = report["model"]
    assert model["params_before"] == stored_parameters(onnx.load(TANH)) == 4998
    assert model["params_after"] == stored_parameters(onnx.load(out))
    assert model["bytes_before"] == file_size(TANH) and model["bytes_after"] == file_size(out)
    assert (
        f"whole model: stored parameters 4,998 -> {model['params_after']:,}" in printed
        and f"file {file_size(TANH):,} -> {file_size(out):,} bytes" in printed
    )


def test_cli_rmse_stays_the_default(tmp_path, capsys):
    out, report_path = tmp_path / "out.onnx", tmp_path / "r.json"
    argv = [TANH, out, "--calib", CALIB, "--eps", "0.5", "--no-refine"]
    assert main([*argv, "--report-json", report_path]) == 0
    report = json.loads(report_path.read_text())
    rows = error_rows(dict(np.load(CALIB)))
    (expected,), (actual,) = run_ort(onnx.load(TANH), rows), run_ort(onnx.load(out), rows)
    assert report["metric"] == "rmse"
    assert report["holdout_error"] == pytest.approx(output_error(expected, actual), rel=1e-9)
    assert "held-out error " in capsys.readouterr().out.splitlines()[-1]


def test_max_error_search_with_cosine_meets_its_budget_on_the_audit_rows(tmp_path, capsys):
    out, budget = tmp_path / "out.onnx", 0.01
    argv = [TANH, out, "--calib", CALIB, "--max-error", str(budget), "--metric", "cosine"]
    assert main([*argv, "--refine-iters", "100", "--report-json", tmp_path / "r.json"]) == 0
    printed = capsys.readouterr().out
    rows = error_rows(dict(np.load(CALIB)))
    (expected,), (actual,) = run_ort(onnx.load(TANH), rows), run_ort(onnx.load(out), rows)
    distance = numpy_cosine_distance(expected, actual)
    assert 0 < distance <= budget
    assert json.loads((tmp_path / "r.json").read_text())["holdout_error"] == pytest.approx(
        distance, rel=1e-9
    )
    assert "1-cos <= 0.01" in printed and printed.splitlines()[-1].startswith("PASSED")
    # it is a budget in 1 - cosine, not in relative RMSE: the RMSE there is far larger
    assert output_error(expected, actual) > 10 * budget


def test_token_output_cosine_leaves_padding_positions_out(tmp_path):
    """A [batch, seq, hidden] output: each real position is a row, the attention mask's
    padding is not counted (bert_calib pads most sentences)."""
    out, report_path = tmp_path / "out.onnx", tmp_path / "r.json"
    argv = [BERT, out, "--calib", BERT_CALIB, "--reduction", "span", "--eps", "0.2"]
    argv += ["--no-refine", "--metric", "cosine", "--report-json", report_path, "-q"]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    rows = error_rows(dict(np.load(BERT_CALIB)))
    (expected,), (actual,) = run_ort(onnx.load(BERT), rows), run_ort(onnx.load(out), rows)
    assert expected.ndim == 3 and report["holdout_rows"] == len(expected)
    real = rows["attention_mask"] != 0
    assert not real.all()
    distance = numpy_cosine_distance(expected, actual, real)
    assert report["holdout_error"] == pytest.approx(distance, rel=1e-9)
    assert distance > 0
    assert numpy_cosine_distance(expected, actual) != pytest.approx(distance, rel=1e-3)
    # without a mask input every position counts
    assert output_error(expected, actual, metric="cosine") == pytest.approx(
        numpy_cosine_distance(expected, actual), rel=1e-9
    )


def test_api_compress_and_evaluator_take_the_metric():
    model, calibration = onnx.load(TANH), dict(np.load(CALIB))
    reduced, report = lump(model, 0.5, calibration=calibration, refine=False, metric="cosine")
    held = split_calibration(calibration).holdout
    (expected,), (actual,) = run_ort(model, held), run_ort(reduced, held)
    assert report.metric == "cosine" and report.holdout_error.metric == "cosine"
    assert report.holdout_error == pytest.approx(numpy_cosine_distance(expected, actual))
    assert report.to_dict()["metric"] == "cosine"
    assert report.model_params_before == 4998 and report.model_params_after < 4998

    def method(knob: float) -> Lump:  # lump()'s own method with data
        return LumpOptions().method(knob, with_data=True)

    evaluate = Evaluator(model, method, calibration, refine=False, metric="cosine")
    _, step_report, point = evaluate(0.5)
    assert point.error == pytest.approx(float(report.holdout_error), rel=1e-9)
    assert "1-cos" in point.summary("cosine") and step_report.metric == "cosine"
    with pytest.raises(LumpError, match="unknown error metric 'l2'"):
        compress(model, method(0.5), calibration=calibration, metric="l2")
    with pytest.raises(LumpError, match="unknown error metric"):
        Evaluator(model, method, calibration, metric="l2")


def test_bad_metric_is_one_error_line(tmp_path, capsys):
    code = main([TANH, tmp_path / "out.onnx", "--calib", CALIB, "--metric", "l2"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: argument --metric: invalid choice: 'l2'")
    assert not (tmp_path / "out.onnx").exists()


def test_metric_without_data_warns(tmp_path, capsys):
    assert main([TANH, tmp_path / "out.onnx", "--metric", "cosine", "-q"]) == 0
    assert "--metric has no effect without --calib or --val" in capsys.readouterr().err


def test_zero_norm_rows():
    reference = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    output = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [2.0, 2.0], [-1.0, 0.0]])
    # both zero: 0; one zero: 1 (either way); same direction: 0; opposite: 2
    assert output_error(reference, output, metric="cosine") == pytest.approx(4 / 5)
    assert output_error(reference, reference, metric="cosine") == 0.0
    zeros = np.zeros((3, 4))
    assert output_error(zeros, zeros, metric="cosine") == 0.0


def test_several_outputs_report_the_worst_and_labels_keep_their_share():
    rng = np.random.default_rng(0)
    close = rng.standard_normal((10, 3, 4))
    far = rng.standard_normal((10, 5))
    labels = np.arange(10)
    reference = stack_outputs({"close": close, "far": far, "label": labels})
    changed = labels.copy()
    changed[:3] += 1
    near = close + 0.01 * rng.standard_normal(close.shape)
    moved = far + rng.standard_normal(far.shape)
    output = stack_outputs({"close": near, "far": moved, "label": changed})
    error = output_error(reference, output, metric="cosine")
    scores = {s.name: s for s in error.outputs}
    assert scores["close"].error == pytest.approx(numpy_cosine_distance(close, near))
    assert scores["far"].error == pytest.approx(numpy_cosine_distance(far, moved))
    assert error.worst == "far" and float(error) == scores["far"].error
    assert scores["label"].error == pytest.approx(0.3) and error.metric == "cosine"
    assert error.to_dict()["metric"] == "cosine"
    # labels alone: the error is their share of changed rows, printed as a percentage
    only = output_error(
        stack_outputs({"label": labels}), stack_outputs({"label": changed}), metric="cosine"
    )
    assert only == pytest.approx(0.3) and only.metric == "rmse"


def test_stacked_mask_leaves_padding_out_of_a_token_output():
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((4, 6, 8))
    output = reference.copy()
    output[:, 4:] = -output[:, 4:]  # only padding positions differ
    mask = np.ones((4, 6), bool)
    mask[:, 4:] = False
    masked = output_error(
        stack_outputs({"h": reference}, mask), stack_outputs({"h": output}, mask), metric="cosine"
    )
    assert masked == pytest.approx(0.0, abs=1e-12)
    assert output_error(
        stack_outputs({"h": reference}), stack_outputs({"h": output}), metric="cosine"
    ) == pytest.approx(2 * 2 / 6)


rows_of_values = st.integers(1, 6).flatmap(
    lambda width: st.lists(
        st.lists(st.integers(-50, 50), min_size=width, max_size=width), min_size=1, max_size=8
    )
)


@given(rows_of_values, st.data())
def test_cosine_error_is_zero_for_identical_outputs_and_blind_to_positive_scaling(rows, data):
    reference = np.array(rows, np.float64) / 10
    output = reference + np.array(
        data.draw(
            st.lists(
                st.lists(
                    st.integers(-5, 5), min_size=reference.shape[1], max_size=reference.shape[1]
                ),
                min_size=len(reference),
                max_size=len(reference),
            )
        ),
        np.float64,
    )
    scales = np.array(
        data.draw(st.lists(st.floats(1e-3, 1e3), min_size=len(reference), max_size=len(reference)))
    )
    assert output_error(reference, reference, metric="cosine") == pytest.approx(0.0, abs=1e-12)
    assert output_error(reference, reference * scales[:, None], metric="cosine") == pytest.approx(
        0.0, abs=1e-12
    )
    base = output_error(reference, output, metric="cosine")
    assert 0.0 <= base <= 2.0
    assert output_error(reference, output * scales[:, None], metric="cosine") == pytest.approx(
        base, abs=1e-12
    )
    assert base == pytest.approx(numpy_cosine_distance(reference, output), abs=1e-12)


def test_cosine_against_targets_is_the_distance_added():
    rng = np.random.default_rng(2)
    targets = rng.standard_normal((20, 5))
    reference = targets + 0.1 * rng.standard_normal(targets.shape)
    output = reference + 0.3 * rng.standard_normal(targets.shape)
    added = numpy_cosine_distance(targets, output) - numpy_cosine_distance(targets, reference)
    assert output_error(reference, output, targets, metric="cosine") == pytest.approx(added)
    stacked = output_error(
        stack_outputs({"y": reference}), stack_outputs({"y": output}), targets, metric="cosine"
    )
    assert stacked == pytest.approx(added) and stacked.metric == "cosine"


def test_sweep_table_holds_the_cosine_error(tmp_path):
    table = tmp_path / "t.json"
    argv = [TANH, table, "--calib", CALIB, "--sweep", "0.5", "--no-refine"]
    assert main([*argv, "--metric", "cosine", "-q"]) == 0
    (row,) = json.loads(table.read_text())
    _, report = lump(
        onnx.load(TANH), 0.5, calibration=dict(np.load(CALIB)), refine=False, metric="cosine"
    )
    assert row["error"] == pytest.approx(float(report.holdout_error), rel=1e-9)


def test_cosine_on_a_one_number_output_is_warned_about(tmp_path, capsys):
    """scikit-learn's regressor outputs one number a row: its cosine compares signs only,
    so --metric cosine warns (and the default does not)."""
    calib = tmp_path / "calib.npz"
    model = onnx.load(str(FIXTURES / "skl_relu.onnx"))
    width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    np.savez(
        calib,
        **{
            model.graph.input[0].name: np.random.default_rng(0)
            .normal(size=(200, width))
            .astype(np.float32)
        },
    )
    source = str(FIXTURES / "skl_relu.onnx")
    assert (
        main(
            [
                source,
                str(tmp_path / "a.onnx"),
                "--calib",
                str(calib),
                "--eps",
                "0.1",
                "--metric",
                "cosine",
            ]
        )
        == 0
    )
    assert "output 'variable' has one number a row" in capsys.readouterr().err
    assert main([source, str(tmp_path / "b.onnx"), "--calib", str(calib), "--eps", "0.1"]) == 0
    assert "one number a row" not in capsys.readouterr().err
