"""Generate the gated-FFN test fixtures ``tests/fixtures/gated_*``.

Run from the repository root (about ten seconds; needs torch, transformers and
onnxscript; nothing is downloaded)::

    python -m tools.make_gated_fixtures [--out tests/fixtures]

A tiny LLaMA-style model built locally from ``transformers.LlamaConfig`` (vocab 64, hidden
32, SwiGLU MLPs of width 64, 2 layers, 2 heads, RMSNorm, rotary positions), trained for a
few hundred steps on the bytes of Python standard-library docstrings (byte mod 64 as the
token id) so that its weights are not random, then given PLANTED duplicates in each MLP:
:data:`PLANTED_WIDTHS` gives how many distinct gated neurons each keeps. Every other
neuron copies a distinct one's ``gate_proj`` row and its ``up_proj`` row times a factor c
(1 for half the copies, a random signed scale for the rest: ``SiLU(g) * c u`` is c times
the original's hidden value), and the distinct neuron's ``down_proj`` column is split over
its copies at random fractions (divided by each copy's c). The function is that of the
narrow network, so exact lumping at eps = 0 must reduce the MLPs to exactly those widths.

* ``gated_llama.onnx``: dynamo exporter, opset 18, input ``input_ids`` int64 (batch,
  seq), both dynamic, output ``logits`` (batch, seq, 64); SiLU as ``Sigmoid`` + ``Mul``;
* ``gated_calib.npz``: ``input_ids`` (96 x 16) from other docstrings than the training's;
* ``gated_manifest.json``: widths, planted widths and files for the tests.

Deterministic for a given torch/transformers version (recorded as producer_version).
"""

from __future__ import annotations

import argparse
import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from tools.torch_export import strip_stack_traces

__all__ = ["PLANTED_WIDTHS", "build_model", "main"]

VOCAB, HIDDEN, INTERMEDIATE, LAYERS, HEADS = 64, 32, 64, 2, 2
PLANTED_WIDTHS = (40, 48)  # distinct gated neurons per MLP after planting
SEED = 20261207
SEQ, BATCH, STEPS = 32, 16, 300
CALIB_SHAPE = (96, 16)
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input_ids", "logits"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


class Logits(nn.Module):
    """``input_ids -> logits`` of a causal LM (no cache, no attention mask)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def _text(modules: list[str]) -> np.ndarray:
    """The docstrings of ``modules`` and of their public members, as token ids."""
    parts = []
    for name in modules:
        module = __import__(name)
        parts.append(inspect.getdoc(module) or "")
        for _, member in sorted(vars(module).items()):
            doc = inspect.getdoc(member) if callable(member) else None
            if doc:
                parts.append(doc)
    data = "\n\n".join(parts).encode("utf-8")
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64) % VOCAB


def _train(model: nn.Module, ids: np.ndarray, rng: np.random.Generator) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = torch.from_numpy(ids)
    loss = torch.tensor(0.0)
    for _ in range(STEPS):
        starts = rng.integers(0, ids.size - SEQ - 1, BATCH)
        batch = torch.stack([tokens[s : s + SEQ + 1] for s in starts])
        loss = model(input_ids=batch[:, :-1], labels=batch[:, 1:], use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def plant_duplicates(rng: np.random.Generator, mlp: nn.Module, distinct: int) -> None:
    """Make the MLP compute what ``distinct`` of its gated neurons compute (in place)."""
    gate, up, down = mlp.gate_proj.weight.data, mlp.up_proj.weight.data, mlp.down_proj.weight.data
    width = gate.shape[0]
    sources = np.concatenate([np.arange(distinct), rng.integers(0, distinct, width - distinct)])
    sources = sources[rng.permutation(width)]  # copies sit anywhere
    first = {int(s): int(np.flatnonzero(sources == s)[0]) for s in range(distinct)}
    # a signed scale on half the copies' up rows: merging them needs the scalar symmetry
    scale = np.where(rng.random(width) < 0.5, 1.0, rng.uniform(0.5, 2.0, width))
    scale *= np.where(rng.random(width) < 0.3, -1.0, 1.0)
    scale[[first[s] for s in range(distinct)]] = 1.0
    narrow = down[:, [first[s] for s in range(distinct)]].clone()
    for position, source in enumerate(sources):
        gate[position] = gate[first[int(source)]]
        up[position] = up[first[int(source)]] * float(scale[position])
    for source in range(distinct):
        members = np.flatnonzero(sources == source)
        shares = rng.dirichlet(np.ones(members.size))
        for member, share in zip(members, shares, strict=True):
            down[:, member] = narrow[:, source] * float(share / scale[member])


def build_model(seed: int = SEED) -> tuple[nn.Module, float]:
    """The trained model with planted duplicates, in eval mode, and its last loss."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=64,
        hidden_act="silu",
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    loss = _train(model, _text(["json", "textwrap", "string", "functools", "pathlib"]), rng)
    with torch.no_grad():
        for layer, distinct in zip(model.model.layers, PLANTED_WIDTHS, strict=True):
            plant_duplicates(rng, layer.mlp, distinct)
    return model.eval(), loss


def _export(model: nn.Module, path: Path) -> None:
    sample = (torch.zeros(2, 5, dtype=torch.int64),)
    dims = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            Logits(model),
            sample,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamo=True,
            dynamic_shapes=dims,
            opset_version=OPSET,
            verbose=False,
        )
    program.save(str(path))
    strip_stack_traces(path)
    onnx.checker.check_model(str(path), full_check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    model, loss = build_model()
    text = _text(["collections", "argparse", "dataclasses"])
    starts = np.random.default_rng(SEED + 1).integers(0, text.size - CALIB_SHAPE[1], CALIB_SHAPE[0])
    ids = np.stack([text[s : s + CALIB_SHAPE[1]] for s in starts]).astype(np.int64)
    np.savez(args.out / "gated_calib.npz", input_ids=ids)
    with torch.no_grad():
        expected = Logits(model)(torch.from_numpy(ids)).numpy()
    path = args.out / "gated_llama.onnx"
    _export(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    error = float(np.abs(session.run([OUTPUT_NAME], {INPUT_NAME: ids})[0] - expected).max())
    if error > 1e-4:
        raise SystemExit(f"{path.name}: onnxruntime differs from torch by {error:.3g}")
    loaded = onnx.load(str(path))
    entry = {
        "file": path.name,
        "exporter": "dynamo",
        "opset": OPSET,
        "ops": sorted({n.op_type for n in loaded.graph.node}),
        "ffn_widths": [INTERMEDIATE] * LAYERS,
        "expected_ffn_widths": list(PLANTED_WIDTHS),
        "hidden": HIDDEN,
        "vocab": VOCAB,
        "calibration": "gated_calib.npz",
        "train_loss": round(loss, 3),
    }
    manifest = args.out / "gated_manifest.json"
    manifest.write_text(json.dumps([entry], indent=1) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes, max |ort - torch| {error:.2g}), {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
