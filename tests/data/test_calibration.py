"""Defaults for the inputs a run reads or draws (issues 19 item 10, 22 items 4, 7 and 9).

* Token-id models run out of the box: the random check draws each integer input from
  the rows of the embedding table (a Gather) that reads it, masks as ones, and zeros
  (with a note) for an integer input no table reads.
* Dynamic dimensions other than the batch default to small sizes (the width the first
  layer reads where the model fixes it, else 8), said in one ``note:`` line, and
  ``--input-shape`` overrides them.
* Calibration files that are not what they should be get one precise ``error:`` line:
  an ONNX model, integer data for a float input, fractions or out-of-range ids for a
  token input, a CSV cell that is not a number; a pandas CSV's index column is left out.

The fault cases follow tests/e2e/test_faults.py: exit 2, one ``error:`` line on stderr, no
traceback, inputs byte-identical and nothing left behind.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import mlp, random_layers
from conftest import FIXTURES, MODELS
from onnx import TensorProto, helper, numpy_helper

from onnx_lump import scan_graph
from onnx_lump.cli import command as cli
from onnx_lump.data.calibration import (
    DEFAULT_DYNAMIC_DIM,
    load_inputs,
    random_input_shapes,
    random_inputs,
    random_inputs_note,
)
from onnx_lump.errors import LumpError
from onnx_lump.graph.write.importer import import_graph

BERT = FIXTURES / "bert_torchscript.onnx"
DYNAMO = FIXTURES / "transformer_dynamo.onnx"
DEMO = MODELS / "rn_tanh_2x64.onnx"
CALIB = MODELS / "rn_calib.npz"
BERT_VOCAB, DYNAMO_VOCAB = 64, 24


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_outputs(before: Path, after: Path, feeds, tol=1e-5) -> None:
    for expected, actual in zip(ort_run(before, feeds), ort_run(after, feeds), strict=True):
        assert expected.shape == actual.shape
        scale = max(float(np.abs(expected).max()), 1.0)
        assert float(np.abs(actual - expected).max()) <= tol * scale


def notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("note: ")]


# ---- token-id models out of the box ---------------------------------------------------
def token_feeds(names, vocab, batch=3, seq=11, seed=4) -> dict[str, np.ndarray]:
    """Ids with padding: what a tokenizer gives, at a batch and length the check did not use."""
    rng = np.random.default_rng(seed)
    feeds = {names[0]: rng.integers(0, vocab, (batch, seq), dtype=np.int64)}
    if "attention_mask" in names:
        lengths = rng.integers(1, seq + 1, batch)
        feeds["attention_mask"] = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    if "token_type_ids" in names:
        feeds["token_type_ids"] = rng.integers(0, 2, (batch, seq), dtype=np.int64)
    return feeds


@pytest.mark.parametrize(
    ("model", "names", "vocab"),
    [
        (BERT, ["input_ids", "attention_mask", "token_type_ids"], BERT_VOCAB),
        (DYNAMO, ["tokens"], DYNAMO_VOCAB),
    ],
    ids=["bert-torchscript", "transformer-dynamo"],
)
def test_token_model_runs_without_calibration(model, names, vocab, tmp_path, capsys):
    out = tmp_path / "small.onnx"

    code = cli.main([model, out, "--eps", "0"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "error" not in captured.err
    (note,) = notes(captured.err)  # one line says what the random check chose
    assert f"{names[0]}: ids in [0, {vocab})" in note
    dims = ", ".join(f"{name}[1]" for name in names)
    assert f"dynamic dimensions {dims} = {DEFAULT_DYNAMIC_DIM} (override with --input-shape" in note
    if "attention_mask" in names:
        assert "attention_mask: all ones" in note and "token_type_ids: ids in [0, 2)" in note
    assert captured.out.splitlines()[-1].startswith("DONE | ")
    assert "random inputs" in captured.out.splitlines()[-1]
    assert_same_outputs(model, out, token_feeds(names, vocab))


def test_random_token_inputs_come_from_their_tables():
    model = onnx.load(BERT)
    feeds = random_inputs(model, 16)
    assert {k: v.shape for k, v in feeds.items()} == {
        "input_ids": (16, DEFAULT_DYNAMIC_DIM),
        "attention_mask": (16, DEFAULT_DYNAMIC_DIM),
        "token_type_ids": (16, DEFAULT_DYNAMIC_DIM),
    }
    assert all(v.dtype == np.int64 for v in feeds.values())
    ids = feeds["input_ids"]
    assert ids.min() >= 0 and ids.max() < BERT_VOCAB and len(np.unique(ids)) > 32
    assert (feeds["attention_mask"] == 1).all()
    assert set(np.unique(feeds["token_type_ids"])) == {0, 1}
    again = random_inputs(model, 16)  # seeded
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)


def test_float_inputs_draw_what_they_drew_before():
    """A float model with only its batch dynamic: the same seeded normals, and no note."""
    model = onnx.load(DEMO)
    feeds = random_inputs(model, 10, seed=3)
    expected = np.random.default_rng(3).standard_normal((10, 6)).astype(np.float32)
    assert np.array_equal(feeds["input"], expected)
    assert random_inputs_note(model, 10) is None


def test_ids_reach_the_table_through_cast_and_unsqueeze(tmp_path):
    """ids -> Cast(int32) -> Unsqueeze -> Gather(table of 5 rows), a Constant table."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "t")
    nodes = [
        helper.make_node("Constant", [], ["table"], value=table),
        helper.make_node("Cast", ["ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Unsqueeze", ["ids32", "axes"], ["ids3"]),
        helper.make_node("Gather", ["table", "ids3"], ["emb"]),
        helper.make_node("ReduceSum", ["emb", "axes"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = random_inputs(model, 200)
    assert set(np.unique(feeds["ids"])) == set(range(5))
    assert "ids: ids in [0, 5) (the rows of 'table')" in random_inputs_note(model, 200)


def chain_with_side_input(side_elem: int, into_gemm: bool = False) -> onnx.ModelProto:
    """x (N, 4) -> Gemm -> Relu -> Gemm -> y, plus an integer input ``flag`` (N, 1) cast to
    float and added to the output (or, ``into_gemm``, the chain reading an int input)."""
    model = mlp(random_layers([4, 6, 3]), ["Relu"])
    if into_gemm:
        model.graph.input[0].type.tensor_type.elem_type = side_elem
        return model
    graph = model.graph
    last = graph.output[0].name
    graph.node.extend(
        [
            helper.make_node("Cast", ["flag"], ["flag_f"], to=TensorProto.FLOAT),
            helper.make_node("Add", [last, "flag_f"], ["y"]),
        ]
    )
    graph.input.append(helper.make_tensor_value_info("flag", side_elem, ["N", 1]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]))
    return model


def test_integer_input_no_table_reads_is_zeros_with_a_note(tmp_path, capsys):
    source = tmp_path / "side.onnx"
    onnx.save(chain_with_side_input(TensorProto.INT64), source)
    feeds = random_inputs(onnx.load(source), 7)
    assert feeds["flag"].dtype == np.int64 and not feeds["flag"].any()

    assert cli.main([source, tmp_path / "o.onnx"]) == 0
    (note,) = notes(capsys.readouterr().err)
    assert "flag: zeros (no embedding table reads it)" in note


def test_integer_input_a_layer_reads_as_numbers_needs_calibration():
    with pytest.raises(LumpError, match="reads it as numbers; random checks need --calib"):
        random_input_shapes(chain_with_side_input(TensorProto.INT64, into_gemm=True), 4)


# ---- dynamic dimensions default -------------------------------------------------------
def onnxsim_rank3(seq: str | int = "seq") -> onnx.ModelProto:
    """onnxsim's export of a rank-3 model: x (batch, seq, 4) -> Reshape(-1, 4) -> Gemm
    4->8 -> Relu -> Gemm 8->3 -> Reshape back to (batch, seq, 3) through Shape, Slice and
    Concat; hidden neurons 5 and 6 copy 0 and 1, so that eps 0 merges them."""
    rng = np.random.default_rng(2)
    w0, b0 = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal(8)
    w0[5], b0[5], w0[6], b0[6] = w0[0], b0[0], w0[1], b0[1]
    w1, b1 = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal(3)
    inits = [
        numpy_helper.from_array(w0, "W0"),
        numpy_helper.from_array(b0.astype(np.float32), "b0"),
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(np.array([-1, 4], np.int64), "flat"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([3], np.int64), "width"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["x2"]),
        helper.make_node("Gemm", ["x2", "W0", "b0"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "W1", "b1"], ["y2"], transB=1),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "two", "zero"], ["lead"]),
        helper.make_node("Concat", ["lead", "width"], ["back"], axis=0),
        helper.make_node("Reshape", ["y2", "back"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "onnxsim_rank3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_dynamic_sequence_runs_without_input_shape(tmp_path, capsys):
    source, out = tmp_path / "rank3.onnx", tmp_path / "small.onnx"
    onnx.save(onnxsim_rank3(), source)
    (chain,) = scan_graph(import_graph(onnx.load(source))).chains
    assert chain.hidden_widths == [8]

    code = cli.main([source, out, "--eps", "0"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert notes(captured.err) == [
        f"note: random check inputs: dynamic dimensions x[1] = {DEFAULT_DYNAMIC_DIM} "
        "(override with --input-shape NAME:D0,D1,...)"
    ]
    assert "max abs err" in captured.out.splitlines()[-1]
    widths = [list(t.dims) for t in onnx.load(out).graph.initializer if t.name.startswith("W")]
    assert sorted(widths) == [[3, 6], [6, 4]]  # the two copies merged
    rng = np.random.default_rng(1)
    for batch, seq in [(2, 5), (1, 13)]:
        feeds = {"x": rng.standard_normal((batch, seq, 4)).astype(np.float32)}
        assert_same_outputs(source, out, feeds)


def test_input_shape_overrides_the_default(tmp_path, capsys):
    source = tmp_path / "rank3.onnx"
    onnx.save(onnxsim_rank3(), source)
    assert random_input_shapes(onnx.load(source), 5, {"x": [2, 3, 4]})["x"][0] == (2, 3, 4)

    code = cli.main([source, tmp_path / "o.onnx", "--input-shape", "x:2,3,4"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert notes(captured.err) == []  # nothing was chosen for the user
    assert "on 2 random inputs" in captured.out.splitlines()[-1]


def test_quiet_prints_no_note(tmp_path, capsys):
    source = tmp_path / "rank3.onnx"
    onnx.save(onnxsim_rank3(), source)
    assert cli.main([source, tmp_path / "o.onnx", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_dynamic_width_is_the_one_the_first_layer_reads():
    model = onnx.load(DEMO)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"
    assert random_input_shapes(model, 5)["input"][0] == (5, 6)
    assert "input[1] = 6, the width of the layer that reads it" in random_inputs_note(model, 5)


def test_one_input_shape_sets_a_symbolic_dimension_for_every_input():
    shapes = random_input_shapes(onnx.load(BERT), 64, {"input_ids": [3, 12]})
    assert {name: shape for name, (shape, _) in shapes.items()} == {
        "input_ids": (3, 12),
        "attention_mask": (3, 12),
        "token_type_ids": (3, 12),
    }


# ---- calibration data: a pandas index, and data that is not what the model reads ------
def write_pandas_csv(path: Path, rows: np.ndarray, index: np.ndarray | None = None) -> Path:
    """What ``pandas.DataFrame(rows, columns=[...]).to_csv(path)`` writes: an unnamed
    first header cell and the row index in the first column."""
    index = np.arange(len(rows)) if index is None else index
    names = ",".join(f"f{i}" for i in range(rows.shape[1]))
    lines = [f",{names}"] + [
        f"{i}," + ",".join(repr(float(v)) for v in row) for i, row in zip(index, rows, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pandas_csv_index_column_is_left_out(tmp_path, capsys):
    rows = np.load(CALIB)["input"]
    model = onnx.load(DEMO)
    path = write_pandas_csv(tmp_path / "calib.csv", rows)
    assert np.array_equal(load_inputs(path, model)["input"], rows)
    shuffled = np.random.default_rng(0).permutation(len(rows))  # a shuffled frame
    path = write_pandas_csv(tmp_path / "shuffled.csv", rows, shuffled)
    assert np.array_equal(load_inputs(path, model)["input"], rows)

    code = cli.main([DEMO, tmp_path / "o.onnx", "--calib", path, "--no-refine", "-q"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    (line,) = captured.err.splitlines()
    assert line.startswith("warning: ") and "a pandas row index" in line and "6 columns" in line


def test_named_or_fractional_first_column_is_data(tmp_path):
    rows = np.load(CALIB)["input"][:, :5]
    model = onnx.load(DEMO)
    path = tmp_path / "named.csv"
    write_pandas_csv(path, rows)
    path.write_text("id" + path.read_text())  # the first column has a name: it is data
    assert load_inputs(path, model)["input"].shape == (256, 6)
    path = write_pandas_csv(tmp_path / "fractions.csv", rows, index=np.linspace(0, 1, 256))
    assert load_inputs(path, model)["input"].shape == (256, 6)


def test_integral_floats_are_token_ids(tmp_path):
    ids = np.random.default_rng(0).integers(0, DYNAMO_VOCAB, (40, 8))
    path = tmp_path / "ids.npz"
    np.savez(path, tokens=ids.astype(np.float32))
    feeds = load_inputs(path, onnx.load(DYNAMO))
    assert feeds["tokens"].dtype == np.int64 and np.array_equal(feeds["tokens"], ids)


def _snapshot(root: Path) -> dict[str, str]:
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            state[str(path)] = (
                "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            )
    return state


def _demo(d: Path, name: str = "model.onnx") -> Path:
    path = d / "in" / name
    if not path.exists():
        path.write_bytes(DEMO.read_bytes())
    return path


def _write(d: Path, name: str, data: bytes | str) -> Path:
    path = d / "in" / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _npz(d: Path, name: str, **arrays) -> Path:
    path = d / "in" / name
    np.savez(path, **arrays)
    return path


def _dynamo(d: Path) -> Path:
    path = d / "in" / "tokens.onnx"
    path.write_bytes(DYNAMO.read_bytes())
    return path


_ROWS = np.load(CALIB)["input"]
_IDS = np.random.default_rng(0).integers(0, DYNAMO_VOCAB, (40, 8))

# name -> (build [model, "--calib", data] in a folder, text the one error line must hold)
FAULTS = {
    "calib_is_onnx_model": (
        lambda d: [_demo(d), "--calib", _demo(d, "other.onnx")],
        "other.onnx' is an ONNX model, not calibration data (.npz/.npy/.csv)",
    ),
    "calib_is_onnx_model_named_npz": (
        lambda d: [_demo(d), "--calib", _write(d, "calib.npz", DEMO.read_bytes())],
        "calib.npz' is an ONNX model, not calibration data (.npz/.npy/.csv)",
    ),
    "calib_is_text_named_npz": (
        lambda d: [_demo(d), "--calib", _write(d, "calib.npz", "1,2,3\n")],
        "as .npz/.npy/.csv: it is none of them",
    ),
    "int64_ids_for_float_model": (
        lambda d: [_demo(d), "--calib", _npz(d, "ids.npz", input=_IDS[:, :6])],
        "'input' is int64, but model input 'input' is float32: integer data (token ids?)",
    ),
    "fractions_for_token_ids": (
        lambda d: [_dynamo(d), "--calib", _npz(d, "f.npz", tokens=_IDS + 0.5)],
        "holds fractions (e.g. 20.5), but model input 'tokens' is int64",
    ),
    "ids_beyond_the_table": (
        lambda d: [_dynamo(d), "--calib", _npz(d, "big.npz", tokens=_IDS + DYNAMO_VOCAB)],
        f"holds ids from 24 to 47, but the table 'embed.weight' that reads them has "
        f"{DYNAMO_VOCAB} rows",
    ),
    "csv_with_text_names_the_cell": (
        lambda d: [
            _demo(d),
            "--calib",
            _write(d, "c.csv", "a,b,c,d,e,f\n1,2,3,4,5,6\n1,2,x,4,5,6\n"),
        ],
        "numeric table (an optional header row aside): row 3, column 3 is 'x', not a number",
    ),
    "csv_with_empty_cell_names_the_cell": (
        lambda d: [_demo(d), "--calib", _write(d, "c.csv", "1,2,3,4,5,6\n1,2,3,4,,6\n")],
        "row 2, column 5 is empty, not a number",
    ),
    "pandas_csv_of_wrong_width": (
        lambda d: [_demo(d), "--calib", write_pandas_csv(d / "in" / "p.csv", _ROWS[:, :5])],
        "has shape (256, 5), but the model expects (N, 6) (its unnamed first column, a "
        "pandas row index, was left out)",
    ),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault(name, tmp_path, capsys):
    build, match = FAULTS[name]
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    argv = [*build(tmp_path), "--no-refine"]
    argv.insert(1, tmp_path / "out" / "small.onnx")
    before = _snapshot(tmp_path)
    capsys.readouterr()

    code = cli.main(argv)

    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert code == 2, captured.err + captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and match in lines[0], lines[0]
    assert _snapshot(tmp_path) == before  # inputs byte-identical, nothing left behind
