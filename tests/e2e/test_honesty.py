"""The printed error is the error users will see: held-out splits, ridge chosen on held-out
rows, constant neurons folded only with a margin, and "lossless" only where it is."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import mlp, random_layers
from conftest import MODELS, run_ort

from onnx_lump import lump
from onnx_lump.cli import main
from onnx_lump.data.compensation import RIDGE_GRID, refit_layer
from onnx_lump.data.holdout import (
    MIN_HOLDOUT_ROWS,
    carve_audit,
    output_error,
    split_calibration,
)
from onnx_lump.errors import LumpError

CALIB_2048 = MODELS / "rn_calib_2048.npz"
TEST = dict(np.load(MODELS / "rn_test.npz"))


def test_split_is_seeded_disjoint_and_stated():
    calib = {"input": np.arange(200, dtype=np.float32).reshape(100, 2)}
    first, again = split_calibration(calib, 0.2, seed=3), split_calibration(calib, 0.2, seed=3)
    other = split_calibration(calib, 0.2, seed=4)
    np.testing.assert_array_equal(first.holdout["input"], again.holdout["input"])
    assert not np.array_equal(first.holdout["input"], other.holdout["input"])
    fit, held = set(first.fit["input"][:, 0]), set(first.holdout["input"][:, 0])
    assert not fit & held and len(fit | held) == 100
    assert first.n_holdout == 20 and "20 held-out" in first.description


def test_too_few_rows_to_hold_out_is_an_error():
    with pytest.raises(LumpError, match="too few"):
        split_calibration({"x": np.zeros((2 * MIN_HOLDOUT_ROWS - 1, 3))})


def test_ridge_is_chosen_by_the_held_out_rows():
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(40, 30))
    truth = rng.normal(size=(30, 3))
    targets = inputs @ truth + 2.0 * rng.normal(size=(40, 3))  # noisy: needs shrinkage
    held = rng.normal(size=(200, 30))
    held_targets = held @ truth
    _, strength = refit_layer(inputs, targets, None, held, held_targets)
    assert strength in RIDGE_GRID and strength > RIDGE_GRID[0]
    chosen, _ = refit_layer(inputs, targets, strength)
    weakest, _ = refit_layer(inputs, targets, RIDGE_GRID[0])

    def err(layer):
        return np.mean((held @ layer.weight.T + layer.bias - held_targets) ** 2)

    assert err(chosen) <= err(weakest)


def rarely_active_model() -> onnx.ModelProto:
    """One Relu neuron fires only for inputs beyond ~2.6 standard deviations."""
    layers = random_layers([6, 10, 6], seed=4)
    layers[0][0][7] = np.array([1.0, 0, 0, 0, 0, 0])
    layers[0][1][7] = -2.6
    layers[1][0][:, 7] *= 50.0  # and it matters when it fires
    model = mlp(layers, ["Relu"])
    model.graph.input[0].name = "input"
    model.graph.node[0].input[0] = "input"
    return model


@pytest.mark.parametrize("reduction", ["partition", "span"])
def test_a_neuron_silent_on_the_fitting_rows_is_kept_without_a_margin(reduction):
    """Span saw no energy in it and folded it in as its mean (bug found by hand: the
    neuron then never fires again); both reductions keep it."""
    model = rarely_active_model()
    rng = np.random.default_rng(1)
    calib = {"input": rng.standard_normal((256, 6)).astype(np.float32)}
    calib["input"][:, 0] = np.clip(calib["input"][:, 0], -5, 2.5)  # it never fires here
    reduced, report = lump(
        model, 1e-6, calibration=calib, refine=False, verify=False, reduction=reduction
    )
    assert report.layers[0].width_after == 10  # a margin of 0.1 is not 3 deviations
    firing = {"input": rng.standard_normal((200, 6)).astype(np.float32)}
    firing["input"][:, 0] = 4.0  # beyond its threshold: it fires, 50x weighted
    expected, actual = run_ort(model, firing)[0], run_ort(reduced, firing)[0]
    np.testing.assert_allclose(actual, expected, atol=1e-3 * np.abs(expected).max())


def test_a_neuron_far_below_its_threshold_is_folded():
    layers = random_layers([6, 10, 6], seed=4)
    layers[0][0][7] = 0.01 * layers[0][0][7]
    layers[0][1][7] = -100.0
    model = mlp(layers, ["Relu"])
    model.graph.input[0].name = "input"
    model.graph.node[0].input[0] = "input"
    rng = np.random.default_rng(1)
    calib = {"input": rng.standard_normal((256, 6)).astype(np.float32)}
    reduced, report = lump(model, 1e-6, calibration=calib, refine=False, verify=False)
    assert report.layers[0].width_after == 9
    feeds = {"input": 3 * rng.standard_normal((500, 6)).astype(np.float32)}
    assert output_error(run_ort(model, feeds)[0], run_ort(reduced, feeds)[0]) < 1e-5


def test_reported_error_is_within_2x_of_the_error_on_unseen_inputs(tmp_path):
    """The demo's own test trajectories were never seen by the tool."""
    out, report_path = tmp_path / "demo.onnx", tmp_path / "report.json"
    code = main(
        [
            str(MODELS / "rn_tanh_2x64.onnx"),
            str(out),
            "--calib",
            str(CALIB_2048),
            "--eps",
            "0.5",
            "--refine-iters",
            "200",
            "--report-json",
            str(report_path),
            "-q",
        ]
    )
    assert code == 0
    reported = json.loads(report_path.read_text())["holdout_error"]
    feeds = {"input": TEST["input"]}
    (reference,) = run_ort(onnx.load(MODELS / "rn_tanh_2x64.onnx"), feeds)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    unseen = output_error(reference, session.run(None, feeds)[0])
    assert 0.5 * unseen <= reported <= 2.0 * unseen, (reported, unseen)


def test_linear_folding_says_lossless_on_the_calibration_inputs_only(tmp_path, capsys):
    out = tmp_path / "linear.onnx"
    code = main(
        [
            str(MODELS / "rn_relu_2x64.onnx"),
            str(out),
            "--method",
            "linear",
            "--calib",
            str(CALIB_2048),
            "--no-refine",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "lossless on the calibration inputs" in text
    assert "lossless on every input" not in text


def readme_command() -> list[str]:
    """The arguments of the README's first set-up command (the main job on a shipped model)."""
    readme = (MODELS.parent / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("pip install . && python -m"))
    return line.split("python -m onnx_lump", 1)[1].split()


def test_the_readme_command_meets_its_budget_on_the_demo_test_split(tmp_path):
    """What the README promises: the model its first command writes is within the error
    budget it asks for on the demo's own test trajectories, which the tool never saw."""
    args = readme_command()
    budget = float(args[args.index("--max-error") + 1])
    model_path, out_name = args[0], args[1]
    out = tmp_path / out_name
    args[1] = str(out)
    assert main([*args, "-q"]) == 0
    feeds = {"input": TEST["input"]}
    (reference,) = run_ort(onnx.load(MODELS.parent / model_path), feeds)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert output_error(reference, session.run(None, feeds)[0]) <= budget


def test_audit_rows_are_seeded_disjoint_and_leave_the_fitting_share_alone():
    calib = {"input": np.arange(2048 * 2, dtype=np.float32).reshape(2048, 2)}
    audit = carve_audit(calib, 0.2, seed=5)
    again, other = carve_audit(calib, 0.2, seed=5), carve_audit(calib, 0.2, seed=6)
    np.testing.assert_array_equal(audit.audit["input"], again.audit["input"])
    assert not np.array_equal(audit.audit["input"], other.audit["input"])
    split = split_calibration(audit.rest, audit.rest_share, seed=5)
    sets = [set(rows["input"][:, 0]) for rows in (audit.audit, split.holdout, split.fit)]
    assert sum(map(len, sets)) == len(set.union(*sets)) == 2048  # disjoint, all rows
    # as many rows fitted as without audit rows; the held-out share halved
    assert split.n_fit == split_calibration(calib, 0.2, seed=5).n_fit == 1638
    assert audit.n_audit == split.n_holdout == 205
    assert "205 audit" in audit.description
    # too few rows for two halves of at least MIN_HOLDOUT_ROWS: no audit rows
    assert carve_audit({"x": np.zeros((4 * MIN_HOLDOUT_ROWS, 1))}, 0.2) is None


def test_the_search_chooses_again_when_the_audit_rows_disagree(monkeypatch, tmp_path, capsys):
    """Audit rows far from the rows that chose (here: the same rows scaled by 2.5) show a
    larger error than the search measured: the CLI searches again within a tighter
    budget and passes only when the audit rows are within the budget."""
    import onnx_lump.cli.command as cli

    def shifted(calibration, share, seed):
        audit = carve_audit(calibration, share, seed)
        return dataclasses.replace(audit, audit={"input": 2.5 * audit.audit["input"]})

    monkeypatch.setattr(cli, "carve_audit", shifted)
    out, report_path = tmp_path / "out.onnx", tmp_path / "r.json"
    args = [str(MODELS / "rn_tanh_2x64.onnx"), str(out), "--calib", str(CALIB_2048)]
    args += ["--max-error", "0.05", "--report-json", str(report_path), "--refine-iters", "20"]
    code = main(args)
    printed = capsys.readouterr().out
    assert "searching again within" in printed
    if code == 0:
        report = json.loads(report_path.read_text())
        assert report["holdout_error"] <= 0.05 and report["chosen_error"] < 0.05
        assert "audit" in report["holdout"]
    else:  # out of retries: nothing written, and the reason given
        assert code == 1 and not out.exists() and "too few to support this budget" in printed


def test_each_search_again_chooses_a_more_accurate_point(tmp_path, capsys):
    """Regression: a budget tightened from --max-error (5% -> 4%) chose the same point
    again (3.2% on the rows that chose), three times over. The budget now lies below the
    chosen point's error, so each search again chooses another, more accurate point."""
    out = tmp_path / "out.onnx"
    args = [str(MODELS / "rn_tanh_2x64.onnx"), str(out), "--calib", str(CALIB_2048)]
    main([*args, "--max-error", "0.05", "--no-refine"])
    printed = capsys.readouterr().out
    chosen = re.findall(r"search: eps=(\S+) keeps .* at error ([\d.]+)%", printed)
    budgets = [float(b) for b in re.findall(r"searching again within ([\d.]+)%", printed)]
    assert budgets, "the audit rows agreed: this case no longer exercises the retry"
    assert len({eps for eps, _ in chosen}) == len(chosen)
    for (_, error), budget in zip(chosen, budgets, strict=False):
        assert budget < float(error)


def test_a_budget_checked_on_few_audit_rows_is_warned_about(tmp_path, capsys):
    """1,024 calibration rows leave 102 audit rows: on the demo 3 of 8 such runs printed
    a third or less of the error new trajectories showed, so the CLI says so; 2,048 rows
    (205 audit rows) do not warn."""
    half = seeded_half(tmp_path)
    model = str(MODELS / "rn_tanh_2x64.onnx")
    options = ["--max-error", "0.05", "--no-refine"]
    main([model, str(tmp_path / "a.onnx"), "--calib", str(half), *options])
    warned = capsys.readouterr().err
    assert "1024 calibration rows leave 102 audit rows to check --max-error" in warned
    main([model, str(tmp_path / "b.onnx"), "--calib", str(CALIB_2048), *options])
    assert "audit rows to check" not in capsys.readouterr().err


def seeded_half(folder):
    """A seeded half (1,024 rows) of the demo calibration set, as a file."""
    rows = np.load(CALIB_2048)["input"]
    order = np.random.default_rng(0).permutation(len(rows))
    half = folder / "half.npz"
    np.savez(half, input=rows[np.sort(order[:1024])])
    return half


def test_a_budget_met_on_1024_calibration_rows_holds_on_new_trajectories(tmp_path):
    """Issue 22's honesty case: the README command on a seeded half of the demo's rows.
    With partitions (the default until 2026-12-07) the Relu demo printed 4.09% here while
    the test trajectories showed 10.45% (and the old ridge choice 3 of 8 such runs at
    12.6-20.4%); span with the strongest ridge within 10% of the best holds 3.50%."""
    half = seeded_half(tmp_path)
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    model = MODELS / "rn_relu_2x64.onnx"
    options = ["--calib", str(half), "--max-error", "0.05", "--report-json", str(report_path)]
    assert main([str(model), str(out), *options, "-q"]) == 0
    printed = json.loads(report_path.read_text())["holdout_error"]
    feeds = {"input": TEST["input"]}
    (reference,) = run_ort(onnx.load(model), feeds)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    unseen = output_error(reference, session.run(None, feeds)[0])
    assert unseen <= 0.05 and unseen <= 2.0 * printed, (printed, unseen)
