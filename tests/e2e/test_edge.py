"""Edge deployment: the reduced model through onnxruntime's dynamic int8 quantization and
its ORT format, and the weight ranges that decide how well it quantizes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import mlp, random_layers
from conftest import run_ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from onnx_lump import lump
from onnx_lump.graph.weightstats import WeightRange, weight_range_warnings, weight_ranges

WIDTHS = (16, 64, 64, 4)


def planted_model(seed: int = 3, copies: int = 16) -> onnx.ModelProto:
    """A Relu MLP 16 -> 64 -> 64 -> 4 in which ``copies`` neurons of each hidden layer
    repeat another neuron of that layer."""
    rng = np.random.default_rng(seed)
    layers = random_layers(list(WIDTHS), seed=seed)
    for weight, bias in layers[:-1]:
        targets = rng.choice(weight.shape[0], copies, replace=False)
        for neuron in targets:
            of = int(rng.integers(weight.shape[0]))
            weight[neuron], bias[neuron] = weight[of], bias[of]
    return mlp(layers, ["Relu", "Relu"])


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((512, WIDTHS[0])).astype(np.float32)}


def quantized(model: onnx.ModelProto, folder, name: str) -> onnx.ModelProto:
    source, target = folder / f"{name}.onnx", folder / f"{name}.int8.onnx"
    onnx.save_model(model, source)
    quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    result = onnx.load(str(target))
    assert "MatMulInteger" in {n.op_type for n in result.graph.node}  # really quantized
    return result


def error(model: onnx.ModelProto, reference: np.ndarray, feeds) -> float:
    """Output RMSE relative to the spread of the float original's outputs."""
    output = run_ort(model, feeds)[0].astype(np.float64)
    return float(np.sqrt(np.mean((output - reference) ** 2)) / reference.std())


@pytest.mark.parametrize(
    ("eps", "with_data", "loss_bound"),
    [(0.0, False, 1e-6), (0.8, True, 0.3)],
    ids=["exact", "data-aware"],
)
def test_quantized_reduced_model_errs_like_the_quantized_original(
    eps, with_data, loss_bound, data, tmp_path
):
    original = planted_model()
    reference = run_ort(original, data)[0].astype(np.float64)
    reduced, report = lump(
        original, eps, calibration=data if with_data else None, reduction="partition"
    )
    assert report.retained < 0.7
    float_error = error(reduced, reference, data)
    assert float_error < loss_bound
    quant_original = error(quantized(original, tmp_path, "original"), reference, data)
    quant_reduced = error(quantized(reduced, tmp_path, "reduced"), reference, data)
    assert 0 < quant_original < 0.05  # int8 costs something, but not much
    # quantizing the reduced model adds about what quantizing the original costs
    assert quant_reduced <= float_error + 1.5 * quant_original
    assert quant_reduced >= float_error - quant_original


def test_reduced_and_quantized_models_run_in_ort_format(data, tmp_path):
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    original = planted_model()
    reduced, _ = lump(original, 0.0)
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save_model(reduced, folder / "reduced.onnx")
    onnx.save_model(quantized(reduced, tmp_path, "reduced"), folder / "reduced_int8.onnx")
    convert_onnx_models_to_ort(
        folder, output_dir=tmp_path / "ort", optimization_styles=[OptimizationStyle.Fixed]
    )
    for name in ("reduced", "reduced_int8"):
        ort_file = tmp_path / "ort" / f"{name}.ort"
        assert ort_file.is_file()
        session = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"])
        got = session.run(None, data)[0]
        want = run_ort(onnx.load(str(folder / f"{name}.onnx")), data)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    float_ort = ort.InferenceSession(str(tmp_path / "ort" / "reduced.ort"))
    np.testing.assert_allclose(
        float_ort.run(None, data)[0], run_ort(original, data)[0], rtol=1e-4, atol=1e-5
    )


def test_weight_ranges_before_and_after(data):
    original = planted_model()
    exact, _ = lump(original, 0.0)
    ranges = weight_ranges(original, exact)
    assert [r.layer for r in ranges] == ["gemm0", "gemm1", "gemm2"]
    first, second = ranges[0], ranges[1]
    w0 = onnx.numpy_helper.to_array(next(t for t in original.graph.initializer if t.name == "W0"))
    assert first.weight_before == pytest.approx(float(np.abs(w0).max()))
    assert first.growth == pytest.approx(1.0)  # rows merged, none summed
    # merging duplicates sums their outgoing columns: the next layer's range grows, a little
    assert 1.0 < second.growth < 4.0
    assert weight_range_warnings(ranges) == []


def test_warning_names_the_layers_whose_range_grew(data):
    original = planted_model()
    reduced, _ = lump(original, 0.8, calibration=data)
    ranges = weight_ranges(original, reduced)
    worst = max(ranges, key=lambda r: r.growth)
    assert worst.growth > 1.0  # a refit after approximate merges widens some range
    (line,) = weight_range_warnings(ranges, limit=worst.growth * 0.999)
    assert f"'{worst.layer}'" in line
    assert not weight_range_warnings(ranges, limit=worst.growth)
    synthetic = [WeightRange("big", 0.5, 5.0, 0.1, 0.1), WeightRange("ok", 1.0, 2.0, 0.0, 0.0)]
    (line,) = weight_range_warnings(synthetic)
    assert "'big'" in line and "10x" in line
    assert WeightRange("zero", 0.0, 0.0, 0.0, 0.0).growth == 1.0
