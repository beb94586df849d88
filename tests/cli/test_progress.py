"""Progress: on a terminal the stage line shows each stage from the start and each search
step with its knob while the step computes, before its result; off a terminal -v logs the
same; stdout carries the results alone and -q draws nothing."""

from __future__ import annotations

import io
import re
import sys

from conftest import MODELS

import onnx_lump.search.evaluator as search
from onnx_lump.cli import main

DEMO = MODELS / "rn_tanh_2x64.onnx"
CALIB = MODELS / "rn_calib_2048.npz"


class StubTTY(io.StringIO):
    """A stderr that says it is a terminal and keeps everything written to it."""

    def isatty(self) -> bool:
        return True


def _argv(tmp_path, *extra: str) -> list[str]:
    return [
        str(DEMO),
        str(tmp_path / "out.onnx"),
        "--calib",
        str(CALIB),
        "--target-params",
        "0.3",
        "--refine-iters",
        "10",
        *extra,
    ]


def _watch(monkeypatch, stub: io.StringIO) -> list[str]:
    """sys.stderr as ``stub``; what it held each time a search step (or a probe) began
    to compress. (Set in the test itself: capsys sets sys.stderr again as a test starts.)"""
    monkeypatch.setattr(sys, "stderr", stub)
    seen: list[str] = []
    run = search.run  # each step and probe is one pipeline run

    def spy(*args, **kwargs):
        seen.append(stub.getvalue())
        return run(*args, **kwargs)

    monkeypatch.setattr(search, "run", spy)
    return seen


def test_on_a_terminal_step_1_and_its_knob_show_while_it_computes(tmp_path, monkeypatch, capsys):
    stub = StubTTY()
    seen = _watch(monkeypatch, stub)
    assert main(_argv(tmp_path)) == 0
    shown = stub.getvalue()
    # the stages before the search show first
    assert seen and "reading the model" in seen[0] and "reading the calibration rows" in seen[0]
    assert "collecting the chains' inputs" in seen[0]
    # step 1 and its knob were on the terminal while step 1 was computing ...
    started = [s for s in seen if re.search(r"search step 1: knob [0-9.e+-]+, compressing", s)]
    assert started, "no compress call saw step 1 announced"
    assert (
        "search step 1: knob" in started[0]
        and "% kept, widths" not in started[0].split("search step 1:")[-1]
    )
    # ... and its result (size and widths) came after
    done = re.search(r"search step 1: knob [0-9.e+-]+: [0-9.]+% kept, widths \d+ \d+", shown)
    assert done and shown.index("search step 1: knob") < done.start()
    assert "final network at knob" in shown and "refine chain 0" in shown
    # results on stdout alone, the line cleared before them
    out = capsys.readouterr().out
    assert "DONE |" in out and "search step" not in out and "reading the model" not in out


def test_quiet_draws_nothing_on_a_terminal(tmp_path, monkeypatch):
    stub = StubTTY()
    seen = _watch(monkeypatch, stub)
    assert main(_argv(tmp_path, "-q")) == 0
    assert seen and "search step" not in stub.getvalue() and "reading" not in stub.getvalue()


def test_off_a_terminal_verbose_logs_each_stage_and_step_as_it_starts(tmp_path, monkeypatch):
    stub = io.StringIO()  # not a terminal: no bar, log lines with -v
    seen = _watch(monkeypatch, stub)
    assert main(_argv(tmp_path, "-v")) == 0
    text = stub.getvalue()
    assert "\r" not in text  # lines, not a bar
    assert "reading the model" in seen[0] and "collecting the chains' inputs" in seen[0]
    started = [s for s in seen if "search: step 1: knob" in s]
    assert started and not re.search(r"knob [0-9.e+-]+: [0-9.]+% kept", started[0])
    assert re.search(r"knob [0-9.e+-]+: [0-9.]+% kept, hidden widths \d+ \d+", text)
