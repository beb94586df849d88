"""What runs inside a compression child besides our command line: a closed-form baseline,
the peer's structured stack or int8 quantization. Started as
``python -m tools.minilm_bench --worker SPEC.json``; the spec names the kind, the input
and output models, the calibration ``.npz`` and the share; the child writes the output
model and a JSON result (widths, notes) to ``spec["result"]``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx

from tools.minilm_bench.common import (
    BATCH,
    INNER,
    ONNXSIM_BATCH,
    ONNXSIM_LEARNING_RATE,
    log,
)
from tools.minilm_bench.graph import ffns, model_params

__all__ = ["onnxsim_sparsity", "work"]


def _calibration(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k].astype(np.int64) for k in data.files}


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _non_ffn_params(model: onnx.ModelProto) -> int:
    return model_params(model) - sum(f.params for f in ffns(model))


def onnxsim_sparsity(share: float) -> float:
    """The peer's channel sparsity keeping ``round(share * 1536)`` neurons per block (the
    baselines' width): its FFN parameters are then ``share`` of the original's, to 0.1%."""
    return 1.0 - round(share * INNER) / INNER


def _block_output(model: onnx.ModelProto, ffn) -> str:
    """The FFN block's output tensor: after the down-projection's bias ``Add`` where
    there is one (the optimizer's ``SkipLayerNormalization`` takes the bias instead)."""
    for node in model.graph.node:
        if node.op_type == "Add" and ffn.down.output in node.input and ffn.down.bias in node.input:
            return node.output[0]
    return ffn.down.output


def _onnxsim(original: onnx.ModelProto, spec: dict) -> tuple[onnx.ModelProto, dict]:
    from tools.bench.common import onnxsim_stack

    onnxsim = onnxsim_stack(log)
    if onnxsim is None:
        raise RuntimeError("onnxsim >= 0.8 with the structured stack is not installed")
    calib = _calibration(spec["calib"])
    rows = len(calib["input_ids"])
    feeds = [{k: v[i : i + BATCH] for k, v in calib.items()} for i in range(0, rows, BATCH)]
    sparsity = onnxsim_sparsity(spec["share"])
    blocks = [(f.up.input, _block_output(original, f)) for f in ffns(original)]
    started = time.perf_counter()
    pruned = onnxsim.apply_structured_wanda_pruning(
        _copy(original), calibration_data=feeds, sparsity=sparsity
    )
    widths = [f.hidden for f in ffns(pruned)]
    if not widths or all(w == INNER for w in widths):
        raise RuntimeError(
            f"structured Wanda removed no FFN channel (FFN widths {widths}): onnxsim does not "
            "take this graph's up-projection -> GELU -> down-projection for a prunable chain"
        )
    model = onnxsim.apply_pruning_finetune(_copy(original), pruned, calibration_data=feeds)
    seconds = time.perf_counter() - started
    log(f"  onnxsim: wanda + ridge at sparsity {sparsity:.4f} in {seconds:.0f} s")
    notes = [f"channel sparsity {sparsity:.4f}, wanda + ridge {seconds:.0f} s"]
    steps = int(spec.get("steps", 0))
    if steps:
        tuned, started = model, time.perf_counter()
        try:
            for block_in, block_out in blocks:
                tuned = onnxsim.apply_block_finetune(
                    _copy(original),
                    tuned,
                    block_in,
                    block_out,
                    calibration_data=feeds,
                    num_iterations=steps,
                    learning_rate=ONNXSIM_LEARNING_RATE,
                    batch_size=ONNXSIM_BATCH,
                )
            model = tuned
            seconds = time.perf_counter() - started
            notes.append(f"block finetune {steps} steps x {len(blocks)} blocks, {seconds:.0f} s")
            log(f"  onnxsim: block finetune in {time.perf_counter() - started:.0f} s")
        except Exception as exc:  # the point is kept without it, and says why
            why = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:160]
            notes.append(f"block finetune failed, ridge refit only ({why})")
            log(f"  onnxsim: block finetune failed: {why}")
    if _non_ffn_params(model) != _non_ffn_params(original):
        notes.append("also pruned outside the FFN blocks")
    return model, {"note": "; ".join(notes)}


def _int8(spec: dict) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(spec["input"], spec["output"], weight_type=QuantType.QInt8)
    return {"note": "quantize_dynamic, QInt8 weights, per tensor"}


def work(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    kind = spec["kind"]
    if kind == "int8":
        result = _int8(spec)
    else:
        model = onnx.load(spec["input"])
        if kind == "onnxsim":
            model, result = _onnxsim(model, spec)
        else:
            from tools.minilm_bench.baselines import baseline

            result = baseline(model, spec["method"], spec["share"], _calibration(spec["calib"]))
        onnx.save(model, spec["output"])
    Path(spec["result"]).write_text(json.dumps(result) + "\n")
    print(f"{kind} {spec.get('method', '')} share {spec.get('share')}: done")
    return 0
