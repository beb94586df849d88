"""Sweeps: the knob values of ``--sweep`` (:func:`parse_knobs`), the points at them
(:func:`sweep`), written as a table (:func:`write_table`) and drawn as the size/error
curve (``--sweep ... --plot FILE.png``, :func:`plot_sweep`)."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from onnx_lump.errors import LumpError
from onnx_lump.search.bisection import TimeLimitReached
from onnx_lump.search.evaluator import Evaluator
from onnx_lump.types import COSINE, RMSE, SweepPoint

__all__ = ["PLOT_FORMATS", "parse_knobs", "plot_path", "plot_sweep", "sweep", "write_table"]

# What matplotlib's Agg, PDF, PS and SVG backends write.
PLOT_FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".eps", ".ps")


def plot_path(text: str) -> Path:
    """argparse ``type=`` for ``--plot``: refuse, before any work, a format matplotlib does
    not write or a missing matplotlib."""
    path = Path(text)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a picture file; end it with one of {', '.join(PLOT_FORMATS)}"
        )
    if importlib.util.find_spec("matplotlib") is None:
        raise argparse.ArgumentTypeError("--plot needs matplotlib: pip install matplotlib")
    return path


def plot_sweep(
    points: Sequence[SweepPoint],
    path: str | os.PathLike,
    knob_name: str = "knob",
    title: str | None = None,
    metric: str = RMSE,
) -> Path:
    """Draw parameters kept (%) against the error (``metric``'s: relative RMSE in %, or
    1 - cosine), one marker per knob value, to ``path`` (any format matplotlib writes:
    .png, .svg, .pdf). Needs matplotlib."""
    if not points:
        raise LumpError("the sweep has no points to plot")
    try:
        # a bare Figure draws with Agg and leaves pyplot's global backend alone
        from matplotlib.figure import Figure
    except ImportError:
        raise LumpError("--plot needs matplotlib: pip install matplotlib") from None

    path = Path(path)
    ordered = sorted(points, key=lambda p: p.retained)
    kept = [100 * p.retained for p in ordered]
    scale = 1.0 if metric == COSINE else 100.0
    errors = [scale * p.error for p in ordered]
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.subplots()
    axes.plot(kept, errors, marker="o", linewidth=1.5)
    for point, x, y in zip(ordered, kept, errors, strict=True):
        axes.annotate(
            f"{point.knob:.3g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
        )
    axes.set_xlabel("parameters kept (%)")
    axes.set_ylabel("1 - cosine" if metric == COSINE else "error (%)")
    axes.set_title(title or f"size/error trade-off (labels: {knob_name})")
    axes.invert_xaxis()  # smaller models to the right, as the knob grows
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=120)
    except (OSError, ValueError) as exc:
        raise LumpError(f"cannot write the plot '{path}': {exc}") from exc
    return path


def parse_knobs(spec: str) -> list[float]:
    """``0,0.1,0.5`` or ``start:stop:step`` (stop included) as a list of values; an empty
    item (``0,,1``, ``,1``, ``1,``) is an error, not a value skipped."""
    items = spec.split(":" if ":" in spec else ",")
    if spec.strip() and (empty := [i for i, item in enumerate(items, 1) if not item.strip()]):
        raise LumpError(
            f"--sweep '{spec}': item {empty[0]} of {len(items)} is empty; "
            "give a list 'a,b,c' or a range 'start:stop:step'"
        )
    try:
        if ":" in spec:
            start, stop, step = (float(v) for v in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            return [round(start + i * step, 12) for i in range(count)]
        knobs = [float(v) for v in items]
        if not knobs or not all(np.isfinite(knobs)):
            raise ValueError
        return knobs
    except ValueError:
        raise LumpError(
            f"--sweep '{spec}' is not a list 'a,b,c' or a range 'start:stop:step'"
        ) from None


def sweep(evaluate: Evaluator, knobs: Sequence[float]) -> list[SweepPoint]:
    """The points at ``knobs``; past the evaluator's deadline, those reached."""
    points = []
    for knob in knobs:
        try:
            points.append(evaluate(knob)[2])
        except TimeLimitReached:
            break
    return points


def write_table(points: Sequence[SweepPoint], path: Path, knob_name: str) -> None:
    rows = [
        {knob_name: p.knob, **{k: v for k, v in asdict(p).items() if k != "knob"}} for p in points
    ]
    try:
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps(rows, indent=1) + "\n")
            return
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise LumpError(f"cannot write '{path}': {exc.strerror or exc}") from exc
