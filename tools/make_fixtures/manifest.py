"""The manifest entry of a written fixture, its JSON layout, and the smoke test every
written model passes (full checker, one finite onnxruntime run)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

__all__ = ["manifest_entry", "manifest_json", "smoke_test", "value_dims"]


def value_dims(value_info):
    """Static dims as ints, dynamic ones (dim_param or unset) as None."""
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def manifest_entry(file, fx):
    graph = fx.model.graph
    expected = [
        width - sum(p.expect_merged for p in fx.plants if p.layer == layer)
        for layer, width in enumerate(fx.hidden_widths)
    ]
    chains = fx.chain_layers or [list(range(len(fx.hidden_widths)))]
    elem = graph.input[0].type.tensor_type.elem_type
    return {
        "file": file,
        "source": fx.source,
        "opset": next(o.version for o in fx.model.opset_import if o.domain in ("", "ai.onnx")),
        "ir_version": fx.model.ir_version,
        "ops": sorted({n.op_type for n in graph.node}),
        "dtype": str(helper.tensor_dtype_to_np_dtype(elem)),
        "inputs": {i.name: value_dims(i) for i in graph.input},
        "outputs": {o.name: value_dims(o) for o in graph.output},
        "activation": fx.activation,
        "hidden_widths": fx.hidden_widths,
        "expected_hidden_widths": expected,
        "chains": [[fx.hidden_widths[i] for i in c] for c in chains],
        "expected_chains": [[expected[i] for i in c] for c in chains],
        "planted": [asdict(p) for p in fx.plants],
        "notes": fx.notes,
    }


def manifest_json(manifest):
    """JSON with one line per field and per planted neuron: compact, diffable."""

    def entry(e):
        fields = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in e.items()]
        plants = ",\n".join(f"      {json.dumps(p)}" for p in e["planted"])
        fields[list(e).index("planted")] = f'    "planted": [\n{plants}\n    ]'
        return "  {\n" + ",\n".join(fields) + "\n  }"

    return "[\n" + ",\n".join(entry(e) for e in manifest) + "\n]\n"


def smoke_test(path, entry):
    """Full checker pass and a finite onnxruntime run at batch 3."""
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {
        name: rng.normal(size=[3 if d is None else d for d in dims]).astype(entry["dtype"])
        for name, dims in entry["inputs"].items()
    }
    outputs = session.run(None, feeds)
    assert all(np.isfinite(o).all() for o in outputs), path
