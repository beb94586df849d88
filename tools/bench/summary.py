"""summary.md: the headline table, every method's mean GRP%, the issue's targets with
the measured values, fidelity at equal size, and refinement wall times."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tools.bench.common import METHOD_ORDER, Point
from tools.bench.metrics import best_grp, fmt
from tools.bench.report import best_baseline, mean_grp, networks_of, select
from tools.speed_report import read_section

__all__ = ["fidelity_pairs", "summary", "targets", "write_summary"]

LIMITS = (1.0, 5.0)


def _headline_table(points: list[Point], pairs, previous: str) -> str:
    columns = ["lump+refine", previous, "distill", "onnxsim", "best baseline", "scratch"]
    header = (
        "| task | network | "
        + " | ".join(f"{c} <={limit:.0f}%" for limit in LIMITS for c in columns)
        + " | <= half of onnxsim at 5%? |\n|"
        + "---|" * (3 + 2 * len(columns))
    )
    rows = []
    for task, network in pairs:
        cells = [task, network]
        for limit in LIMITS:
            for column in columns:
                if column == "best baseline":
                    cells.append(fmt(best_baseline(points, task, network, limit)))
                else:
                    cells.append(fmt(best_grp(select(points, task, network, column), limit)))
        cells.append({None: "n/a", True: "yes", False: "no"}[_half(points, task, network)])
        rows.append("| " + " | ".join(cells) + " |")
    return header + "\n" + "\n".join(rows) + "\n"


def _half(points: list[Point], task: str, network: str) -> bool | None:
    """lump+refine's GRP% at dRMSE <= 5% at most half onnxsim's (no point counts as 100)."""
    mine = select(points, task, network, "lump+refine")
    peer = select(points, task, network, "onnxsim")
    if not mine or not peer:
        return None
    a, b = best_grp(mine, 5.0), best_grp(peer, 5.0)
    return (100.0 if a is None else a) <= 0.5 * (100.0 if b is None else b)


def _means(points: list[Point], pairs) -> str:
    lines = [
        "| method | mean GRP% at dRMSE <= 1% | mean GRP% at dRMSE <= 5% "
        "| networks with a point <= 5% |",
        "|---|---|---|---|",
    ]
    for method in METHOD_ORDER:
        ran = [(t, n) for t, n in pairs if select(points, t, n, method)]
        if not ran:
            continue
        within = sum(best_grp(select(points, t, n, method), 5.0) is not None for t, n in ran)
        lines.append(
            f"| {method} | {fmt(mean_grp(points, pairs, method, 1.0))} "
            f"| {fmt(mean_grp(points, pairs, method, 5.0))} | {within} of {len(ran)} |"
        )
    return "\n".join(lines) + "\n"


def fidelity_pairs(points: list[Point]) -> list[tuple[Point, Point]]:
    """(lump+refine, distill) at the same network and epsilon, hence the same widths."""
    distill = {(p.task, p.network, p.knob): p for p in points if p.method == "distill"}
    return [
        (p, distill[(p.task, p.network, p.knob)])
        for p in points
        if p.method == "lump+refine" and (p.task, p.network, p.knob) in distill
    ]


def _fidelity_table(points: list[Point], pairs) -> str:
    lines = [
        "| task | network | sizes | lump+refine better | median fidelity lump+refine "
        "| median fidelity distill | median dRMSE% lump+refine | median dRMSE% distill |",
        "|---|---|---|---|---|---|---|---|",
    ]
    matched = fidelity_pairs(points)
    for task, network in pairs:
        sel = [(a, b) for a, b in matched if a.task == task and a.network == network]
        if not sel:
            continue
        better = sum(a.fidelity < b.fidelity for a, b in sel)
        lines.append(
            f"| {task} | {network} | {len(sel)} | {better} "
            f"| {np.median([a.fidelity for a, _ in sel]):.4f} "
            f"| {np.median([b.fidelity for _, b in sel]):.4f} "
            f"| {np.median([a.drmse for a, _ in sel]):.1f} "
            f"| {np.median([b.drmse for _, b in sel]):.1f} |"
        )
    return "\n".join(lines) + "\n"


def _refine_times(points: list[Point], pairs) -> str:
    lines = [
        "| task | network | sizes | lump+refine refine s (total / median) "
        "| distill refine s (total / median) | onnxsim refit + distill s (total / median) |",
        "|---|---|---|---|---|---|",
    ]
    for task, network in pairs:
        cells = []
        for method in ("lump+refine", "distill", "onnxsim"):
            times = [p.refine_seconds for p in select(points, task, network, method)]
            cells.append(f"{sum(times):.1f} / {np.median(times):.2f}" if times else "-")
        sizes = len(select(points, task, network, "lump+refine"))
        lines.append(f"| {task} | {network} | {sizes} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def targets(points: list[Point], pairs, search: dict | None) -> list[tuple[str, str, str]]:
    """(target, measured, met?) for the numbers issue 8 asks for."""
    rows = []
    for limit, goal in ((5.0, 30.0), (1.0, 45.0)):
        value = mean_grp(points, pairs, "lump+refine", limit)
        rows.append(
            (
                f"mean GRP% of lump+refine at dRMSE <= {limit:.0f}% <= {goal:.0f}",
                fmt(value),
                "-" if value is None else ("yes" if value <= goal else "no"),
            )
        )
    halves = [_half(points, t, n) for t, n in pairs]
    counted = [h for h in halves if h is not None]
    need = round(24 * len(pairs) / 32)
    rows.append(
        (
            f"lump+refine GRP% at dRMSE <= 5% at most half onnxsim's on >= {need} of "
            f"{len(pairs)} networks (no point counts as 100)",
            f"{sum(counted)} of {len(counted)}" if counted else "- (onnxsim not run)",
            "-" if not counted else ("yes" if sum(counted) >= need else "no"),
        )
    )
    for limit in LIMITS:
        mine = mean_grp(points, pairs, "lump+refine", limit)
        theirs = mean_grp(points, pairs, "distill", limit)
        ok = "-" if mine is None or theirs is None else ("yes" if mine <= theirs else "no")
        rows.append(
            (
                f"mean GRP% at dRMSE <= {limit:.0f}%: lump+refine <= distill",
                f"{fmt(mine)} vs {fmt(theirs)}",
                ok,
            )
        )
    matched = fidelity_pairs(points)
    if matched:
        better = sum(a.fidelity < b.fidelity for a, b in matched)
        ratio = np.exp(
            np.mean([np.log(max(b.fidelity, 1e-12) / max(a.fidelity, 1e-12)) for a, b in matched])
        )
        rows.append(
            (
                "fidelity at equal size: lump+refine better than distill",
                f"better at {better} of {len(matched)} sizes; distill/lump+refine fidelity "
                f"ratio, geometric mean {ratio:.2f}",
                "yes" if better > len(matched) / 2 and ratio > 1 else "no",
            )
        )
    if search:
        rows.append(
            (
                f"refine + search on {search['network']} with {search['rows']} calibration "
                "inputs <= 60 s (two cores)",
                f"{search['seconds']:.1f} s wall, {search.get('cpu_seconds', 0):.1f} s CPU "
                f"(load {search.get('load', 0):.1f})",
                "yes" if search["seconds"] <= 60 else "no",
            )
        )
    return rows


def summary(points: list[Point], tasks: list[str], previous: str, search: dict | None) -> str:
    pairs = networks_of(points, tasks)
    rows = targets(points, pairs, search)
    return (
        "## GRP% per network (smallest retained share within the dRMSE limit; lower is "
        "better)\n\n"
        + _headline_table(points, pairs, previous)
        + "\nMeans over all task x network pairs (a method with no point within the limit "
        "counts as 100):\n\n"
        + _means(points, pairs)
        + "\n## Targets (issue 8)\n\n| target | measured | met? |\n|---|---|---|\n"
        + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
        + "\n\n## Fidelity at equal size: lump+refine against distill (same widths, same "
        "refine budget; fidelity = RMSE of the output change on the test inputs / std of "
        "the original's test outputs, lower is better)\n\n"
        + _fidelity_table(points, pairs)
        + "\n## Refinement wall time per network\n\n"
        + _refine_times(points, pairs)
    )


def write_summary(
    points: list[Point], tasks: list[str], out: Path, previous: str
) -> list[tuple[str, str, str]]:
    run = (out / "run.txt").read_text().strip() if (out / "run.txt").exists() else "run"
    latency = out / "speed" / "latency.md"  # bench's own section of speed.md
    speed_text = "## Speed\n\n" + read_section(latency)[1] + "\n" if latency.is_file() else ""
    search_file = out / "search.json"
    search = json.loads(search_file.read_text()) if search_file.exists() else None
    (out / "summary.md").write_text(
        f"# Benchmark summary ({run})\n\n"
        + summary(points, tasks, previous, search)
        + "\n"
        + speed_text
    )
    return targets(points, networks_of(points, tasks), search)
