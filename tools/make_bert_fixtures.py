"""Generate the BERT test fixtures ``tests/fixtures/bert_*``: onnxruntime-optimized encoders.

Run from the repository root (about ten seconds; needs torch, transformers and onnxruntime,
whose ``onnxruntime.transformers.optimizer`` writes the optimized graphs)::

    python -m tools.make_bert_fixtures [--out tests/fixtures]

One tiny ``transformers.BertModel`` (vocabulary 64, hidden 32, 2 layers, 2 heads, FFN 64,
32 positions, no pooler; the default SDPA attention) returning ``last_hidden_state``,
exported by the TorchScript exporter (opset 17, inputs ``input_ids``, ``attention_mask``
and ``token_type_ids``, int64, batch and sequence dynamic) and then rewritten by
``onnxruntime.transformers.optimizer.optimize_model(model_type='bert', num_heads=2,
hidden_size=32)`` the way users ship BERT-style encoders:

* ``bert_torchscript.onnx``: the export itself (FFN ``MatMul -> Add -> Div -> Erf -> Add
  -> Mul -> Mul -> MatMul -> Add``, then ``Add`` + ``LayerNormalization``);
* ``bert_ort_optimized.onnx``: the optimizer's defaults. Each FFN is ``MatMul(x, W1) ->
  com.microsoft:BiasGelu(., b1) -> MatMul(., W2) -> com.microsoft:SkipLayerNormalization(.,
  residual, gamma, beta, b2)``: the up projection's bias lives in the Gelu, the down
  projection's in the layer norm (its fifth input);
* ``bert_ort_fastgelu.onnx``: ``FusionOptions.enable_gelu_approximation``: the Gelu is
  ``com.microsoft:FastGelu(., b1)`` (tanh approximation, the bias its second input);
* ``bert_ort_nobiasgelu.onnx``: ``FusionOptions.enable_bias_gelu = False`` (the CLI's
  ``--disable_bias_gelu``): ``MatMul -> Add -> com.microsoft:Gelu -> MatMul ->
  SkipLayerNormalization(..., b2)``.

Every parameter is drawn from a seeded RNG (LayerNorm and biases too: nothing is trivially
1 or 0, so the optimizer merges no initializers), then duplicates are PLANTED in each FFN
as ``tools/make_transformer_fixtures.py`` does: :data:`PLANTED_WIDTHS` gives how many
distinct neurons each keeps; every other row of ``intermediate.dense`` (weight and bias) is
an exact copy of a distinct row, and the ``output.dense`` column of each distinct neuron is
split at random fractions over its copies. The function is that of the narrow network, so
exact lumping at eps = 0 must reduce each FFN to exactly its planted width.

``bert_calib.npz`` holds ``input_ids``, ``attention_mask`` (right padding) and
``token_type_ids`` (64 x 12) for ``--calib``; ``bert_manifest.json`` records the files, the
ops the optimizer wrote and the widths for the tests. Deterministic for given torch,
transformers and onnxruntime versions (recorded in the manifest).
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model
from torch import nn

from tools.make_transformer_fixtures import plant_duplicates

__all__ = ["PLANTED_WIDTHS", "build_model", "main"]

VOCAB, HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 64, 32, 2, 2, 64, 32
PLANTED_WIDTHS = (40, 52)  # distinct FFN neurons per layer after planting
SEED = 20250117
CALIB_SHAPE = (64, 12)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
EXPORT = "bert_torchscript.onnx"
# file -> FusionOptions fields set before optimizing (None: the export itself)
OPTIMIZED = {
    "bert_ort_optimized.onnx": {},
    "bert_ort_fastgelu.onnx": {"enable_gelu_approximation": True},
    "bert_ort_nobiasgelu.onnx": {"enable_bias_gelu": False},
}


class Encoder(nn.Module):
    """``BertModel`` called with the three inputs, returning ``last_hidden_state``."""

    def __init__(self, bert: transformers.BertModel) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return out.last_hidden_state


def _plant(rng: np.random.Generator, layer: nn.Module, distinct: int) -> None:
    dense = layer.intermediate.dense
    plant_duplicates(
        rng, dense.weight.data, dense.bias.data, layer.output.dense.weight.data, distinct
    )


def build_model(seed: int = SEED) -> Encoder:
    """The seeded encoder with planted FFN duplicates, in eval mode."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=POSITIONS,
        hidden_act="gelu",
    )
    model = Encoder(transformers.BertModel(config, add_pooling_layer=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            embedding = "embeddings" in name and param.ndim > 1
            scale = 1.0 if embedding else 0.5 if param.ndim > 1 else 0.2
            values = rng.standard_normal(tuple(param.shape)) * scale
            if "LayerNorm.weight" in name:
                values = 1.0 + values
            if param.ndim > 1 and not embedding:
                values /= np.sqrt(param.shape[1])
            param.copy_(torch.from_numpy(values.astype(np.float32)))
        for layer, distinct in zip(model.bert.encoder.layer, PLANTED_WIDTHS, strict=True):
            _plant(rng, layer, distinct)
    return model.eval()


def calibration(seed: int = SEED + 1) -> dict[str, np.ndarray]:
    """Seeded token ids with right padding (every row keeps at least 3 tokens)."""
    rng = np.random.default_rng(seed)
    rows, length = CALIB_SHAPE
    ids = rng.integers(1, VOCAB, CALIB_SHAPE, dtype=np.int64)
    lengths = rng.integers(3, length + 1, rows)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    types = ((np.arange(length)[None, :] >= lengths[:, None] // 2) & (mask == 1)).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}


def _export(model: Encoder, path: Path) -> None:
    sample = tuple(torch.from_numpy(v[:2, :7].copy()) for v in calibration().values())
    axes = {name: {0: "batch", 1: "seq"} for name in (*INPUTS, OUTPUT)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            sample,
            str(path),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    onnx.checker.check_model(str(path), full_check=True)


def _optimize(source: Path, path: Path, options: dict) -> None:
    fusion = FusionOptions("bert")
    for name, value in options.items():
        setattr(fusion, name, value)
    optimized = optimize_model(
        str(source),
        model_type="bert",
        num_heads=HEADS,
        hidden_size=HIDDEN,
        optimization_options=fusion,
    )
    optimized.save_model_to_file(str(path))


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    named = (f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in model.graph.node)
    return dict(sorted(collections.Counter(named).items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    model = build_model()
    feeds = calibration()
    np.savez(args.out / "bert_calib.npz", **feeds)
    with torch.no_grad():
        expected = model(*(torch.from_numpy(feeds[name]) for name in INPUTS)).numpy()
    _export(model, args.out / EXPORT)
    for name, options in OPTIMIZED.items():
        _optimize(args.out / EXPORT, args.out / name, options)
    files = []
    for name in (EXPORT, *OPTIMIZED):
        path = args.out / name
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT], feeds)[0]
        error = float(np.abs(got - expected).max())
        # FastGelu is the tanh approximation of torch's erf Gelu: close, not equal
        limit = 2e-2 if "fastgelu" in name else 1e-4
        if error > limit:
            raise SystemExit(f"{name}: onnxruntime differs from torch by {error:.3g}")
        files.append(
            {
                "file": name,
                "optimizer_options": OPTIMIZED.get(name),
                "ops": _ops(onnx.load(str(path))),
            }
        )
        print(f"wrote {path} ({path.stat().st_size} bytes, max |ort - torch| {error:.2g})")
    manifest = {
        "files": files,
        "inputs": list(INPUTS),
        "output": OUTPUT,
        "vocab": VOCAB,
        "hidden": HIDDEN,
        "ffn_widths": [FFN] * LAYERS,
        "expected_ffn_widths": list(PLANTED_WIDTHS),
        "calibration": "bert_calib.npz",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": ort.__version__,
        },
    }
    path = args.out / "bert_manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
