"""One method's GRP per network in two benchmark runs, side by side.

Reads two ``points.json`` files written by ``tools/bench.py`` (for example the committed
run and a rerun with another default) and prints, per network, the smallest share of
parameters kept within dRMSE 1% and 5% (GRP%, lower is better; "-" is no point within
the limit and counts as 100 in the means), the difference, and the means.

Below it, two readings of the same points that the first crossing of a dRMSE limit
hides: the test fidelity over the whole size range the two runs share (mean of log
fidelity, interpolated in GRP, new minus old: negative is new closer to the original),
and what choosing between the runs per network by their held-out error (the same
comparison on the rows the tool set aside, never the test rows) would have given.

    python -m tools.compare_points OLD.json NEW.json [--method lump+refine]
        [--labels partition,span] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tools.bench.common import Point, point_from_dict
from tools.bench.metrics import best_grp, fmt
from tools.bench.report import networks_of, select
from tools.benchdata import TASKS

LIMITS = (1.0, 5.0)
CURVE_POINTS = 20  # GRP values at which the two curves are compared


def _networks(points: list[Point], method: str) -> list[tuple[str, str]]:
    """The (task, network) pairs ``method`` ran on, in the summary's order."""
    ran = [p for p in points if p.method == method]
    return networks_of(ran, [t for t in TASKS if any(p.task == t for p in ran)])


def curve_gap(old: list[Point], new: list[Point], value) -> float | None:
    """Mean over the GRP range both runs cover of log ``value(new) - log value(old)``,
    each interpolated in GRP (None where either run has fewer than two points or the
    ranges do not overlap)."""
    curves = []
    for points in (old, new):
        kept = sorted((p for p in points if value(p) is not None), key=lambda p: p.grp)
        if len(kept) < 2:
            return None
        grp = np.array([p.grp for p in kept])
        curves.append((grp, np.log(np.maximum([value(p) for p in kept], 1e-12))))
    low, high = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    if not low < high:
        return None
    grid = np.linspace(low, high, CURVE_POINTS)
    (grp_old, log_old), (grp_new, log_new) = curves
    return float(np.mean(np.interp(grid, grp_new, log_new) - np.interp(grid, grp_old, log_old)))


def curves(old: list[Point], new: list[Point], method: str, labels: tuple[str, ...]) -> str:
    """Per network: the test-fidelity gap and the held-out gap (:func:`curve_gap`), and
    the means of GRP at dRMSE 1% / 5% when each network takes the run its held-out
    gap prefers."""
    networks = _networks(new, method)
    closer, chosen = [0, 0], {limit: 0.0 for limit in LIMITS}
    lines = [
        f"| task | network | test fidelity, log {labels[1]} - {labels[0]} | held-out, "
        f"log {labels[1]} - {labels[0]} | held-out picks |",
        "|---|---|---|---|---|",
    ]
    for task, network in networks:
        a, b = select(old, task, network, method), select(new, task, network, method)
        fidelity = curve_gap(a, b, lambda p: p.fidelity)
        held = curve_gap(a, b, lambda p: p.holdout)
        if fidelity is not None:
            closer[fidelity > 0] += 1
        pick = b if held is None or held <= 0 else a
        for limit in LIMITS:
            grp = best_grp(pick, limit)
            chosen[limit] += 100.0 if grp is None else grp
        name = labels[1] if pick is b else labels[0]
        cells = [f"{x:+.2f}" if x is not None else "-" for x in (fidelity, held)]
        lines.append(f"| {task} | {network} | {cells[0]} | {cells[1]} | {name} |")
    n = max(len(networks), 1)
    lines += [
        "",
        f"- test fidelity over the shared size range: {labels[1]} closer to the original "
        f"on {closer[0]}, {labels[0]} on {closer[1]} of {len(networks)} networks",
        "- each network taking the run its held-out rows prefer: mean GRP% "
        + ", ".join(f"{chosen[limit] / n:.1f} at dRMSE <= {limit:g}%" for limit in LIMITS),
    ]
    return "\n".join(lines) + "\n"


def compare(old: list[Point], new: list[Point], method: str, labels: tuple[str, ...]) -> str:
    """The side-by-side table (markdown) of ``method`` in the two runs."""
    networks = _networks(new, method)
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
    table = compare(old, new, args.method, labels) + "\n" + curves(old, new, args.method, labels)
    print(table, end="")
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
