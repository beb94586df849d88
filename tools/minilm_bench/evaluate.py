"""Measuring one written model against its export's original: sizes, the embedding
scores and the latency ratios, into a :class:`Point`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from tools.minilm_bench.common import LATENCY_BATCHES, Point, log
from tools.minilm_bench.graph import ffns, model_params
from tools.minilm_bench.metrics import Reference, embed, latencies, scores

__all__ = ["Original"]


class Original:
    """One export's original model: its sizes and its embeddings of the evaluation
    sentences, against which every compressed model of that export is measured."""

    def __init__(self, export: str, path: Path, feeds, latency_feeds, repeats: int):
        self.export, self.path = export, path
        self.feeds, self.latency_feeds, self.repeats = feeds, latency_feeds, repeats
        model = onnx.load(str(path))
        blocks = ffns(model)
        self.ffn_params = sum(f.params for f in blocks)
        self.widths = [f.hidden for f in blocks]
        self.model_params = model_params(model)
        self.bytes = path.stat().st_size
        started = time.perf_counter()
        self.reference = Reference(embed(path, feeds))
        log(
            f"{export}: {len(blocks)} FFN blocks {self.widths}, {self.ffn_params:,} FFN "
            f"params, {self.model_params:,} in all; embedded in "
            f"{time.perf_counter() - started:.0f} s"
        )

    def point(self, latency: bool) -> Point:
        """The original itself, as a point (its latency against itself is a noise check)."""
        p = Point(self.export, "original", 1.0, note="the export itself")
        self.measure(p, self.path, latency=latency)
        return p

    def measure(
        self, p: Point, path: Path, source_ffn: int | None = None, latency: bool = True
    ) -> Point:
        """Fill ``p`` with the model at ``path``'s sizes and scores. ``source_ffn``: the FFN
        parameters of the model it quantizes (an int8 model's FFNs are not float MatMuls)."""
        model = onnx.load(str(path))
        blocks = ffns(model)
        p.ffn_params_before = self.ffn_params
        p.model_params_before = self.model_params
        p.bytes_before = self.bytes
        if source_ffn is not None:
            p.ffn_params = source_ffn
        else:
            p.ffn_params = sum(f.params for f in blocks)
            p.widths = [f.hidden for f in blocks]
            if len(blocks) != len(self.widths):
                extra = f"{len(blocks)} FFN blocks found (of {len(self.widths)})"
                p.note = f"{p.note}; {extra}" if p.note else extra
        p.model_params = model_params(model)
        p.bytes = path.stat().st_size
        del model
        for key, value in scores(self.reference, embed(path, self.feeds)).items():
            setattr(p, key, value)
        if latency:
            after, before, ratio = latencies(self.path, path, self.latency_feeds, self.repeats)
            p.latency_ms = {**after, **{f"{k}_original": v for k, v in before.items()}}
            p.latency_ratio = ratio
        p.measured_at = time.strftime("%Y-%m-%d %H:%M:%S")
        lat = " ".join(f"b{b} x{p.latency_ratio.get(f'b{b}', np.nan):.2f}" for b in LATENCY_BATCHES)
        kept = f"{p.ffn_kept:.1f}" if p.ffn_kept is not None else "?"
        log(
            f"  {p.export} {p.method} {100 * p.share:.0f}%: FFN {kept}%, cosine "
            f"{p.cosine_mean:.4f} (p5 {p.cosine_p5:.4f}), R@10 {p.recall10:.3f}, Spearman "
            f"{p.spearman:.4f}, {p.bytes / 1e6:.1f} MB, latency {lat}"
        )
        return p
