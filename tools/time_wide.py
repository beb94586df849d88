"""Time the pass on a wide model against loading and saving the same model.

Builds a float32 network with 4 hidden Tanh layers of 4096 (about 50 M parameters, 200 MB),
where every layer holds clusters of near-identical neurons (512 prototypes, 8 noisy copies
each) as over-parameterised layers do, then measures in one run: ``onnx.load`` +
``onnx.save``, and ``onnx_lump.lump`` (no verification) at epsilon 0 and at an epsilon
that merges the clusters.

    python tools/time_wide.py [--width 4096] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from onnx_lump import lump


def build(
    width: int, n_in: int = 64, n_out: int = 8, depth: int = 4, copies: int = 8
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    widths = [n_in, *[width] * depth, n_out]
    nodes, inits, current = [], [], "x"
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        prototypes = rng.standard_normal((max(fan_out // copies, 1), fan_in)) / np.sqrt(fan_in)
        weight = np.repeat(prototypes, copies, axis=0)[:fan_out] if index < depth else prototypes
        weight = weight + 1e-4 * rng.standard_normal(weight.shape) / np.sqrt(fan_in)
        bias = np.zeros(weight.shape[0])
        inits += [
            numpy_helper.from_array(weight.astype(np.float32), f"W{index}"),
            numpy_helper.from_array(bias.astype(np.float32), f"b{index}"),
        ]
        nodes.append(
            helper.make_node("Gemm", [current, f"W{index}", f"b{index}"], [f"g{index}"], transB=1)
        )
        current = f"g{index}"
        if index < depth:
            nodes.append(helper.make_node("Tanh", [current], [f"t{index}"]))
            current = f"t{index}"
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [
            helper.make_tensor_value_info(
                current, TensorProto.FLOAT, ["N", widths[-1] // copies or 1]
            )
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    path = args.workdir / f"wide_{args.width}.onnx"
    onnx.save(build(args.width), path)
    started = time.perf_counter()
    model = onnx.load(path)
    onnx.save(model, args.workdir / f"wide_{args.width}_copy.onnx")
    io_seconds = time.perf_counter() - started
    print(f"onnx.load + onnx.save: {io_seconds:.2f} s")
    for eps in (0.0, 0.05):
        started = time.perf_counter()
        _, report = lump(model, eps, verify=False)
        seconds = time.perf_counter() - started
        widths = [s.width_after for s in report.layers[:-1]]
        print(
            f"lump eps={eps}: {seconds:.2f} s ({seconds / io_seconds:.1f}x load+save), "
            f"hidden widths {widths}, {100 * report.retained:.1f}% of parameters kept"
        )


if __name__ == "__main__":
    main()
