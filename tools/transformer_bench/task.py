"""The transformer task: the model, its calibration feeds, and the held-out scorer that
measures every method's written model."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_lump.graph.read.chains import scan_graph
from onnx_lump.graph.write.importer import import_graph
from tools.transformer_bench.common import INPUT_NAME, OUTPUT_NAME, THREADS, Point, log

__all__ = ["Task"]


class Task:
    """The model, its calibration feeds, and the held-out scorer."""

    def __init__(self, cache: Path) -> None:
        path = cache / "charlm_2x128.onnx"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run python -m tools.train_transformer first")
        self.path = path
        self.model = onnx.load(str(path))
        self.meta = json.loads((cache / "meta.json").read_text())
        self.calibration = {INPUT_NAME: np.load(cache / "calib.npz")[INPUT_NAME]}
        held = np.load(cache / "heldout.npz")
        self.tokens, self.next_chars = held[INPUT_NAME], held["next_chars"]
        chains = scan_graph(import_graph(self.model)).chains
        self.n_chains = len(chains)
        self.ffn_params = sum(c.n_params for c in chains)
        self.chain_names = [c.describe() for c in chains]
        self.reference_logits = self.logits(self.model)
        self.loss, self.accuracy = self.score(self.reference_logits)
        self.spread = float(self.reference_logits.std())

    def logits(self, model: onnx.ModelProto) -> np.ndarray:
        """The model's logits on the held-out windows, from a file written to disk."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.log_severity_level = 3
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path))
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            parts = [
                session.run([OUTPUT_NAME], {INPUT_NAME: self.tokens[i : i + 128]})[0]
                for i in range(0, len(self.tokens), 128)
            ]
        return np.concatenate(parts)

    def score(self, logits: np.ndarray) -> tuple[float, float]:
        flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
        flat -= flat.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(flat).sum(axis=1))
        targets = self.next_chars.reshape(-1)
        picked = flat[np.arange(flat.shape[0]), targets]
        return float(np.mean(log_norm - picked)), float(np.mean(flat.argmax(axis=1) == targets))

    def measure(self, method: str, knob: float, model, ffn_params, structured, seconds, **extra):
        logits = self.logits(model)
        loss, accuracy = self.score(logits)
        fidelity = float(np.sqrt(np.mean((logits - self.reference_logits) ** 2))) / self.spread
        point = Point(
            method,
            float(knob),
            int(ffn_params),
            self.ffn_params,
            structured,
            loss,
            accuracy,
            float(seconds),
            fidelity=fidelity,
            **extra,
        )
        log(
            f"  {method:<12} knob={knob:<10.4g} FFN {point.kept:5.1f}%  loss {loss:.4f} "
            f"(+{100 * (loss / self.loss - 1):6.2f}%)  acc {accuracy:.4f}  "
            f"fidelity {fidelity:.3g}  {seconds:.1f}s"
        )
        return point
