"""Generate the ONNX test fixtures for ``onnx_lump``.

Run from the repository root::

    python -m tools.make_fixtures [--out tests/fixtures]

Every fixture is a small dense network (MatMul/Gemm chains) whose hidden
layers contain PLANTED redundant neurons, so an exact (epsilon=0) neuron
merging pass has a known expected result. The script is deterministic: every
fixture draws from its own RNG seeded by its file name, so rerunning it
rewrites byte-identical files (for the same torch / skl2onnx versions, which
the exported models record as producer_version). Each written model is
checked with ``onnx.checker`` (full_check) and run once in onnxruntime.

Planting works on "canonical" layers ``(W, b)`` with ``W`` of shape
(out x in), i.e. one row per neuron, and ``b`` of shape (out,). For hidden
layer ``L``, the rows live in dense layer ``L`` and the outgoing weights are
the columns of dense layer ``L + 1``. Planted kinds (``W[k] = scale * W[of]``
and ``b[k] = scale * b[of]``):

* ``duplicate``    scale 1.0, any activation;
* ``proportional`` scale c > 0, Relu / LeakyRelu only (positively homogeneous);
* ``sign_flip``    scale -1.0, Tanh / Sigmoid only (odd / point-symmetric);
* ``zero_row``     ``W[k] = 0`` (bias kept): a constant neuron, ``of`` is null
  and scale is 0.0.

Proportional scales are powers of two (0.5, 2.0, 4.0): then ``c * W[i]`` is
exact in binary floating point and ratios of planted rows are exactly ``c``,
so "exact" merging is well defined (a scale like 2.5 would leave rounding
noise in float32 and make epsilon=0 results ambiguous).
Planted neurons get fresh outgoing weights bounded away from zero, so merging
them changes the computation and must be compensated.

Manifest (``manifest.json``): a list with one object per fixture::

    {
      "file": "skl_relu.onnx",
      "source": "skl2onnx" | "torch-dynamo-false" | "onnx.helper",
      "opset": 21, "ir_version": 10,
      "ops": ["Add", "Cast", ...],          # sorted unique op types
      "dtype": "float32",                    # element type of the first input
      "inputs": {"X": [null, 4]},            # null = dynamic dimension
      "outputs": {"variable": [null, 1]},
      "activation": "Relu",                  # activation of the merge chains
      "hidden_widths": [12, 10],             # every hidden layer, graph order
      "expected_hidden_widths": [10, 8],     # after exact merging
      "chains": [[12, 10]],                  # hidden widths per mergeable chain
      "expected_chains": [[10, 8]],
      "planted": [{"layer": 0, "kind": "duplicate", "neuron": 7, "of": 2,
                   "scale": 1.0, "expect_merged": true}, ...],
      "notes": "..."
    }

``layer`` indexes ``hidden_widths``. Hidden layers are listed in graph order
over all chains; for branching fixtures that is per branch in the order of
the graph outputs. ``expect_merged`` is false for planted neurons that must
survive (observable layer, layer feeding an unsupported op), so for every
layer: expected width = width - number of plants with ``expect_merged``.
``chains`` lists, per chain, the widths of the hidden layers a merge pass may
touch; hidden layers outside every chain (e.g. a Sin layer) are only in
``hidden_widths``.

Modules: ``planting`` (the planted kinds, planting into canonical layers, the
:class:`Fixture` record), ``builder`` (hand-built graphs with onnx.helper),
``exported`` (the skl2onnx and TorchScript fixtures), ``handbuilt`` (the onnx.helper
fixtures), ``manifest`` (manifest entries and the smoke test), ``patterns`` (the
``--patterns`` fixtures) and ``__main__`` (the fixture list and the command line).
"""

from __future__ import annotations

__all__: list[str] = []
