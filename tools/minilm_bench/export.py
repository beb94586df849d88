"""all-MiniLM-L6-v2 from the installed wheel and its three ONNX exports (cached).

The ONNX graph takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64,
dynamic batch and sequence) and returns the sentence embedding: the last hidden state
mean-pooled over the attention mask and L2-normalised, as sentence-transformers does.
Every export is saved as one self-contained file (no external data)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import onnx

from tools.minilm_bench.common import HIDDEN, INPUT_NAMES, OUTPUT_NAME, log
from tools.minilm_bench.text import encode, model_dir, tokenizer

__all__ = ["export_path", "exports"]


def export_path(cache: Path, export: str) -> Path:
    return cache / f"minilm_{export}.onnx"


def _wrapped():
    import torch
    from transformers import AutoModel

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)

    return SentenceEmbedding(AutoModel.from_pretrained(model_dir())).eval()


def _example():
    import torch

    feeds = encode(tokenizer(), ["An example sentence to trace.", "And a second, longer one."])
    return tuple(torch.from_numpy(feeds[name]) for name in INPUT_NAMES)


def _self_contained(path: Path) -> None:
    """Rewrite ``path`` as one file (the dynamo exporter may write external data)."""
    model = onnx.load(str(path))  # loads the external data too
    onnx.save(model, str(path))
    for stale in path.parent.glob(path.name + ".data"):
        stale.unlink()


def _dynamo(path: Path) -> None:
    import torch

    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dims = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    with torch.no_grad():
        torch.onnx.export(
            _wrapped(),
            _example(),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dims,
            dynamo=True,
        )
    _self_contained(path)


def _torchscript(path: Path) -> None:
    import torch

    axes = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            _wrapped(),
            _example(),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _ortopt(path: Path, source: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "onnxruntime.transformers.optimizer",
        "--input",
        str(source),
        "--output",
        str(path),
        "--model_type",
        "bert",
        "--num_heads",
        "12",
        "--hidden_size",
        str(HIDDEN),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"optimizer exited {done.returncode}: {done.stderr[-400:]}")


def exports(cache: Path, wanted) -> dict[str, dict]:
    """``{export: info}`` for the wanted exports, each made once and cached; info has
    ``path`` (None when the export failed), ``error``, ``opset`` and ``seconds``. The
    ``ortopt`` export optimizes the TorchScript one, which is made for it if needed."""
    cache.mkdir(parents=True, exist_ok=True)
    meta_path = cache / "exports.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    order = [e for e in ("dynamo", "torchscript", "ortopt") if e in wanted]
    if "ortopt" in order and "torchscript" not in order:
        order.insert(0, "torchscript")
    for export in order:
        path = export_path(cache, export)
        if path.is_file() and export in meta:
            continue
        log(f"export {export} -> {path}")
        started = time.perf_counter()
        try:
            if export == "dynamo":
                _dynamo(path)
            elif export == "torchscript":
                _torchscript(path)
            else:
                source = export_path(cache, "torchscript")
                if not source.is_file():
                    raise RuntimeError("the TorchScript export it optimizes failed")
                _ortopt(path, source)
            model = onnx.load(str(path), load_external_data=False)
            opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
            meta[export] = {
                "error": None,
                "opset": opsets.get("ai.onnx"),
                "seconds": round(time.perf_counter() - started, 1),
            }
        except Exception as exc:  # an export's failure is a result: the others go on
            log(f"  export {export} FAILED: {type(exc).__name__}: {exc}"[:600])
            path.unlink(missing_ok=True)
            meta[export] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return {
        e: dict(meta[e], path=export_path(cache, e) if not meta[e].get("error") else None)
        for e in wanted
        if e in meta
    }
