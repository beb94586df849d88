"""Speed: compression time against load + save, onnxruntime latency ratios, and the
wall time of refine + search through the command line on a 3 x 128 network."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_lump.methods import Lump
from onnx_lump.methods.lumping import DEFAULT_SIMILARITY_WITH_DATA
from onnx_lump.ode.partition import PartitionOptions
from tools.bench import ROOT
from tools.bench.common import Point, Reference
from tools.bench.methods import lumping
from tools.bench.metrics import Network, run_compress

__all__ = ["latency", "latency_example", "search_text", "search_time", "speed"]


def latency(model: onnx.ModelProto, batch: int, n_inputs: int, repeats: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, n_inputs)).astype(np.float32)
    session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def latency_example(net: Network, points: list[Point], label: str, refine):
    """The smallest point of ``label`` within dRMSE 5%, rebuilt for timing."""
    chosen = [p for p in points if p.method == label and p.drmse <= 5.0]
    if not chosen:
        return None
    point = min(chosen, key=lambda p: p.grp)
    # the point's own method: its knob means nothing to another reduction (span's share
    # rebuilt as a partition's eps kept 100%)
    method = lumping(True, DEFAULT_SIMILARITY_WITH_DATA)(point.knob)
    reduced, _, _ = run_compress(net.model, method, net.calibration, refine)
    name = f"{net.ref.task} {net.ref.network}, {label} at dRMSE {point.drmse:.1f}%"
    return name, net.model, reduced


def speed(quick: bool, examples: list[tuple[str, onnx.ModelProto, onnx.ModelProto]]) -> str:
    from tools.time_wide import build

    width = 1024 if quick else 4096
    lines = [f"### Compression time, 4 hidden Tanh layers of {width}\n"]
    io_times, lump_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wide.onnx"
        onnx.save(build(width), path)
        for _ in range(3):  # medians: one run on a shared machine is noise
            started = time.perf_counter()
            model = onnx.load(path)
            onnx.save(model, Path(tmp) / "copy.onnx")
            io_times.append(time.perf_counter() - started)
            small, report, seconds = run_compress(model, Lump(PartitionOptions(0.05)), None)
            lump_times.append(seconds)
    io_seconds, seconds = float(np.median(io_times)), float(np.median(lump_times))
    lines.append(
        f"onnx.load + onnx.save: {io_seconds:.2f} s; lump (eps 0.05, "
        f"{100 * report.retained:.1f}% kept, no verification): {seconds:.2f} s "
        f"(medians of 3); ratio **{seconds / io_seconds:.2f}x** (target <= 2x)\n"
    )
    lines.append("### onnxruntime latency, one intra-op thread (median of repeated runs)\n")
    lines.append(
        "| model | params kept | batch 1 ratio | batch 1024 ratio "
        "| batch 1024 ratio / params ratio |"
    )
    lines.append("|---|---|---|---|---|")
    for label, original, reduced in [(f"wide 4 x {width}, lump eps 0.05", model, small), *examples]:
        n_inputs = original.graph.input[0].type.tensor_type.shape.dim[1].dim_value
        p0 = sum(int(np.prod(t.dims)) for t in original.graph.initializer if t.data_type == 1)
        p1 = sum(
            int(np.count_nonzero(onnx.numpy_helper.to_array(t)))
            for t in reduced.graph.initializer
            if t.data_type == 1
        )
        repeats = 20 if "wide" in label else 200
        r1 = latency(reduced, 1, n_inputs, repeats) / latency(original, 1, n_inputs, repeats)
        r1024 = latency(reduced, 1024, n_inputs, max(5, repeats // 10)) / latency(
            original, 1024, n_inputs, max(5, repeats // 10)
        )
        lines.append(
            f"| {label} | {100 * p1 / p0:.1f}% | {r1:.2f} | {r1024:.2f} | {r1024 / (p1 / p0):.2f} |"
        )
    return "\n".join(lines) + "\n"


def search_time(ref: Reference, calibration: dict[str, np.ndarray], max_error: float) -> dict:
    """``python -m onnx_lump IN OUT --calib C --max-error E``, timed end to end: the search
    with refinement in its loop (on by default with --calib), verification included."""
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.npz"
        np.savez(calib, **calibration)
        out, report_file = Path(tmp) / "out.onnx", Path(tmp) / "report.json"
        command = [
            sys.executable,
            "-m",
            "onnx_lump",
            str(ref.path),
            str(out),
            "--calib",
            str(calib),
            "--max-error",
            str(max_error),
            "--report-json",
            str(report_file),
            "-q",
        ]
        load = os.getloadavg()[0]
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
        report = json.loads(report_file.read_text()) if report_file.exists() else {}
    rows = len(next(iter(calibration.values())))
    return {
        "network": f"{ref.task} {ref.network}",
        "rows": rows,
        "max_error": max_error,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "load": load,
        "returncode": result.returncode,
        "retained": report.get("retained"),
        "line": (result.stdout.strip().splitlines() or [result.stderr.strip()[-300:]])[-1],
    }


def search_text(runs: list[dict]) -> str:
    lines = [
        "### Refine + search through the command line (end to end, verification included)\n",
        "Wall time on this shared machine, the CPU time the command used, and the load "
        "average (runnable processes on its two cores) when it started.\n",
        "| network | calibration rows | --max-error | wall s | CPU s | load | kept | exit "
        "| last line |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        kept = "-" if r.get("retained") is None else f"{100 * r['retained']:.1f}%"
        lines.append(
            f"| {r['network']} | {r['rows']} | {r['max_error']} | {r['seconds']:.1f} "
            f"| {r['cpu_seconds']:.1f} | {r['load']:.1f} | {kept} "
            f"| {r['returncode']} | {r['line'].replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"
