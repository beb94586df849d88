"""eps = 0 stays exact on a wide model after the speed work (one aggregation a layer,
rows formed on demand): planted duplicates merge, everything else is kept bit for bit,
and onnxruntime computes the same outputs. No timings here (they live in tools/)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from builders import mlp
from onnx import numpy_helper

from onnx_lump import lump
from onnx_lump.graph.read.chains import scan_graph
from onnx_lump.ode.encoding import Lumping, aggregate, encode_chain
from onnx_lump.ode.equivalence import compute_partition
from onnx_lump.ode.partition import Partition, PartitionOptions, Similarity
from onnx_lump.ode.reduction import reduce_system

WIDTH = 4096
N_IN, N_OUT = 32, 8
N_COPIES = 512  # planted duplicates in the second hidden layer


def wide_model() -> tuple[onnx.ModelProto, int]:
    """x -> Gemm(4096) -> Relu -> Gemm(4096) -> Tanh -> Gemm(8), float32.

    The first hidden layer has no redundancy; the second has N_COPIES rows that repeat
    earlier rows, half of them negated (tanh(-z) = -tanh(z)), so exactly
    WIDTH - N_COPIES of its neurons are distinct."""
    rng = np.random.default_rng(7)
    w0 = rng.standard_normal((WIDTH, N_IN)) / np.sqrt(N_IN)
    b0 = 0.1 * rng.standard_normal(WIDTH)
    distinct = WIDTH - N_COPIES
    w1 = rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)
    b1 = 0.1 * rng.standard_normal(WIDTH)
    source = rng.choice(distinct, N_COPIES, replace=False)
    sign = np.where(np.arange(N_COPIES) % 2 == 0, 1.0, -1.0)
    w1[distinct:] = sign[:, None] * w1[source]
    b1[distinct:] = sign * b1[source]
    order = rng.permutation(WIDTH)  # copies spread among the originals
    w1, b1 = w1[order], b1[order]
    w2 = rng.standard_normal((N_OUT, WIDTH)) / np.sqrt(WIDTH)
    b2 = np.zeros(N_OUT)
    return mlp([(w0, b0), (w1, b1), (w2, b2)], ["Relu", "Tanh"]), distinct


@pytest.fixture(scope="module")
def built():
    return wide_model()


@pytest.fixture(scope="module")
def wide(built):
    model, distinct = built
    reduced, report = lump(model, 0.0, verify=False)
    return model, distinct, reduced, report


@pytest.fixture(scope="module")
def system(built):
    return encode_chain(scan_graph(gs.import_onnx(built[0])).chains[0])


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_planted_duplicates_merge_and_nothing_else(wide):
    _, distinct, _, report = wide
    assert [s.width_after for s in report.layers] == [WIDTH, distinct, N_OUT]


def test_onnxruntime_outputs_agree(wide):
    model, _, reduced, _ = wide
    x = np.random.default_rng(3).standard_normal((64, N_IN)).astype(np.float32)
    expected, got = _run(model, x), _run(reduced, x)
    assert np.max(np.abs(got - expected)) <= 1e-5 * max(1.0, float(np.max(np.abs(expected))))


def test_untouched_layer_and_kept_rows_are_bit_identical(wide):
    model, _, reduced, _ = wide
    before, after = _initializers(model), _initializers(reduced)
    for name in ("W0", "b0"):  # no merge in or before this layer: the same bytes
        assert after[name].dtype == before[name].dtype
        assert after[name].tobytes() == before[name].tobytes()
    # Every kept neuron of the merged layer is one of its original neurons, unchanged.
    original_rows = {row.tobytes() for row in np.column_stack([before["W1"], before["b1"]])}
    kept = np.column_stack([after["W1"], after["b1"]])
    assert all(row.tobytes() in original_rows for row in kept)


def test_shared_aggregation_matches_the_reduction_from_scratch(system):
    partition = compute_partition(system, PartitionOptions(0.0))
    shared = reduce_system(system, partition)
    fresh = reduce_system(system, Partition(partition.options, partition.lumpings))
    for a, b in zip(shared, fresh, strict=True):
        np.testing.assert_allclose(a.weight, b.weight, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(a.bias, b.bias, rtol=1e-12, atol=1e-15)


def test_identity_aggregation_does_not_copy_the_layer(system):
    layer = system.layers[1]
    coefficients, bias = aggregate(layer, Lumping.identity(layer.coefficients.shape[1]))
    assert np.shares_memory(coefficients, layer.coefficients)
    assert not coefficients.flags.writeable  # the system's weights cannot be changed through it
    np.testing.assert_array_equal(bias, layer.bias)


def test_row_chunked_data_helpers_match_whole_arrays(system, monkeypatch):
    import onnx_lump.data.compensation as compensation
    import onnx_lump.data.reference as reference
    from onnx_lump.data.calibration import forward_chain
    from onnx_lump.methods.base import ChainProblem
    from onnx_lump.types import ReducedLayer

    monkeypatch.setattr(compensation, "ROW_CHUNK_ENTRIES", 1 << 14)  # several chunks
    monkeypatch.setattr(reference, "ROW_CHUNK_ENTRIES", 1 << 14)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, N_IN))
    weights = [(layer.coefficients, layer.bias) for layer in system.layers]
    values = forward_chain(weights, system, x)
    problem = ChainProblem(system, x)
    stored = reference.ReferenceRows(problem, x)
    monkeypatch.setattr(reference, "STORED_TARGET_BYTES", 0)  # recomputed a layer at a time
    recomputed = reference.ReferenceRows(problem, x)
    monkeypatch.setattr(reference, "STORED_TARGET_BYTES", 1 << 30)
    # the fitting rows: float32 targets now, the float64 output on first use
    lazy = reference.ReferenceRows(problem, x, output_first=False)
    assert lazy._output is None
    np.testing.assert_array_equal(stored.output, recomputed.output)
    np.testing.assert_array_equal(lazy.output, stored.output)
    np.testing.assert_allclose(stored.output, values[-1], rtol=1e-12, atol=1e-12)
    pairs = zip(stored.targets(), recomputed.targets(), lazy.targets(), strict=True)
    for index, (kept, again, fast) in enumerate(pairs, start=1):
        w, b = weights[index]
        expected = values[index] @ w.T + b
        assert kept.dtype == again.dtype == fast.dtype == np.float32
        np.testing.assert_allclose(kept, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fast, expected, rtol=1e-5, atol=1e-5)
    target = stored._stored[0][:, :40].astype(np.float64)
    inputs = values[1] + 5.0  # offset: centring must not cancel
    mean_x, mean_t, gram, cross = compensation.centred_moments(inputs, target)
    centred = inputs - inputs.mean(axis=0)
    np.testing.assert_allclose(mean_x, inputs.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(mean_t, target.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gram, centred.T @ centred, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(cross, centred.T @ (target - target.mean(axis=0)), atol=1e-8)
    layer = ReducedLayer(rng.standard_normal((40, WIDTH)) / 64, np.zeros(40))
    expected = float(np.mean((inputs @ layer.weight.T - target) ** 2))
    assert compensation.residual(layer, inputs, target) == pytest.approx(expected, rel=1e-10)


def test_data_similarity_in_sample_chunks_matches_one_chunk(monkeypatch):
    import onnx_lump.ode.data_similarity as data_similarity
    import onnx_lump.ode.equivalence as equivalence
    from onnx_lump.activations import Activation, ActivationKind

    rng = np.random.default_rng(11)
    base = rng.standard_normal((40, 12))
    weight = np.repeat(base, 3, axis=0) + 1e-3 * rng.standard_normal((120, 12))
    bias = 0.1 * rng.standard_normal(120)
    weight[5] = 0.0  # a constant neuron
    weight[7], bias[7] = 1e-2, 6.0  # saturated on the data: removed at its mean there
    x = rng.standard_normal((500, 12))
    # weights similarity: the data statistics (constant neurons, their values) are then
    # read in chunks of samples (data similarity forms them from one array)
    options = PartitionOptions(0.2, similarity=Similarity.WEIGHTS)
    tanh = Activation(ActivationKind.TANH)
    whole = equivalence.backward_lumping(weight, bias, tanh, options, 1e-7, x)
    monkeypatch.setattr(data_similarity, "SAMPLE_CHUNK_ENTRIES", 1000)  # 8 samples a chunk
    chunked = equivalence.backward_lumping(weight, bias, tanh, options, 1e-7, x)
    np.testing.assert_array_equal(whole.block, chunked.block)
    np.testing.assert_allclose(whole.offset, chunked.offset, rtol=1e-9, atol=1e-12)
    assert whole.n_blocks < 60 and set(np.flatnonzero(whole.block < 0)) == {5, 7}


def test_the_fitting_rows_pass_reads_float32_weights_as_stored(built):
    """The fitting rows' float32 pass takes a float32 model's stored weights as they are:
    no float64 copy of the layers is made (the hint and that pass are the first to read
    them), and the targets are those of the float64 copy rounded back, bit for bit."""
    import onnx_lump.data.reference as reference
    from onnx_lump.methods.base import ChainProblem

    fresh = encode_chain(scan_graph(gs.import_onnx(built[0])).chains[0])
    x = np.random.default_rng(3).standard_normal((64, N_IN)).astype(np.float32)
    rows = reference.ReferenceRows(ChainProblem(fresh, x), x, output_first=False)
    assert all(layer.values.dtype == np.float32 for layer in fresh.layers)
    converted = encode_chain(scan_graph(gs.import_onnx(built[0])).chains[0])
    for layer in converted.layers:
        assert layer.coefficients.dtype == np.float64  # converted before the pass
    again = reference.ReferenceRows(ChainProblem(converted, x), x, output_first=False)
    for fast, slow in zip(rows.targets(), again.targets(), strict=True):
        np.testing.assert_array_equal(fast, slow)
