"""Tables, Pareto plots and the summary, from the sweep points alone (so they can be
rebuilt from ``points.json`` without rerunning anything)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tools.bench.common import (
    BASELINES,
    METHOD_ORDER,
    QUANTIZED,
    REFINED,
    UNSTRUCTURED,
    Point,
    Reference,
)
from tools.bench.metrics import best_grp, fmt

__all__ = [
    "TYPICAL",
    "mean_grp",
    "networks_of",
    "plot_task",
    "plot_task_bytes",
    "reference_table",
    "task_table",
    "write_points",
]

HEADLINE = "lump+refine"
TYPICAL = {
    "abalone": "RMSE about 2.1 rings, R^2 0.55-0.60",
    "protein": "RMSE 3.6-4.0, R^2 0.57-0.65",
    "metro": "R^2 about 0.94 with time features",
    "hepc": "(no typical value given)",
}


def networks_of(points: list[Point], tasks: list[str]) -> list[tuple[str, str]]:
    return [(t, n) for t in tasks for n in sorted({p.network for p in points if p.task == t})]


def select(points: list[Point], task: str, network: str, method: str) -> list[Point]:
    return [p for p in points if p.task == task and p.network == network and p.method == method]


def mean_grp(points: list[Point], pairs, method: str, limit: float) -> float | None:
    """Mean over networks of the smallest GRP% within ``limit``; a network where the
    method ran but has no point within the limit counts as 100."""
    values = []
    for task, network in pairs:
        sel = select(points, task, network, method)
        if sel:
            found = best_grp(sel, limit)
            values.append(100.0 if found is None else found)
    return float(np.mean(values)) if values else None


def task_table(task: str, points: list[Point], networks: list[str]) -> str:
    header = "| method | " + " | ".join(f"{n} <=1% | {n} <=5%" for n in networks) + " |"
    lines = [
        f"### {task}: smallest retained parameters (GRP%) with dRMSE <= 1% and <= 5%",
        "",
        header,
        "|---|" + "---|" * (2 * len(networks)),
    ]
    for method in METHOD_ORDER:
        if not any(p.method == method for p in points):
            continue
        cells = []
        for network in networks:
            sel = [p for p in points if p.method == method and p.network == network]
            cells += [fmt(best_grp(sel, 1.0)), fmt(best_grp(sel, 5.0))]
        mark = " (unstructured: graph not smaller)" if method in UNSTRUCTURED else ""
        lines.append(f"| {method}{mark} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"#### {task}: every refined point (fidelity = RMSE of the output change on the "
        "test inputs / std of the original's test outputs)",
        "",
        "| network | method | knob | widths | GRP% | dRMSE% | fidelity | held-out error "
        "| refine s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for network in networks:
        for method in REFINED:
            for p in sorted(
                (p for p in points if p.network == network and p.method == method),
                key=lambda p: -p.grp,
            ):
                lines.append(
                    f"| {network} | {method} | {p.knob:.4g} | {p.widths} | {p.grp:.1f} "
                    f"| {p.drmse:.1f} | {p.fidelity:.4f} | {fmt(p.holdout, 4)} "
                    f"| {p.refine_seconds:.1f} |"
                )
    return "\n".join(lines) + "\n"


STYLES = {
    "lump+refine": {"color": "black", "lw": 2.0},
    "distill": {"color": "crimson", "lw": 1.5, "ls": "-.", "marker": "x"},
    "onnxsim": {"color": "tab:purple", "lw": 1.5, "ls": "-."},
    "int8": {"color": "tab:orange", "lw": 0, "marker": "s"},
    "lump+int8": {"color": "tab:orange", "lw": 1.5, "marker": "s", "ms": 4},
}


def _network_axes(points: list[Point], networks: list[str]):
    """A figure with one axis a network: (plt, fig, axes, [(axis, network, its points, the
    original's test RMSE)])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(networks), figsize=(4.6 * len(networks), 4.0), squeeze=False)
    panels = []
    for ax, network in zip(axes[0], networks, strict=True):
        mine = [p for p in points if p.network == network]
        base = next((p.test_rmse for p in mine if p.method == "original"), None)
        base = min(p.test_rmse for p in mine) if base is None else base
        panels.append((ax, network, mine, base))
    return plt, fig, axes, panels


def _finish_panel(ax, title: str, base: float, xlabel: str) -> None:
    """A network's panel: log x axis, test RMSE up to 3x the original's, the 5% line."""
    ax.axhline(base * 1.05, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_ylim(0, base * 3)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test RMSE (standardised)")


def _save_figure(plt, fig, axes, path: Path) -> None:
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_task(task: str, points: list[Point], networks: list[str], path: Path) -> None:
    plt, fig, axes, panels = _network_axes(points, networks)
    for ax, network, _, base in panels:
        for method in METHOD_ORDER:
            sel = sorted(
                (p for p in points if p.network == network and p.method == method),
                key=lambda p: p.grp,
            )
            if sel:
                plain = {"lw": 0.9, "ls": "--" if method in UNSTRUCTURED else "-"}
                style = {"marker": ".", **STYLES.get(method, plain)}
                ax.plot([p.grp for p in sel], [p.test_rmse for p in sel], label=method, **style)
        ax.set_xlim(0.5, 105)
        _finish_panel(ax, f"{task}, {network}", base, "retained parameters (%, log scale)")
    _save_figure(plt, fig, axes, path)


def plot_task_bytes(task: str, points: list[Point], networks: list[str], path: Path) -> bool:
    """The Pareto plot with the model's bytes on the x axis (the structured methods and
    the int8 points, wherever a point recorded its bytes); False (nothing drawn) when no
    point of the task has bytes (sweeps cached before they were recorded)."""
    if not any(p.bytes for p in points if p.method in QUANTIZED):
        return False
    plt, fig, axes, panels = _network_axes(points, networks)
    for ax, network, mine, base in panels:
        for method in ("original", *METHOD_ORDER):
            if method in UNSTRUCTURED:  # zeros are stored: the file is not smaller
                continue
            sel = sorted((p for p in mine if p.method == method and p.bytes), key=lambda p: p.bytes)
            if sel:
                style = {"marker": ".", **STYLES.get(method, {"lw": 0.9})}
                if method == "original":
                    style = {"marker": "*", "color": "grey", "lw": 0, "ms": 9}
                ax.plot([p.bytes for p in sel], [p.test_rmse for p in sel], label=method, **style)
        _finish_panel(ax, f"{task}, {network}", base, "model bytes (log scale)")
    _save_figure(plt, fig, axes, path)
    return True


def reference_table(references: list[Reference]) -> str:
    lines = [
        "| task | network | iterations | test RMSE (standardised) | RMSE (target units) | R^2 "
        "| typical (data README) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in references:
        lines.append(
            f"| {r.task} | {r.network} | {r.iterations} | {r.test_rmse:.4f} | {r.rmse_units:.4g} "
            f"| {r.r2:.3f} | {TYPICAL.get(r.task, 'simulated: no reference')} |"
        )
    return "\n".join(lines) + "\n"


def write_points(points: list[Point], out: Path) -> None:
    rows = [asdict(p) for p in points]
    (out / "points.json").write_text(json.dumps(rows, indent=0) + "\n")
    with (out / "points.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def best_baseline(points: list[Point], task: str, network: str, limit: float) -> float | None:
    found = [best_grp(select(points, task, network, m), limit) for m in BASELINES]
    found = [b for b in found if b is not None and b < 100.0]
    return min(found) if found else None
