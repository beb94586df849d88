"""Time the data-aware search on the wide benchmark model against loading and saving it.

The model is :func:`time_wide.build` (4 hidden Tanh layers of 4096, clusters of 8 near-
identical neurons, about 50 M parameters), the calibration data 2,048 seeded standard-
normal rows of its 64 inputs. In one run, interleaved, this measures:

* ``onnx.load`` + ``onnx.save`` of the model (the issue's baseline; median of every
  repeat, taken before, between and after the searches, since other processes share the
  machine);
* the CLI ``python -m onnx_lump MODEL OUT --calib CALIB --target-params 0.05 --no-refine``
  end to end (search, final network, written file checked and verified), ``--cli-repeats``
  times (the median is reported, with every repeat's time: one run on a shared machine
  varies by 10-20%);
* one compression at the knob that search chose (``--eps KNOB --no-refine``, no search:
  the floor of a search that lands there);
* the same search with refinement on at the default budget (``--target-params 0.05``), and at
  20 seconds (``--refine-seconds 20``); the held-out error of each written file and its
  refinement's iterations, seconds and held-out error before and after are reported;
* with ``--runs p20,p20limit`` (issue 22 item 3), ``--target-params 0.2`` with the default
  refinement, without and with ``--time-limit 60``, each in a child process with ``-v``:
  the time to its first stderr line and to its first search step's, the longest wait
  between two stderr lines, its wall time, its peak RSS and whether the target was met.

Each search step is logged with the time it ended (``onnx_lump.search``), and with
``--profile DIR`` every run is profiled with cProfile into ``DIR/<run>.prof``.

    python -m tools.time_wide_data [--width 4096] [--rows 2048] [--repeats 3]
        [--cli-repeats 3] [--runs norefine,fixed,refine,refine20] [--workdir /tmp] [--out DIR]
        [--profile DIR]

The markdown goes to ``tools/results/speed/search.md`` (``progress.md`` when only the
child-process runs were asked for) and ``tools/results/speed.md`` is
rebuilt (``tools/speed_report.py``); ``--out /tmp/x`` keeps a smoke run out of it.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent

RUNS = {
    "norefine": ("--target-params 0.05 --no-refine", ["--target-params", "0.05", "--no-refine"]),
    "refine": ("--target-params 0.05", ["--target-params", "0.05"]),
    "refine20": (
        "--target-params 0.05 --refine-seconds 20",
        ["--target-params", "0.05", "--refine-seconds", "20"],
    ),
    # no search: one compression at the knob the norefine run's search chose (the floor a
    # search at that size can reach)
    "fixed": ("--eps KNOB --no-refine (KNOB: the search's)", None),
    # issue 22 item 3: a larger target with the default refinement, with and without a
    # time limit; run as a child process (-v) to read its first stderr line and peak RSS
    "p20": ("--target-params 0.2", ["--target-params", "0.2"]),
    "p20limit": (
        "--target-params 0.2 --time-limit 60",
        ["--target-params", "0.2", "--time-limit", "60"],
    ),
}
# the runs made in a child process: time to the first stderr line (-v), peak RSS
PROCESS_RUNS = {"p20", "p20limit"}


class _Steps(logging.Handler):
    """Collects the search's per-step log lines with the time since the run began."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started = time.perf_counter()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{time.perf_counter() - self.started:8.1f}s  {record.getMessage()}")
        print(self.lines[-1], file=sys.stderr, flush=True)  # a run cut short keeps its trace


def _io(path: Path, out: Path) -> tuple[float, float]:
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    onnx.save(onnx.load(path), out)
    return time.perf_counter() - started, time.process_time() - cpu


def _cli(flags: list[str], model: Path, calib: Path, out: Path, profile: Path | None) -> dict:
    from onnx_lump.cli import main

    steps = _Steps()
    search_log = logging.getLogger("onnx_lump.search")
    search_log.addHandler(steps)
    level = search_log.level
    search_log.setLevel(logging.INFO)
    summary = out.with_suffix(".json")
    argv = [str(model), str(out), "--calib", str(calib), *flags, "--report-json", str(summary)]
    argv.append("-q")
    gc.collect()
    profiler = cProfile.Profile() if profile is not None else None
    started, cpu = time.perf_counter(), time.process_time()
    steps.started = started
    if profiler is not None:
        profiler.enable()
    code = main(argv)
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    search_log.removeHandler(steps)
    search_log.setLevel(level)
    if profiler is not None:
        profiler.dump_stats(profile)
    kept = error = chosen = None
    refined = []
    if code == 0 and out.exists():
        reduced = onnx.load(out, load_external_data=False)
        kept = sum(int(np.prod(t.dims)) for t in reduced.graph.initializer)
        report = json.loads(summary.read_text())
        error, refined = report["holdout_error"], report.get("refine") or []
        chosen = re.search(r"eps=([0-9.e+-]+)", report.get("method", ""))
    summary.unlink(missing_ok=True)
    return {
        "code": code,
        "wall": wall,
        "cpu": cpu,
        "steps": steps.lines,
        "params_after": kept,
        "error": error,  # onnxruntime's, on the written file, held-out rows
        "knob": None if chosen is None else float(chosen.group(1)),  # as the report prints it
        "refine": [
            {k: r[k] for k in ("iterations", "seconds", "holdout_before", "holdout_after")}
            for r in refined
        ],
    }


def _cli_process(flags: list[str], model: Path, calib: Path, out: Path, root: Path) -> dict:
    """The CLI in a child process with -v: its wall time, when its first stderr line
    (and its first search step's) came, its peak RSS (``os.wait4``), and the network."""
    summary = out.with_suffix(".json")
    argv = [str(model), str(out), "--calib", str(calib), *flags, "--report-json", str(summary)]
    env = dict(os.environ, PYTHONPATH=str(root))
    gc.collect()
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "onnx_lump", *argv, "-v"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    stdout: list[str] = []

    def read_stderr() -> None:
        for line in child.stderr:
            lines.append((time.perf_counter() - started, line.rstrip()))
            print(f"{lines[-1][0]:8.1f}s  {lines[-1][1]}", file=sys.stderr, flush=True)

    readers = [
        threading.Thread(target=read_stderr),
        threading.Thread(target=lambda: stdout.extend(child.stdout)),
    ]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    kept = error = chosen = None
    refined = []
    if child.returncode == 0 and out.exists():
        reduced = onnx.load(out, load_external_data=False)
        kept = sum(int(np.prod(t.dims)) for t in reduced.graph.initializer)
        report = json.loads(summary.read_text())
        error, refined = report["holdout_error"], report.get("refine") or []
        chosen = re.search(r"eps=([0-9.e+-]+)", report.get("method", ""))
    summary.unlink(missing_ok=True)
    target = next((line for line in stdout if line.startswith("search: ")), "").strip()
    first_step = next((t for t, line in lines if re.search(r"step 1: knob", line)), None)
    return {
        "code": child.returncode,
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_rss": usage.ru_maxrss * 1024,  # kB on Linux
        "first_line": lines[0][0] if lines else None,
        "first_step": first_step,
        # from the start to the first line, between lines, and from the last to the end
        "longest_silence": max(
            b - a for a, b in itertools.pairwise([0.0, *(t for t, _ in lines), wall])
        ),
        "target_line": target,
        "met": child.returncode == 0 and target.endswith(": met)"),
        "steps": [
            f"{t:8.1f}s  {line}"
            for t, line in lines
            if "onnx_lump.search" in line or "onnx_lump.progress" in line
        ],
        "params_after": kept,
        "error": error,
        "knob": None if chosen is None else float(chosen.group(1)),
        "refine": [
            {k: r[k] for k in ("iterations", "seconds", "holdout_before", "holdout_after")}
            for r in refined
        ],
    }


def measure(
    width: int = 4096,
    rows: int = 2048,
    repeats: int = 3,
    runs: tuple[str, ...] = ("norefine", "refine"),
    workdir: Path | None = None,
    profile: Path | None = None,
    cli_repeats: int = 3,
    root: Path = ROOT,
) -> dict:
    """Medians of the I/O baseline and ``cli_repeats`` timed CLI runs per entry of
    ``runs`` (the runs interleaved with each other and with the I/O rounds)."""
    from tools.time_wide import build

    workdir = Path(workdir or tempfile.gettempdir())
    path = workdir / f"wide_data_{width}.onnx"
    copy = workdir / f"wide_data_{width}_copy.onnx"
    calib = workdir / f"wide_data_calib_{rows}.npz"
    model = build(width)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    onnx.save(model, path)
    del model
    x = np.random.default_rng(1).standard_normal((rows, 64)).astype(np.float32)
    np.savez(calib, x=x)
    io_wall, io_cpu = [], []

    def io_round() -> float:
        """One round of I/O repeats; its median wall time."""
        walls = []
        for _ in range(repeats):
            wall, cpu = _io(path, copy)
            walls.append(wall)
            io_wall.append(wall)
            io_cpu.append(cpu)
        return float(np.median(walls))

    before = io_round()
    repeats_of: dict[str, list[dict]] = {name: [] for name in runs}
    for repeat in range(max(1, cli_repeats)):
        for name in runs:
            out = workdir / f"wide_data_{width}_{name}.onnx"
            prof = None if profile is None else profile / f"{name}_{repeat}.prof"
            flags = RUNS[name][1]
            if flags is None:  # fixed: the knob the last norefine run chose
                chosen = repeats_of.get("norefine", [{}])[-1].get("knob")
                if chosen is None:
                    raise SystemExit("run 'fixed' needs 'norefine' before it in --runs")
                flags = ["--eps", repr(chosen), "--no-refine"]
            if name in PROCESS_RUNS:
                run = _cli_process(flags, path, calib, out, root)
            else:
                run = _cli(flags, path, calib, out, prof)
            out.unlink(missing_ok=True)
            after = io_round()
            # against the I/O rounds just before and after it: the machine's speed drifts
            run["paired"] = run["wall"] / (0.5 * (before + after))
            before = after
            repeats_of[name].append(run)
            logging.getLogger(__name__).info("%s: %s", name, repeats_of[name][-1])
    results = {name: _median_run(done) for name, done in repeats_of.items()}
    for file in (path, copy, calib):
        file.unlink(missing_ok=True)
    return {
        "width": width,
        "rows": rows,
        "params": params,
        "io_wall": float(np.median(io_wall)),
        "io_cpu": float(np.median(io_cpu)),
        "io_n": len(io_wall),
        "runs": results,
        "load": os.getloadavg(),
    }


def _median_run(done: list[dict]) -> dict:
    """The repeat of median wall time (its steps, size and error), with every repeat's
    wall time, and whether the repeats agreed on the network (size and error)."""
    ordered = sorted(done, key=lambda run: run["wall"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["walls"] = [run["wall"] for run in done]
    median["paired"] = float(np.median([run["paired"] for run in done]))
    median["pairs"] = [run["paired"] for run in done]
    median["same"] = len({(run["params_after"], run["error"]) for run in done}) == 1
    if "peak_rss" in median:
        median["first_lines"] = [run["first_line"] for run in done]
        median["peak_rsses"] = [run["peak_rss"] for run in done]
    return median


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _step_count(lines: list[str]) -> int:
    """Search steps (compressions) among the search's log lines, hints not counted."""
    return sum(1 for line in lines if re.search(r"(^|\s)knob [0-9.e+-]+: ", line))


def _run_cells(run: dict, params: int) -> tuple[str, str, str]:
    """A run's share of parameters kept, held-out error and refinement, as table cells."""
    kept = run["params_after"]
    share = "-" if kept is None else f"{100 * kept / params:.2f}%"
    error = "-" if run["error"] is None else f"{100 * run['error']:.4g}%"
    refined = "; ".join(
        f"{r['iterations']} it, {r['seconds']:.0f} s, "
        f"{100 * r['holdout_before']:.3g}% -> {100 * r['holdout_after']:.3g}%"
        for r in run["refine"]
    )
    return share, error, refined


def markdown(result: dict) -> str:
    io_wall, io_cpu = result["io_wall"], result["io_cpu"]
    lines = [
        f"Data-aware search on 4 hidden Tanh layers of {result['width']} with "
        f"{result['rows']} calibration rows (seeded standard normal; 20% held out), CLI end "
        f"to end in one process; `onnx.load` + `onnx.save` median of {result['io_n']} "
        f"interleaved repeats: {io_wall:.2f} s wall, {io_cpu:.2f} s CPU. Load average "
        f"during the run: {', '.join(f'{v:.1f}' for v in result['load'])} (shared machine). "
        "Each run was repeated, interleaved with the others and with the I/O rounds: the "
        "table gives the repeat of median wall time, and the wall time of every repeat "
        "(the network is the same in every repeat unless the last column says otherwise). "
        "The speed of this shared machine drifts, by up to 2x within minutes, so each "
        "repeat is also divided by the mean of the I/O rounds just before and after it "
        "(paired ratio; their median is the ratio to go by).\n",
        "| run | exit | steps | params kept | held-out error | refinement | wall s (median) "
        "| CPU s | wall / load+save (paired, median) | wall / load+save (medians) "
        "| CPU / load+save | wall s of each repeat | paired ratio of each repeat |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in result["runs"].items():
        share, error, refined = _run_cells(run, result["params"])
        lines.append(
            f"| `{RUNS[name][0]}` | {run['code']} | "
            f"{_step_count(run['steps']) if RUNS[name][1] else '-'} | {share} | "
            f"{error} | "
            f"{refined or '-'} | {run['wall']:.1f} | {run['cpu']:.1f} | "
            f"{run.get('paired', float('nan')):.1f}x | "
            f"{run['wall'] / io_wall:.1f}x | {run['cpu'] / io_cpu:.1f}x | "
            f"{', '.join(f'{w:.1f}' for w in run.get('walls', [run['wall']]))}"
            f"{'' if run.get('same', True) else ' (networks differ)'} | "
            f"{', '.join(f'{r:.1f}x' for r in run.get('pairs', []))} |"
        )
    process = {name: run for name, run in result["runs"].items() if "peak_rss" in run}
    if process:
        lines += [
            "",
            "Runs in a child process with `-v` (issue 22 item 3: what a user sees, and when): "
            "time to its first line on stderr, to its first search step's line, the longest "
            "wait between two stderr lines, wall time, peak RSS (`os.wait4`), and whether "
            "the target was met (the search's line on stdout):",
            "",
            "| run | exit | first stderr line s | step 1 line s | longest silence s | wall s "
            "| peak RSS MB | target | params kept | held-out error | refinement |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, run in process.items():
            share, error, refined = _run_cells(run, result["params"])
            lines.append(
                f"| `{RUNS[name][0]}` | {run['code']} | "
                f"{', '.join(f'{t:.1f}' for t in run['first_lines'])} | "
                f"{_seconds(run['first_step'])} | {_seconds(run['longest_silence'])} | "
                f"{', '.join(f'{w:.1f}' for w in run['walls'])} | "
                f"{', '.join(f'{m / 2**20:.0f}' for m in run['peak_rsses'])} | "
                f"{'met' if run['met'] else 'NOT met'} | {share} | {error} | {refined or '-'} |"
            )
    for name, run in result["runs"].items():
        if not run["steps"]:
            continue
        lines += [
            "",
            f"Search steps of `{RUNS[name][0]}`, median repeat (time since start, knob, size; "
            "the hints are the method's estimates of the knob for a size, from the first "
            "layer alone, then with the later layers as a report shows them; a probe is the "
            "method's cheaper variant, its merge-only path, at a knob):",
        ]
        lines += ["", "```", *run["steps"], "```"]
    return "\n".join(lines) + "\n"


def import_onnx_lump(root: Path) -> types.ModuleType:
    """onnx_lump from the checkout ``root`` (``--root``), for this process: the one the path
    finds where it is that checkout's, else ``root/onnx_lump`` loaded as ``onnx_lump``."""
    import importlib.util

    found = importlib.util.find_spec("onnx_lump")
    init = root.resolve() / "onnx_lump" / "__init__.py"
    if found is None or found.origin is None or Path(found.origin).resolve() != init:
        spec = importlib.util.spec_from_file_location("onnx_lump", init)
        if spec is None or spec.loader is None or not init.is_file():
            raise SystemExit(f"--root {root}: no onnx_lump package there")
        module = importlib.util.module_from_spec(spec)
        sys.modules["onnx_lump"] = module
        spec.loader.exec_module(module)
    import onnx_lump

    return onnx_lump


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="load+save repeats per round")
    parser.add_argument("--cli-repeats", type=int, default=3, help="timed runs of each CLI run")
    parser.add_argument(
        "--runs",
        default="norefine,fixed,refine,refine20",
        help="comma list of: " + ",".join(RUNS),
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "tools" / "results",
        help="results folder: writes OUT/speed/search.md and rebuilds OUT/speed.md "
        "(default tools/results); a FILE.md gets the markdown alone",
    )
    parser.add_argument("--profile", type=Path, help="write a cProfile file per run here")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="import onnx_lump from here (before/after runs)"
    )
    args = parser.parse_args()
    onnx_lump = import_onnx_lump(args.root)  # before time_wide and the CLI import it

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger(__name__).warning("onnx_lump from %s", Path(onnx_lump.__file__).parent)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    runs = tuple(r.strip() for r in args.runs.split(",") if r.strip())
    measured = measure(
        args.width,
        args.rows,
        args.repeats,
        runs,
        args.workdir,
        args.profile,
        args.cli_repeats,
        args.root,
    )
    text = markdown(measured)
    print(text)
    from tools.speed_report import command_line, write_sections

    # the child-process runs alone (issue 22 item 3) have their own section
    section = "progress" if set(runs) <= PROCESS_RUNS else "search"
    write_sections(args.out, {section: text}, command_line("time_wide_data"))


if __name__ == "__main__":
    main()
