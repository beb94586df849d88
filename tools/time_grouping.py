"""Time ``group_data_rows`` against git HEAD's version on the rows the data path groups.

The rows are those :func:`onnx_lump.ode.equivalence.backward_lumping` hands to the
grouping (captured by wrapping ``group_data_rows``) for one layer of
:func:`time_wide.build` (4 hidden Tanh layers of 4096, clusters of 8 near-identical
neurons) on 1,638 seeded standard-normal rows, the inputs of layer ``--layer`` formed by
the unreduced layers before it. Each epsilon is timed for both versions (best of
``--repeats``, since other processes share the machine) and the groups must be identical.

    python -m tools.time_grouping [--layer 0] [--repeats 1] [--eps 1 0.0625 ...]

``--rows a.npy b.npy ...`` times saved rows (float64, rows x columns) instead, each at
``--eps`` or else at the epsilon that is the first field of the ``.txt`` beside it.
"""

from __future__ import annotations

import argparse
import subprocess
import time
import types
from pathlib import Path

import numpy as np
from onnx import numpy_helper

import onnx_lump.ode.equivalence as equivalence
from onnx_lump.activations import Activation, ActivationKind
from onnx_lump.ode.data_grouping import group_data_rows
from onnx_lump.ode.grouping import StoredRows
from onnx_lump.ode.partition import PartitionOptions, Similarity

ROOT = Path(__file__).resolve().parent.parent

EPS = (1.0, 0.0625, 0.0039, 2.44e-4, 1.1e-4, 1e-5)


def data_rows(layer: int = 0, samples: int = 1638) -> np.ndarray:
    """The rows the data path groups for ``layer`` of ``build(4096)``."""
    from tools.time_wide import build

    weights = {
        t.name: numpy_helper.to_array(t).astype(np.float64) for t in build(4096).graph.initializer
    }
    x = np.random.default_rng(0).standard_normal((samples, 64))
    for index in range(layer):
        x = np.tanh(x @ weights[f"W{index}"].T + weights[f"b{index}"])
    captured = {}

    def capture(rows, eps, linkage):
        captured["rows"] = rows.rows
        return group_data_rows(rows, eps, linkage)

    equivalence.group_data_rows = capture
    options = PartitionOptions(1e-4, similarity=Similarity.DATA)
    tanh = Activation(ActivationKind.TANH)
    equivalence.backward_lumping(weights[f"W{layer}"], weights[f"b{layer}"], tanh, options, 1e-7, x)
    equivalence.group_data_rows = group_data_rows
    return captured["rows"]


def old_version():
    """git HEAD's ``group_data_rows``."""
    source = subprocess.run(
        ["git", "show", "HEAD:onnx_lump/ode/data_grouping.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("old_data_grouping")
    exec(compile(source, "old_data_grouping.py", "exec"), module.__dict__)
    return module.group_data_rows


def best_time(function, rows, eps, repeats):
    times, labels = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        labels = function(StoredRows(rows), eps)
        times.append(time.perf_counter() - started)
    return min(times), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--eps", type=float, nargs="+")
    parser.add_argument("--rows", type=Path, nargs="+", help="saved rows (.npy) to time")
    args = parser.parse_args()
    old = old_version()
    if args.rows:
        cases = [
            (
                path.name,
                np.load(path),
                args.eps or [float(path.with_suffix(".txt").read_text().split()[0])],
            )
            for path in args.rows
        ]
    else:
        cases = [(f"layer {args.layer}", data_rows(args.layer), args.eps or EPS)]
    print("| rows | eps | groups | old s | new s | speed-up |\n|---|---|---|---|---|---|")
    for name, rows, epsilons in cases:
        for eps in epsilons:
            before, expected = best_time(old, rows, eps, args.repeats)
            after, labels = best_time(group_data_rows, rows, eps, args.repeats)
            if not np.array_equal(labels, expected):
                raise SystemExit(f"{name}, eps {eps}: groups differ from git HEAD's")
            print(
                f"| {name} {rows.shape} | {eps:g} | {labels.max() + 1} | {before:.3f} "
                f"| {after:.3f} | {before / after:.1f}x |"
            )


if __name__ == "__main__":
    main()
