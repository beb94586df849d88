"""Command line of the fixture generator: ``python -m tools.make_fixtures`` (from the project
root; the old ``python tools/make_fixtures.py`` runs it too, for one release); :data:`FIXTURES`
is what it writes, in manifest order."""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np
import onnx

from tools import make_fixtures
from tools.make_fixtures.exported import (
    fx_skl_logistic,
    fx_skl_relu,
    fx_skl_tanh,
    fx_torch_gemm_leakyrelu,
    fx_torch_gemm_relu,
    fx_torch_gemm_sigmoid,
    fx_torch_matmul3d_tanh,
)
from tools.make_fixtures.handbuilt import (
    fx_constant_nodes,
    fx_fp16,
    fx_fp64,
    fx_gemm_alpha_beta,
    fx_gemm_scalar_bias,
    fx_identity_transpose,
    fx_matmul_bias_2d,
    fx_matmul_nobias,
    fx_observable_hidden,
    fx_shared_initializer,
    fx_unsupported_op,
)
from tools.make_fixtures.manifest import manifest_entry, manifest_json, smoke_test
from tools.make_fixtures.patterns import write_pattern_fixtures

__all__ = ["FIXTURES", "main"]

FIXTURES = {
    "skl_relu.onnx": fx_skl_relu,
    "skl_tanh.onnx": fx_skl_tanh,
    "skl_logistic.onnx": fx_skl_logistic,
    "torch_gemm_relu.onnx": fx_torch_gemm_relu,
    "torch_gemm_leakyrelu.onnx": fx_torch_gemm_leakyrelu,
    "torch_gemm_sigmoid.onnx": fx_torch_gemm_sigmoid,
    "torch_matmul3d_tanh.onnx": fx_torch_matmul3d_tanh,
    "gemm_alpha_beta.onnx": fx_gemm_alpha_beta,
    "gemm_scalar_bias.onnx": fx_gemm_scalar_bias,
    "matmul_nobias.onnx": fx_matmul_nobias,
    "matmul_bias_2d.onnx": fx_matmul_bias_2d,
    "constant_nodes.onnx": fx_constant_nodes,
    "identity_transpose.onnx": fx_identity_transpose,
    "fp16.onnx": fx_fp16,
    "fp64.onnx": fx_fp64,
    "shared_initializer.onnx": fx_shared_initializer,
    "observable_hidden.onnx": fx_observable_hidden,
    "unsupported_op.onnx": fx_unsupported_op,
}


def main():
    parser = argparse.ArgumentParser(description=make_fixtures.__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    parser.add_argument(
        "--patterns",
        action="store_true",
        help="write only the pattern fixtures, into OUT/patterns",
    )
    args = parser.parse_args()
    if args.patterns:
        write_pattern_fixtures(args.out / "patterns")
        return
    args.out.mkdir(parents=True, exist_ok=True)

    manifest = []
    for file, build in FIXTURES.items():
        # Seed per file name so fixtures do not depend on each other's draws.
        fx = build(np.random.default_rng(zlib.crc32(file.encode())))
        path = args.out / file
        onnx.save(fx.model, path)
        entry = manifest_entry(file, fx)
        smoke_test(path, entry)
        manifest.append(entry)
        print(f"{file:28s} {entry['hidden_widths']} -> {entry['expected_hidden_widths']}")

    (args.out / "manifest.json").write_text(manifest_json(manifest))


if __name__ == "__main__":
    main()
