"""Fixtures from real exporters: scikit-learn MLPs through skl2onnx and PyTorch
``nn.Sequential`` models through the TorchScript exporter, planted before export."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx

from tools.make_fixtures.planting import Fixture, dup, flip, plant_net, prop, zero

__all__ = [
    "fx_skl_logistic",
    "fx_skl_relu",
    "fx_skl_tanh",
    "fx_torch_gemm_leakyrelu",
    "fx_torch_gemm_relu",
    "fx_torch_gemm_sigmoid",
    "fx_torch_matmul3d_tanh",
    "sklearn_fixture",
    "torch_fixture",
]


def sklearn_fixture(rng, activation):
    import skl2onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (np.sin(x) @ rng.normal(size=4)).astype(np.float32)
    model = MLPRegressor(
        hidden_layer_sizes=(12, 10), activation=activation, max_iter=200, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    # sklearn stores coefs_ as (in x out): transpose into canonical rows.
    net = [
        (c.T.astype(np.float32), b.astype(np.float32))
        for c, b in zip(model.coefs_, model.intercepts_, strict=False)
    ]
    onnx_act = {"relu": "Relu", "tanh": "Tanh", "logistic": "Sigmoid"}[activation]
    second = prop(0, 10, 4, 2.0) if onnx_act == "Relu" else flip(0, 10, 4)
    fourth = prop(1, 8, 3, 0.5) if onnx_act == "Relu" else flip(1, 8, 3)
    plants = [dup(0, 7, 2), second, dup(1, 5, 1), fourth]
    plant_net(rng, net, plants, onnx_act)
    model.coefs_ = [w.T.copy() for w, _ in net]
    model.intercepts_ = [b for _, b in net]
    onx = skl2onnx.to_onnx(model, x[:1])
    notes = (
        f"MLPRegressor(activation={activation!r}) fit on random data, then planted. "
        "skl2onnx emits Cast(X) -> [MatMul(x, W in x out) -> Add(., b of shape (1, H))"
        " -> act]* -> MatMul -> Add -> Reshape(., [-1, 1]); batch dim has no dim_param."
    )
    return Fixture(onx, "skl2onnx", onnx_act, [12, 10], plants, notes)


def torch_fixture(rng, seed, activation, plants, rank3=False):
    import torch
    from torch import nn

    acts = {
        "Relu": nn.ReLU,
        "LeakyRelu": lambda: nn.LeakyReLU(negative_slope=0.1),
        "Sigmoid": nn.Sigmoid,
        "Tanh": nn.Tanh,
    }
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 12),
        acts[activation](),
        nn.Linear(12, 10),
        acts[activation](),
        nn.Linear(10, 2),
    )
    linears = [m for m in model if isinstance(m, nn.Linear)]
    # torch stores Linear.weight as (out x in) already: canonical rows.
    net = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in linears]
    plant_net(rng, net, plants, activation)
    with torch.no_grad():
        for m, (w, b) in zip(linears, net, strict=False):
            m.weight.copy_(torch.from_numpy(w))
            m.bias.copy_(torch.from_numpy(b))
    x = torch.zeros(3, 7, 5) if rank3 else torch.zeros(3, 5)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation notice
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    onx = onnx.load_from_string(buf.getvalue())
    if rank3:
        notes = (
            "Rank-3 input (batch, 7, 5): the TorchScript exporter emits MatMul(x, W in x out)"
            " + Add(b, .) with the bias as the FIRST Add input."
        )
    else:
        notes = "TorchScript exporter: Gemm(x, W out x in, b) with transB=1, alpha=beta=1."
    return Fixture(onx, "torch-dynamo-false", activation, [12, 10], plants, notes)


def fx_skl_relu(rng):
    return sklearn_fixture(rng, "relu")


def fx_skl_tanh(rng):
    return sklearn_fixture(rng, "tanh")


def fx_skl_logistic(rng):
    return sklearn_fixture(rng, "logistic")


def fx_torch_gemm_relu(rng):
    plants = [
        dup(0, 3, 0),
        prop(0, 9, 5, 2.0),
        zero(0, 11),
        dup(1, 6, 2),
        prop(1, 9, 4, 0.5),
    ]
    fx = torch_fixture(rng, 1, "Relu", plants)
    fx.notes += " Layer 0 neuron 11 is a zero row (constant neuron)."
    return fx


def fx_torch_gemm_leakyrelu(rng):
    plants = [dup(0, 4, 1), prop(0, 8, 6, 0.5), prop(1, 7, 0, 4.0), dup(1, 3, 5)]
    fx = torch_fixture(rng, 2, "LeakyRelu", plants)
    fx.notes += " LeakyRelu alpha=0.1."
    return fx


def fx_torch_gemm_sigmoid(rng):
    plants = [dup(0, 10, 3), flip(0, 6, 1), flip(1, 8, 2), dup(1, 4, 0)]
    return torch_fixture(rng, 3, "Sigmoid", plants)


def fx_torch_matmul3d_tanh(rng):
    plants = [dup(0, 5, 0), flip(0, 11, 7), flip(1, 9, 1), dup(1, 6, 3)]
    return torch_fixture(rng, 4, "Tanh", plants, rank3=True)
