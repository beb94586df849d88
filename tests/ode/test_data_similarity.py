"""The data similarity's rows and statistics: one (neurons x samples) array or chunks of
samples give the same statistics; beyond SIMILARITY_SAMPLES rows a seeded subset is
compared, and the planted groups still merge."""

from __future__ import annotations

import numpy as np

import onnx_lump.ode.data_similarity as data_similarity
from onnx_lump.activations import Activation, ActivationKind
from onnx_lump.ode.canonical_rows import CanonicalRows
from onnx_lump.ode.equivalence import backward_lumping
from onnx_lump.ode.partition import PartitionOptions, Similarity

TANH = Activation(ActivationKind.TANH)


def _layer(seed: int = 5, groups: int = 30, copies: int = 3, n_in: int = 10):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((groups, n_in))
    weight = np.repeat(base, copies, axis=0) + 1e-3 * rng.standard_normal((groups * copies, n_in))
    return weight, 0.1 * rng.standard_normal(groups * copies), rng


def test_chunked_statistics_equal_whole_array_statistics(monkeypatch):
    weight, bias, rng = _layer()
    x = rng.standard_normal((700, weight.shape[1]))
    rows = CanonicalRows(weight, None, bias, np.ones(len(bias)))
    whole = data_similarity.Support.of(data_similarity.neuron_rows(rows, x), TANH)
    monkeypatch.setattr(data_similarity, "SAMPLE_CHUNK_ENTRIES", 900)  # 10 samples a chunk
    chunked = data_similarity.chunked_support(rows, x, TANH)
    # the compared rows are float32 products (float32 inputs), the chunks float64 ones
    for name in ("pre_std", "post_std", "post_mean", "low", "high"):
        np.testing.assert_allclose(
            getattr(chunked, name), getattr(whole, name), rtol=1e-6, atol=1e-7
        )


def test_many_rows_compare_a_seeded_subset(monkeypatch):
    weight, bias, rng = _layer()
    x = rng.standard_normal((3000, weight.shape[1]))
    options = PartitionOptions(0.05, similarity=Similarity.DATA)
    everything = backward_lumping(weight, bias, TANH, options, 1e-7, x)
    monkeypatch.setattr(data_similarity, "SIMILARITY_SAMPLES", 1000)
    chosen = data_similarity.similarity_samples(3000)
    assert chosen.size == 1000 and np.all(np.diff(chosen) > 0)
    np.testing.assert_array_equal(chosen, data_similarity.similarity_samples(3000))  # seeded
    subset = backward_lumping(weight, bias, TANH, options, 1e-7, x)
    # the planted triples are far closer than eps on any rows: the same groups
    np.testing.assert_array_equal(subset.block, everything.block)
    assert everything.n_blocks < 45  # most planted triples merge: a real comparison
