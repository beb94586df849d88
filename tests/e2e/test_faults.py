"""Fault matrix: the CLI on bad inputs of every kind.

For each case the command must exit with the documented code, print exactly one
``error:`` line on stderr and no traceback, leave every input file byte-identical and
leave nothing behind (no output, no staging folder, no half-written report). The cases
are built in a fresh folder from the demo model and its calibration set; the signal
cases run the module in a subprocess and stop it while it saves.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import mlp, random_layers
from conftest import MODELS

from onnx_lump import __version__
from onnx_lump.cli import command as cli

DEMO = MODELS / "rn_tanh_2x64.onnx"
CALIB = MODELS / "rn_calib.npz"
# The lead's refine stage may be on by default with --calib; the matrix does not need it.
_HELP = cli.build_parser().format_help()
NO_REFINE = ["--no-refine"] if "--no-refine" in _HELP else []


@dataclass
class Work:
    """A folder with the inputs (``in/``) and an empty folder for outputs (``out/``)."""

    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "in"

    @property
    def model(self) -> Path:
        return self.inputs / "model.onnx"

    @property
    def calib(self) -> Path:
        return self.inputs / "calib.npz"

    def out(self, name: str = "small.onnx") -> Path:
        return self.root / "out" / name

    def argv(self, *extra, model: Path | None = None, out: Path | None = None) -> list[str]:
        return [str(model or self.model), str(out or self.out()), *map(str, extra)]

    def save(self, model: onnx.ModelProto, name: str = "bad.onnx") -> Path:
        path = self.inputs / name
        onnx.save(model, path)
        return path

    def demo(self) -> onnx.ModelProto:
        return onnx.load(self.model)

    def npz(self, name: str = "data.npz", **arrays) -> Path:
        path = self.inputs / name
        np.savez(path, **arrays)
        return path

    def rows(self) -> np.ndarray:
        return np.load(CALIB)["input"].copy()

    def external(self, data_name: str = "ext.onnx.data") -> Path:
        """The demo saved with its weights in an external-data file ``in/<data_name>``."""
        path = self.inputs / "ext.onnx"
        onnx.save(
            self.demo(),
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=0,
        )
        return path


def make_work(root: Path) -> Work:
    work = Work(root)
    work.inputs.mkdir()
    (root / "out").mkdir()
    work.model.write_bytes(DEMO.read_bytes())
    work.calib.write_bytes(CALIB.read_bytes())
    return work


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too) with its content hash or kind."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink():
                state[str(path)] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                state[str(path)] = "dir"
            else:
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


# name -> (build argv from a Work, exit code, text the error line must contain)
CASES: dict[str, tuple[Callable[[Work], list[str]], int, str]] = {}


def case(match: str = "", code: int = 2):
    def register(build):
        CASES[build.__name__.removeprefix("case_")] = (build, code, match)
        return build

    return register


# ---- numeric options: non-finite or out of range --------------------------------------
@case("--eps must be a finite number")
def case_eps_nan(w):
    return w.argv("--eps", "nan")


@case("--eps must be a finite number")
def case_eps_inf(w):
    return w.argv("--eps", "inf")


@case("--eps must be >= 0")
def case_eps_negative(w):
    return w.argv("--eps", "-0.1")


@case("--atol must be a finite number")
def case_atol_nan(w):
    return w.argv("--atol", "nan")


@case("--atol must be >= 0")
def case_atol_negative(w):
    return w.argv("--atol", "-1")


@case("--rtol must be a finite number")
def case_rtol_inf(w):
    return w.argv("--rtol", "inf")


@case("--max-error must be a finite number")
def case_max_error_nan(w):
    return w.argv("--max-error", "nan", "--calib", w.calib)


@case("--max-error must be >= 0")
def case_max_error_negative(w):
    return w.argv("--max-error", "-0.01", "--calib", w.calib)


@case("--target-params must be in (0, 1]")
def case_target_params_zero(w):
    return w.argv("--target-params", "0", "--calib", w.calib)


@case("--target-params must be in (0, 1]")
def case_target_params_above_one(w):
    return w.argv("--target-params", "1.5", "--calib", w.calib)


@case("--ridge must be a finite number")
def case_ridge_nan(w):
    return w.argv("--ridge", "nan", "--calib", w.calib)


@case("--ridge must be >= 0")
def case_ridge_negative(w):
    return w.argv("--ridge", "-0.001", "--calib", w.calib)


@case("--check must be >= 1")
def case_check_zero(w):
    return w.argv("--check", "0")


@case("GiB")
def case_check_too_large_for_memory(w):
    return w.argv("--check", "1000000000")


@case("--sparsity must be in [0, 1)")
def case_sparsity_one(w):
    return w.argv("--method", "magnitude", "--sparsity", "1")


@case("--sparsity must be a finite number")
def case_sparsity_nan(w):
    return w.argv("--method", "magnitude", "--sparsity", "nan")


@case("--tau must be in (0, 1]")
def case_tau_zero(w):
    return w.argv("--method", "linear", "--tau", "0", "--calib", w.calib)


@case("--tau must be a finite number")
def case_tau_nan(w):
    return w.argv("--method", "linear", "--tau", "nan", "--calib", w.calib)


# The lead's refine/split flags: refused by the range check or, before they exist, by
# argparse; either way one line naming the flag.
@case("--refine-iters")
def case_refine_iters_negative(w):
    return w.argv("--refine-iters", "-1", "--calib", w.calib)


@case("--refine-seconds")
def case_refine_seconds_zero(w):
    return w.argv("--refine-seconds", "0", "--calib", w.calib)


@case("--holdout")
def case_holdout_one(w):
    return w.argv("--holdout", "1", "--calib", w.calib)


@case("--holdout")
def case_holdout_nan(w):
    return w.argv("--holdout", "nan", "--calib", w.calib)


# ---- option syntax and combinations --------------------------------------------------
@case("--sweep ''")
def case_sweep_empty(w):
    return w.argv("--sweep", "", "--calib", w.calib, out=w.out("t.csv"))


@case("is not a list")
def case_sweep_garbage(w):
    return w.argv("--sweep", "a,b", "--calib", w.calib, out=w.out("t.csv"))


@case("--sweep '0,nan'")
def case_sweep_nan_value(w):
    return w.argv("--sweep", "0,nan", "--calib", w.calib, out=w.out("t.csv"))


@case("--sweep value 1.5 is not a valid sparsity")
def case_sweep_out_of_range(w):
    argv = ["--method", "magnitude", "--sweep", "0,1.5", "--calib", w.calib]
    return w.argv(*argv, out=w.out("t.csv"))


@case("give a .csv or .json path")
def case_sweep_onnx_output(w):
    return w.argv("--sweep", "0,0.1", "--calib", w.calib)


@case("unrecognized arguments: --frobnicate")
def case_unknown_flag(w):
    return w.argv("--frobnicate")


@case("invalid float value: 'abc'")
def case_eps_not_a_number(w):
    return w.argv("--eps", "abc")


@case("invalid choice: 'nope'")
def case_unknown_method(w):
    return w.argv("--method", "nope")


@case("the following arguments are required")
def case_missing_output(w):
    return [str(w.model)]


@case("is not NAME:D0,D1,...")
def case_input_shape_malformed(w):
    return w.argv("--input-shape", "input:a,b")


@case("positive dimensions")
def case_input_shape_zero(w):
    return w.argv("--input-shape", "input:0,6")


@case("does not fit the model's shape")
def case_input_shape_wrong_rank(w):
    return w.argv("--input-shape", "input:4,6,2")


@case("--no-verify")
def case_tolerance_without_verify(w):
    return w.argv("--no-verify", "--atol", "1e-3")


@case("method 'exact' has no knob")
def case_exact_with_search(w):
    return w.argv("--method", "exact", "--max-error", "0.01", "--calib", w.calib)


@case("needs --calib")
def case_data_similarity_without_calib(w):
    return w.argv("--similarity", "data")


@case("not available")
def case_unknown_provider(w):
    return w.argv("--providers", "NoSuchExecutionProvider")


@case("lists no execution provider")
def case_no_provider(w):
    return w.argv("--providers", " , ")


@case("--seed must be >= 0")
def case_seed_negative(w):
    return w.argv("--seed", "-1", "--calib", w.calib)


@case("--sweep '0:1:0'")
def case_sweep_zero_step(w):
    return w.argv("--sweep", "0:1:0", "--calib", w.calib, out=w.out("t.csv"))


@case("needs calibration inputs")
def case_data_method_without_calib(w):
    return w.argv("--method", "wanda")


# ---- the model ------------------------------------------------------------------------
@case("does not exist")
def case_model_missing(w):
    return w.argv(model=w.inputs / "nope.onnx")


@case("is not an ONNX model")
def case_model_is_text(w):
    path = w.inputs / "notes.onnx"
    path.write_text("this is not a protobuf, just text\n" * 10)
    return w.argv(model=path)


@case("")
def case_model_truncated(w):
    path = w.inputs / "cut.onnx"
    path.write_bytes(DEMO.read_bytes()[: DEMO.stat().st_size // 2])
    return w.argv(model=path)


@case("")
def case_model_empty_file(w):
    path = w.inputs / "empty.onnx"
    path.write_bytes(b"")
    return w.argv(model=path)


@case("does not exist or is not a file")
def case_model_is_folder(w):
    return w.argv(model=w.inputs)


@case("fails onnx.checker")
def case_model_fails_checker(w):
    model = w.demo()
    model.graph.node[2].input[0] = "no_such_tensor"
    return w.argv(model=w.save(model))


@case("external data")
def case_model_missing_external_data(w):
    path = w.external()
    (w.inputs / "ext.onnx.data").unlink()
    return w.argv(model=path)


@case("")
def case_model_truncated_external_data(w):
    path = w.external()
    data = w.inputs / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    return w.argv(model=path)


@case("no dense chain")
def case_model_without_chain(w):
    return w.argv(model=w.save(mlp(random_layers([6, 3]), [])))


@case("zero width")
def case_model_zero_width_layer(w):
    return w.argv(model=w.save(mlp(random_layers([6, 0, 6]), ["Tanh"])))


@case("fails onnx.checker")
def case_model_without_input_shape(w):
    model = w.demo()
    model.graph.input[0].type.tensor_type.ClearField("shape")
    return w.argv(model=w.save(model))


@case("random checks need --calib")
def case_model_integer_input_without_calib(w):
    model = w.demo()
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    return w.argv(model=w.save(model))


@case("NaN or infinite weights")
def case_model_nan_weights(w):
    model = w.demo()
    weight = onnx.numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight.flat[3] = np.nan
    model.graph.initializer[0].CopyFrom(
        onnx.numpy_helper.from_array(weight, model.graph.initializer[0].name)
    )
    return w.argv(model=w.save(model))


@case("NaN or infinite weights")
def case_model_inf_weights(w):
    model = w.demo()
    weight = onnx.numpy_helper.to_array(model.graph.initializer[-1]).copy()
    weight.flat[0] = np.inf
    model.graph.initializer[-1].CopyFrom(
        onnx.numpy_helper.from_array(weight, model.graph.initializer[-1].name)
    )
    return w.argv(model=w.save(model))


@case("ERODE syntax needs polynomial chains")
def case_dump_ode_non_polynomial(w):
    return w.argv("--dump-ode", w.out("model.ode"))


# ---- calibration and validation data ------------------------------------------------
@case("does not exist")
def case_calib_missing(w):
    return w.argv("--calib", w.inputs / "missing.npz")


@case("NaN or infinite values in 1 of 256 rows")
def case_calib_one_nan(w):
    rows = w.rows()
    rows[17, 2] = np.nan
    return w.argv("--calib", w.npz(input=rows))


@case("NaN or infinite values in 1 of 256 rows")
def case_calib_one_inf(w):
    rows = w.rows()
    rows[200, 0] = np.inf
    return w.argv("--calib", w.npz(input=rows))


@case("too large for float32")
def case_calib_overflows_input_dtype(w):
    rows = w.rows().astype(np.float64)
    rows[5, 5] = 1e300
    return w.argv("--calib", w.npz(input=rows))


@case("cannot read")
def case_calib_corrupt_npz(w):
    path = w.inputs / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    return w.argv("--calib", path)


@case("cannot read")
def case_calib_truncated_npz(w):
    path = w.inputs / "cut.npz"
    path.write_bytes(CALIB.read_bytes()[:3000])
    return w.argv("--calib", path)


@case("pickled")
def case_calib_object_array_npz(w):
    return w.argv("--calib", w.npz(input=np.array([{"row": 1}] * 8, dtype=object)))


@case("pickled")
def case_calib_pickle_file(w):
    path = w.inputs / "pickle.npz"
    path.write_bytes(pickle.dumps({"input": w.rows()}))
    return w.argv("--calib", path)


@case("has no array for model input 'input'")
def case_calib_wrong_names(w):
    return w.argv("--calib", w.npz(a=w.rows(), b=w.rows()))


@case("has shape (256, 5), but the model expects (N, 6)")
def case_calib_wrong_width(w):
    return w.argv("--calib", w.npz(input=w.rows()[:, :5]))


@case("one row: too little information")
def case_calib_one_row(w):
    return w.argv("--calib", w.npz(input=w.rows()[:1]))


@case("256 identical rows: too little information")
def case_calib_identical_rows(w):
    return w.argv("--calib", w.npz(input=np.repeat(w.rows()[:1], 256, axis=0)))


@case("not numbers")
def case_calib_strings(w):
    return w.argv("--calib", w.npz(input=np.array([["a"] * 6] * 4)))


@case("has no rows")
def case_calib_empty_array(w):
    return w.argv("--calib", w.npz(input=np.zeros((0, 6), np.float32)))


@case("numeric table")
def case_calib_csv_with_text(w):
    path = w.inputs / "calib.csv"
    path.write_text("a,b,c,d,e,f\n1,2,3,4,5,6\n1,2,x,4,5,6\n")
    return w.argv("--calib", path)


@case("has shape (256, 5), but the model expects (N, 6)")
def case_calib_npy_wrong_width(w):
    path = w.inputs / "calib.npy"
    np.save(path, w.rows()[:, :5])
    return w.argv("--calib", path)


@case("has shape (256, 6, 1), but the model expects (N, 6)")
def case_calib_wrong_rank(w):
    return w.argv("--calib", w.npz(input=w.rows()[:, :, None]))


@case("too few to hold out")
def case_calib_too_few_rows_to_hold_out(w):
    return w.argv("--calib", w.npz(input=w.rows()[:3]))


@case("does not exist")
def case_val_missing(w):
    return w.argv("--calib", w.calib, "--val", w.inputs / "nope.npz")


@case("NaN or infinite values")
def case_val_nan(w):
    rows = w.rows()
    rows[0, 0] = np.nan
    return w.argv("--calib", w.calib, "--max-error", "0.05", "--val", w.npz("val.npz", input=rows))


@case("target has shape (256, 5)")
def case_val_target_wrong_width(w):
    val = w.npz("val.npz", input=w.rows(), target=np.zeros((256, 5), np.float32))
    return w.argv("--calib", w.calib, "--max-error", "0.05", "--val", val)


@case("100 target rows for 256 input rows")
def case_val_target_wrong_rows(w):
    val = w.npz("val.npz", input=w.rows(), target=np.zeros((100, 6), np.float32))
    return w.argv("--calib", w.calib, "--max-error", "0.05", "--val", val)


@case("NaN or infinite values")
def case_val_target_nan(w):
    target = np.zeros((256, 6), np.float32)
    target[3, 3] = np.nan
    val = w.npz("val.npz", input=w.rows(), target=target)
    return w.argv("--calib", w.calib, "--max-error", "0.05", "--val", val)


# ---- where the output goes ----------------------------------------------------------
@case("input")
def case_out_is_input(w):
    return w.argv(out=w.model)


@case("input")
def case_out_is_input_by_another_spelling(w):
    return w.argv(out=w.inputs / ".." / "in" / "model.onnx")


@case("")
def case_out_is_symlink_to_input(w):
    link = w.out("link.onnx")
    link.symlink_to(w.model)
    return w.argv(out=link)


@case("")
def case_out_is_hard_link_to_input(w):
    link = w.out("hard.onnx")
    os.link(w.model, link)
    return w.argv(out=link)


@case("does not exist")
def case_report_json_folder_missing(w):
    return w.argv("--report-json", w.root / "no" / "such" / "r.json")


@case("is a folder")
def case_dump_ode_is_folder(w):
    return w.argv("--dump-ode", w.root / "out")


@case("does not exist")
def case_out_folder_missing(w):
    return w.argv(out=w.root / "no" / "such" / "out.onnx")


@case("is a folder")
def case_out_is_folder(w):
    return w.argv(out=w.root / "out")


@case("")
def case_out_is_external_data_of_input(w):
    return w.argv(model=w.external(), out=w.inputs / "ext.onnx.data")


@case("")
def case_out_data_file_is_input_data(w):
    # The input keeps its weights in 'small.onnx.data': writing small.onnx with external
    # data beside it would overwrite them.
    return w.argv(model=w.external("small.onnx.data"), out=w.inputs / "small.onnx")


@case("")
def case_report_json_is_external_data(w):
    model = w.external()
    return w.argv("--report-json", w.inputs / "ext.onnx.data", model=model)


@case("")
def case_dump_ode_is_external_data(w):
    model = w.external()
    return w.argv("--dump-ode", w.inputs / "ext.onnx.data", model=model)


@case("")
def case_out_is_calib(w):
    return w.argv("--calib", w.calib, out=w.calib)


@case("")
def case_report_json_is_calib(w):
    return w.argv("--calib", w.calib, "--report-json", w.calib)


@case("")
def case_out_is_val(w):
    val = w.npz("val.npz", input=w.rows())
    return w.argv("--calib", w.calib, "--max-error", "0.05", "--val", val, out=val)


@case("")
def case_dump_ode_is_report_json(w):
    side = w.out("side.txt")
    return w.argv("--dump-ode", side, "--report-json", side)


@case("")
def case_report_json_is_out(w):
    return w.argv("--report-json", w.out())


@case("")
def case_dump_ode_is_input(w):
    return w.argv("--dump-ode", w.model)


# ---- a target or tolerance not met: exit 1, the FAILED line on stdout -----------------
@case("", code=1)
def case_tolerance_exceeded(w):
    return w.argv("--eps", "2", "--atol", "1e-9")


def test_matrix_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_fault(name, tmp_path, capsys):
    build, code, match = CASES[name]
    work = make_work(tmp_path)
    argv = build(work)
    if "--calib" in argv and code != 1:
        argv += NO_REFINE
    before = snapshot(tmp_path)
    capsys.readouterr()

    got = cli.main(argv)

    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert got == code, captured.err + captured.out
    lines = captured.err.splitlines()
    if code == 1:
        assert lines == [] and captured.out.splitlines()[-1].startswith("FAILED | ")
    else:
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: ") and match in lines[0], lines[0]
        assert "internal error" not in lines[0]
    assert snapshot(tmp_path) == before  # inputs byte-identical, nothing left behind


# ---- options that have no effect: a warning, and the run goes on ----------------------
WARNINGS = {
    "eps_with_magnitude": (["--method", "magnitude", "--eps", "0.1"], "--eps has no effect"),
    "eps_with_search": (
        ["--eps", "0.3", "--calib", "CALIB", "--target-params", "1"],
        "--eps has no effect with a search",
    ),
    "sparsity_with_lump": (["--sparsity", "0.3"], "--sparsity has no effect with --method lump"),
    "scope_with_lump": (["--scope", "layer"], "--scope has no effect with --method lump"),
    "scope_with_wanda": (
        ["--method", "wanda", "--scope", "layer", "--calib", "CALIB"],
        "--scope has no effect with --method wanda",
    ),
    "tau_with_magnitude": (["--method", "magnitude", "--tau", "0.9"], "--tau has no effect"),
    "val_without_calib": (["--val", "CALIB"], "--val has no effect without --calib"),
    "holdout_with_val": (
        ["--calib", "CALIB", "--val", "CALIB", "--holdout", "0.3"],
        "--holdout has no effect with --val",
    ),
    "seed_without_calib": (["--seed", "3"], "--seed has no effect without --calib"),
    "refine_iters_with_magnitude": (
        ["--method", "magnitude", "--refine-iters", "5"],
        "--refine-iters has no effect with --method magnitude",
    ),
    "input_shape_of_no_input": (["--input-shape", "nope:3,6"], "the model has no input 'nope'"),
    "ridge_without_calib": (["--ridge", "1e-3"], "--ridge has no effect without --calib"),
    "no_refit_without_calib": (["--no-refit"], "--no-refit has no effect without --calib"),
    "check_with_calib": (["--calib", "CALIB", "--check", "10"], "--check has no effect"),
    "span_without_calib": (
        ["--reduction", "span", "--eps", "0.1"],
        "--reduction has no effect without --calib",
    ),
    "linkage_with_magnitude": (
        ["--method", "magnitude", "--linkage", "complete"],
        "--linkage has no effect",
    ),
}


@pytest.mark.parametrize("name", sorted(WARNINGS))
def test_option_without_effect_warns(name, tmp_path, capsys):
    extra, expected = WARNINGS[name]
    work = make_work(tmp_path)
    extra = [str(work.calib) if a == "CALIB" else a for a in extra]
    if "--calib" in extra:
        extra += NO_REFINE
    inputs = {p: p.read_bytes() for p in work.inputs.iterdir()}

    code = cli.main(work.argv(*extra, "-q"))

    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and expected in lines[0], lines
    assert work.out().exists()
    assert {p: p.read_bytes() for p in work.inputs.iterdir()} == inputs


# ---- internal errors, --version, usage errors ----------------------------------------
def test_internal_error_is_one_line_with_exit_3(tmp_path, capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "run_parsed", broken)
    work = make_work(tmp_path)
    assert cli.main(work.argv()) == 3
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: internal error (RuntimeError: boom second line); please report it with -v output"
    ]
    assert cli.main(work.argv("-v")) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("error: internal error")


def test_version_goes_to_stdout(capsys):
    assert cli.main(["--version"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"onnx_lump {__version__}" and captured.err == ""


# ---- a signal while saving ------------------------------------------------------------
def _big_model(path: Path) -> None:
    """The demo plus a 48 MB initializer outside the chains, so that saving takes a while."""
    model = onnx.load(DEMO)
    big = onnx.numpy_helper.from_array(np.ones(12_000_000, np.float32), "ballast")
    model.graph.initializer.append(big)
    model.graph.node.append(onnx.helper.make_node("Shape", ["ballast"], ["ballast_shape"]))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("ballast_shape", onnx.TensorProto.INT64, [1])
    )
    onnx.save(model, path)


@pytest.mark.parametrize(
    "signum,moment",
    [(signal.SIGTERM, "staging"), (signal.SIGTERM, "writing"), (signal.SIGINT, "writing")],
    ids=["SIGTERM-staging-created", "SIGTERM-writing", "SIGINT-writing"],
)
def test_signal_during_save_leaves_nothing_behind(signum, moment, tmp_path):
    source, folder = tmp_path / "big.onnx", tmp_path / "out"
    folder.mkdir()
    _big_model(source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    out = folder / "small.onnx"
    process = subprocess.Popen(
        [sys.executable, "-m", "onnx_lump", str(source), str(out), "--check", "4", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def saving() -> bool:
        entries = list(folder.iterdir())
        if moment == "staging":  # the instant the staging folder appears
            return bool(entries)
        return any(e.is_dir() and any(e.iterdir()) for e in entries) or out.exists()

    deadline, hit = time.monotonic() + 60, False
    while process.poll() is None and time.monotonic() < deadline:
        if saving():
            process.send_signal(signum)
            hit = True
            break
        time.sleep(0.0002)
    _, err = process.communicate(timeout=60)
    assert hit, f"the save was never seen (exit {process.returncode}): {err}"
    assert "Traceback" not in err
    assert process.returncode in (0, 128 + signum), err
    if process.returncode != 0:
        assert err.splitlines() == [f"error: stopped by {signal.Signals(signum).name}"]
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    if out.exists():  # the signal came after the rename: the file must then be whole
        onnx.checker.check_model(str(out))
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest
