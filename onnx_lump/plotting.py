"""The size/error curve of a sweep as a picture (``--sweep ... --plot FILE.png``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from onnx_lump.errors import LumpError
from onnx_lump.types import COSINE, RMSE, SweepPoint

__all__ = ["PLOT_FORMATS", "plot_path", "plot_sweep"]

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
