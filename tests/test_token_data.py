"""Token data: padding masks, sequential calibration and the span order, on the tiny BERT
fixture (``tools/make_bert_fixtures.py``: TorchScript export of a 2-block BertModel that
takes input_ids / attention_mask / token_type_ids)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import scipy.linalg
import scipy.special
from conftest import FIXTURES

from onnx_lump import compress
from onnx_lump.data.calibration import chain_inputs, token_mask
from onnx_lump.graph.chains import scan_graph
from onnx_lump.graph.rewrite import import_graph
from onnx_lump.methods import Lump, Method, Reduction
from onnx_lump.methods.base import ChainProblem, ChainResult
from onnx_lump.ode.equivalence import PartitionOptions, Similarity
from onnx_lump.ode.reduction import ReducedLayer
from onnx_lump.ode.span import select_span, span_order
from onnx_lump.runtime import resolve_providers

MANIFEST = json.loads((FIXTURES / "bert_manifest.json").read_text())
MODEL = onnx.load(FIXTURES / "bert_torchscript.onnx")
VOCAB = MANIFEST["vocab"]


def _sentences(n: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` sentences of ``length`` real tokens each (no padding)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, length))
    return {
        "input_ids": ids.astype(np.int64),
        "attention_mask": np.ones((n, length), np.int64),
        "token_type_ids": np.zeros((n, length), np.int64),
    }


def _padded(feeds: dict[str, np.ndarray], extra: int, seed: int) -> dict[str, np.ndarray]:
    """The same sentences with ``extra`` padding positions of random ids appended:
    positions that behave unlike real tokens (their ids are arbitrary)."""
    rng = np.random.default_rng(seed)
    n = feeds["input_ids"].shape[0]
    return {
        "input_ids": np.concatenate(
            [feeds["input_ids"], rng.integers(0, VOCAB, size=(n, extra))], axis=1
        ),
        "attention_mask": np.concatenate(
            [feeds["attention_mask"], np.zeros((n, extra), np.int64)], axis=1
        ),
        "token_type_ids": np.concatenate(
            [feeds["token_type_ids"], np.zeros((n, extra), np.int64)], axis=1
        ),
    }


def _span(eps: float) -> Lump:
    return Lump(PartitionOptions(eps, similarity=Similarity.DATA), reduction=Reduction.SPAN)


def _ffn_layers(report) -> list[list[np.ndarray]]:
    return [[layer.weight for layer in result.layers] for result in report.results]


def test_token_mask_reads_the_attention_mask_and_nothing_else():
    feeds = _padded(_sentences(4, 5, 0), 3, 1)
    mask = token_mask(feeds)
    assert mask.shape == (4, 8) and mask.sum() == 20
    assert token_mask(feeds, None) is None
    assert token_mask({"x": np.ones((4, 3))}) is None


def test_chain_rows_leave_padding_out():
    chains = scan_graph(import_graph(MODEL)).chains
    assert len(chains) == 2
    plain = _sentences(6, 7, 2)
    padded = _padded(plain, 5, 3)
    run_on = resolve_providers(["cpu"])
    without = chain_inputs(MODEL, chains, plain, run_on, token_mask(plain))
    masked = chain_inputs(MODEL, chains, padded, run_on, token_mask(padded))
    unmasked = chain_inputs(MODEL, chains, padded, run_on, None)
    for rows, same, every in zip(without, masked, unmasked, strict=True):
        assert rows.shape == same.shape == (42, MANIFEST["hidden"])
        np.testing.assert_allclose(same, rows, atol=1e-4)
        assert every.shape[0] == 72


def test_padding_rows_do_not_change_the_compression():
    """Padding positions with arbitrary ids, masked, leave the compression as it is
    without them; unmasked, they change it."""
    plain = _sentences(60, 8, 4)
    padded = _padded(plain, 8, 5)
    method = _span(0.15)
    _, clean = compress(MODEL, method, calibration=plain, refine=False, verify=False)
    _, masked = compress(MODEL, method, calibration=padded, refine=False, verify=False)
    _, unmasked = compress(
        MODEL, method, calibration=padded, refine=False, verify=False, mask_input=None
    )
    assert masked.widths_after == clean.widths_after
    for ours, theirs in zip(_ffn_layers(masked), _ffn_layers(clean), strict=True):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-3)
    changed = unmasked.widths_after != clean.widths_after or any(
        a.shape != b.shape or not np.allclose(a, b, atol=1e-3)
        for ours, theirs in zip(_ffn_layers(unmasked), _ffn_layers(clean), strict=True)
        for a, b in zip(ours, theirs, strict=True)
    )
    assert changed


class _PlantedError(Method):
    """Lumping at eps 0 (data similarity, refits), with noise planted in the output layer
    of the first chain it compresses."""

    name = "planted"

    def __init__(self) -> None:
        self.calls = 0
        self.lump = Lump(PartitionOptions(0.0, similarity=Similarity.DATA))

    def compress(self, problem: ChainProblem) -> ChainResult:
        result = self.lump.compress(problem)
        self.calls += 1
        if self.calls == 1:
            last = result.layers[-1]
            noise = np.random.default_rng(7).normal(scale=0.3, size=last.weight.shape)
            result.layers[-1] = ReducedLayer(last.weight * (1.0 + noise), last.bias)
        return result


def _chain_output(result: ChainResult, rows: np.ndarray) -> np.ndarray:
    first, second = result.layers
    hidden = rows @ first.weight.T + first.bias
    hidden = 0.5 * hidden * (1.0 + scipy.special.erf(hidden / np.sqrt(2.0)))
    return hidden @ second.weight.T + second.bias


def test_sequential_calibration_lets_the_next_chain_compensate():
    """Noise planted in chain 0; chain 1 (eps 0, refit) fitted sequentially copies the
    original chain 1's output from its perturbed inputs better than fitted on the
    original inputs, and the whole model's held-out error drops."""
    calibration = _sentences(200, 10, 6)
    models, reports = {}, {}
    for sequential in (False, True):
        models[sequential], reports[sequential] = compress(
            MODEL,
            _PlantedError(),
            calibration=calibration,
            refine=False,
            verify=False,
            sequential=sequential,
        )
    plain, followed = reports[False], reports[True]
    # the same planted chain 0 in both
    for a, b in zip(_ffn_layers(plain)[0], _ffn_layers(followed)[0], strict=True):
        np.testing.assert_array_equal(a, b)
    chains = scan_graph(import_graph(MODEL)).chains
    test = _sentences(50, 10, 8)
    run_on = resolve_providers(["cpu"])
    original = chain_inputs(MODEL, chains, test, run_on)[1]
    perturbed = chain_inputs(models[False], chains, test, run_on)[1]
    target = _chain_output(
        ChainResult([ReducedLayer(w, b) for w, b in chains_weights(chains[1])]), original
    )

    def error(report) -> float:
        output = _chain_output(report.results[1], perturbed)
        return float(np.sqrt(np.mean((output - target) ** 2)))

    assert error(followed) < 0.5 * error(plain)
    assert followed.holdout_error < plain.holdout_error


def chains_weights(chain) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(layer.weight, layer.bias) for layer in chain.layers]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_span_order_picks_the_pivots_of_pivoted_qr(seed):
    rng = np.random.default_rng(seed)
    activations = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20))
    activations[:, 5] *= 10.0  # a clear first pivot
    mean = activations.mean(axis=0)
    centred = activations - mean
    _, _, qr_order = scipy.linalg.qr(centred, pivoting=True)
    order = span_order(mean, centred.T @ centred)
    assert order.order[0] == 5
    np.testing.assert_array_equal(order.order[:10], qr_order[:10])
    # the width an eps asks for, and the eps a width leaves, agree
    for width in (1, 4, 11, 20):
        assert order.width_for(order.eps_for(width)) <= width
    assert order.eps_for(20) == 0.0
    kept = order.keep(8)
    rebuilt = activations[:, kept.kept] @ kept.coefficients.T + kept.offset
    lstsq = np.linalg.lstsq(
        np.c_[activations[:, kept.kept], np.ones(300)], activations[:, kept.removed], rcond=None
    )[0]
    np.testing.assert_allclose(
        rebuilt, np.c_[activations[:, kept.kept], np.ones(300)] @ lstsq, atol=1e-8
    )
    assert select_span(activations, order.eps_for(8)).kept.size <= 8
