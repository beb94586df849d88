"""Command line of the transformer task: ``python -m tools.transformer_bench`` (from the
project root; the old ``python tools/transformer_bench.py`` runs it too, for one release)."""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from tools import transformer_bench
from tools.transformer_bench.common import (
    DEFAULT_CACHE,
    EPS,
    MAX_REFINED,
    ONNXSIM_STEPS,
    QUICK_EPS,
    QUICK_MAX_REFINED,
    QUICK_ONNXSIM_STEPS,
    QUICK_REFINE,
    QUICK_SPARSITIES,
    REFINE,
    RESULTS,
    SPARSITIES,
    THREADS,
    Point,
    log,
)
from tools.transformer_bench.methods import (
    linear_points,
    lump_points,
    onnxsim_points,
    pruning_points,
)
from tools.transformer_bench.report import plot, write_markdown
from tools.transformer_bench.task import Task

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=transformer_bench.__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="few points, small budgets")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated parts to run: lump,pruning,ec,linear,onnxsim; the other methods' "
        "points of an earlier run are kept ('report' runs nothing, rewrites the report)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    started = time.perf_counter()
    task = Task(args.cache)
    log(
        f"model: {task.n_chains} FFN chains, {task.ffn_params:,} FFN params; held-out loss "
        f"{task.loss:.4f}, accuracy {task.accuracy:.4f}"
    )
    everything = {"lump", "pruning", "ec", "linear", "onnxsim"}
    only = set(args.only.split(",")) if args.only else everything
    points: list[Point] = []
    sparsities = QUICK_SPARSITIES if args.quick else SPARSITIES
    if "lump" in only:
        log("lump and lump+refine")
        points += lump_points(
            task,
            QUICK_EPS if args.quick else EPS,
            QUICK_REFINE if args.quick else REFINE,
            QUICK_MAX_REFINED if args.quick else MAX_REFINED,
        )
    if "linear" in only:
        log("linear")
        points += linear_points(task)
    if "onnxsim" in only:
        log("onnxsim")
        points += onnxsim_points(
            task,
            sparsities,
            QUICK_ONNXSIM_STEPS if args.quick else ONNXSIM_STEPS,
        )
    if "pruning" in only:
        log("magnitude, wanda")
        points += pruning_points(task, sparsities)
    if "ec" in only:  # elimination-compensation: slow on 512-wide layers, a part of its own
        log("ec")
        points += pruning_points(task, sparsities, ("ec",))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "transformer_quick" if args.quick else "transformer"
    seconds = time.perf_counter() - started
    previous = args.out / f"{stem}.json"
    if args.only and previous.is_file():  # keep the other methods' points of an earlier run
        ran = {p.method for p in points}
        kept = [Point(**p) for p in json.loads(previous.read_text())["points"]]
        points = [p for p in kept if p.method not in ran] + points
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "original": {"loss": task.loss, "accuracy": task.accuracy},
                "ffn_params": task.ffn_params,
                "points": [asdict(p) for p in points],
            },
            indent=1,
        )
        + "\n"
    )
    write_markdown(task, points, args.out / f"{stem}.md", args.quick, seconds)
    plot(task, points, args.out / f"{stem}.png")
    log(f"wrote {args.out / stem}.md/.json/.png in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
