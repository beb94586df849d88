"""One verify path (issue 20): the API's ``compress(..., out=)`` and the command line write
through ``pipeline.write``: staged, checked, measured by onnxruntime on the staged file,
moved into place only when it passes; the report is frozen and built anew from the
file; the onnx-ir pass judges its verification in ``ensures``."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from builders import mlp, random_layers
from conftest import run_ort
from onnx import helper

from onnx_lump import compress, lump
from onnx_lump.data.holdout import output_error
from onnx_lump.errors import LumpError
from onnx_lump.graph.inventory import file_bytes
from onnx_lump.integrations.onnx_ir import LumpPass, LumpPassResult, ToleranceExceeded
from onnx_lump.methods.lumping import LumpOptions

ROWS = 400


def _span(eps: float):
    """The default data-aware lumping at ``eps``."""
    return LumpOptions().method(eps, with_data=True)


def _model() -> onnx.ModelProto:
    return mlp(random_layers([4, 24, 16, 2], seed=3), ["Tanh", "Tanh"])


def _calibration() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(7).standard_normal((ROWS, 4)).astype(np.float32)}


def test_compress_with_out_reports_the_written_files_error(tmp_path):
    out = tmp_path / "small.onnx"
    model = _model()
    _, report = compress(model, _span(0.3), calibration=_calibration(), out=out)
    assert out.exists() and report.split is not None
    rows = report.split.holdout
    # the error printed is onnxruntime's on the file written, on the held-out rows
    expected = output_error(run_ort(model, rows)[0], run_ort(onnx.load(out), rows)[0])
    assert report.holdout_error == pytest.approx(expected, rel=1e-9)
    assert report.verification and report.verification.n_samples == len(rows["x"])
    assert report.model_bytes_after == file_bytes(out)
    assert report.params_after < report.params_before
    assert [p.name for p in tmp_path.iterdir()] == ["small.onnx"]  # no staging left


def test_compress_with_out_runs_the_models_on_the_file_only(tmp_path, monkeypatch):
    """Written, the held-out error and the verification are the file's: the model in
    memory is not run as well (each model runs once on the held-out rows)."""
    import onnx_lump.pipeline.finish as finish
    import onnx_lump.pipeline.write as write

    in_memory, on_file = [], []
    run_in_memory, run_file = finish.run_model, write.run_model
    monkeypatch.setattr(finish, "run_model", lambda *a: in_memory.append(1) or run_in_memory(*a))
    monkeypatch.setattr(write, "run_model", lambda *a: on_file.append(1) or run_file(*a))
    compress(_model(), _span(0.3), calibration=_calibration(), out=tmp_path / "m.onnx")
    assert not in_memory and len(on_file) == 2  # the original and the file, once each


def test_compress_with_out_and_without_agree(tmp_path):
    """In memory and written, the same model and, to float rounding, the same error."""
    model = _model()
    _, in_memory = compress(model, _span(0.3), calibration=_calibration())
    _, written = compress(model, _span(0.3), calibration=_calibration(), out=tmp_path / "m.onnx")
    assert in_memory.widths_after == written.widths_after
    assert written.holdout_error == pytest.approx(in_memory.holdout_error, rel=1e-4)


def test_a_missed_tolerance_writes_nothing(tmp_path):
    out = tmp_path / "small.onnx"
    with pytest.raises(LumpError, match=r"beyond the tolerance.*not written"):
        compress(_model(), _span(0.5), calibration=_calibration(), atol=1e-9, out=out)
    assert list(tmp_path.iterdir()) == []


def test_data_free_out_is_verified_on_seeded_random_inputs(tmp_path):
    out = tmp_path / "small.onnx"
    _, report = lump(_model(), 0.5, out=out, n_check=17)
    assert out.exists() and report.verification is not None
    assert report.verification.n_samples == 17 and report.holdout_error is None


def test_the_report_is_frozen_and_writing_makes_a_new_one(tmp_path):
    model = _model()
    reduced, report = compress(model, _span(0.3), calibration=_calibration(), verify=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.holdout_error = 0.0  # type: ignore[misc]
    from onnx_lump.pipeline.write import FileChecks, Reference, write_checked

    reference = Reference(model, ["CPUExecutionProvider"])
    with write_checked(
        reduced, tmp_path / "m.onnx", report, model, reference, FileChecks()
    ) as written:
        written.commit()
    assert written.report is not report and written.report.model_bytes_after is not None
    assert report.model_bytes_after is None  # the first report is as it was built


def test_the_pass_result_carries_the_report():
    result = LumpPass(5.0)(ir.from_proto(_model()))
    assert isinstance(result, LumpPassResult) and result.modified
    assert result.report is not None and result.report.params_after < result.report.params_before


def test_a_missed_tolerance_fails_the_pass_postcondition():
    with pytest.raises(ToleranceExceeded, match="beyond the tolerance") as caught:
        LumpPass(5.0, atol=1e-9)(ir.from_proto(_model()))
    assert isinstance(caught.value, ir.passes.PostconditionError)
    assert isinstance(caught.value, LumpError)


def test_the_pass_requires_an_opset_onnxruntime_runs():
    proto = _model()
    del proto.opset_import[:]
    proto.opset_import.append(helper.make_opsetid("", 99))
    with pytest.raises(ir.passes.PreconditionError, match="opset"):
        LumpPass(0.0)(ir.from_proto(proto))
