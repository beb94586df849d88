"""Pattern fixtures (tests/fixtures/patterns): exporter forms of the activation
registry, onnxsim's Reshape -> Gemm -> Reshape and TorchScript BatchNorm1d.

Written only with ``--patterns``, so the main fixtures stay byte-identical.
"""

from __future__ import annotations

import io
import itertools
import json
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnx

from tools.make_fixtures.manifest import value_dims

__all__ = [
    "PATTERN_FIXTURES",
    "px_dynamo_decomposed",
    "px_onnxsim_rank3",
    "px_torchscript_batchnorm",
    "px_torchscript_decomposed",
    "write_pattern_fixtures",
]


def _torch_plant(rng, linears, norms=()):
    """Row 3 of every hidden layer copies row 0, row 5 copies row 1: weight rows, bias
    and the BatchNorm1d parameters and statistics that follow the layer."""
    import torch

    norms = list(norms) + [None] * (len(linears) - len(norms))
    with torch.no_grad():
        for linear, norm in zip(linears[:-1], norms, strict=False):
            tensors = [linear.weight] + ([linear.bias] if linear.bias is not None else [])
            if norm is not None:
                norm.running_mean.copy_(torch.from_numpy(rng.normal(size=norm.num_features)))
                norm.running_var.copy_(
                    torch.from_numpy(rng.uniform(0.3, 2.0, size=norm.num_features))
                )
                norm.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, norm.num_features)))
                norm.bias.copy_(torch.from_numpy(rng.normal(size=norm.num_features)))
                tensors += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
            for tensor in tensors:
                tensor[3] = tensor[0]
                tensor[5] = tensor[1]


def _torch_export(model, x, dynamo, opset, dynamic):
    import torch

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {i: torch.export.Dim(n) for i, n in dynamic.items()}
            program = torch.onnx.export(
                model, (x,), dynamo=True, opset_version=opset, dynamic_shapes=(dims,)
            )
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": dynamic, "y": dynamic},
        )
        return onnx.load_from_string(buf.getvalue())


def px_torchscript_batchnorm(rng):
    """Linear -> BatchNorm1d -> ReLU twice (the second Linear bias-free: MatMul + BN)."""
    import torch
    from torch import nn

    torch.manual_seed(11)
    linears = [nn.Linear(5, 12), nn.Linear(12, 10, bias=False), nn.Linear(10, 2)]
    norms = [nn.BatchNorm1d(12), nn.BatchNorm1d(10)]
    _torch_plant(rng, linears, norms)
    model = nn.Sequential(
        linears[0], norms[0], nn.ReLU(), linears[1], norms[1], nn.ReLU(), linears[2]
    )
    onx = _torch_export(model, torch.zeros(4, 5), False, 17, {0: "batch"})
    return onx, {
        "pattern": "batchnorm",
        "chains": [[12, 10]],
        "expected_chains": [[10, 8]],
        "activations": [["Relu", "Relu"]],
    }


def px_dynamo_decomposed(rng):
    """Rank-3, dynamic batch and sequence: the dynamo exporter's erf Gelu, Where Softplus
    and tanh Gelu (opset 18 decomposes them)."""
    import torch
    from torch import nn

    torch.manual_seed(12)
    linears = [nn.Linear(6, 12), nn.Linear(12, 10), nn.Linear(10, 9), nn.Linear(9, 6)]
    _torch_plant(rng, linears)
    model = nn.Sequential(
        linears[0],
        nn.GELU(),
        linears[1],
        nn.Softplus(beta=2.0, threshold=3.0),
        linears[2],
        nn.GELU(approximate="tanh"),
        linears[3],
    )
    onx = _torch_export(model, torch.zeros(2, 5, 6), True, 18, {0: "batch", 1: "seq"})
    acts = ["Gelu", "Softplus(beta=2, threshold=3)", "Gelu(approximate='tanh')"]
    return onx, {
        "pattern": "dynamo",
        "chains": [[12, 10, 9]],
        "expected_chains": [[10, 8, 7]],
        "activations": [acts],
    }


def px_torchscript_decomposed(rng):
    """TorchScript at opset 17: tanh Gelu, SiLU, Mish decomposed; HardSwish, Relu6 (Clip
    with Constant bounds) and PRelu as single ops."""
    import torch
    from torch import nn

    torch.manual_seed(13)
    widths = [5, 12, 11, 10, 9, 8, 7, 3]
    linears = [nn.Linear(a, b) for a, b in itertools.pairwise(widths)]
    _torch_plant(rng, linears)
    acts = [
        nn.GELU(approximate="tanh"),
        nn.SiLU(),
        nn.Mish(),
        nn.Hardswish(),
        nn.ReLU6(),
        nn.PReLU(),
    ]
    layers = [m for pair in zip(linears, [*acts, None], strict=True) for m in pair if m]
    onx = _torch_export(nn.Sequential(*layers), torch.zeros(4, 5), False, 17, {0: "batch"})
    names = [
        "Gelu(approximate='tanh')",
        "SiLU",
        "Mish",
        "HardSwish",
        "Relu6(low=0, high=6)",
        "PRelu(alpha=0.25)",
    ]
    return onx, {
        "pattern": "torchscript",
        "chains": [widths[1:-1]],
        "expected_chains": [[w - 2 for w in widths[1:-1]]],
        "activations": [names],
    }


def px_onnxsim_rank3(rng):
    """TorchScript rank-3 export simplified by onnxsim: Reshape -> Gemm -> Reshape with
    the erf Gelu between."""
    import onnxsim
    import torch
    from torch import nn

    torch.manual_seed(14)
    linears = [nn.Linear(6, 12), nn.Linear(12, 10), nn.Linear(10, 6)]
    _torch_plant(rng, linears)
    model = nn.Sequential(linears[0], nn.GELU(), linears[1], nn.ReLU(), linears[2])
    onx = _torch_export(model, torch.zeros(2, 5, 6), False, 17, {0: "batch", 1: "seq"})
    simplified, ok = onnxsim.simplify(onx)
    assert ok
    return simplified, {
        "pattern": "onnxsim",
        "chains": [[12, 10]],
        "expected_chains": [[10, 8]],
        "activations": [["Gelu", "Relu"]],
    }


PATTERN_FIXTURES = {
    "torchscript_batchnorm.onnx": px_torchscript_batchnorm,
    "dynamo_decomposed_rank3.onnx": px_dynamo_decomposed,
    "torchscript_decomposed.onnx": px_torchscript_decomposed,
    "onnxsim_reshape_gemm.onnx": px_onnxsim_rank3,
}


def write_pattern_fixtures(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for file, build in PATTERN_FIXTURES.items():
        model, facts = build(np.random.default_rng(zlib.crc32(file.encode())))
        onnx.save(model, out / file)
        onnx.checker.check_model(onnx.load(out / file), full_check=True)
        first = model.graph.input[0]
        entry = {"file": file, **facts, "input": first.name, "input_shape": value_dims(first)}
        manifest.append(entry)
        print(f"{file:34s} {facts['chains']} -> {facts['expected_chains']}")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
