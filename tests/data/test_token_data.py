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
from onnx_lump.graph.read.chains import scan_graph
from onnx_lump.graph.write.importer import import_graph
from onnx_lump.methods import Lump, Method, Reduction
from onnx_lump.methods.base import ChainProblem
from onnx_lump.ode.partition import PartitionOptions, Similarity
from onnx_lump.ode.span import select_span, span_order
from onnx_lump.runtime import resolve_providers
from onnx_lump.types import ChainResult, ReducedLayer

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


# -- memory on many token rows ------------------------------------------------------------

_CHILD = """
import sys
from onnx_lump.cli import main
code = main(sys.argv[1:]) if sys.argv[1:] else 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("PEAK", int(line.split()[1]) * 1024)
sys.exit(code)
"""


def _token_ffn_model(path, d_model: int, width: int, seed: int) -> None:
    """Two FFN chains (d_model -> width GELU -> d_model) with a residual Add and a
    LayerNormalization after each, on rank-3 rows (batch, seq, d_model), beside an
    int64 attention_mask input that the graph does not read (a model may ignore one)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for block in range(2):
        w1 = (rng.normal(size=(d_model, width)) / np.sqrt(d_model)).astype(np.float32)
        w2 = (rng.normal(size=(width, d_model)) / np.sqrt(width)).astype(np.float32)
        names = [f"w1_{block}", f"b1_{block}", f"w2_{block}", f"b2_{block}", f"g_{block}"]
        values = [w1, rng.normal(size=width).astype(np.float32) * 0.1, w2]
        values += [np.zeros(d_model, np.float32), np.ones(d_model, np.float32)]
        inits += [numpy_helper.from_array(v, n) for v, n in zip(values, names, strict=True)]
        p = f"blk{block}_"
        nodes += [
            helper.make_node("MatMul", [current, names[0]], [p + "mm1"]),
            helper.make_node("Add", [p + "mm1", names[1]], [p + "pre"]),
            helper.make_node("Gelu", [p + "pre"], [p + "act"]),
            helper.make_node("MatMul", [p + "act", names[2]], [p + "mm2"]),
            helper.make_node("Add", [p + "mm2", names[3]], [p + "ffn"]),
            helper.make_node("Add", [p + "ffn", current], [p + "res"]),
            helper.make_node("LayerNormalization", [p + "res", names[4]], [p + "out"], axis=-1),
        ]
        current = p + "out"
    graph = helper.make_graph(
        [*nodes, helper.make_node("Identity", [current], ["y"])],
        "token_ffn",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", d_model]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", d_model])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, path)


def _peak(*args: str) -> tuple[int, int]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, timeout=600
    )
    peak = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK")]
    assert peak, done.stderr[-2000:]
    return done.returncode, peak[0]


def test_token_rows_data_path_memory_stays_below_a_dense_copy(tmp_path):
    """96,000 token rows (a fifth of them padding) through a 1,024-wide FFN: a float64
    copy of every row's activations would take 786 MB; the search, span reduction,
    refinement and verification together stay below that above the interpreter's own
    (measured: 618 MB; the largest single holders are the float32 activations of the
    kept neurons, 157 MB, and onnxruntime's working memory)."""
    d_model, width, sentences, positions = 64, 1024, 3000, 32
    source, out = tmp_path / "ffn.onnx", tmp_path / "out.onnx"
    _token_ffn_model(source, d_model, width, 11)
    rng = np.random.default_rng(12)
    lengths = rng.integers(positions // 2, positions + 1, size=sentences)
    mask = (np.arange(positions)[None, :] < lengths[:, None]).astype(np.int64)
    calib = tmp_path / "calib.npz"
    np.savez(
        calib,
        x=rng.normal(size=(sentences, positions, d_model)).astype(np.float32),
        attention_mask=mask,
    )
    dense = sentences * positions * width * 8
    # the interpreter, the libraries and the calibration file loaded: nothing compressed
    _, base = _peak()
    code, peak = _peak(
        str(source), str(out), "--calib", str(calib), "--reduction", "span",
        "--target-params", "0.5", "--refine-seconds", "5", "-q",
    )  # fmt: skip
    assert code == 0
    calibration_bytes = sentences * positions * (d_model * 4 + 8)
    assert peak - base - calibration_bytes < dense, (
        f"peak {peak / 2**20:.0f} MB, interpreter {base / 2**20:.0f} MB, "
        f"dense copy {dense / 2**20:.0f} MB"
    )


def test_uniform_span_keeps_the_same_share_of_every_layer():
    """span-uniform at eps keeps round((1 - eps) x width) neurons of every FFN, by the
    same pivot order as span; its hint is exact, so a size search lands in one step."""
    calibration = _sentences(80, 8, 13)
    method = Lump(
        PartitionOptions(0.6, similarity=Similarity.DATA), reduction=Reduction.SPAN_UNIFORM
    )
    _, report = compress(MODEL, method, calibration=calibration, refine=False, verify=False)
    assert report.widths_after == [[26], [26]]  # 64 * 0.4 = 25.6
    chains = scan_graph(import_graph(MODEL)).chains
    problem = ChainProblem(chains_system(chains[0]), np.zeros((3, MANIFEST["hidden"])))
    assert method.knob_hint(problem, 0.25) == pytest.approx(0.75)


def chains_system(chain):
    from onnx_lump.ode.encoding import encode_chain

    return encode_chain(chain)


def test_sequential_and_mask_input_without_calib_warn_they_do_nothing(tmp_path, capsys):
    from onnx_lump.cli import main

    out = tmp_path / "out.onnx"
    source = str(FIXTURES / "bert_torchscript.onnx")
    assert main([source, str(out), "--sequential", "--mask-input", "m", "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: --sequential has no effect without --calib" in err
    assert "warning: --mask-input has no effect without --calib" in err
