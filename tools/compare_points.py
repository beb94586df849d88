"""One method's GRP per network in two benchmark runs, side by side.

Reads two ``points.json`` files written by ``tools/bench.py`` (for example the committed
run and a rerun with another default) and prints, per network, the smallest share of
parameters kept within dRMSE 1% and 5% (GRP%, lower is better; "-" is no point within
the limit and counts as 100 in the means), the difference, and the means.

    python tools/compare_points.py OLD.json NEW.json [--method lump+refine]
        [--labels partition,span] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench package beside it

from bench.common import Point, point_from_dict
from bench.metrics import best_grp, fmt
from bench.report import networks_of, select
from benchdata import TASKS

LIMITS = (1.0, 5.0)


def compare(old: list[Point], new: list[Point], method: str, labels: tuple[str, ...]) -> str:
    """The side-by-side table (markdown) of ``method`` in the two runs."""
    ran = [p for p in new if p.method == method]
    networks = networks_of(ran, [t for t in TASKS if any(p.task == t for p in ran)])
    head = ["task", "network"]
    for limit in LIMITS:
        head += [f"{labels[0]} <={limit:g}%", f"{labels[1]} <={limit:g}%", "change"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = {(limit, side): 0.0 for limit in LIMITS for side in (0, 1)}
    better = {limit: [0, 0] for limit in LIMITS}
    for task, network in networks:
        cells = [task, network]
        for limit in LIMITS:
            a = best_grp(select(old, task, network, method), limit)
            b = best_grp(select(new, task, network, method), limit)
            a100, b100 = 100.0 if a is None else a, 100.0 if b is None else b
            totals[(limit, 0)] += a100
            totals[(limit, 1)] += b100
            better[limit][0] += a100 < b100
            better[limit][1] += b100 < a100
            cells += [fmt(a), fmt(b), f"{b100 - a100:+.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    n = max(len(networks), 1)
    lines.append("")
    for limit in LIMITS:
        lines.append(
            f"- dRMSE <= {limit:g}%: mean GRP% {labels[0]} {totals[(limit, 0)] / n:.1f}, "
            f"{labels[1]} {totals[(limit, 1)] / n:.1f}; {labels[0]} smaller on "
            f"{better[limit][0]}, {labels[1]} on {better[limit][1]} of {len(networks)} networks"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--method", default="lump+refine")
    parser.add_argument("--labels", default="old,new")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    labels = tuple(args.labels.split(","))
    if len(labels) != 2:
        parser.error("--labels takes two names, comma-separated")
    old, new = (
        [point_from_dict(r) for r in json.loads(f.read_text())] for f in (args.old, args.new)
    )
    table = compare(old, new, args.method, labels)
    print(table, end="")
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
