"""More of the fault matrix (issue 22, items 7 and 9): a model newer than onnxruntime,
empty --sweep items, a closed stdout (``| head``), reports of a run that writes nothing,
onnx-graphsurgeon's messages kept off stdout, and --help's exit codes and program name.

Each case follows test_faults.py: the documented exit code, one ``error:`` line on stderr
where there is an error, no traceback, and nothing left behind."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from builders import mlp, random_layers
from conftest import MODELS

from onnx_lump import runtime
from onnx_lump.cli import command as cli
from onnx_lump.cli import parser as cli_parser
from onnx_lump.errors import LumpError
from onnx_lump.search import parse_knobs

DEMO = MODELS / "rn_tanh_2x64.onnx"
CALIB = MODELS / "rn_calib.npz"
NO_REFINE = ["--no-refine"] if "--no-refine" in cli.build_parser().format_help() else []


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too) with its content hash or kind."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_dir():
                state[str(path)] = "dir"
            else:
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def one_error(captured) -> str:
    """The one ``error:`` line of a refused run (no traceback, no internal error)."""
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "internal error" not in lines[0]
    return lines[0]


@pytest.fixture
def demo(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    shutil.copy(DEMO, path)
    return path


# ---- a model newer than this onnxruntime: one line, before any work --------------------
def small_model(opset: int = 17, ml_opset: int | None = None) -> onnx.ModelProto:
    """A valid two-layer MLP built with onnx.helper, stamped with ``opset``."""
    model = mlp(random_layers([4, 8, 3], seed=1), ["Relu"])
    model.opset_import[0].version = opset
    if ml_opset is not None:
        model.opset_import.append(onnx.helper.make_opsetid("ai.onnx.ml", ml_opset))
    onnx.checker.check_model(model)  # onnx.checker accepts any opset: ORT is the judge
    return model


ORT_TOO_NEW = re.compile(
    r"error: opset 99 is newer than this onnxruntime supports \(max (\d+)\)$"
    r"|error: opset 99 is newer than this onnx/onnxruntime supports \(onnx knows up to \d+\)$"
)


def test_opset_99_is_one_line_naming_the_supported_maximum(tmp_path, capsys):
    source, out = tmp_path / "op99.onnx", tmp_path / "out.onnx"
    onnx.save(small_model(99), source)
    before = snapshot(tmp_path)

    assert cli.main([str(source), str(out)]) == 2

    line = one_error(capsys.readouterr())
    match = ORT_TOO_NEW.match(line)
    assert match, line
    if match[1] is not None:  # the maximum is onnxruntime's, and the model's 99 is above it
        assert 7 <= int(match[1]) < 99
        assert cli.main([str(source), str(out), "--no-verify"]) == 2  # refused before the work
        assert ORT_TOO_NEW.match(one_error(capsys.readouterr()))
    assert snapshot(tmp_path) == before


def test_supported_opset_still_runs(tmp_path, capsys):
    source, out = tmp_path / "op17.onnx", tmp_path / "out.onnx"
    onnx.save(small_model(17, ml_opset=1), source)
    assert cli.main([str(source), str(out), "-q"]) == 0
    assert capsys.readouterr().err == "" and out.exists()


def test_ml_opset_too_new_names_its_domain(tmp_path, capsys):
    source = tmp_path / "ml99.onnx"
    onnx.save(small_model(17, ml_opset=99), source)
    assert cli.main([str(source), str(tmp_path / "out.onnx")]) == 2
    line = one_error(capsys.readouterr())
    assert "opset 99 is newer than this" in line, line
    assert "ai.onnx.ml opset 99" in line or "onnx knows up to" in line, line


def test_the_session_itself_says_it_in_one_line():
    """The same line where a session is opened on a ModelProto (the API's path)."""
    with pytest.raises(LumpError) as caught:
        runtime.session(small_model(99), ["CPUExecutionProvider"])
    assert ORT_TOO_NEW.match(f"error: {caught.value}"), str(caught.value)


def test_onnxruntime_wordings_of_too_new():
    paragraph = (
        "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/src/model_load_utils.h:46 "
        "void onnxruntime::ValidateOpsetForDomain(...) ONNX Runtime only *guarantees* support "
        "for models stamped with official released onnx opset versions. Opset 99 is under "
        "development and support for this is limited. The operator schemas and or other\n"
        "functionality may change. Current official support for domain ai.onnx is till opset 21.\n"
    )
    too_new = runtime.too_new_message
    assert too_new(paragraph) == "opset 99 is newer than this onnxruntime supports (max 21)"
    ml = paragraph.replace("domain ai.onnx ", "domain ai.onnx.ml ").replace("opset 21", "opset 5")
    assert too_new(ml) == "ai.onnx.ml opset 99 is newer than this onnxruntime supports (max 5)"
    vague = paragraph.split(" Current official")[0]
    assert too_new(vague) == (
        "opset 99 is newer than this onnx/onnxruntime supports "
        f"(onnx knows up to {onnx.defs.onnx_opset_version()})"
    )
    ir = "... Model::Model(...) Unsupported model IR version: 99, max supported IR version: 10\n"
    assert too_new(ir) == "IR version 99 is newer than this onnxruntime supports (max 10)"
    assert too_new("[ONNXRuntimeError] : 10 : INVALID_GRAPH : something else") is None


# ---- --sweep: an empty item is an error, not a value skipped ---------------------------
@pytest.mark.parametrize(
    "spec,item",
    [("0,,1", "item 2 of 3"), (",1", "item 1 of 2"), ("1,", "item 2 of 2"), ("0::1", "item 2")],
)
def test_sweep_with_an_empty_item_is_refused(spec, item, demo, tmp_path, capsys):
    table = tmp_path / "t.csv"
    before = snapshot(tmp_path)
    argv = [str(demo), str(table), "--sweep", spec, "--calib", str(CALIB), *NO_REFINE]

    assert cli.main(argv) == 2

    line = one_error(capsys.readouterr())
    assert f"--sweep '{spec}'" in line and item in line and "is empty" in line, line
    assert snapshot(tmp_path) == before
    with pytest.raises(LumpError, match="is empty"):
        parse_knobs(spec)


def test_sweep_lists_still_parse():
    assert parse_knobs("0, 0.5 ,1") == [0.0, 0.5, 1.0]
    assert parse_knobs("0.25") == [0.25]
    with pytest.raises(LumpError, match="is not a list"):
        parse_knobs("")


# ---- stdout closed early (| head): quiet, exit 128 + SIGPIPE ---------------------------
def _env(buffered: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
def test_piped_into_head_ends_quietly(buffered, demo, tmp_path):
    out = tmp_path / "small.onnx"
    command = [sys.executable, "-m", "onnx_lump", str(demo), str(out), "--eps", "0.5"]
    producer = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(buffered)
    )
    head = subprocess.run(["head", "-1"], stdin=producer.stdout, capture_output=True, text=True)
    producer.stdout.close()  # head holds the only read end; it goes when head exits
    err = producer.stderr.read().decode()
    producer.wait(timeout=120)

    assert head.stdout.startswith("method: lump"), head.stdout
    assert producer.returncode in (0, 141), err
    assert "Traceback" not in err and "internal error" not in err and "Exception" not in err
    assert err == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
def test_stdout_closed_before_any_output_exits_141_quietly(buffered, demo, tmp_path):
    """The reader is gone before the first line: every write fails, deterministically."""
    out = tmp_path / "small.onnx"
    command = [sys.executable, "-m", "onnx_lump", str(demo), str(out), "--eps", "0.5"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(buffered)
    )
    process.stdout.close()
    err = process.stderr.read().decode()
    process.wait(timeout=120)

    assert process.returncode == 141, err
    assert err == ""  # no traceback, no "internal error", no "Exception ignored"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    if out.exists():  # closed after the rename (buffered: at the last flush): whole
        onnx.checker.check_model(str(out))


def test_help_into_a_closed_pipe_is_quiet():
    process = subprocess.Popen(
        [sys.executable, "-m", "onnx_lump", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(True),
    )
    process.stdout.close()
    err = process.stderr.read().decode()
    process.wait(timeout=60)
    assert process.returncode in (0, 141) and err == ""


# ---- a run that writes nothing writes no report or ODE dump either ---------------------
def test_failed_tolerance_writes_no_report_or_dump(demo, tmp_path, capsys):
    out, report, dump = tmp_path / "small.onnx", tmp_path / "r.json", tmp_path / "d.txt"
    before = snapshot(tmp_path)
    argv = [str(demo), str(out), "--eps", "2", "--report-json", str(report)]
    argv += ["--dump-ode", str(dump)]

    assert cli.main([*argv, "--atol", "1e-9"]) == 1

    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1].endswith("nothing written") and captured.err == ""
    assert snapshot(tmp_path) == before  # no model, no report, no dump

    assert cli.main([*argv, "-q"]) == 0  # the same run that passes writes all three
    assert out.exists() and report.exists() and dump.exists()


def test_target_not_met_writes_no_report_or_dump(demo, tmp_path, capsys):
    out, report, dump = tmp_path / "small.onnx", tmp_path / "r.json", tmp_path / "d.txt"
    before = snapshot(tmp_path)
    argv = [str(demo), str(out), "--calib", str(CALIB), *NO_REFINE]
    argv += ["--target-params", "0.05", "--max-error", "1e-9"]
    argv += ["--report-json", str(report), "--dump-ode", str(dump), "-q"]

    assert cli.main(argv) == 1

    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1].startswith("FAILED | ")
    assert captured.out.splitlines()[-1].endswith("nothing written")
    assert snapshot(tmp_path) == before


# ---- onnx-graphsurgeon's messages stay off stdout --------------------------------------
def bf16_model(path: Path) -> Path:
    """The demo plus a bfloat16 tensor outside the chains: onnx-graphsurgeon warns that it
    keeps its type as it was ("[W] Could not convert: BFLOAT16 ...", printed to stdout)."""
    model = onnx.load(DEMO)
    tensor = onnx.helper.make_tensor("bf", onnx.TensorProto.BFLOAT16, [2], [1.0, 2.0])
    model.graph.initializer.append(tensor)
    model.graph.node.append(onnx.helper.make_node("Shape", ["bf"], ["bf_shape"]))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("bf_shape", onnx.TensorProto.INT64, [1])
    )
    onnx.save(model, path)
    return path


def test_graphsurgeon_warnings_are_not_on_stdout(tmp_path, capsys):
    from onnx_graphsurgeon.logger import G_LOGGER

    source, out = bf16_model(tmp_path / "bf.onnx"), tmp_path / "out.onnx"

    assert cli.main([str(source), str(out), "--eps", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "[W]" not in captured.out and "BFLOAT16" not in captured.out
    assert captured.err == ""  # a note about the library's own representation: -v only
    assert captured.out.splitlines()[-1].startswith("DONE | ")

    assert cli.main([str(source), str(out), "--eps", "0.5", "-v"]) == 0
    captured = capsys.readouterr()
    assert "[W]" not in captured.out and "BFLOAT16" not in captured.out
    assert "onnx-graphsurgeon: Could not convert: BFLOAT16" in captured.err
    assert "log" not in vars(G_LOGGER)  # the library's logger is as it was after the run


# ---- --help: exit codes, and the program named as it was run ---------------------------
def test_help_lists_the_exit_codes(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    codes = out[out.index("exit codes:") :]
    for code in ("0 ", "1 ", "2 ", "3 ", "128+N "):
        assert re.search(rf"^  {re.escape(code)}", codes, re.MULTILINE), code
    assert "141" in codes and "SIGPIPE" in codes


@pytest.mark.parametrize(
    "argv0,prog",
    [
        ("/usr/local/bin/onnx-lump", "onnx-lump"),
        ("C:\\venv\\Scripts\\onnx-lump.exe", "onnx-lump"),
        ("/site-packages/onnx_lump/__main__.py", "python -m onnx_lump"),
        ("", "python -m onnx_lump"),
    ],
)
def test_program_name_follows_how_it_was_run(argv0, prog, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [argv0.replace("\\", "/")])
    parser = cli.build_parser()
    assert parser.prog == prog == cli_parser.program_name()
    help_text = parser.format_help()
    assert help_text.startswith(f"usage: {prog} ")
    assert f"  {prog} model.onnx model.lumped.onnx --eps 0.05" in help_text
    assert cli.main(["--eps", "x"]) == 2
    assert f"(see '{prog} --help')" in capsys.readouterr().err


def test_console_script_says_onnx_lump():
    script = Path(sys.executable).parent / "onnx-lump"
    if not script.exists():
        pytest.skip("the console script is not installed beside this interpreter")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: onnx-lump ")
    module = subprocess.run(
        [sys.executable, "-m", "onnx_lump", "--help"], capture_output=True, text=True, timeout=60
    )
    assert module.stdout.startswith("usage: python -m onnx_lump ")


def test_api_calibration_bare_array_is_read_for_a_one_input_model():
    import numpy as np

    from onnx_lump import lump

    rows = np.load(CALIB)["input"]
    model = onnx.load(DEMO)
    _, bare = lump(model, 0.3, calibration=rows, refine=False, verify=False)
    _, named = lump(model, 0.3, calibration={"input": rows}, refine=False, verify=False)
    assert bare.widths_after == named.widths_after and bare.holdout_error == named.holdout_error


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        (lambda rows: {"input": rows[:, :3]}, r"shape \(256, 3\), but the model expects \(N, 6\)"),
        (lambda rows: {"inputs": rows}, r"arrays for no model input: \['inputs'\]"),
        (lambda rows: rows.tolist(), "must be a dict of input name -> array"),
        (lambda rows: {"input": rows.astype("int64")}, "integer data"),
        (lambda rows: {"input": rows[:1]}, "one row"),
    ],
)
def test_api_calibration_faults_are_one_line_lump_errors(calibration, message):
    """The API holds its calibration to the checks the CLI makes of a file (a bare array
    raised numpy's "truth value of an array is ambiguous"; a wrong name, onnxruntime's)."""
    import numpy as np

    from onnx_lump import lump

    rows = np.load(CALIB)["input"]
    with pytest.raises(LumpError, match=message) as caught:
        lump(onnx.load(DEMO), 0.3, calibration=calibration(rows), refine=False, verify=False)
    assert "\n" not in str(caught.value)


def test_api_bare_array_for_a_two_input_model_names_the_inputs():
    import numpy as np

    from onnx_lump.data.calibration import check_feeds

    model = onnx.load(DEMO)
    extra = onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, [None, 6])
    model.graph.input.append(extra)
    with pytest.raises(LumpError, match="the model has 2 inputs \\('input', 'mask'\\)"):
        check_feeds(np.zeros((4, 6), np.float32), model, "calibration")


def test_very_large_calibration_is_subsampled_with_a_warning(monkeypatch, tmp_path, capsys):
    """Ten million rows took 15 silent minutes and 8 GB: beyond a cap of chain rows a
    seeded subsample is used, and a warning says how many of how many."""
    import json

    import onnx_lump.data.calibration as calibration

    monkeypatch.setattr(calibration, "MAX_CALIBRATION_POSITIONS", 500)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    args = [str(DEMO), str(out), "--calib", str(MODELS / "rn_calib_2048.npz"), "--eps", "0.3"]
    code = cli.main([*args, *NO_REFINE, "--report-json", str(report), "-q"])
    err = capsys.readouterr().err
    assert code == 0
    assert "2048 rows (2048 chain rows); a seeded 500 of them are used" in err
    assert json.loads(report.read_text())["holdout_rows"] == 50  # 10% of 500: the audit rows


def _gated_graph(path, extra_add: bool) -> None:
    """SwiGLU, silu(x Wg) * (x Wu) -> Wd; with ``extra_add`` the up branch is added once
    more after the product (``act(g) * u + u``), which is no gated FFN."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"Wg": (8, 16), "Wu": (8, 16), "Wd": (16, 8)}
    inits = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in weights.items()
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "Wg"], ["g"]),
        helper.make_node("Sigmoid", ["g"], ["sg"]),
        helper.make_node("Mul", ["g", "sg"], ["silu"]),
        helper.make_node("MatMul", ["x", "Wu"], ["u"]),
        helper.make_node("Mul", ["silu", "u"], ["hm" if extra_add else "h"]),
        helper.make_node("MatMul", ["h", "Wd"], ["y"]),
    ]
    if extra_add:
        nodes.insert(5, helper.make_node("Add", ["hm", "u"], ["h"]))
    graph = helper.make_graph(
        nodes,
        "swiglu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_gated_ffn_is_read(tmp_path):
    path, out = tmp_path / "swiglu.onnx", tmp_path / "out.onnx"
    _gated_graph(path, extra_add=False)
    assert cli.main([str(path), str(out), "--eps", "0.1", "-q"]) == 0
    assert out.exists()


def test_a_gated_ffn_not_read_is_named_without_verbose(tmp_path, capsys):
    """A subgraph over two dense layers that is no act(gate) * up is not read: the one
    error line says why, in the user's terms, without -v, and nothing is written."""
    path, out = tmp_path / "swiglu_add.onnx", tmp_path / "out.onnx"
    _gated_graph(path, extra_add=True)
    assert cli.main([str(path), str(out), "--eps", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "gated FFN" in err and "act(gate) * up" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
