"""Property-based tests over generated dense chains (see tests/strategies.py).

For every generated chain, the pass at eps 0, through the API or the CLI, writes a file
that passes ``onnx.checker``, whose hidden widths are exactly the planted ones, and that
onnxruntime, loading it from disk, runs to the original's outputs within the dtype's
rounding. Widths never grow as eps grows.

Profiles (tests/conftest.py): the default ``ci`` is derandomised; ``HYPOTHESIS_PROFILE=
thorough`` draws many more, random, examples.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import event, example, given, note, settings
from hypothesis import strategies as st
from strategies import (
    ACTIVATIONS,
    DTYPES,
    Built,
    ChainSpec,
    DenseForm,
    HiddenSpec,
    build,
    chain_specs,
    drawn_activations,
    reader_reads,
    runs_in_onnxruntime,
    supported_activation_ops,
    usable_activations,
)

from onnx_lump import lump
from onnx_lump.cli import main
from onnx_lump.graph.io.save import save_model

# Relative to the largest output, as tests/graph/read/test_fixtures.py judges the fixtures.
TOLERANCE = {"float16": 4e-3, "float32": 1e-5, "float64": 1e-12}
# Ops the pass reads that the generator cannot write yet, with the reason.
NOT_GENERATED: dict[str, str] = {}

_EXAMPLES = settings.default.max_examples


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def observed_widths(path: Path, feeds: dict[str, np.ndarray]) -> list[int]:
    """Hidden widths of the file at ``path`` as onnxruntime computes them: the last axis of
    every Gemm/MatMul output but the last, read by running the model with those tensors
    as extra outputs (not by the pass's reader, nor by shape inference, which knows no
    com.microsoft ops)."""
    model = onnx.load(str(path))
    names = [n.output[0] for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    run = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [value.shape[-1] for value in run.run(names[:-1], feeds)]


def worst_relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    e64, a64 = expected.astype(np.float64), actual.astype(np.float64)
    return float(np.abs(e64 - a64).max() / max(np.abs(e64).max(), 1e-30))


def describe(built: Built) -> str:
    spec = built.spec
    acts = ",".join(h.activation for h in spec.hidden)
    ops = ",".join(f.op for f in spec.forms)
    return f"{spec.dtype} rank{spec.rank} [{acts}] [{ops}] {built.planted}->{built.expected}"


def run_pass(built: Built, source: Path, target: Path, via_cli: bool) -> list[int] | None:
    """Write the reduced model to ``target``; the widths the report states (API only)."""
    if via_cli:
        out, err = io.StringIO(), io.StringIO()
        argv = [str(source), str(target), "--eps", "0", *built.input_shape_args()]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        assert code == 0, f"exit {code}\nstdout:\n{out.getvalue()}\nstderr:\n{err.getvalue()}"
        return None
    reduced, report = lump(onnx.load(str(source)), 0.0, verify=False)
    save_model(reduced, target)
    return [s.width_after for s in report.layers[:-1]]


_ADD = DenseForm("MatMul", trans_b=False, bias="right")
_NO_BIAS = DenseForm("MatMul", trans_b=False, bias="none")
_ROW3 = DenseForm("MatMul", trans_b=False, bias="right", bias_shape="row3")
# Failures the properties found, kept as examples that always run.
_FOUND = [
    # A zero row (constant neuron) in an identity layer, or in a bias-free Relu layer:
    # its scale of 0 made NaN canonical rows, and two distinct neurons merged (error 49%).
    ChainSpec(
        "float16", 2, None, 2, 1, (HiddenSpec("identity", (), 2, 0, 0, 1),), (_ADD,) * 2, False, 0
    ),
    ChainSpec(
        "float32", 2, None, 4, 2, (HiddenSpec("Relu", (), 6, 1, 0, 1),), (_NO_BIAS,) * 2, False, 0
    ),
    # A bias Add given to a bias-free MatMul whose width changed kept the old value_info of
    # the tensor it took over: onnx.checker rejected the file.
    ChainSpec(
        "float32",
        2,
        None,
        1,
        1,
        (
            HiddenSpec("Sigmoid", (), 1, 0, 0, 1),
            HiddenSpec("identity", (), 1, 1),
            HiddenSpec("Sigmoid", (), 1),
        ),
        (_ADD, _NO_BIAS, _ADD, _ADD),
        True,
        0,
    ),
    # A (1, 1, H) bias on a rank-3 hidden layer without value_info ended the chain; after a
    # decomposed activation (x * Sigmoid(x), 0.5 x (1 + Erf(x / sqrt 2))) it still does.
    ChainSpec(
        "float32", 3, 3, 2, 1, (HiddenSpec("Tanh", (), 1, 1),) * 2, (_ADD, _ROW3, _ADD), False, 0
    ),
    ChainSpec(
        "float32",
        3,
        3,
        2,
        1,
        (HiddenSpec("x*Sigmoid(x)", (), 1, 1),) * 2,
        (_ADD, _ROW3, _ADD),
        False,
        0,
    ),
    # Negated rows through Clip(-1, 1), which the registry declares odd.
    ChainSpec(
        "float16",
        3,
        3,
        1,
        1,
        (HiddenSpec("Clip", (("bounds", (-1.0, 1.0)),), 1, 0, 1),),
        (_ADD,) * 2,
        False,
        0,
    ),
]


def _with_found_examples(test):
    for spec in reversed(_FOUND):
        test = example(spec=spec, via_cli=False)(test)
    return test


@settings(max_examples=_EXAMPLES)
@given(spec=chain_specs(), via_cli=st.sampled_from([False, False, False, True]))
@_with_found_examples
def test_eps_zero_is_exact_on_the_written_file(spec, via_cli):
    built = build(spec)
    note(describe(built))
    event(f"dtype {spec.dtype}")
    event("cli" if via_cli else "api")
    event(f"rank {spec.rank}")
    for hidden in spec.hidden:
        event(f"activation {hidden.activation}")
    for form in spec.forms:
        event(
            f"{form.op} bias {form.bias}"
            + (f" transB={int(form.trans_b)}" if form.op == "Gemm" else "")
        )
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.onnx", Path(folder) / "out.onnx"
        onnx.save(built.model, str(source))
        reported = run_pass(built, source, target, via_cli)

        onnx.checker.check_model(str(target), full_check=True)
        feeds = built.feeds()
        widths = observed_widths(target, feeds)
        assert all(w <= p for w, p in zip(widths, built.expected, strict=True)), (
            f"wider than planted: {widths} > {built.expected}"
        )
        assert widths == built.expected
        if reported is not None:
            assert reported == widths

        expected = session(source).run(None, feeds)[0]
        actual = session(target).run(None, feeds)[0]
        assert actual.shape == expected.shape and actual.dtype == expected.dtype
        error = worst_relative_error(expected, actual)
        if error > TOLERANCE[spec.dtype]:
            # The original's own rounding can exceed the tolerance: deep float16 chains,
            # and onnxruntime's FastGelu/QuickGelu/Gelu(tanh), float32-accurate even in
            # float64. Then the reduced model must be as close to the exact (numpy float64)
            # output as the original is, twice over, plus the tolerance.
            event(f"{spec.dtype} rounding judged against float64")
            exact = built.reference(feeds)
            assert exact is not None, f"relative error {error:.3g}"
            own, reduced = (worst_relative_error(exact, y) for y in (expected, actual))
            assert reduced <= 2 * own + TOLERANCE[spec.dtype], (
                f"relative error {error:.3g}; to the exact output {reduced:.3g}, "
                f"the original's {own:.3g}"
            )


@settings(max_examples=max(10, _EXAMPLES // 4))
@given(
    spec=chain_specs(max_depth=3, max_width=32),
    eps=st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=2, max_size=5),
)
def test_widths_never_grow_with_eps(spec, eps):
    model = build(spec).model
    previous = None
    for value in sorted({0.0, *eps}):
        _, report = lump(model, value, verify=False)
        widths = [s.width_after for s in report.layers[:-1]]
        if previous is not None:
            assert all(w <= p for w, p in zip(widths, previous, strict=True)), (
                f"eps {value}: {previous} -> {widths}"
            )
        previous = widths
    event("merged beyond the planted widths" if previous != build(spec).expected else "no more")


def test_every_activation_the_registry_lists_is_read_and_generated():
    """Each op the pass's registry lists is recognised by its reader in a two-layer chain
    and drawn by the generator in some dtype onnxruntime runs."""
    listed = supported_activation_ops() - set(NOT_GENERATED)
    unread = sorted(op for op in listed if not reader_reads(op))
    assert not unread, f"listed in SUPPORTED_ACTIVATION_OPS, not read by chains.py: {unread}"
    unknown = sorted(listed - set(ACTIVATIONS))
    assert not unknown, f"add an entry to tests/strategies.py ACTIVATIONS for {unknown}"
    unrun = sorted(op for op in listed if not any(runs_in_onnxruntime(op, d) for d in DTYPES))
    assert not unrun, f"onnxruntime runs these in no dtype: {unrun}"
    assert listed <= drawn_activations()


def test_every_dtype_draws_more_than_the_identity():
    for dtype in DTYPES:
        assert len(usable_activations(dtype)) > 1, dtype
