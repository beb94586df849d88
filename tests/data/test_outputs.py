"""Models with several outputs of different kinds: scikit-learn classifiers as skl2onnx
exports them (an int64 label and probabilities, as a ZipMap sequence of maps or as a
tensor; fixtures from tools/make_classifier_fixtures.py).

The held-out error is measured output by output: each float output on its own scale, and
the worst is reported and searched on; a label output is reported as the share of rows
whose label changed. A model with one float output keeps the formula it always had.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FIXTURES, MODELS

from onnx_lump import compress
from onnx_lump.cli import main
from onnx_lump.data.holdout import (
    HeldOutError,
    error_rows,
    output_error,
    split_calibration,
    stack_outputs,
    stacked_outputs,
)
from onnx_lump.errors import LumpError
from onnx_lump.methods import Lump
from onnx_lump.ode.partition import PartitionOptions
from onnx_lump.pipeline.report import Report
from onnx_lump.pipeline.verify import compare_outputs

CLASSIFIERS = {
    "digits": FIXTURES / "skl_clf_digits_zipmap.onnx",
    "cancer": FIXTURES / "skl_clf_cancer_zipmap.onnx",
}
CALIB = {
    "digits": FIXTURES / "skl_clf_digits_calib.npz",
    "cancer": FIXTURES / "skl_clf_cancer_calib.npz",
}
DIGITS_TENSOR = FIXTURES / "skl_clf_digits_tensor.onnx"


# ---- an independent measure: onnxruntime on the file, one output at a time -------------
def run_file(path, feeds) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def as_rows(value) -> np.ndarray:
    if isinstance(value, list):  # ZipMap: [{class: probability}] -> rows x classes
        keys = sorted(value[0])
        return np.array([[row[k] for k in keys] for row in value], np.float64)
    return np.asarray(value, np.float64).reshape(len(value), -1)


def per_output(reference: dict, output: dict) -> dict[str, tuple[str, float]]:
    """(kind, error) per output: relative RMSE against the output's own spread for
    probabilities, the share of rows whose label changed for an integer output."""
    measured = {}
    for name, ref in reference.items():
        r, o = as_rows(ref), as_rows(output[name])
        if not isinstance(ref, list) and np.asarray(ref).dtype.kind in "iu":
            measured[name] = ("label", float(np.mean((r != o).any(axis=1))))
        else:
            measured[name] = ("float", float(np.sqrt(np.mean((o - r) ** 2)) / r.std()))
    return measured


def old_formula(reference, output, targets=None) -> float:
    """The measure before outputs were told apart (all outputs in one array)."""
    reference = np.concatenate([as_rows(v) for v in reference], axis=1)
    output = np.concatenate([as_rows(v) for v in output], axis=1)
    if targets is not None:
        targets = np.asarray(targets, np.float64).reshape(reference.shape)
        base = float(np.sqrt(np.mean((reference - targets) ** 2)))
        now = float(np.sqrt(np.mean((output - targets) ** 2)))
        return (now - base) / base if base > 0 else now
    spread = float(reference.std()) or 1.0
    return float(np.sqrt(np.mean((output - reference) ** 2))) / spread


def run_cli(model, calib, out, report, *options) -> int:
    argv = [str(model), str(out), "--calib", str(calib), "--report-json", str(report), "-q"]
    return main([*argv, *options])


# ---- the crash: a ZipMap output with --calib -------------------------------------------
@pytest.mark.parametrize(
    "data,options",
    [
        ("digits", ("--max-error", "0.05")),
        ("cancer", ("--max-error", "0.05")),
        ("digits", ("--target-params", "0.5")),
    ],
    ids=["digits-max-error", "cancer-max-error", "digits-target-params"],
)
def test_zipmap_classifier_with_calibration_reports_the_worst_output(
    data, options, tmp_path, capsys
):
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    code = run_cli(CLASSIFIERS[data], CALIB[data], out, report_path, *options)
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err  # never the internal error (3)
    assert "internal error" not in captured.err
    if code == 1:
        return  # the budget was not met: nothing written, nothing to compare
    report = json.loads(report_path.read_text())
    held = error_rows(dict(np.load(CALIB[data])))
    measured = per_output(run_file(CLASSIFIERS[data], held), run_file(out, held))
    assert measured["output_label"][0] == "label"
    probability_error = measured["output_probability"][1]
    assert report["holdout_error"] == pytest.approx(probability_error, rel=1e-9, abs=1e-12)
    assert report["holdout_label_changed"] == pytest.approx(measured["output_label"][1])
    kinds = {o["name"]: o["kind"] for o in report["holdout_outputs"]}
    assert kinds == {"output_label": "label", "output_probability": "float"}
    if "--max-error" in options:
        assert report["holdout_error"] <= float(options[1])


def test_tensor_label_and_probabilities_are_not_mixed(tmp_path):
    """zipmap=False: an int64 label tensor beside a float probability tensor. The class
    numbers (0-9) used to widen the spread the error was divided by, and passed a budget
    the probabilities missed; the error is now the probabilities' own."""
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    code = run_cli(DIGITS_TENSOR, CALIB["digits"], out, report_path, "--target-params", "0.6")
    assert code == 0
    report = json.loads(report_path.read_text())
    held = error_rows(dict(np.load(CALIB["digits"])))
    reference, output = run_file(DIGITS_TENSOR, held), run_file(out, held)
    measured = per_output(reference, output)
    assert report["holdout_error"] == pytest.approx(measured["probabilities"][1], rel=1e-9)
    assert report["holdout_label_changed"] == pytest.approx(measured["label"][1])
    mixed = old_formula(list(reference.values()), list(output.values()))
    assert mixed < 0.5 * report["holdout_error"]  # what the old measure would have printed
    checked = report["verification"]["outputs"][0]  # the same rows, compared as labels
    assert checked["kind"] == "label"
    assert checked["changed"] / checked["rows"] == pytest.approx(measured["label"][1])


def test_the_search_is_steered_by_the_worst_float_output():
    """compress and the search see the same number: the probabilities' error."""
    model = onnx.load(DIGITS_TENSOR)
    calib = dict(np.load(CALIB["digits"]))
    reduced, report = compress(model, Lump(PartitionOptions(eps=0.8)), calibration=calib)
    held = split_calibration(calib).holdout
    reference = stack_outputs(run_file(DIGITS_TENSOR, held))
    output = stacked_outputs(reduced, held, ["CPUExecutionProvider"])
    error = output_error(reference, output)
    assert isinstance(report.holdout_error, HeldOutError)
    assert float(report.holdout_error) == pytest.approx(float(error), rel=1e-12)
    assert report.holdout_error.worst == "probabilities"
    scores = {s.name: s for s in report.holdout_outputs}
    assert float(report.holdout_error) == scores["probabilities"].error
    assert scores["label"].kind == "label" and 0 <= scores["label"].error <= 1
    summary = report.summary()
    assert "held-out output 'label': label changed on" in summary
    assert "held-out output 'probabilities': error" in summary
    assert report.holdout_detail().startswith("of output 'probabilities'; label 'label' changed")


# ---- one float output: nothing changes -------------------------------------------------
def test_one_float_output_error_is_the_old_formula_exactly():
    rng = np.random.default_rng(7)
    for shape in [(50, 3), (40,), (30, 2, 5)]:
        reference = rng.standard_normal(shape).astype(np.float32)
        output = (reference + 0.05 * rng.standard_normal(shape)).astype(np.float32)
        targets = rng.standard_normal(shape)
        for given in (None, targets):
            old = old_formula([reference], [output], given)
            new = output_error(stack_outputs({"y": reference}), stack_outputs({"y": output}), given)
            assert float(new) == old  # bit for bit
            assert output_error(reference, output, given) == old  # plain arrays too


def test_one_float_output_cli_error_is_unchanged(tmp_path):
    """The benchmark's models have one float output: the CLI's error is the old number."""
    model, calib = MODELS / "rn_tanh_2x64.onnx", MODELS / "rn_calib.npz"
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    assert run_cli(model, calib, out, report_path, "--eps", "0.3") == 0
    report = json.loads(report_path.read_text())
    held = error_rows(dict(np.load(calib)))
    reference, output = run_file(model, held), run_file(out, held)
    assert report["holdout_error"] == old_formula(list(reference.values()), list(output.values()))
    assert report["holdout_label_changed"] is None
    assert [o["kind"] for o in report["holdout_outputs"]] == ["float"]


def test_one_float_output_summary_has_no_per_output_lines():
    model = onnx.load(MODELS / "rn_tanh_2x64.onnx")
    calib = dict(np.load(MODELS / "rn_calib.npz"))
    _, report = compress(model, Lump(PartitionOptions(eps=0.3)), calibration=calib)
    assert "held-out output" not in report.summary()
    assert report.holdout_detail() is None


# ---- stacking and measuring, output by output ------------------------------------------
def test_zipmap_columns_follow_sorted_keys():
    maps = [{2: 0.5, 0: 0.2, 1: 0.3}, {0: 0.1, 2: 0.6, 1: 0.3}]
    stacked = stack_outputs({"label": np.array([2, 2]), "probability": maps})
    assert stacked.shape == (2, 4)
    np.testing.assert_array_equal(stacked[:, 1:], [[0.2, 0.3, 0.5], [0.1, 0.3, 0.6]])
    assert [(c.name, c.kind, c.start, c.stop) for c in stacked.layout] == [
        ("label", "label", 0, 1),
        ("probability", "float", 1, 4),
    ]


def test_each_float_output_on_its_own_scale_and_the_worst_reported():
    rng = np.random.default_rng(1)
    big, small = 1000 * rng.standard_normal((64, 4)), 0.01 * rng.standard_normal((64, 2))
    reference = {"big": big, "small": small, "label": np.arange(64) % 3}
    output = {"big": big * 1.001, "small": small * 1.2, "label": (np.arange(64) % 3)}
    output["label"][:8] += 1  # 8 of 64 rows change label
    error = output_error(stack_outputs(reference), stack_outputs(output))
    by_name = {s.name: s for s in error.outputs}
    assert by_name["small"].error == pytest.approx(old_formula([small], [small * 1.2]))
    assert by_name["big"].error == pytest.approx(old_formula([big], [big * 1.001]))
    assert float(error) == by_name["small"].error and error.worst == "small"
    assert by_name["label"].changed == 8 and error.label_changed == pytest.approx(8 / 64)


def test_label_only_model_reports_the_share_of_changed_labels():
    reference = {"label": np.array(["cat", "dog", "cat", "bird"] * 4)}
    output = {"label": np.array(["cat", "dog", "dog", "bird"] * 4)}
    error = output_error(stack_outputs(reference), stack_outputs(output))
    assert float(error) == pytest.approx(0.25) and error.outputs[0].kind == "label"


def test_outputs_that_are_no_tensors_are_left_out_with_a_note():
    reference = {
        "y": np.ones((6, 2), np.float32),
        "pieces": [np.ones(2), np.ones(3)],  # a sequence of tensors
    }
    output = {"y": np.full((6, 2), 1.5, np.float32), "pieces": [np.ones(2), np.ones(3)]}
    error = output_error(stack_outputs(reference), stack_outputs(output))
    kinds = {s.name: (s.kind, s.note) for s in error.outputs}
    assert kinds["pieces"] == ("left out", "is a sequence, not a tensor")
    assert float(error) == output_error(reference["y"], output["y"])
    report = Report("m", True, [], [], 0.0, holdout="rows", holdout_error=error)
    assert "'pieces': not measured (it is a sequence, not a tensor)" in report.summary()
    with pytest.raises(LumpError, match="no output of the model can be measured"):
        pieces = {"p": reference["pieces"]}
        output_error(stack_outputs(pieces), stack_outputs(pieces))


def test_targets_are_split_over_the_float_outputs():
    rng = np.random.default_rng(2)
    probabilities = rng.random((20, 3))
    reference = {"label": probabilities.argmax(1), "p": probabilities}
    output = {"label": probabilities.argmax(1), "p": probabilities + 0.01}
    targets = np.eye(3)[rng.integers(0, 3, 20)]  # one-hot truth for the probabilities
    error = output_error(stack_outputs(reference), stack_outputs(output), targets)
    assert float(error) == pytest.approx(old_formula([probabilities], [output["p"]], targets))
    every = np.concatenate([reference["label"][:, None], targets], axis=1)  # all columns
    assert float(output_error(stack_outputs(reference), stack_outputs(output), every)) == float(
        error
    )
    with pytest.raises(LumpError, match="targets hold"):
        output_error(stack_outputs(reference), stack_outputs(output), targets[:, :2])


def test_held_out_error_is_a_float_that_keeps_its_breakdown():
    error = output_error(
        stack_outputs({"label": np.array([0, 1]), "p": np.array([[0.2], [0.9]])}),
        stack_outputs({"label": np.array([0, 0]), "p": np.array([[0.3], [0.9]])}),
    )
    again = pickle.loads(pickle.dumps(error))
    assert again == error and again.outputs == error.outputs
    assert json.loads(json.dumps({"e": error}))["e"] == float(error)
    report = Report("m", True, [], [], 0.0, holdout="rows", holdout_error=error)
    record = json.loads(report.to_json())
    assert record["holdout_label_changed"] == 0.5
    assert [o["name"] for o in record["holdout_outputs"]] == ["label", "p"]


# ---- verification of label outputs ------------------------------------------------------
def test_verification_reports_labels_as_changed_rows():
    feeds = {"x": np.zeros((4, 1), np.float32)}
    expected = {"label": np.array([1, 2, 3, 4]), "p": np.array([[0.5], [0.5], [0.5], [0.5]])}
    actual = {"label": np.array([1, 9, 3, 4]), "p": np.array([[0.5], [0.6], [0.5], [0.5]])}
    result = compare_outputs(expected, actual, feeds, atol=0.2)
    label = result.outputs[0]
    assert (label.kind, label.changed, label.rows) == ("label", 1, 4)
    assert result.max_abs == pytest.approx(0.1) and result.passed  # the float output's
    assert result.label_changed == 0.25
    text = compare_outputs(
        {"label": np.array(["a", "b"], dtype=object)},
        {"label": np.array(["a", "c"], dtype=object)},
        {"x": np.zeros((2, 1), np.float32)},
    )
    assert text.outputs[0].changed == 1 and text.max_abs == 1.0
