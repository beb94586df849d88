"""Reference networks: training, export the way users' models look, and the cache."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tools.bench.common import CALIBRATION_ROWS, MAX_TRAIN_ROWS, Reference, log
from tools.benchdata import Dataset

__all__ = [
    "calibration_feeds",
    "dense_params",
    "export",
    "network_name",
    "predict",
    "reference",
    "rmse",
    "scratch_path",
    "train",
]


def network_name(hidden: tuple[int, ...], activation: str) -> str:
    return f"{len(hidden)}x{hidden[0]} {activation}"


def train(
    data: Dataset, hidden: tuple[int, ...], activation: str, seed: int = 0, max_iter: int = 500
):
    from sklearn.neural_network import MLPRegressor

    rows = min(len(data.x_train), MAX_TRAIN_ROWS)
    pick = np.random.default_rng(seed).permutation(len(data.x_train))[:rows]
    model = MLPRegressor(
        hidden_layer_sizes=hidden,
        activation=activation,
        batch_size=256,
        max_iter=max_iter,
        early_stopping=True,
        n_iter_no_change=25,
        tol=1e-6,
        learning_rate_init=1e-3,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at max_iter
        y = data.y_train[pick]
        model.fit(data.x_train[pick], y.ravel() if y.shape[1] == 1 else y)
    return model


def export(model, n_inputs: int, activation: str, path: Path) -> None:
    """skl2onnx for tanh (MatMul + Add); the TorchScript exporter for relu (Gemm)."""
    if activation == "tanh":
        from skl2onnx import to_onnx

        onnx_model = to_onnx(model, np.zeros((1, n_inputs), np.float32), target_opset=17)
        onnx.save(onnx_model, path)
        return
    layers = [
        (np.asarray(c, np.float32).T, np.asarray(b, np.float32))
        for c, b in zip(model.coefs_, model.intercepts_, strict=True)
    ]
    try:
        import torch
    except ImportError:
        onnx.save(_gemm_graph(layers), path)
        return
    modules = []
    for index, (weight, bias) in enumerate(layers):
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
        modules.append(linear)
        if index < len(layers) - 1:
            modules.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*modules).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, n_inputs),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
        )


def _gemm_graph(layers) -> onnx.ModelProto:
    """What the TorchScript exporter writes for Linear/ReLU stacks, without PyTorch."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, current = [], [], "input"
    for index, (weight, bias) in enumerate(layers):
        inits += [
            numpy_helper.from_array(weight, f"{2 * index}.weight"),
            numpy_helper.from_array(bias, f"{2 * index}.bias"),
        ]
        out = "output" if index == len(layers) - 1 else f"/{2 * index}/Gemm_output_0"
        nodes.append(
            helper.make_node(
                "Gemm", [current, f"{2 * index}.weight", f"{2 * index}.bias"], [out], transB=1
            )
        )
        current = out
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"/{2 * index + 1}/Relu_output_0"]))
            current = f"/{2 * index + 1}/Relu_output_0"
    n_in, n_out = layers[0][0].shape[1], layers[-1][0].shape[0]
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n_out])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def predict(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's outputs in onnxruntime, run from its serialized bytes."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = session.run(None, {name: x.astype(np.float32)})[0]
    return np.asarray(out, np.float64).reshape(len(x), -1)


def rmse(model: onnx.ModelProto, data: Dataset) -> float:
    return float(np.sqrt(np.mean((predict(model, data.x_test) - data.y_test) ** 2)))


def dense_params(model: onnx.ModelProto) -> int:
    """Float initializers (the dense layers' weights and biases; shapes are int64)."""
    return sum(
        int(np.prod(t.dims))
        for t in model.graph.initializer
        if len(t.dims) >= 1 and t.data_type == onnx.TensorProto.FLOAT
    )


def calibration_feeds(model: onnx.ModelProto, data: Dataset) -> dict[str, np.ndarray]:
    """The 2,048 seeded training inputs every method calibrates on (never their labels)."""
    rows = np.random.default_rng(1).choice(
        len(data.x_train), min(CALIBRATION_ROWS, len(data.x_train)), replace=False
    )
    return {model.graph.input[0].name: data.x_train[rows].astype(np.float32)}


def _cache_key(task: str, hidden, activation: str, quick: bool) -> str:
    text = f"{task}{tuple(hidden)}{activation}{MAX_TRAIN_ROWS}{quick}v2"
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def reference(
    task: str, data: Dataset, hidden, activation: str, cache: Path, quick: bool
) -> Reference:
    key = _cache_key(task, hidden, activation, quick)
    path = cache / f"{task}_{len(hidden)}x{hidden[0]}_{activation}_{key}.onnx"
    meta = path.with_suffix(".json")
    if not path.exists():
        started = time.perf_counter()
        model = train(data, hidden, activation, max_iter=60 if quick else 500)
        export(model, data.x_train.shape[1], activation, path)
        meta.write_text(json.dumps({"iterations": int(model.n_iter_)}))
        took = time.perf_counter() - started
        log(f"  trained {task} {network_name(hidden, activation)} in {took:.0f} s")
    onnx_model = onnx.load(path)
    test_rmse = rmse(onnx_model, data)
    r2 = 1.0 - test_rmse**2 / float(np.mean((data.y_test - data.y_test.mean(axis=0)) ** 2))
    units = test_rmse * float(np.sqrt(np.mean(data.y_std**2)))
    return Reference(
        task,
        network_name(hidden, activation),
        path,
        test_rmse,
        r2,
        units,
        dense_params(onnx_model),
        json.loads(meta.read_text())["iterations"],
        tuple(hidden),
        activation,
    )


def scratch_path(ref: Reference, data: Dataset, cache: Path, width: int, quick: bool) -> Path:
    """The cached network of ``ref``'s architecture trained from scratch (with labels) at
    ``width`` neurons per hidden layer: trained and exported on first use."""
    small = tuple([width] * len(ref.hidden))
    key = _cache_key(ref.task, small, ref.activation, quick)
    path = cache / f"{ref.task}_scratch_{len(small)}x{width}_{ref.activation}_{key}.onnx"
    if not path.exists():
        model = train(data, small, ref.activation, max_iter=60 if quick else 500)
        # The graph style does not matter for a network that is only measured.
        export(model, data.x_train.shape[1], "tanh", path)
    return path
