"""The command line's flag groups (onnx_lump/cli/args/): every flag belongs to exactly one
group, which declares its help section, range, no-effect rules and options dataclass;
the parser, the checks and the warnings assembled from them behave as one command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import itertools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import MODELS

from onnx_lump.cli import build_parser, main
from onnx_lump.cli.args import (
    GROUPS,
    NO_EFFECT,
    data,
    lumping,
    model,
    no_effect,
    output,
    pruning,
    quantize,
    refine,
    search,
    validate,
    verify,
)
from onnx_lump.cli.args.data import DataArgs
from onnx_lump.cli.args.lumping import LumpingArgs
from onnx_lump.cli.args.model import ModelArgs
from onnx_lump.cli.args.output import OutputArgs
from onnx_lump.cli.args.pruning import PruningArgs
from onnx_lump.cli.args.quantize import QuantizeArgs
from onnx_lump.cli.args.refine import RefineArgs
from onnx_lump.cli.args.search import SearchArgs
from onnx_lump.cli.args.verify import VerifyArgs
from onnx_lump.cli.checks import Context
from onnx_lump.cli.parser import explicit_options
from onnx_lump.data.refine import RefineOptions
from onnx_lump.errors import LumpError
from onnx_lump.methods import Scope
from onnx_lump.methods.lumping import LumpOptions
from onnx_lump.methods.registry import METHODS
from onnx_lump.ode.partition import Similarity

ROOT = Path(__file__).resolve().parents[2]
DEMO = MODELS / "rn_tanh_2x64.onnx"
PARSER_OWN = {"help", "version"}  # argparse's -h and the parser's --version


def actions_of(group) -> list[argparse.Action]:
    """The argparse actions ``group.add`` creates, on a parser of their own."""
    parser = argparse.ArgumentParser(add_help=False)
    group.add(parser)
    return list(parser._actions)


def dests_of(group) -> set[str]:
    return {action.dest for action in actions_of(group)}


def parsed(*options: str, output_path: str = "out.onnx") -> argparse.Namespace:
    """A full command line's namespace, with the options given noted as in main()."""
    argv = ["in.onnx", output_path, *options]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given_options = explicit_options(parser, argv)
    return args


# ---- every flag has one home --------------------------------------------------------
def test_every_flag_belongs_to_exactly_one_group():
    owners: dict[str, list[str]] = {}
    for group in GROUPS:
        for dest in dests_of(group):
            owners.setdefault(dest, []).append(group.__name__)
    assert {d: o for d, o in owners.items() if len(o) > 1} == {}
    full = {action.dest for action in build_parser()._actions} - PARSER_OWN
    assert set(owners) == full


def test_each_group_flags_are_listed_in_its_help_section():
    """--help lists each group's flags under the group's TITLE, and nothing else there:
    parser.py only assembles the groups (data.py and verify.py share a section)."""
    sections: dict[str, list[str]] = {}
    title = None
    for line in build_parser().format_help().splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            sections[title] = []
        elif title is not None and line.startswith("  ") and not line.startswith("   "):
            sections[title].append(line.split()[0].rstrip(","))  # the first spelling
    by_title: dict[str, list[str]] = {}
    for group in GROUPS:
        firsts = [a.option_strings[0] if a.option_strings else a.dest for a in actions_of(group)]
        by_title.setdefault(group.TITLE, []).extend(firsts)
    for title_, firsts in by_title.items():
        assert sections[title_] == firsts, title_
    # the titles come in the order of GROUPS, each once
    titles = list(dict.fromkeys(group.TITLE for group in GROUPS))
    assert [t for t in sections if t in by_title] == titles


def test_ranges_and_rules_name_only_the_groups_own_flags():
    for group in GROUPS:
        assert set(group.RANGES) <= dests_of(group), group.__name__


# ---- options dataclasses -------------------------------------------------------------
DEFAULTS = {
    model: ModelArgs(Path("in.onnx"), Path("out.onnx")),
    lumping: LumpingArgs(),
    refine: RefineArgs(),
    pruning: PruningArgs(),
    search: SearchArgs(),
    data: DataArgs(),
    verify: VerifyArgs(),
    quantize: QuantizeArgs(),
    output: OutputArgs(),
}


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__.rsplit(".", 1)[-1])
def test_to_options_of_the_defaults_is_the_dataclass_default(group):
    options = group.to_options(parsed())
    assert options == DEFAULTS[group]
    assert dataclasses.is_dataclass(options)
    first = dataclasses.fields(options)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(options, first, None)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__.rsplit(".", 1)[-1])
def test_to_options_reads_only_its_own_flags(group):
    """A namespace holding the group's flags alone is enough: no group reads another's."""
    options = "--eps 0.2 --linkage complete --no-refit --refine-iters 7 --scope global"
    options += " --tau 0.5 --max-error 0.1 --calib c.npz --mask-input none --input-shape x:2,3"
    args = parsed(*options.split(), "--providers", "cpu,cuda", "--quantize", "int8", "-q")
    own = argparse.Namespace(**{dest: getattr(args, dest) for dest in dests_of(group)})
    assert group.to_options(own) == group.to_options(args)


def test_to_options_converts_what_the_library_takes():
    options = "--eps 0.2 --similarity data --no-symmetries --no-refine --refine-iters 7"
    options += " --refine-seconds 5 --scope global --mask-input None --sequential --no-verify"
    args = parsed(*options.split(), "--input-shape", "a:2,3", "--providers", " cpu, ,cuda")
    lumped = lumping.to_options(args)
    assert lumped.eps == 0.2
    assert lumped.options == LumpOptions(similarity=Similarity.DATA, symmetries=False)
    # an explicit count holds on a wide chain too; the default keeps the bound in work
    explicit = RefineOptions(max_iters=7, max_seconds=5, max_work=None)
    assert refine.to_options(args) == RefineArgs(False, explicit)
    assert refine.to_options(parsed("--refine-seconds", "5")).budget == RefineOptions(max_seconds=5)
    assert pruning.to_options(args).scope is Scope.GLOBAL
    assert data.to_options(args).mask_input is None and data.to_options(args).sequential
    checked = verify.to_options(args)
    assert checked.input_shapes == {"a": [2, 3]} and checked.providers == ("cpu", "cuda")
    assert not checked.verify
    assert search.to_options(parsed("--max-error", "0.1")).searching
    assert search.to_options(parsed("--sweep", "0,1")).searching
    assert not search.to_options(parsed("--val", "v.npz", "--time-limit", "3")).searching


# ---- ranges: each group's, the same one error line ----------------------------------
BAD = {
    "eps": ("-1", "--eps must be >= 0, got -1"),
    "ridge": ("-1", "--ridge must be >= 0, got -1"),
    "refine_iters": ("-1", "--refine-iters must be >= 0, got -1"),
    "refine_seconds": ("0", "--refine-seconds must be > 0, got 0"),
    "sparsity": ("1", "--sparsity must be in [0, 1), got 1"),
    "tau": ("0", "--tau must be in (0, 1], got 0"),
    "max_error": ("-0.5", "--max-error must be >= 0, got -0.5"),
    "target_params": ("1.5", "--target-params must be in (0, 1], got 1.5"),
    "time_limit": ("0", "--time-limit must be > 0, got 0"),
    "holdout": ("1", "--holdout must be in (0, 1), got 1"),
    "seed": ("-2", "--seed must be >= 0, got -2"),
    "atol": ("-1", "--atol must be >= 0, got -1"),
    "rtol": ("-0.001", "--rtol must be >= 0, got -0.001"),
    "check": ("0", "--check must be >= 1, got 0"),
}


def test_every_range_is_covered_here():
    assert set(BAD) == {dest for group in GROUPS for dest in group.RANGES}


@pytest.mark.parametrize("dest", sorted(BAD))
def test_a_value_out_of_range_is_one_error_line_with_exit_2(dest, tmp_path, capsys):
    value, message = BAD[dest]
    flag = "--" + dest.replace("_", "-")
    # checked before any file is read: the input need not exist
    code = main([str(tmp_path / "missing.onnx"), str(tmp_path / "out.onnx"), flag, value])
    assert code == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("dest", ["eps", "max_error", "time_limit", "atol"])
def test_a_number_that_is_not_finite_is_refused(dest, capsys):
    flag = "--" + dest.replace("_", "-")
    assert main(["in.onnx", "out.onnx", flag, "nan"]) == 2
    assert capsys.readouterr().err == f"error: {flag} must be a finite number, got nan\n"


def test_ranges_are_checked_before_combinations():
    # --no-verify with --atol is a combination error, but --atol's range comes first
    with pytest.raises(LumpError, match="--atol must be >= 0"):
        validate(parsed("--no-verify", "--atol", "-1"))
    with pytest.raises(LumpError, match="need the check that --no-verify skips"):
        validate(parsed("--no-verify", "--atol", "1"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method", "exact", "--max-error", "0.1"], "method 'exact' has no knob"),
        (["--similarity", "data"], "--similarity data needs --calib"),
        (["--calib", "c.npz", "--eps", "2"], "--eps 2: with the span reduction"),
        (["--sweep", "0,-1"], "--sweep value -1 is not a valid eps (>= 0)"),
        (["--calib", "c.npz", "--sweep", "0,2"], "--sweep value 2: with the span reduction"),
        (["--providers", " , "], "--providers lists no execution provider"),
    ],
)
def test_each_groups_combinations_are_refused(options, message):
    output_path = "t.csv" if "--sweep" in options else "out.onnx"
    with pytest.raises(LumpError, match=re.escape(message)):
        validate(parsed(*options, output_path=output_path))


# ---- no-effect rules: owned by the flag's group, printed in the old order -----------
def rule_owner(rule):
    module = inspect.getmodule(rule)
    assert module in GROUPS, rule
    return module


def contexts():
    """Namespaces and contexts over every method, with and without data and searches,
    and the reductions and --no-refine that the rules read."""
    searches = [[], ["--max-error", "0.1"], ["--target-params", "0.5"], ["--sweep", "0,0.1"]]
    extras = [[], ["--reduction", "span"], ["--no-refine"]]
    for method, calib, val, searching, extra in itertools.product(
        METHODS, (False, True), (False, True), searches, extras
    ):
        options = ["--method", method, *searching, *extra]
        options += ["--calib", "c.npz"] if calib else []
        options += ["--val", "v.npz"] if val else []
        args = parsed(*options, output_path="t.csv" if "--sweep" in searching else "o.onnx")
        context = Context(
            method, METHODS[method], calib, val, bool(searching), "--sweep" in searching
        )
        yield args, context


def test_every_no_effect_warning_comes_from_the_group_owning_the_flag():
    seen = set()
    for args, context in contexts():
        for rule in NO_EFFECT:
            for dest, _why in rule(args, context):
                assert dest in dests_of(rule_owner(rule)), (rule.__qualname__, dest)
                seen.add(dest)
    # and the rules reach every option the old single function warned about
    assert "eps" in seen and "report_json" in seen and "refine_seconds" in seen
    assert len(seen) == 31


def test_every_rule_of_a_group_is_in_the_ordered_list_once():
    declared = {
        function
        for group in GROUPS
        for name, function in inspect.getmembers(group, inspect.isfunction)
        if name.startswith("unused_") and function.__module__ == group.__name__
    }
    assert len(NO_EFFECT) == len(set(NO_EFFECT))
    assert set(NO_EFFECT) == declared


# What the single no_effect function (before the groups) printed for these command lines,
# several groups' warnings interleaved: the order is part of the contract.
ORDER = [
    (
        "--method magnitude --eps 0.1 --linkage complete --tau 0.9 --refine-iters 5 --seed 3",
        [
            "--eps has no effect with --method magnitude (a lumping option)",
            "--linkage has no effect with --method magnitude (a lumping option)",
            "--tau has no effect with --method magnitude (linear folding only)",
            "--seed has no effect without --calib (it splits the calibration rows)",
            "--refine-iters has no effect with --method magnitude, which is not refined",
        ],
    ),
    (
        "--calib c.npz --sweep 0,0.1 --eps 0.1 --sparsity 0.3 --scope layer --tau 0.9"
        " --target-params 0.5 --atol 1 --dump-ode f.txt --report-json r.json --check 10"
        " --input-shape a:1 --val v.npz --holdout 0.3",
        [
            "--sparsity has no effect with --method lump (a pruning option)",
            "--scope has no effect with --method lump (magnitude and ec only)",
            "--tau has no effect with --method lump (linear folding only)",
            "--eps has no effect with a search or sweep, which chooses eps",
            "--target-params has no effect with --sweep, which writes only the table",
            "--atol has no effect with --sweep, which writes only the table",
            "--dump-ode has no effect with --sweep, which writes only the table",
            "--report-json has no effect with --sweep, which writes only the table",
            "--check has no effect with --calib: the check runs on held-out calibration rows",
            "--input-shape has no effect with --calib: shapes come from the data",
            "--holdout has no effect with --val, which replaces the held-out share",
        ],
    ),
    (
        "--sequential --mask-input none --metric cosine --holdout 0.3 --val v.npz --ridge 1"
        " --reduction span --no-refine --refine-seconds 5",
        [
            "--ridge has no effect without --calib: the refit needs data",
            "--reduction has no effect without --calib: span reads the activations",
            "--sequential has no effect without --calib: nothing is fitted on data",
            "--mask-input has no effect without --calib: no calibration rows to mask",
            "--holdout has no effect without --calib (it splits the calibration rows)",
            "--val has no effect without --calib or a search",
            "--refine-seconds has no effect with --no-refine",
        ],
    ),
    (
        "--method wanda --calib c.npz --max-error 0.01 --sparsity 0.3 --scope layer --tau 0.9"
        " --no-refit",
        [
            "--no-refit has no effect with --method wanda (a lumping option)",
            "--scope has no effect with --method wanda (magnitude and ec only)",
            "--tau has no effect with --method wanda (linear folding only)",
            "--sparsity has no effect with a search or sweep, which chooses sparsity",
        ],
    ),
]


@pytest.mark.parametrize(("options", "expected"), ORDER)
def test_warnings_of_several_groups_keep_their_order(options, expected):
    output_path = "t.csv" if "--sweep" in options else "out.onnx"
    args = parsed(*options.split(), output_path=output_path)
    assert no_effect(args) == expected
    validate(args)
    assert args.option_warnings == expected


def test_only_options_given_are_warned_about():
    # every rule fires for exact without data, but nothing was given
    assert no_effect(parsed("--method", "exact")) == []
    assert no_effect(parsed("--method", "exact", "--eps", "0")) == [
        "--eps has no effect with --method exact (a lumping option)"
    ]


def test_the_warnings_print_on_stderr_in_order_and_the_run_goes_on(tmp_path, capsys):
    model_path = tmp_path / "model.onnx"
    shutil.copy(DEMO, model_path)
    out = tmp_path / "small.onnx"
    options = "--method magnitude --eps 0.1 --linkage complete --tau 0.9 --refine-iters 5"
    code = main([str(model_path), str(out), *options.split(), "--seed", "3", "-q"])
    captured = capsys.readouterr()
    assert code == 0 and out.exists()
    assert captured.err.splitlines() == [f"warning: {text}" for text in ORDER[0][1]]


# ---- the rules stay simple ----------------------------------------------------------
def test_no_function_of_the_groups_or_checks_is_over_complexity_15():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is a test dependency (pip install -e '.[test]')"
    result = subprocess.run(
        [
            ruff,
            "check",
            "--select",
            "C901",
            "--config",
            "lint.mccabe.max-complexity = 15",
            str(ROOT / "onnx_lump" / "cli" / "args"),
            str(ROOT / "onnx_lump" / "cli" / "checks.py"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
