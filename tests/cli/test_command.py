"""The command line: round trip, tolerances, dumps, conventions (exit codes, PASSED only
with a tolerance, the before/after table), and bad input (more in test_faults.py)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from builders import mlp, random_layers
from conftest import FIXTURES, MODELS, run_ort

from onnx_lump import __version__
from onnx_lump.cli import build_parser, main
from onnx_lump.graph.io.tensordata import stored_parameters

DEMO = MODELS / "rn_tanh_2x64.onnx"
NO_REFINE = ["--no-refine"] if "--no-refine" in build_parser().format_help() else []


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def demo(tmp_path):
    path = tmp_path / "model.onnx"
    shutil.copy(DEMO, path)
    return path


def test_module_round_trip(demo, tmp_path):
    out = tmp_path / "small.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "onnx_lump", str(demo), str(out), "--eps", "1.0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    # No tolerance was given: nothing was judged, so the line says DONE and the error.
    assert last.startswith("DONE | params 4998 -> ")
    assert "max abs err" in last and "on 64 random inputs" in last and str(out) in last
    assert result.stderr == ""
    assert "/0/Gemm" in result.stdout and "eps=1" in result.stdout
    table = {line.split()[0]: line.split()[1:3] for line in result.stdout.splitlines()[:-1]}
    assert table["Gemm"] == ["3", "3"] and table["Tanh"] == ["2", "2"]
    reduced = onnx.load(out)
    x = {"input": np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)}
    assert run_ort(reduced, x)[0].shape == (8, 6)
    assert sum(int(np.prod(t.dims)) for t in reduced.graph.initializer) < 4998


def test_calibration_file_and_json_report(demo, tmp_path, capsys):
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    code = main(
        [
            str(demo),
            str(out),
            "--eps",
            "0.5",
            "--calib",
            str(MODELS / "rn_calib.npz"),
            "--report-json",
            str(report),
            "-q",
            *NO_REFINE,
        ]
    )
    assert code == 0
    data = json.loads(report.read_text())
    # Checked on the held-out share of the 256 calibration rows, never on fitted rows.
    assert 0 < data["verification"]["n_samples"] < 256
    assert data["verification"]["passed"] is True
    assert data["params_after"] <= data["params_before"] == 4998
    assert capsys.readouterr().out.count("\n") == 1  # -q: only the final line


def test_tolerance_exceeded_writes_nothing(demo, tmp_path, capsys):
    out = tmp_path / "small.onnx"
    code = main([str(demo), str(out), "--eps", "2.0", "--atol", "1e-6"])
    assert code == 1
    assert not out.exists()
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("FAILED |")


def test_exact_mode_passes_tight_tolerances(tmp_path, capsys):
    layers = random_layers([4, 10, 3], seed=3)
    layers[0][0][9], layers[0][1][9] = 2.5 * layers[0][0][0], 2.5 * layers[0][1][0]
    source, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(mlp(layers, ["Relu"]), source)
    assert main([str(source), str(out), "--rtol", "1e-5", "--atol", "1e-5"]) == 0
    assert out.exists()
    assert capsys.readouterr().out.splitlines()[-1].startswith("PASSED | ")


def test_dump_ode_as_text_and_erode(demo, tmp_path):
    dump = tmp_path / "model.ode.txt"
    assert main([str(demo), str(tmp_path / "o.onnx"), "--dump-ode", str(dump), "-q"]) == 0
    assert "h1_0' = Tanh(" in dump.read_text()
    linear = tmp_path / "linear.onnx"
    onnx.save(mlp(random_layers([3, 4, 2]), [None]), linear)
    erode = tmp_path / "linear.ode"
    assert main([str(linear), str(tmp_path / "l.onnx"), "--dump-ode", str(erode), "-q"]) == 0
    assert erode.read_text().startswith("begin model")


def test_dynamic_non_batch_dimension_defaults_and_input_shape_overrides(tmp_path, capsys):
    source = tmp_path / "seq.onnx"
    onnx.save(
        mlp(random_layers([4, 6, 2]), ["Tanh"], op="MatMul", input_dims=("N", "T", None)), source
    )
    out = tmp_path / "o.onnx"
    assert main([str(source), str(out)]) == 0
    assert "note: random check inputs: dynamic dimensions x[1] = 8" in capsys.readouterr().err
    assert main([str(source), str(out), "--input-shape", "x:3,5,4"]) == 0
    assert "note:" not in capsys.readouterr().err


def bad_model_without_chain(tmp_path):
    path = tmp_path / "single.onnx"
    onnx.save(mlp(random_layers([4, 3]), []), path)
    return path


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", "does not exist"),
        ("not_onnx", "is not an ONNX model"),
        ("no_chain", "no dense chain"),
        ("negative_eps", "--eps must be >= 0"),
        ("same_path", "input"),
        ("missing_folder", "does not exist"),
        ("folder_is_file", "does not exist"),
        ("bad_provider", "not available"),
        ("bad_calib", "does not exist"),
    ],
)
def test_bad_input_is_one_line_nonzero_and_harmless(case, expected, demo, tmp_path, capsys):
    source, out, extra = demo, tmp_path / "out.onnx", []
    if case == "missing":
        source = tmp_path / "nope.onnx"
    elif case == "not_onnx":
        source = tmp_path / "notes.onnx"
        source.write_text("this is not a protobuf, just text\n" * 10)
    elif case == "no_chain":
        source = bad_model_without_chain(tmp_path)
    elif case == "negative_eps":
        extra = ["--eps", "-0.1"]
    elif case == "same_path":
        out = demo
    elif case == "missing_folder":
        out = tmp_path / "no" / "such" / "out.onnx"
    elif case == "folder_is_file":
        out = demo / "out.onnx"
    elif case == "bad_provider":
        extra = ["--providers", "NoSuchExecutionProvider"]
    elif case == "bad_calib":
        extra = ["--calib", str(tmp_path / "missing.npz")]
    before = digest(source) if source.exists() else None
    listing = sorted(p.name for p in tmp_path.rglob("*"))

    code = main([str(source), str(out), *extra])

    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in captured.err + captured.out
    if before is not None:
        assert digest(source) == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing


def test_module_reports_user_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "onnx_lump", str(tmp_path / "x.onnx"), str(tmp_path / "y.onnx")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_usage_error_and_version_from_the_module(tmp_path):
    usage = subprocess.run(
        [sys.executable, "-m", "onnx_lump", "--eps", "x"], capture_output=True, text=True
    )
    assert usage.returncode == 2 and usage.stdout == ""
    assert len(usage.stderr.splitlines()) == 1 and usage.stderr.startswith("error: ")
    version = subprocess.run(
        [sys.executable, "-m", "onnx_lump", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.strip() == f"onnx_lump {__version__}"


def test_no_verify_writes_and_says_so(demo, tmp_path, capsys):
    out = tmp_path / "small.onnx"
    assert main([str(demo), str(out), "--eps", "0.5", "--no-verify", "-q"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("DONE | ") and "not run (--no-verify)" in last and "err" not in last
    x = {"input": np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)}
    assert run_ort(onnx.load(out), x)[0].shape == (4, 6)


def test_warnings_on_stderr_results_on_stdout(demo, tmp_path, capsys):
    out = tmp_path / "small.onnx"
    assert main([str(demo), str(out), "--method", "magnitude", "--eps", "0.3"]) == 0
    captured = capsys.readouterr()
    assert (
        captured.err == "warning: --eps has no effect with --method magnitude (a lumping option)\n"
    )
    assert "warning:" not in captured.out and captured.out.splitlines()[-1].startswith("DONE | ")


def test_table_counts_what_is_stored(tmp_path, capsys):
    # A weight shared with another consumer gets a copy: the stored count may grow while
    # the chains shrink, and the table must show the file as it is.
    source = tmp_path / "shared.onnx"
    shutil.copy(FIXTURES / "shared_initializer.onnx", source)
    out = tmp_path / "out.onnx"
    assert main([str(source), str(out), "--eps", "0"]) == 0
    found = re.search(r"^stored parameters\s+(\d+)\s+(\d+)", capsys.readouterr().out, re.M)
    before, after = stored_parameters(onnx.load(source)), stored_parameters(onnx.load(out))
    assert found is not None and found.groups() == (str(before), str(after))


def test_the_written_file_is_measured_and_verified_with_one_run_of_each_model(
    tmp_path, capsys, monkeypatch
):
    """The held-out errors and the verification: the input and the written file each run
    once on the audit rows (the error printed, and verified there) and once on the rows
    that chose (a second session of a 200 MB input cost ~1 s), and the numbers printed
    are onnxruntime's on the file written."""
    import onnx_lump.pipeline.write as write
    from onnx_lump.data.holdout import carve_audit, output_error, split_calibration

    runs = []
    original = write.run_model
    monkeypatch.setattr(write, "run_model", lambda m, *a: runs.append(str(m)) or original(m, *a))
    out = tmp_path / "out.onnx"
    calib = MODELS / "rn_calib.npz"
    code = main(
        [
            str(MODELS / "rn_tanh_2x64.onnx"),
            str(out),
            "--calib",
            str(calib),
            "--eps",
            "0.3",
            "--report-json",
            str(tmp_path / "r.json"),
            "-q",
        ]
    )
    assert code == 0 and len(runs) == 4 and runs[0].endswith("rn_tanh_2x64.onnx")
    report = json.loads((tmp_path / "r.json").read_text())
    audit = carve_audit(dict(np.load(calib)))
    chose = split_calibration(audit.rest, audit.rest_share).holdout

    def error(rows):
        (expected,), (actual,) = (
            run_ort(onnx.load(MODELS / "rn_tanh_2x64.onnx"), rows),
            run_ort(onnx.load(out), rows),
        )
        return output_error(expected, actual)

    assert report["holdout_error"] == pytest.approx(error(audit.audit), rel=1e-9)
    assert report["chosen_error"] == pytest.approx(error(chose), rel=1e-9)
    assert report["holdout_rows"] == audit.n_audit == 26 and len(chose["input"]) == 25
    assert report["verification"]["passed"] and report["verification"]["n_samples"] == 26
