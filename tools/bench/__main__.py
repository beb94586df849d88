"""Command line of the benchmark: ``python -m tools.bench`` (from the project root; the old
``python tools/bench.py`` runs it too, for one release)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnx

from tools import bench
from tools.bench.common import ACTIVATIONS, ARCHITECTURES, Point, log, point_from_dict
from tools.bench.metrics import HAS_REFINE, Network, best_grp, fmt
from tools.bench.networks import calibration_feeds, predict, reference
from tools.bench.refined import refine_budget
from tools.bench.report import plot_task, plot_task_bytes, reference_table, task_table, write_points
from tools.bench.runner import GROUPS, headline_method, run_network
from tools.bench.speed import latency_example, search_text, search_time, speed
from tools.bench.summary import write_summary
from tools.benchdata import TASKS, load_task
from tools.speed_report import command_line, write_sections

__all__ = ["main"]

SEARCH_MAX_ERROR = 0.05


def _network(task: str, data, hidden, activation: str, cache: Path, quick: bool) -> Network:
    ref = reference(task, data, hidden, activation, cache, quick)
    model = onnx.load(ref.path)
    return Network(
        ref, data, model, calibration_feeds(model, data), predict(model, data.x_test), quick
    )


def _example(net: Network, points: list[Point]):
    """A latency example: lump+refine's smallest point within 5%, else lumping's."""
    if HAS_REFINE:
        found = latency_example(net, points, "lump+refine", refine_budget(net.quick))
        if found:
            return found
    return latency_example(net, points, headline_method(), False)


def _speed_and_search(args, tasks: list[str], points: list[Point]) -> None:
    """The latency section of speed.md (OUT/speed/latency.md: latency examples on the first
    3 x 128 networks, refine + search), OUT/speed.md rebuilt, and search.json."""
    examples, searches = [], []
    hidden = ARCHITECTURES[-1] if not args.quick else ARCHITECTURES[0]
    for task in tasks:
        if len(examples) >= 3:
            break
        data = load_task(task, args.data)
        for activation in ACTIVATIONS if not args.quick else ("tanh",):
            net = _network(task, data, hidden, activation, args.cache, args.quick)
            sel = [p for p in points if p.task == task and p.network == net.ref.network]
            found = _example(net, sel) if len(examples) < 3 else None
            if found:
                examples.append(found)
            if not searches or (not args.quick and len(searches) < 2):
                log(f"  refine + search on {task} {net.ref.network}")
                searches.append(search_time(net.ref, net.calibration, SEARCH_MAX_ERROR))
    worst = max(searches, key=lambda r: r["seconds"]) if searches else None
    (args.out / "search.json").write_text(json.dumps(worst, indent=1) + "\n")
    text = speed(args.quick, examples) + "\n" + search_text(searches)
    write_sections(args.out, {"latency": text}, command_line("bench", args.argv))


def _write_task(out: Path, task: str, task_points: list[Point]) -> None:
    networks = sorted({p.network for p in task_points})
    (out / f"{task}.md").write_text(task_table(task, task_points, networks))
    plot_task(task, task_points, networks, out / f"{task}.png")
    plot_task_bytes(task, task_points, networks, out / f"{task}_bytes.png")


def _log_network(ref, points: list[Point], group: str) -> None:
    if group != "baselines":
        mine = best_grp([p for p in points if p.method == "lump+refine"], 5.0)
        peer = best_grp([p for p in points if p.method == "onnxsim"], 5.0)
        log(
            f"  {ref.task} {ref.network}: GRP% at dRMSE <= 5%: lump+refine {fmt(mine)}, "
            f"onnxsim {fmt(peer)}"
        )


def _finish(args, points: list[Point], tasks: list[str]) -> None:
    rows = write_summary(points, tasks, args.out, headline_method())
    for target, measured, met in rows:
        log(f"  {target}: {measured} ({met})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=bench.__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=bench.ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=bench.ROOT / "tools" / "results")
    parser.add_argument("--cache", type=Path, default=bench.ROOT / "tools" / "cache")
    parser.add_argument("--quick", action="store_true", help="one small network on two tasks")
    parser.add_argument("--tasks", help="comma-separated subset of the tasks (default: all)")
    parser.add_argument(
        "--groups", help=f"comma-separated groups of methods to run (default: {','.join(GROUPS)})"
    )
    parser.add_argument(
        "--no-speed", action="store_true", help="skip the speed and search measurements"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="recompute sweeps even where a cached one exists"
    )
    parser.add_argument(
        "--speed-only",
        action="store_true",
        help="rerun only the speed and search measurements (cached networks, OUT/points.json)",
    )
    parser.add_argument(
        "--from-points",
        action="store_true",
        help="rebuild tables, plots and summary from OUT/points.json without rerunning",
    )
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.from_points or args.speed_only:
        points = [point_from_dict(r) for r in json.loads((args.out / "points.json").read_text())]
        tasks = [t for t in TASKS if any(p.task == t for p in points)]
        if args.speed_only:
            _speed_and_search(args, tasks, points)
        for task in tasks:
            _write_task(args.out, task, [p for p in points if p.task == task])
        _finish(args, points, tasks)
        return
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    tasks = ("rn", "abalone") if args.quick else TASKS
    if args.tasks:
        tasks = tuple(t for t in args.tasks.split(",") if t)
    architectures = ARCHITECTURES[:1] if args.quick else ARCHITECTURES
    activations = ("tanh",) if args.quick else ACTIVATIONS
    if not HAS_REFINE:
        log("SKIPPED lump+refine and distill: onnx_lump.compress has no refine stage")

    datasets = {}
    for task in tasks:
        try:
            datasets[task] = load_task(task, args.data)
        except FileNotFoundError as exc:
            log(f"SKIPPED {task}: {exc}")
            continue
        data = datasets[task]
        log(f"{task}: {data.x_train.shape[0]} train / {data.x_test.shape[0]} test rows")
    done = list(datasets)
    groups = args.groups.split(",") if args.groups else list(GROUPS)
    found: dict[tuple, list[Point]] = {}
    references: dict[tuple, object] = {}
    # Group by group over every network: the refined methods come first everywhere.
    for group in groups:
        log(f"== {group}")
        for task, data in datasets.items():
            for hidden in architectures:
                for activation in activations:
                    key = (task, hidden, activation)
                    ref, new = run_network(
                        task,
                        data,
                        hidden,
                        activation,
                        args.cache,
                        args.quick,
                        args.fresh,
                        (group,),
                        found.get(key, []),
                    )
                    references[(task, hidden, activation)] = ref
                    found.setdefault((task, hidden, activation), []).extend(new)
                    _log_network(ref, found[(task, hidden, activation)], group)
        points = [p for key in found for p in found[key]]
        write_points(points, args.out)
        for task in done:
            _write_task(args.out, task, [p for p in points if p.task == task])
    points = [p for key in found for p in found[key]]
    references = list(references.values())
    (args.out / "references.md").write_text(reference_table(references))
    if not args.no_speed:
        _speed_and_search(args, done, points)
    elapsed = time.perf_counter() - started
    (args.out / "run.txt").write_text(
        f"{'quick' if args.quick else 'full'} run, {elapsed / 60:.1f} min\n"
    )
    _finish(args, points, done)
    log(f"done in {elapsed / 60:.1f} min")


if __name__ == "__main__":
    main()
