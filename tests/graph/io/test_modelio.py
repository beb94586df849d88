"""Files: path collisions refused before any work, atomic saves that do not depend on the
working directory, SIGTERM during a save, external data, and verification on the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import mlp, random_layers
from conftest import FIXTURES
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from onnx_lump import lump
from onnx_lump.cli import main
from onnx_lump.errors import LumpError
from onnx_lump.graph.io.load import load_model
from onnx_lump.graph.io.paths import check_paths
from onnx_lump.graph.io.save import save_model, stage_model
from onnx_lump.graph.io.serialize import INLINE_LIMIT
from onnx_lump.graph.io.tensordata import file_size, stored_parameters
from onnx_lump.pipeline.verify import compare_files

ROOT = Path(__file__).resolve().parents[3]


def planted(widths=(16, 40, 24, 4), seed=11) -> onnx.ModelProto:
    layers = random_layers(list(widths), seed=seed)
    for neuron, of in ((widths[1] - 1, 1), (widths[1] - 2, 2)):
        layers[0][0][neuron], layers[0][1][neuron] = layers[0][0][of], layers[0][1][of]
    return mlp(layers, ["Tanh", "Tanh"])


def save_external(model: onnx.ModelProto, path: Path, location: str | None = None) -> Path:
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        location=location or f"{path.name}.data",
        size_threshold=0,
    )
    return path


def run_path(path: Path, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


X = {"x": np.random.default_rng(0).standard_normal((6, 16)).astype(np.float32)}


# -- path collisions -----------------------------------------------------------------


@pytest.fixture
def external_input(tmp_path) -> Path:
    return save_external(planted(), tmp_path / "in.onnx", location="out.onnx.data")


@pytest.mark.parametrize(
    "args",
    [
        ["{d}/in.onnx", "{d}/out.onnx"],  # OUT.onnx.data is the input's data file
        ["{d}/in.onnx", "{d}/out.onnx.data"],  # OUT is the input's data file
        ["{d}/in.onnx", "{d}/other.onnx", "--dump-ode", "{d}/out.onnx.data"],
        ["{d}/in.onnx", "{d}/other.onnx", "--report-json", "{d}/out.onnx.data"],
        ["{d}/in.onnx", "{d}/other.onnx", "--report-json", "{d}/in.onnx"],
        ["{d}/in.onnx", "{d}/calib.npz", "--calib", "{d}/calib.npz"],
        [
            "{d}/in.onnx",
            "{d}/other.onnx",
            "--calib",
            "{d}/calib.npz",
            "--dump-ode",
            "{d}/calib.npz",
        ],
        [
            "{d}/in.onnx",
            "{d}/other.onnx",
            "--val",
            "{d}/calib.npz",
            "--report-json",
            "{d}/calib.npz",
        ],
        ["{d}/in.onnx", "{d}/other.onnx", "--dump-ode", "{d}/side", "--report-json", "{d}/side"],
        ["{d}/in.onnx", "{d}/other.onnx", "--report-json", "{d}/other.onnx.data"],
        ["{d}/in.onnx", "{d}/link.onnx"],  # a symlink to the input
        ["{d}/in.onnx", "{d}/hard.data"],  # a hard link to the input's data file
    ],
)
def test_outputs_that_collide_with_inputs_are_refused_before_any_work(external_input, args, capsys):
    folder = external_input.parent
    np.savez(folder / "calib.npz", x=X["x"])
    (folder / "link.onnx").symlink_to(external_input)
    os.link(folder / "out.onnx.data", folder / "hard.data")
    before = snapshot(folder)
    code = main([a.format(d=folder) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "same file" in err[0]
    assert snapshot(folder) == before
    (folder / "hard.data").unlink()  # onnx refuses data files with several hard links
    assert run_path(external_input, X)[0].shape == (6, 4)


def test_check_paths_accepts_distinct_files(tmp_path):
    source = save_external(planted(), tmp_path / "in.onnx")
    check_paths(
        [source, None],
        [tmp_path / "out.onnx", tmp_path / "r.json", None],
        models=[tmp_path / "out.onnx"],
    )
    with pytest.raises(LumpError, match="same file"):
        check_paths([source], [tmp_path / "in.onnx.data"])


# -- saving --------------------------------------------------------------------------


def test_save_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    elsewhere, here = tmp_path / "elsewhere", tmp_path / "cwd"
    elsewhere.mkdir()
    here.mkdir()
    (here / "x.onnx.data").write_bytes(b"unrelated")  # used to block writes elsewhere
    monkeypatch.chdir(here)
    model = planted((64, 80, 48, 4))
    source = save_external(model, tmp_path / "in.onnx")
    loaded = load_model(source)
    reduced, _ = lump(loaded.model, 0.0, verify=False)
    for _ in range(2):  # a second identical run used to fail
        save_model(reduced, elsewhere / "x.onnx", external_data=True)
        assert (here / "x.onnx.data").read_bytes() == b"unrelated"
        out = run_path(elsewhere / "x.onnx", {"x": X["x"].repeat(4, axis=1)})[0]
        ref = run_path(source, {"x": X["x"].repeat(4, axis=1)})[0]
        np.testing.assert_allclose(out, ref, atol=1e-5)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["x.onnx", "x.onnx.data"]


def test_small_tensors_stay_inline_and_large_ones_go_external(tmp_path):
    model = planted((64, 80, 48, 4))
    source = save_external(model, tmp_path / "in.onnx")  # every tensor external, even biases
    reduced, _ = lump(load_model(source).model, 0.0, verify=False)
    save_model(reduced, tmp_path / "out.onnx", external_data=True)
    raw = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    for tensor in raw.graph.initializer:
        size = int(np.prod(tensor.dims)) * 4
        assert uses_external_data(tensor) == (size >= INLINE_LIMIT), tensor.name
    onnx.checker.check_model(str(tmp_path / "out.onnx"))


def test_inline_input_gives_inline_output_and_external_input_external(tmp_path):
    model = planted((64, 80, 48, 4))
    onnx.save(model, tmp_path / "plain.onnx")
    loaded = load_model(tmp_path / "plain.onnx")
    assert not loaded.external_data
    save_model(loaded.model, tmp_path / "a.onnx", external_data=loaded.external_data)
    assert not (tmp_path / "a.onnx.data").exists()
    loaded = load_model(save_external(model, tmp_path / "ext.onnx"))
    assert loaded.external_data
    save_model(loaded.model, tmp_path / "b.onnx", external_data=loaded.external_data)
    assert (tmp_path / "b.onnx.data").is_file()
    a, b = (
        run_path(tmp_path / "a.onnx", {"x": X["x"].repeat(4, 1)}),
        run_path(tmp_path / "b.onnx", {"x": X["x"].repeat(4, 1)}),
    )
    np.testing.assert_array_equal(a[0], b[0])


def test_output_over_the_protobuf_limit_goes_external(tmp_path, monkeypatch):
    import onnx_lump.graph.io.save as saving
    import onnx_lump.graph.io.serialize as serialize

    # a "2 GB" model without 2 GB; stage_model and the writer each read the limit
    monkeypatch.setattr(saving, "PROTO_LIMIT", 10_000)
    monkeypatch.setattr(serialize, "PROTO_LIMIT", 10_000)
    model = planted((64, 80, 48, 4))
    save_model(model, tmp_path / "big.onnx", external_data=False)
    assert (tmp_path / "big.onnx.data").is_file()


def test_a_failed_stage_leaves_nothing_and_keeps_the_old_output(tmp_path):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")
    with stage_model(planted(), target) as staged:
        assert staged.path.is_file() and staged.path.parent != tmp_path
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


_SLOW_SAVE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np, onnx
    from onnx import helper, numpy_helper, TensorProto
    import onnx_lump.graph.io.save as saving
    import onnx_lump.graph.io.serialize as serialize

    folder = Path(sys.argv[1])
    tensors = [numpy_helper.from_array(np.full((1024, 1024 * 8), i, np.float32), f"W{i}")
               for i in range(4)]  # 4 x 32 MB
    nodes = [helper.make_node("Add", ["x", f"W{i}"], [f"y{i}"]) for i in range(4)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 8192])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1024, 8192])
         for i in range(4)], tensors)
    model = helper.make_model(graph)
    original = serialize.externalize_from
    count = [0]
    def slow(*args):
        original(*args)
        count[0] += 1
        if count[0] == 2:  # half-way: tell the parent, then wait for its signal
            (folder / "halfway").write_text("1")
            time.sleep(30)
    serialize.externalize_from = slow  # looked up where write_model lives
    saving.save_model(model, folder / "out.onnx", external_data=True)
    """
)


def test_sigterm_during_save_leaves_no_staging_folder(tmp_path):
    (tmp_path / "out.onnx").write_bytes(b"old model")
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        for _ in range(600):
            if (tmp_path / "halfway").exists() or child.poll() is not None:
                break
            import time

            time.sleep(0.05)
        assert (tmp_path / "halfway").exists(), "the child never reached the save"
        child.send_signal(signal.SIGTERM)
        code = child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert code == -signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["halfway", "out.onnx"]
    assert (tmp_path / "out.onnx").read_bytes() == b"old model"


# -- verification on the file ---------------------------------------------------------


def dynamo_like() -> onnx.ModelProto:
    """A chain followed by Reshape with its tiny int64 shape tensor, the way a PyTorch
    dynamo export stores one; the weights are big enough to be external."""
    layers = random_layers([64, 96, 64, 32], seed=4)
    layers[0][0][95], layers[0][1][95] = layers[0][0][3], layers[0][1][3]
    model = mlp(layers, ["Relu", "Relu"])
    shape = numpy_helper.from_array(np.array([-1, 4, 8], np.int64), "shape")
    model.graph.initializer.append(shape)
    last = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Reshape", [last, "shape"], ["y"], name="reshape"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8]))
    return model


def save_like_dynamo(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    return path


def test_dynamo_like_model_comes_out_loadable_and_is_verified_on_the_file(tmp_path, capsys):
    source = save_like_dynamo(dynamo_like(), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    code = main([str(source), str(out), "--atol", "1e-4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    raw = onnx.load(str(out), load_external_data=False)
    shape = next(t for t in raw.graph.initializer if t.name == "shape")
    assert not uses_external_data(shape)
    feeds = {"x": np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)}
    np.testing.assert_allclose(run_path(out, feeds)[0], run_path(source, feeds)[0], atol=1e-4)
    result = compare_files(source, out, feeds, ["CPUExecutionProvider"], atol=1e-4)
    assert result and result.n_samples == 5


def test_tiny_external_tensors_of_the_input_come_out_inline(tmp_path):
    source = save_external(dynamo_like(), tmp_path / "in.onnx")  # even the shape: external
    with pytest.raises(Exception, match="external"):
        run_path(source, {"x": np.zeros((1, 64), np.float32)})  # onnxruntime refuses it
    save_model(load_model(source).model, tmp_path / "out.onnx", external_data=True)
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)}
    expected = onnx.load(str(source))  # all data in memory: the reference
    session = ort.InferenceSession(expected.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        run_path(tmp_path / "out.onnx", feeds)[0], session.run(None, feeds)[0]
    )


def test_verification_failure_writes_nothing(tmp_path, capsys):
    source = save_like_dynamo(dynamo_like(), tmp_path / "in.onnx")
    before = snapshot(tmp_path)
    code = main([str(source), str(tmp_path / "out.onnx"), "--eps", "5", "--atol", "1e-9"])
    assert code == 1
    assert "nothing written" in capsys.readouterr().out
    assert snapshot(tmp_path) == before


def test_compare_files_runs_the_file_not_bytes(tmp_path):
    source = save_external(planted(), tmp_path / "in.onnx")
    result = compare_files(load_model(source).model, source, X, ["CPUExecutionProvider"])
    assert result.max_abs == 0.0
    (tmp_path / "in.onnx.data").write_bytes(b"\0" * (tmp_path / "in.onnx.data").stat().st_size)
    result = compare_files(planted(), source, X, ["CPUExecutionProvider"], atol=1e-6)
    assert not result  # the file's zeroed weights are what was measured


# -- what is stored ------------------------------------------------------------------


def test_stored_parameters_count_the_lumped_copies(tmp_path):
    model = onnx.load(FIXTURES / "shared_initializer.onnx")
    reduced, report = lump(model, 0.0, verify=False)
    stored = sum(int(np.prod(t.dims)) for t in reduced.graph.initializer)
    assert stored_parameters(reduced) == stored
    # the chains shrink, but each gets its own copy of the shared W0: the file grows
    assert report.params_after < report.params_before
    assert stored_parameters(reduced) > stored_parameters(model)
    assert stored_parameters(model) == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    onnx.save(reduced, tmp_path / "r.onnx")
    assert file_size(tmp_path / "r.onnx") == (tmp_path / "r.onnx").stat().st_size


def test_stored_parameters_include_constant_nodes_and_never_read_data(tmp_path):
    model = onnx.load(FIXTURES / "constant_nodes.onnx")
    expected = 0
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and attr.t.data_type == TensorProto.FLOAT:
                expected += int(np.prod(attr.t.dims))
    expected += sum(
        int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT
    )
    assert stored_parameters(model) == expected > 0
    source = save_external(planted(), tmp_path / "e.onnx")
    lazy = load_model(source).model
    assert stored_parameters(lazy) == stored_parameters(planted())
    assert file_size(source) == source.stat().st_size + (tmp_path / "e.onnx.data").stat().st_size


def test_missing_external_data_is_one_clear_error(tmp_path):
    source = save_external(planted(), tmp_path / "in.onnx")
    (tmp_path / "in.onnx.data").unlink()
    with pytest.raises(LumpError, match="missing"):
        load_model(source)
