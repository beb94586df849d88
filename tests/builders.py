"""Hand-built onnx.helper models for the variants exporters rarely emit."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp(
    layers: list[tuple[np.ndarray, np.ndarray | None]],
    activations: list[str | None],
    *,
    dtype=np.float32,
    input_dims: tuple = ("N", None),
    op: str = "Gemm",
    value_info: bool = False,
) -> onnx.ModelProto:
    """A chain of dense layers; weights are (out, in), activations sit between layers.

    ``op="Gemm"`` writes Gemm transB=1, ``op="MatMul"`` MatMul (+ Add when a bias is given).
    """
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits, infos = [], [], []
    current = "x"
    for index, (weight, bias) in enumerate(layers):
        out = f"dense{index}"
        w_name, b_name = f"W{index}", f"b{index}"
        if op == "Gemm":
            inits.append(numpy_helper.from_array(weight.astype(dtype), w_name))
            inputs = [current, w_name]
            if bias is not None:
                inits.append(numpy_helper.from_array(bias.astype(dtype), b_name))
                inputs.append(b_name)
            nodes.append(helper.make_node("Gemm", inputs, [out], name=f"gemm{index}", transB=1))
        else:
            inits.append(numpy_helper.from_array(weight.T.astype(dtype), w_name))
            product = out if bias is None else f"mm{index}"
            nodes.append(
                helper.make_node("MatMul", [current, w_name], [product], name=f"mm{index}")
            )
            if bias is not None:
                inits.append(numpy_helper.from_array(bias.astype(dtype), b_name))
                nodes.append(helper.make_node("Add", [product, b_name], [out], name=f"add{index}"))
        infos.append((out, weight.shape[0]))
        current = out
        if index < len(activations) and activations[index]:
            act_out = f"act{index}"
            nodes.append(
                helper.make_node(
                    activations[index], [current], [act_out], name=f"{activations[index]}{index}"
                )
            )
            infos.append((act_out, weight.shape[0]))
            current = act_out
    in_dims = [d if d is not None else layers[0][0].shape[1] for d in input_dims]
    out_dims = [*in_dims[:-1], layers[-1][0].shape[0]]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", elem, in_dims)],
        [helper.make_tensor_value_info(current, elem, out_dims)],
        inits,
        value_info=[
            helper.make_tensor_value_info(name, elem, [*in_dims[:-1], width])
            for name, width in infos[:-1]
        ]
        if value_info
        else None,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model


def random_layers(widths: list[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((b, a)) / np.sqrt(a), 0.1 * rng.standard_normal(b))
        for a, b in itertools.pairwise(widths)
    ]


TENSOR_FLOAT = TensorProto.FLOAT
