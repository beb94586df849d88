"""Each method's compression run: the command it is, and running it in a child.

Ours is our command line, ``python -m onnx_lump IN OUT --calib CALIB --target-params F
--report-json R`` plus the variant's flags (without ``--target-params`` where they give
``--max-error``); the baselines, the peer and int8 run in
``python -m tools.minilm_bench --worker SPEC`` (:mod:`tools.minilm_bench.worker`). Every run
writes into ``CACHE/runs/EXPORT/`` its model, its output (``.log``), ``/usr/bin/time``'s
statistics (``.time``) and its report or result (``.json``)."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tools import child_env
from tools.minilm_bench.common import OURS_VARIANTS
from tools.minilm_bench.runner import Run, run

__all__ = ["Job", "execute", "job", "parse_extra", "run_dir"]

BASELINE_METHODS = ("topact", "id")


@dataclass
class Job:
    export: str
    method: str
    share: float
    command: list[str]
    output: Path
    log: Path
    result: Path  # the command line's --report-json, or the worker's result
    source_ffn_params: int | None = None  # int8: the FFN size of the model it quantizes
    notes: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None  # the child's environment (None: this process's)


def run_dir(cache: Path, export: str) -> Path:
    return cache / "runs" / export


def _stem(method: str, share: float) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in method)
    return f"{safe}_{round(100 * share)}"


def parse_extra(values: list[str]) -> dict[str, tuple[str, ...]]:
    """``--ours-extra "label:flags"`` values as ``{label: flags}``."""
    variants = {}
    for value in values or []:
        label, sep, flags = value.partition(":")
        label = label.strip()
        if not sep or not label:
            raise SystemExit(f"--ours-extra wants 'label:flags', got {value!r}")
        if label in ("original", "onnxsim", "topact", "id", "int8") or label.endswith("+int8"):
            raise SystemExit(f"--ours-extra label {label!r} is taken by another method")
        variants[label] = tuple(shlex.split(flags))
    return variants


def job(
    method: str,
    export: str,
    share: float,
    source: Path,
    calib: Path,
    cache: Path,
    variants: dict[str, tuple[str, ...]],
    onnxsim_steps: int,
) -> Job:
    """The run of ``method`` at ``share`` on the export ``source``. ``int8`` quantizes
    ``source`` itself; ``ours+int8`` quantizes ``source`` (ours at 50%) as given."""
    folder = run_dir(cache, export)
    folder.mkdir(parents=True, exist_ok=True)
    stem = _stem(method, share)
    output, log, result = (folder / f"{stem}{s}" for s in (".onnx", ".log", ".json"))
    for stale in (output, result):
        stale.unlink(missing_ok=True)
    flags = {**OURS_VARIANTS, **variants}
    if method in flags:
        command = [sys.executable, "-m", "onnx_lump", str(source), str(output)]
        command += ["--calib", str(calib)]
        if "--max-error" not in flags[method]:  # an error target chooses the size itself
            command += ["--target-params", f"{share:g}"]
        command += ["--report-json", str(result), *flags[method]]
        return Job(export, method, share, command, output, log, result)
    spec = {
        "input": str(source),
        "output": str(output),
        "calib": str(calib),
        "share": share,
        "method": method,
        "result": str(result),
    }
    if method in BASELINE_METHODS:
        spec["kind"] = "baseline"
    elif method == "onnxsim":
        spec.update(kind="onnxsim", steps=onnxsim_steps)
    elif method == "int8" or method.endswith("+int8"):
        spec["kind"] = "int8"
    else:
        raise SystemExit(f"unknown method {method!r}")
    spec_path = folder / f"{stem}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=1) + "\n")
    command = [sys.executable, "-m", "tools.minilm_bench", "--worker", str(spec_path)]
    return Job(export, method, share, command, output, log, result, env=child_env())


def _abridged(report: dict) -> dict:
    """The report's scalars and short lists (the full one stays in the cache)."""
    kept = {}
    for key, value in report.items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            kept[key] = value
        elif (
            isinstance(value, list)
            and len(value) <= 12
            and all(isinstance(v, (int, float, str, bool, list)) for v in value)
        ):
            kept[key] = value
    return kept


def execute(task: Job, timeout: float) -> tuple[Run, dict]:
    """Run the job in a child; ``(run, result)`` where ``result`` is its report or
    worker result (empty if none). A run that exits 0 but writes no model failed."""
    done = run(task.command, task.log, timeout, task.env)
    result = {}
    if task.result.is_file():
        try:
            result = json.loads(task.result.read_text())
        except json.JSONDecodeError:
            result = {}
    if done.status == "ok" and not task.output.is_file():
        done.status = "failed"
        done.last_line = f"no model written; {done.last_line}"
    return done, _abridged(result) if isinstance(result, dict) else {}
