"""Generate the transformer test fixtures ``tests/fixtures/transformer_*``.

Run from the repository root (a few seconds; needs torch and onnxscript)::

    python -m tools.make_transformer_fixtures [--out tests/fixtures]

One tiny character model, ``Embedding(24, 16)`` -> two ``nn.TransformerEncoderLayer``
(d_model 16, 2 heads, FFN 32, GELU, ``batch_first``; the first post-norm, the second
pre-norm, so one FFN reads a LayerNorm output that also feeds the residual ``Add`` and the
other reads a LayerNorm output of its own) -> ``Linear(16, 24)``, exported four ways:

* ``transformer_dynamo.onnx``: dynamo exporter, opset 20 (one ``Gelu`` op per FFN);
* ``transformer_dynamo_opset18.onnx``: dynamo exporter, opset 18 (GELU decomposed into
  ``Div -> Erf -> Add -> Mul(0.5) -> Mul(x)`` with initializer scalars);
* ``transformer_torchscript.onnx``: TorchScript exporter, opset 20 (``Gelu`` op);
* ``transformer_torchscript_opset17.onnx``: TorchScript exporter, opset 17 (GELU as
  ``Div -> Erf -> Add -> Mul(x) -> Mul(0.5)`` with ``Constant`` nodes).

Input ``tokens`` int64 (batch, seq), output ``logits`` (batch, seq, 24). In the dynamo
exports batch and seq are dynamic; in the TorchScript ones only batch is: tracing writes
the traced length (8, the calibration's) into nn.MultiheadAttention's reshapes, a
limitation of that exporter. Dynamo's per-node stack traces are stripped (local paths).
Every parameter is drawn from a seeded RNG (LayerNorm and biases too, so nothing is
trivially 1 or 0), then duplicates are PLANTED in each FFN: :data:`PLANTED_WIDTHS` gives
how many distinct neurons each keeps; every other row of ``linear1`` (weights and bias)
is an exact copy of a distinct row, and the ``linear2`` column of each distinct neuron is
split at random fractions over its copies. The function is that of the narrow network,
so exact lumping at eps = 0 must reduce the FFNs to exactly those widths.

``transformer_calib.npz`` holds ``tokens`` (64 x 8 ids) for ``--calib``;
``transformer_manifest.json`` records widths and files for the tests.
Deterministic for a given torch version (recorded as producer_version).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from tools.torch_export import export_onnx

__all__ = ["PLANTED_WIDTHS", "TinyCharModel", "build_model", "main"]

VOCAB, D_MODEL, N_HEADS, D_FFN = 24, 16, 2, 32
PLANTED_WIDTHS = (20, 26)  # distinct FFN neurons per block after planting
SEED = 20240610
CALIB_SHAPE = (64, 8)
INPUT_NAME, OUTPUT_NAME = "tokens", "logits"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
EXPORTS = {
    "transformer_dynamo.onnx": (True, 20),
    "transformer_dynamo_opset18.onnx": (True, 18),
    "transformer_torchscript.onnx": (False, 20),
    "transformer_torchscript_opset17.onnx": (False, 17),
}


class TinyCharModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                D_MODEL,
                N_HEADS,
                D_FFN,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=norm_first,
            )
            for norm_first in (False, True)
        )
        self.head = nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _plant(rng: np.random.Generator, block: nn.TransformerEncoderLayer, distinct: int) -> None:
    plant_duplicates(
        rng, block.linear1.weight.data, block.linear1.bias.data, block.linear2.weight.data, distinct
    )


def plant_duplicates(
    rng: np.random.Generator, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, distinct: int
) -> None:
    """Make the FFN ``w1, b1 -> w2`` (torch ``Linear`` layouts, edited in place) compute
    what ``distinct`` of its neurons compute: every other neuron copies one of them (its
    ``w1`` row and ``b1`` entry), and each distinct neuron's ``w2`` column is split over
    its copies at random fractions."""
    width = w1.shape[0]
    sources = np.concatenate([np.arange(distinct), rng.integers(0, distinct, width - distinct)])
    order = rng.permutation(width)  # copies sit anywhere, not only at the end
    sources = sources[order]
    first = {}
    for position, source in enumerate(sources):
        first.setdefault(int(source), position)
    narrow_out = w2[:, [first[s] for s in range(distinct)]].clone()
    for position, source in enumerate(sources):
        w1[position] = w1[first[int(source)]]
        b1[position] = b1[first[int(source)]]
    # Split each distinct neuron's outgoing column over its copies at random fractions.
    for source in range(distinct):
        members = np.flatnonzero(sources == source)
        shares = rng.dirichlet(np.ones(members.size)).astype(np.float32)
        for member, share in zip(members, shares, strict=True):
            w2[:, member] = narrow_out[:, source] * float(share)


def build_model(seed: int = SEED) -> TinyCharModel:
    """The seeded model with planted FFN duplicates, in eval mode."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = TinyCharModel()
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 1.0 if name.startswith("embed") else 0.5 if param.ndim > 1 else 0.2
            values = rng.standard_normal(tuple(param.shape)) * scale
            if name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                values = 1.0 + values
            if param.ndim > 1 and not name.startswith("embed"):
                values /= np.sqrt(param.shape[1])
            param.copy_(torch.from_numpy(values.astype(np.float32)))
        for block, distinct in zip(model.blocks, PLANTED_WIDTHS, strict=True):
            _plant(rng, block, distinct)
    return model.eval()


def _export(model: TinyCharModel, path: Path, dynamo: bool, opset: int) -> None:
    # TorchScript tracing bakes the traced sequence length into nn.MultiheadAttention's
    # reshapes (only batch stays dynamic), so trace at the calibration length.
    length = 5 if dynamo else CALIB_SHAPE[1]
    sample = (torch.zeros(2, length, dtype=torch.int64),)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")} if dynamo else None
    export_onnx(
        model,
        sample,
        path,
        dynamo=dynamo,
        opset=opset,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        dynamic_shapes=dims,
    )
    onnx.checker.check_model(str(path), full_check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    model = build_model()
    tokens = np.random.default_rng(SEED + 1).integers(0, VOCAB, CALIB_SHAPE, dtype=np.int64)
    np.savez(args.out / "transformer_calib.npz", tokens=tokens)
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens)).numpy()
    entries = []
    for name, (dynamo, opset) in EXPORTS.items():
        path = args.out / name
        _export(model, path, dynamo, opset)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT_NAME], {INPUT_NAME: tokens})[0]
        error = float(np.abs(got - expected).max())
        if error > 1e-4:
            raise SystemExit(f"{name}: onnxruntime differs from torch by {error:.3g}")
        loaded = onnx.load(str(path))
        entries.append(
            {
                "file": name,
                "exporter": "dynamo" if dynamo else "torchscript",
                "opset": opset,
                "ops": sorted({n.op_type for n in loaded.graph.node}),
                "dynamic_seq": dynamo,
                "ffn_widths": [D_FFN] * len(PLANTED_WIDTHS),
                "expected_ffn_widths": list(PLANTED_WIDTHS),
                "d_model": D_MODEL,
                "vocab": VOCAB,
                "calibration": "transformer_calib.npz",
            }
        )
        print(f"wrote {path} ({path.stat().st_size} bytes, max |ort - torch| {error:.2g})")
    manifest = args.out / "transformer_manifest.json"
    manifest.write_text(json.dumps(entries, indent=1) + "\n")
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
