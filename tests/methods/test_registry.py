"""The method registry and the lumping options: one row per method drives the CLI's
choices, knobs and warnings; one LumpOptions drives lump(), LumpPass and the CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest
from builders import mlp, random_layers
from conftest import MODELS, activation_widths, run_ort

from onnx_lump import LumpOptions, lump
from onnx_lump.cli import main
from onnx_lump.cli.checks import KNOB_OPTIONS, KNOBS, LUMPING_METHODS, PRUNING_METHODS
from onnx_lump.cli.command import build_method, build_parser
from onnx_lump.errors import LumpError
from onnx_lump.integrations.onnx_ir import LumpPass
from onnx_lump.methods import Lump, Magnitude, Reduction, Scope, Sequence, registry
from onnx_lump.ode.partition import Equivalence, Similarity
from onnx_lump.pipeline.options import CalibrationOptions, CheckOptions
from onnx_lump.pipeline.run import run

FEEDS = {"x": np.random.default_rng(5).standard_normal((200, 4)).astype(np.float32)}


def parsed(*flags: str):
    return build_parser().parse_args(["in.onnx", "out.onnx", *flags])


def test_the_cli_offers_exactly_the_registered_methods():
    parser = build_parser()
    method_action = next(a for a in parser._actions if a.dest == "method")
    assert tuple(method_action.choices) == tuple(registry.METHODS)
    assert set(KNOBS) == set(registry.METHODS)
    assert set(LUMPING_METHODS) == {"lump", "lump+linear"}
    assert set(PRUNING_METHODS) == {"magnitude", "wanda", "ec"}
    for name, spec in registry.METHODS.items():
        method = build_method(name, 0.0, parsed("--method", name))
        assert method.name == name or isinstance(method, Sequence)
        # every knob a method has is an option of the command line
        if spec.knob is not None:
            assert hasattr(parsed(), KNOB_OPTIONS[spec.knob])


def test_the_cli_builds_each_method_with_its_options():
    lump_method = build_method("lump", 0.3, parsed("--reduction", "span", "--no-refit"))
    assert isinstance(lump_method, Lump)
    assert lump_method.options.eps == 0.3 and lump_method.reduction is Reduction.SPAN
    assert not lump_method.refit and lump_method.options.similarity is Similarity.WEIGHTS
    with_data = build_method("lump", 0.1, parsed("--calib", "c.npz"))
    assert with_data.options.similarity is Similarity.DATA
    assert build_method("magnitude", 0.4, parsed()).scope is Scope.LAYER
    assert build_method("ec", 0.4, parsed()).scope is Scope.GLOBAL
    magnitude = build_method("magnitude", 0.4, parsed("--scope", "global"))
    assert isinstance(magnitude, Magnitude) and magnitude.scope is Scope.GLOBAL
    assert build_method("linear", 0.25, parsed()).tau == 0.75
    chained = build_method("lump+linear", 0.2, parsed("--tau", "0.9"))
    assert isinstance(chained, Sequence) and chained.second.tau == 0.9


def test_an_unknown_method_name_is_a_lump_error():
    with pytest.raises(LumpError, match=r"unknown method 'prune'.*known: lump, exact"):
        registry.build_method("prune", 0.1)


def test_lump_options_read_strings_and_refuse_unknown_values():
    options = LumpOptions(equivalence="forward", similarity="affine", reduction="span-uniform")
    assert options.equivalence is Equivalence.FORWARD
    assert options.similarity is Similarity.AFFINE
    assert options.reduction is Reduction.SPAN_UNIFORM
    with pytest.raises(LumpError, match="reduction must be one of 'partition', 'span'"):
        LumpOptions(reduction="spam")
    for ridge in (-1.0, float("nan")):  # was taken silently by lump()
        with pytest.raises(LumpError, match="ridge must be a finite number >= 0"):
            LumpOptions(ridge=ridge)
    kwargs = {"refit": False, "verify": False}
    assert LumpOptions.take(kwargs) == LumpOptions(refit=False)
    assert kwargs == {"verify": False}  # the rest is compress()'s


def test_lump_takes_options_by_name_or_as_one_object_not_both():
    model = mlp(random_layers([4, 10, 8, 2], seed=1), ["Tanh", "Tanh"])
    calibration = FEEDS
    by_name, report_a = lump(
        model, 0.05, calibration=calibration, reduction="span", verify=False, refine=False
    )
    as_object, report_b = lump(
        model,
        0.05,
        options=LumpOptions(reduction=Reduction.SPAN),
        calibration=calibration,
        verify=False,
        refine=False,
    )
    assert "span reduction" in report_a.method and report_a.method == report_b.method
    assert activation_widths(by_name) == activation_widths(as_object)
    np.testing.assert_array_equal(run_ort(by_name, FEEDS)[0], run_ort(as_object, FEEDS)[0])
    with pytest.raises(LumpError, match="either as options"):
        lump(model, 0.05, options=LumpOptions(), refit=False)


def test_lump_pass_takes_every_lumping_option_and_refuses_unknown_keywords():
    model = mlp(random_layers([4, 10, 8, 2], seed=1), ["Tanh", "Tanh"])
    span = LumpPass(0.05, calibration=FEEDS, reduction="span", refine=False)
    result = span(ir.from_proto(model))
    assert result.modified and "span reduction" in span.last_report.method
    assert span.options == LumpOptions(reduction=Reduction.SPAN)
    with pytest.raises(LumpError, match=r"does not take \['epsilon'\]"):
        LumpPass(epsilon=0.1)
    with pytest.raises(LumpError, match="none with method="):
        LumpPass(method=Magnitude(0.5, Scope.LAYER), refit=False)
    # the pass's option fields and lump()'s are the same dataclass's
    fields = {f.name for f in dataclasses.fields(LumpOptions)}
    assert {"reduction", "force_refit", "similarity"} <= fields


def test_the_pipeline_runs_a_registry_method_as_lump_does():
    """pipeline.run with grouped options and a method built by name is lump() (the
    README's example of the layer below the keyword API)."""
    model = mlp(random_layers([4, 10, 8, 2], seed=1), ["Tanh", "Tanh"])
    method = registry.build_method("lump", 0.05, registry.MethodSettings(with_data=True))
    reduced, report = run(
        model,
        method,
        FEEDS,
        data=CalibrationOptions(holdout=0.25, seed=3),
        refine=False,
        check=CheckOptions(verify=True),
    )
    keyword, keyword_report = lump(
        model, 0.05, calibration=FEEDS, holdout=0.25, seed=3, refine=False
    )
    assert report.method == keyword_report.method
    assert report.holdout_error == keyword_report.holdout_error
    assert report.verification is not None and report.verification.n_samples == 50
    np.testing.assert_array_equal(run_ort(reduced, FEEDS)[0], run_ort(keyword, FEEDS)[0])


def test_span_is_the_default_with_data_and_a_similarity_asks_for_partitions():
    assert LumpOptions().reduction_for(with_data=True) is Reduction.SPAN
    assert LumpOptions().reduction_for(with_data=False) is Reduction.PARTITION
    assert LumpOptions(similarity="data").reduction_for(with_data=True) is Reduction.PARTITION
    given = LumpOptions(similarity="weights", reduction="span")
    assert given.reduction_for(with_data=True) is Reduction.SPAN


@pytest.mark.parametrize("eps", [1.5, 1.0001])
def test_an_eps_outside_a_span_share_is_refused_in_one_line(eps):
    """An L1 tolerance (say 1.5) given to span, the default with data, kept 1.2% of the
    Tanh demo at 94% error without a word."""
    with pytest.raises(LumpError, match="eps is a share from 0 to 1"):
        LumpOptions().method(eps, with_data=True)
    assert LumpOptions().method(eps, with_data=False).reduction is Reduction.PARTITION


@pytest.mark.parametrize("knob", [["--eps", "2"], ["--sweep", "0,0.5,2"]])
def test_the_cli_refuses_an_l1_eps_for_span_before_any_work(tmp_path, capsys, knob):
    model, calib = MODELS / "rn_tanh_2x64.onnx", MODELS / "rn_calib.npz"
    out = tmp_path / ("out.csv" if "--sweep" in knob else "out.onnx")
    assert main([str(model), str(out), "--calib", str(calib), *knob]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eps is a share from 0 to 1" in err[0]
    assert "--reduction partition" in err[0] and not out.exists()
    partition = ["--reduction", "partition", "--no-refine", "-q"]
    assert main([str(model), str(out), "--calib", str(calib), *knob, *partition]) == 0
