"""The data-free pass at the speed of reading and writing the weights (issue 11, part 2).

Saving streams large tensors instead of serializing the model whole, loading parses the
file's pages in place, and the data-free partition and reduction read float32 layers as
they are stored (float64 accumulation, one rounding): these tests pin that the output is
what it was (byte for byte where that was so), and that one wide chain fits the memory
bound. Timings live in tools/time_wide.py, not here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import mlp
from onnx import TensorProto, numpy_helper
from test_large import build_deep_model, measure_pass  # tools/time_wide.py's

import onnx_lump.graph.io.save as saving
import onnx_lump.graph.io.serialize as serialize
from onnx_lump import lump
from onnx_lump.errors import LumpError
from onnx_lump.graph.io.load import load_model
from onnx_lump.graph.io.save import save_model
from onnx_lump.graph.io.tensordata import EXTERNAL_DIR_KEY
from onnx_lump.graph.read.chains import scan_graph
from onnx_lump.graph.write.importer import import_graph
from onnx_lump.ode.encoding import OdeLayer, OdeSystem, encode_chain
from onnx_lump.ode.equivalence import compute_partition
from onnx_lump.ode.partition import PartitionOptions
from onnx_lump.ode.reduction import reduce_system

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def clustered(
    width: int = 96, copies: int = 4, depth: int = 3, seed: int = 0, distinct: int = 0
) -> onnx.ModelProto:
    """float32 Tanh chain whose hidden layers hold clusters of near-identical neurons,
    some negated (as tools/time_wide.py builds, smaller); the last ``distinct`` neurons
    of each are moved apart."""
    rng = np.random.default_rng(seed)
    widths = [16, *[width] * depth, 4]
    layers = []
    for index in range(len(widths) - 1):
        fan_in, fan_out = widths[index], widths[index + 1]
        if index < depth:
            base = rng.standard_normal((fan_out // copies, fan_in + 1)) / np.sqrt(fan_in)
            rows = np.repeat(base, copies, axis=0)
            rows *= np.where(np.arange(fan_out) % 3 == 0, -1.0, 1.0)[:, None]
            rows += 1e-4 * rng.standard_normal(rows.shape) / np.sqrt(fan_in)
            rows[fan_out - distinct :] += rng.standard_normal((distinct, fan_in + 1))
            layers.append((rows[:, :-1], rows[:, -1]))
        else:
            layers.append(
                (
                    rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in),
                    0.1 * rng.standard_normal(fan_out),
                )
            )
    return mlp(layers, ["Tanh"] * depth)


def _inline_fixtures() -> list[Path]:
    found = []
    for path in sorted(FIXTURES.rglob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        if not any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
            found.append(path)
    return found


# -- saving: streamed tensors give the bytes protobuf gives ---------------------------------


@pytest.mark.parametrize("path", _inline_fixtures(), ids=lambda p: p.name)
def test_streamed_save_writes_the_bytes_protobuf_writes(path, tmp_path, monkeypatch):
    monkeypatch.setattr(serialize, "STREAM_MIN", 1)  # every raw tensor is streamed
    model = onnx.load(str(path))
    save_model(model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").read_bytes() == model.SerializeToString()


def test_streamed_save_drops_the_private_key_and_keeps_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(serialize, "STREAM_MIN", 1)
    model = clustered()
    model.doc_string = "kept"
    model.metadata_props.add(key="user", value="kept too")
    expected = model.SerializeToString()
    model.metadata_props.add(key=EXTERNAL_DIR_KEY, value=str(tmp_path))
    save_model(model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").read_bytes() == expected
    assert any(p.key == EXTERNAL_DIR_KEY for p in model.metadata_props)  # input untouched


def test_fields_unknown_to_onnx_survive_the_save(tmp_path, monkeypatch):
    monkeypatch.setattr(serialize, "STREAM_MIN", 1)
    model = clustered()
    tensor = model.graph.initializer[0]
    # field 1000, varint 7: a field a newer onnx might define
    tensor.MergeFromString(bytes([0xC0, 0x3E, 7]))
    save_model(model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").read_bytes() == model.SerializeToString()


def test_a_tensor_whose_bytes_disagree_with_its_dims_is_saved_as_protobuf_would(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(serialize, "STREAM_MIN", 1)
    model = clustered()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    save_model(model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").read_bytes() == model.SerializeToString()


def test_a_graph_past_the_limit_with_small_tensors_goes_external(tmp_path, monkeypatch):
    model = clustered()
    data = sum(len(t.raw_data) for t in model.graph.initializer)
    # the tensors alone fit: only the serialized size can take it past the limit
    # (stage_model and the writer each read it)
    monkeypatch.setattr(saving, "PROTO_LIMIT", data + 1)
    monkeypatch.setattr(serialize, "PROTO_LIMIT", data + 1)
    model.graph.doc_string = "x" * 4096
    save_model(model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.data").is_file()
    written = onnx.load(str(tmp_path / "out.onnx"))
    for a, b in zip(written.graph.initializer, model.graph.initializer, strict=True):
        assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


# -- loading ---------------------------------------------------------------------------


def test_load_model_parses_what_onnx_load_parses(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(clustered(), path)
    assert load_model(path).model.SerializeToString() == onnx.load(str(path)).SerializeToString()


def test_a_truncated_or_empty_file_is_one_clear_error(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(clustered().SerializeToString()[:-100])
    with pytest.raises(LumpError, match="not an ONNX model"):
        load_model(path)
    path.write_bytes(b"")
    with pytest.raises(LumpError, match="not an ONNX model"):
        load_model(path)


def test_a_text_format_model_still_loads(tmp_path):
    path = tmp_path / "m.onnxtxt"
    onnx.save(clustered(width=8, copies=2), path)
    assert len(load_model(path).model.graph.initializer) == 8


# -- the data-free pass in the stored dtype ---------------------------------------------------


def test_data_free_pass_holds_no_float64_copy_of_a_float32_layer():
    graph = import_graph(clustered())
    (chain,) = scan_graph(graph).chains
    system = encode_chain(chain)
    partition = compute_partition(system, PartitionOptions(0.05))
    reduced = reduce_system(system, partition)
    assert partition.widths == [24, 24, 24]
    assert all(layer.values.dtype == np.float32 for layer in system.layers)
    assert all("coefficients" not in vars(layer) for layer in system.layers)  # never made
    # the first layer's rows are averaged into float32; the next ones are aggregated
    # over 24 blocks, a quarter of the columns, where float64 costs less than the layer
    assert reduced[0].weight.dtype == np.float32
    assert all(layer.weight.shape[1] == 24 for layer in reduced[1:])


@pytest.mark.parametrize(
    ("eps", "distinct", "width", "ulps"),
    [(0.0, 0, 96, 0), (0.05, 0, 24, 0), (0.05, 72, 78, 1)],
)
def test_float32_reduction_writes_what_the_float64_one_rounds_to(eps, distinct, width, ulps):
    """The float32 path sums and averages in float64 and rounds once, which is what
    storing the float64 result in the model did. Only after a layer that merged less
    than half its neurons is its aggregation kept in float32, so a merge in the next
    layer rounds twice: at most one unit in the last place."""
    graph = import_graph(clustered(seed=3, distinct=distinct))
    (chain,) = scan_graph(graph).chains
    narrow = encode_chain(chain)
    wide = OdeSystem(
        narrow.name,
        narrow.inputs,
        tuple(
            OdeLayer(layer.variables, layer.values.astype(np.float64), layer.bias, layer.activation)
            for layer in narrow.layers
        ),
        narrow.precision,
    )
    options = PartitionOptions(eps)
    got_partition, want_partition = (compute_partition(s, options) for s in (narrow, wide))
    assert got_partition.widths == want_partition.widths == [width] * 3
    got = reduce_system(narrow, got_partition)
    want = reduce_system(wide, want_partition)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_max_ulp(
            np.asarray(a.weight, np.float32), b.weight.astype(np.float32), maxulp=ulps
        )
        assert np.array_equal(a.bias, b.bias)


def test_an_unmerged_layer_keeps_its_stored_array_and_output_bytes(tmp_path):
    model = clustered()
    path = tmp_path / "in.onnx"
    onnx.save(model, path)
    loaded = load_model(path)
    reduced, report = lump(loaded.model, 0.0, verify=False)
    assert report.widths_after == [[96, 96, 96]]
    save_model(reduced, tmp_path / "out.onnx")
    before = {t.name: t.raw_data for t in model.graph.initializer}
    after = {t.name: t.raw_data for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer}
    assert after == before


# -- memory: one wide chain --------------------------------------------------------------


@pytest.mark.slow
def test_one_chain_of_two_4096_layers_fits_three_layers_plus_300mb(tmp_path):
    """The chain the issue measured at 685 MB against its 492 MB bound: the layers are
    read as stored (float32, memory-mapped), and no float64 copy of either is made."""
    source = tmp_path / "deep.onnx"
    largest = build_deep_model(source, width=4096, chains=1)
    measured = measure_pass(source, tmp_path / "out.onnx")
    assert measured["after"] < measured["before"]  # the planted duplicate merged
    bound = 3 * largest + 300 * 2**20
    assert measured["peak"] < bound, f"peak {measured['peak'] / 2**20:.0f} MB"


def test_float64_coefficients_once_made_replace_the_stored_values():
    """The data path reads float64 coefficients: the layer then holds that copy alone,
    and still knows the stored array it came from (the report of a model on disk maps
    that array instead of writing the copy)."""
    graph = import_graph(clustered())
    (chain,) = scan_graph(graph).chains
    system = encode_chain(chain)
    layer, stored = system.layers[1], chain.layers[1].stored_weight()
    assert layer.values is stored and stored.dtype == np.float32
    coefficients = layer.coefficients
    assert coefficients.dtype == np.float64 and np.array_equal(coefficients, stored)
    assert layer.values is coefficients and layer.made_from(stored)
    assert not system.layers[0].made_from(stored)


def test_the_data_path_report_of_a_model_on_disk_maps_the_stored_weights(tmp_path):
    source = tmp_path / "deep.onnx"
    build_deep_model(source, width=160, chains=1)
    loaded = load_model(source)
    x = np.random.default_rng(0).standard_normal((400, 160)).astype(np.float32)
    _, report = lump(loaded.model, 0.05, calibration={"x": x}, verify=False)
    for layer in report.systems[0].layers:
        assert isinstance(layer.coefficients, np.memmap)  # the input's file, not a copy
        assert layer.coefficients.dtype == np.float32
