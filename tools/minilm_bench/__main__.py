"""Command line of the MiniLM task: ``python -m tools.minilm_bench`` (from the project root;
the old ``python tools/minilm_bench.py`` runs it too, for one release)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tools import minilm_bench
from tools.minilm_bench.common import (
    DEFAULT_CACHE,
    EXPORTS,
    LATENCY_BATCHES,
    LATENCY_SEQ,
    METHODS,
    ONNXSIM_STEPS,
    OURS_VARIANTS,
    RESULTS,
    SHARES,
    TIMEOUT,
    Point,
    log,
    point_from_dict,
)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=minilm_bench.__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="exports, data, runs")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: the dynamo export (TorchScript if it failed), 50%%, ours and the "
        "two baselines, 2 latency repeats; writes minilm_quick.*",
    )
    parser.add_argument("--exports", help=f"comma-separated, of {','.join(EXPORTS)}")
    parser.add_argument(
        "--methods",
        help=f"comma-separated, of {','.join(METHODS)} and the --ours-extra labels "
        "('int8' also quantizes ours at 50%%; 'none' measures only the originals)",
    )
    parser.add_argument("--shares", help="comma-separated FFN shares kept (default 0.7,0.5,0.3)")
    parser.add_argument(
        "--ours-extra",
        action="append",
        default=[],
        metavar="LABEL:FLAGS",
        help="another variant of our command line, e.g. 'ours-fast:--refine-seconds 20' "
        "(repeatable; run with the default methods, or name LABEL in --methods)",
    )
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per compression")
    parser.add_argument(
        "--int8-of",
        default="ours",
        metavar="LABEL",
        help="with int8: also quantize this method's 50%% model (default ours)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="latency repeats (default 5)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency ratios")
    parser.add_argument(
        "--onnxsim-steps", type=int, default=ONNXSIM_STEPS, help="peer's block finetune steps"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the .md and .png from the .json"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a compression child's spec
    return parser


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for name in ("onnx_lump", "onnxruntime", "onnx", "onnxsim", "torch", "transformers"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "absent"
    return found


def _load(path: Path) -> tuple[dict, list[Point]]:
    if not path.is_file():
        return {}, []
    saved = json.loads(path.read_text())
    return saved, [point_from_dict(row) for row in saved.get("points", [])]


def _merge(old: list[Point], new: list[Point]) -> list[Point]:
    keys = {p.key for p in new}
    return [p for p in old if p.key not in keys] + new


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        from tools.minilm_bench.worker import work

        return work(args.worker)
    from tools.minilm_bench.report import plot, write_markdown

    stem = "minilm_quick" if args.quick else "minilm"
    json_path = args.out / f"{stem}.json"
    if args.report_only:
        if not json_path.is_file():
            raise SystemExit(f"no {json_path} to report on")
        saved, points = _load(json_path)
        write_markdown(args.out / f"{stem}.md", points, saved["meta"], saved["exports"])
        plot(args.out / f"{stem}.png", points)
        log(f"rewrote {args.out / stem}.md/.png from {json_path}")
        return 0
    from tools.minilm_bench.evaluate import Original
    from tools.minilm_bench.export import export_path, exports
    from tools.minilm_bench.methods import execute, job, parse_extra, run_dir
    from tools.minilm_bench.text import encode, texts, tokenizer

    started = time.perf_counter()
    variants = parse_extra(args.ours_extra)
    if args.quick:
        methods = ["ours", *variants, "topact", "id"]
        shares = [0.5]
        wanted = ["dynamo", "torchscript"]
    else:
        methods = [*METHODS[:-1], *variants, METHODS[-1]]  # int8 last: it needs ours at 50%
        shares = list(SHARES)
        wanted = list(EXPORTS)
    if args.methods:
        methods = [] if args.methods == "none" else args.methods.split(",")
    if args.shares:
        shares = [float(s) for s in args.shares.split(",")]
    if args.exports:
        wanted = args.exports.split(",")
    for name in methods:
        if name not in {*METHODS, *variants}:
            raise SystemExit(f"unknown method {name!r} (known: {', '.join([*METHODS, *variants])})")
    for name in wanted:
        if name not in EXPORTS:
            raise SystemExit(f"unknown export {name!r} (known: {', '.join(EXPORTS)})")
    repeats = args.repeats or (2 if args.quick else 5)

    args.cache.mkdir(parents=True, exist_ok=True)
    sentences = texts(args.cache)
    tok = tokenizer()
    calib_path = args.cache / "calib.npz"
    calib = encode(tok, sentences.calib)
    np.savez(calib_path, **calib)  # what the command line's --calib takes
    feeds = encode(tok, sentences.eval)
    latency_feeds = encode(tok, sentences.eval[: max(LATENCY_BATCHES)], LATENCY_SEQ)
    log(
        f"sentences: {len(sentences.calib)} calibration ({calib['attention_mask'].sum():,} "
        f"tokens), {len(sentences.eval)} evaluation ({feeds['attention_mask'].sum():,} tokens)"
    )

    made = exports(args.cache, wanted)
    if args.quick and not args.exports:  # dynamo, or TorchScript where dynamo failed
        first = "dynamo" if made.get("dynamo", {}).get("path") else "torchscript"
        made = {first: made[first]}

    args.out.mkdir(parents=True, exist_ok=True)
    saved, points = _load(json_path)
    meta = saved.get("meta", {})
    meta.update(
        texts=sentences.meta,
        versions=_versions(),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        command="python -m tools.minilm_bench " + shlex.join(argv or sys.argv[1:]),
        ours_variants={**OURS_VARIANTS, **variants},
    )
    export_info = {**saved.get("exports", {})}
    for export, info in made.items():
        export_info[export] = {k: v for k, v in info.items() if k != "path"}

    def save() -> None:
        json_path.write_text(
            json.dumps(
                {"meta": meta, "exports": export_info, "points": [asdict(p) for p in points]},
                indent=1,
            )
            + "\n"
        )
        write_markdown(args.out / f"{stem}.md", points, meta, export_info)
        plot(args.out / f"{stem}.png", points)

    for export, info in made.items():
        if info.get("path") is None:
            log(f"{export}: export failed ({info.get('error')}); its methods are skipped")
            continue
        source = export_path(args.cache, export)
        original = Original(export, source, feeds, latency_feeds, repeats)
        points = _merge(points, [original.point(latency=not args.no_latency)])
        save()
        for method in methods:
            runs = []
            if method == "int8":
                ours = run_dir(args.cache, export) / f"{args.int8_of}_50.onnx"
                quantized = f"{args.int8_of}+int8"
                runs = [("int8", 1.0, source, original.ffn_params)]
                if ours.is_file():
                    runs.append((quantized, 0.5, ours, _ffn_of(ours)))
                    made_at = time.strftime("%Y-%m-%d %H:%M", time.localtime(ours.stat().st_mtime))
                else:
                    skipped = Point(export, quantized, 0.5, status="skipped")
                    skipped.note = f"no {ours.name}: run {args.int8_of} at 0.5 first"
                    points = _merge(points, [skipped])
            else:
                runs = [(method, share, source, None) for share in shares]
            for name, share, model, source_ffn in runs:
                task = job(
                    name, export, share, model, calib_path, args.cache, variants, args.onnxsim_steps
                )
                log(f"{export} {name} {100 * share:.0f}%: {shlex.join(task.command)}")
                done, result = execute(task, args.timeout)
                p = Point(export, name, share, status=done.status, seconds=done.seconds)
                p.peak_mb, p.exit_code, p.last_line = done.peak_mb, done.exit_code, done.last_line
                p.report = result
                p.note = str(result.get("note", ""))
                if name == f"{args.int8_of}+int8":
                    p.note += f"; quantizes {ours.name} written {made_at}"
                log(
                    f"  {done.status} in {done.seconds:.0f} s, peak "
                    f"{done.peak_mb or 0:.0f} MB: {done.last_line}"
                )
                if done.status == "ok":
                    try:
                        original.measure(p, task.output, source_ffn, latency=not args.no_latency)
                    except Exception as exc:  # an unreadable model is a result
                        p.status = "failed"
                        p.note = f"measuring failed: {type(exc).__name__}: {exc}"[:400]
                        log(f"  {p.note}")
                points = _merge(points, [p])
                save()
    save()
    log(f"wrote {args.out / stem}.md/.json/.png in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def _ffn_of(path: Path) -> int:
    import onnx

    from tools.minilm_bench.graph import ffns

    return sum(f.params for f in ffns(onnx.load(str(path))))


if __name__ == "__main__":
    raise SystemExit(main())
