"""The two PyTorch exports the transformer scripts write, in one place.

``tools/train_transformer.py`` (the benchmark model) and ``tools/make_transformer_fixtures.py``
(the test fixtures) export the same way: the dynamo exporter with dynamic batch and sequence,
and the TorchScript exporter, which needs grad mode so ``nn.TransformerEncoderLayer`` stays off
the fused inference kernel it cannot translate. The dynamo exporter's per-node stack traces
are dropped: they hold this machine's paths and most of the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

__all__ = ["export_onnx", "strip_stack_traces"]


def strip_stack_traces(path: Path) -> None:
    model = onnx.load(str(path))
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(path))


def export_onnx(
    model: torch.nn.Module,
    sample: tuple,
    path: Path,
    *,
    dynamo: bool,
    opset: int,
    input_name: str,
    output_name: str,
    dynamic_shapes: dict | None = None,
) -> None:
    """Export ``model`` on ``sample`` to ``path``; dynamo takes ``dynamic_shapes`` (for the
    argument ``tokens``), TorchScript marks axes 0 and 1 of input and output dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(
                model,
                sample,
                input_names=[input_name],
                output_names=[output_name],
                dynamo=True,
                dynamic_shapes={"tokens": dynamic_shapes},
                opset_version=opset,
                verbose=False,
            )
            program.save(str(path))
            strip_stack_traces(path)
            return
        with torch.enable_grad():
            torch.onnx.export(
                model,
                sample,
                str(path),
                input_names=[input_name],
                output_names=[output_name],
                dynamo=False,
                dynamic_axes={
                    input_name: {0: "batch", 1: "seq"},
                    output_name: {0: "batch", 1: "seq"},
                },
                opset_version=opset,
            )
