"""Models of any size: a model over 2 GB through the CLI, and the memory of the data-free
pass on a model with external data, read from a child process's peak RSS."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from tools.time_wide import (  # the tool measures the same
    build_deep_model,
    build_wide_chain,
    measure_pass,
)

ROOT = Path(__file__).resolve().parents[2]

BIG_ROWS = 69_000_000  # x 8 float32 = 2.2 GB: past protobuf's 2 GiB limit
BIG_BYTES = BIG_ROWS * 8 * 4


def _external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


def build_big_model(folder: Path) -> tuple[Path, np.ndarray]:
    """x -> Gemm(64->256, 6 planted duplicates) -> Relu -> Gemm(256->8) -> + Slice(T)[0],
    T a 2.2 GB float32 initializer. The data file is written sparsely: only T's first
    row and the chain's weights hold data, so the test needs no 2.2 GB of writes to
    build it (the pass, onnxruntime and the checker still see a 2.2 GB model)."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((256, 64)).astype(np.float32) / 8
    b0 = rng.standard_normal(256).astype(np.float32) / 10
    for neuron in range(250, 256):
        w0[neuron], b0[neuron] = w0[neuron - 250], b0[neuron - 250]
    w1 = rng.standard_normal((8, 256)).astype(np.float32) / 16
    first_row = rng.standard_normal((1, 8)).astype(np.float32)
    data_name = "big.onnx.data"
    inits = []
    with open(folder / data_name, "wb") as data:
        data.write(first_row.tobytes())
        data.truncate(BIG_BYTES)  # the rest of T: a hole, read as zeros
        data.seek(BIG_BYTES)
        table = TensorProto(name="T", data_type=TensorProto.FLOAT, dims=[BIG_ROWS, 8])
        _external(table, data_name, 0, BIG_BYTES)
        inits.append(table)
        for name, value in (("W0", w0), ("b0", b0), ("W1", w1)):
            offset = data.tell() + (-data.tell()) % 4096
            data.seek(offset)
            data.write(value.tobytes())
            tensor = numpy_helper.from_array(value, name)
            tensor.ClearField("raw_data")
            _external(tensor, data_name, offset, value.nbytes)
            inits.append(tensor)
    for name, value in (("starts", [0]), ("ends", [1]), ("axes", [0])):
        inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
    nodes = [
        helper.make_node("Gemm", ["x", "W0", "b0"], ["h0"], name="gemm0", transB=1),
        helper.make_node("Relu", ["h0"], ["a0"], name="relu0"),
        helper.make_node("Gemm", ["a0", "W1"], ["h1"], name="gemm1", transB=1),
        helper.make_node("Slice", ["T", "starts", "ends", "axes"], ["row"], name="slice"),
        helper.make_node("Add", ["h1", "row"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "big.onnx"
    path.write_bytes(model.SerializeToString())
    return path, first_row


def _run(path: Path, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, feeds)
    del session
    return out


@pytest.mark.slow
def test_model_over_2gb_round_trips_through_the_cli(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    if free < 3 * BIG_BYTES:
        pytest.skip(f"needs {3 * BIG_BYTES / 1e9:.1f} GB free in {tmp_path}, has {free / 1e9:.1f}")
    source, first_row = build_big_model(tmp_path)
    out = tmp_path / "small.onnx"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnx_lump",
            str(source),
            str(out),
            "--atol",
            "1e-4",
            "--check",
            "8",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "256->250" in result.stdout
    raw = onnx.load(str(out), load_external_data=False)
    onnx.checker.check_model(str(out))  # by path: the only way past 2 GiB
    by_name = {t.name: t for t in raw.graph.initializer}
    assert uses_external_data(by_name["T"]) and list(by_name["W0"].dims) == [250, 64]
    assert not uses_external_data(by_name["starts"])  # tiny tensors stay inline
    assert (tmp_path / "small.onnx.data").stat().st_size >= BIG_BYTES
    feeds = {"x": np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)}
    np.testing.assert_allclose(_run(out, feeds), _run(source, feeds), atol=1e-4)
    info = {e.key: e.value for e in by_name["T"].external_data}
    with open(tmp_path / info["location"], "rb") as data:  # the 2.2 GB tensor, copied whole
        data.seek(int(info["offset"]))
        assert data.read(32) == first_row.tobytes()
        data.seek(int(info["offset"]) + BIG_BYTES - 32)
        assert data.read(32) == bytes(32)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["big.onnx", "big.onnx.data", "small.onnx", "small.onnx.data"]


def test_data_free_pass_memory_is_bounded_by_the_largest_layer(tmp_path):
    source = tmp_path / "deep.onnx"
    largest = build_deep_model(source, width=1024, chains=24)  # 4 MB layers, 200 MB model
    model_bytes = (tmp_path / "deep.onnx.data").stat().st_size
    measured = measure_pass(source, tmp_path / "out.onnx")
    assert measured["after"] < measured["before"]  # the planted duplicates merged
    bound = 3 * largest + 300 * 2**20
    assert measured["peak"] < bound, (
        f"peak RSS {measured['peak'] / 2**20:.0f} MB for a {model_bytes / 2**20:.0f} MB model; "
        f"bound {bound / 2**20:.0f} MB (3 x {largest / 2**20:.0f} MB layer + 300 MB)"
    )


def test_data_free_pass_memory_on_a_wide_chain_is_bounded_by_three_layers(tmp_path):
    """One chain of four 8192-wide layers (256 MB each, 1 GB with external data) at eps
    0.05, which merges every hidden layer 8 to 1: the chain is read a layer at a time
    (its maps hand their pages back), not held whole, and no float64 copy of a layer
    outlives its step."""
    source = tmp_path / "wide.onnx"
    largest = build_wide_chain(source, width=8192, depth=4)
    measured = measure_pass(source, tmp_path / "out.onnx", eps=0.05)
    assert measured["after"] < measured["before"] / 4  # the clusters merged
    bound = 3 * largest + 300 * 2**20
    assert measured["peak"] < bound, (
        f"peak RSS {measured['peak'] / 2**20:.0f} MB for four {largest / 2**20:.0f} MB layers; "
        f"bound {bound / 2**20:.0f} MB (3 x layer + 300 MB)"
    )


# -- the disk-backed pass gives what the in-memory pass gives ------------------------------

FIXTURES = ROOT / "tests" / "fixtures"
_SPILL_FIXTURES = [
    "gemm_alpha_beta.onnx",
    "constant_nodes.onnx",
    "identity_transpose.onnx",
    "shared_initializer.onnx",
    "matmul_nobias.onnx",
    "fp16.onnx",
    "fp64.onnx",
    "torch_matmul3d_tanh.onnx",
    "patterns/torchscript_batchnorm.onnx",
    "patterns/onnxsim_reshape_gemm.onnx",
]


def _external_copy(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save_model moves the data of what it saves out of the proto
    onnx.save_model(
        copy,
        str(path),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
        convert_attribute=True,  # Constant nodes' tensors too
    )
    return path


def _initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))  # external data read relative to the file
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                arrays[f"{node.name}/{attr.name}"] = numpy_helper.to_array(attr.t)
    return arrays


def _same_report(disk, memory) -> None:
    assert [vars(s) for s in disk.layers] == [vars(s) for s in memory.layers]
    assert disk.weight_ranges == memory.weight_ranges
    assert disk.widths_after == memory.widths_after
    for kept, held in zip(disk.results, memory.results, strict=True):
        for a, b in zip(kept.layers, held.layers, strict=True):
            assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    for kept, held in zip(disk.systems, memory.systems, strict=True):
        for a, b in zip(kept.layers, held.layers, strict=True):
            assert np.array_equal(np.asarray(a.coefficients, np.float64), b.coefficients)


@pytest.mark.parametrize("name", _SPILL_FIXTURES)
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_a_model_on_disk_is_compressed_bit_for_bit_like_one_in_memory(
    tmp_path, monkeypatch, name, eps
):
    from onnx_lump import lump
    from onnx_lump.graph.io.load import load_model
    from onnx_lump.graph.io.save import save_model
    from onnx_lump.graph.io.tensordata import all_tensors, is_spilled
    from onnx_lump.graph.weightstats import weight_ranges
    from onnx_lump.graph.write import spill

    # Spill every tensor, park every array: the fixtures' tensors are below the thresholds.
    monkeypatch.setattr(spill, "INLINE_LIMIT", 0)
    monkeypatch.setattr(spill, "MIN_MAPPED", 0)

    original = onnx.load(str(FIXTURES / name))
    loaded = load_model(_external_copy(original, tmp_path / "in"))
    assert loaded.external_data
    on_disk, disk_report = lump(loaded.model, eps, verify=False)
    in_memory, memory_report = lump(original, eps, verify=False)
    _same_report(disk_report, memory_report)
    if memory_report.weight_ranges:  # the rewrite wrote tensors: they went to the spill file
        assert any(is_spilled(t) for t in all_tensors(on_disk))
    if memory_report.weight_ranges:  # per chain, as a rescan of both models finds them
        assert memory_report.weight_ranges == weight_ranges(original, in_memory)
    save_model(on_disk, tmp_path / "disk.onnx", external_data=True)
    save_model(in_memory, tmp_path / "memory.onnx", external_data=True)
    disk_arrays, memory_arrays = (
        _initializers(tmp_path / "disk.onnx"),
        _initializers(tmp_path / "memory.onnx"),
    )
    assert disk_arrays.keys() == memory_arrays.keys()
    for key, value in memory_arrays.items():
        assert disk_arrays[key].dtype == value.dtype
        assert np.array_equal(disk_arrays[key], value, equal_nan=True), key


def test_the_report_of_a_model_on_disk_holds_its_arrays_on_disk(tmp_path):
    """Results and ODE coefficients are maps of files, the output's new tensors live in the
    spill file; the model still verifies (onnxruntime on a staged file), and the results
    warm-start another call to the same model."""
    from onnx_lump import compress
    from onnx_lump.graph.io.load import load_model
    from onnx_lump.graph.io.tensordata import is_spilled
    from onnx_lump.methods import Exact
    from onnx_lump.runtime import run_model

    source = tmp_path / "deep.onnx"
    build_deep_model(source, width=160, chains=3)  # 100 kB layers: spilled and mapped
    loaded = load_model(source)
    reduced, report = compress(loaded.model, Exact(), verify=True, atol=1e-5)
    assert report.verification, report.summary()
    assert report.params_after < report.params_before
    assert all(isinstance(r.layers[0].weight, np.memmap) for r in report.results)
    assert all(isinstance(s.layers[0].coefficients, np.memmap) for s in report.systems)
    assert any(is_spilled(t) for t in reduced.graph.initializer)
    feeds = {"x": np.random.default_rng(2).standard_normal((8, 160)).astype(np.float32)}
    memory, _ = compress(onnx.load(str(source)), Exact(), verify=False)
    (got,) = run_model(reduced, feeds, ["CPUExecutionProvider"]).values()
    (want,) = run_model(memory, feeds, ["CPUExecutionProvider"]).values()
    assert np.array_equal(got, want)
    again, _ = compress(loaded.model, Exact(), warm_start=report.results, verify=False)
    (warm,) = run_model(again, feeds, ["CPUExecutionProvider"]).values()
    assert np.array_equal(warm, want)


def test_a_model_on_disk_is_fitted_and_measured_like_one_in_memory(tmp_path):
    """The data path on a model on disk: the chain inputs, the refit, the refinement and
    the held-out error (onnxruntime on the staged spilled model) match the in-memory run."""
    from onnx_lump import lump
    from onnx_lump.data.refine import RefineOptions
    from onnx_lump.graph.io.load import load_model

    source = tmp_path / "deep.onnx"
    build_deep_model(source, width=96, chains=2)  # 72 kB float64 layers: parked
    calibration = {"x": np.random.default_rng(3).standard_normal((200, 96)).astype(np.float32)}
    options = dict(calibration=calibration, refine=RefineOptions(max_iters=5), verify=False)
    _, disk = lump(load_model(source).model, 0.5, **options)
    _, memory = lump(onnx.load(str(source)), 0.5, **options)
    assert disk.params_after == memory.params_after < disk.params_before
    assert disk.holdout_error == memory.holdout_error
    _same_report(disk, memory)
