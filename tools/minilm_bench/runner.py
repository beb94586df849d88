"""Child processes: each compression runs in one, timed (wall clock), its peak resident
memory measured (``/usr/bin/time -v``'s maximum RSS; where it reports none, as after a
timeout, the largest ``VmHWM`` of the child's processes polled from ``/proc`` every 0.2 s),
under a timeout that kills its whole process group."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Run", "run"]

_TIME = "/usr/bin/time"


@dataclass
class Run:
    status: str  # "ok", "failed" (non-zero exit) or "timeout"
    seconds: float
    peak_mb: float | None
    exit_code: int | None
    last_line: str


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith("Command exited with")]
    return lines[-1][:300] if lines else ""


def _vmhwm(pid: int) -> float:
    """The largest peak RSS (MB) of ``pid`` and its descendants now alive, from /proc."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    found = re.search(r"^VmHWM:\s+(\d+)\s+kB", text, re.M)
    own = int(found.group(1)) / 1024 if found else 0.0
    return max([own, *(_vmhwm(int(child)) for child in children)])


def run(command: list[str], log: Path, timeout: float, env: dict | None = None) -> Run:
    """Run ``command`` with stdout and stderr to ``log``; never raises for the child."""
    log.parent.mkdir(parents=True, exist_ok=True)
    timed = os.access(_TIME, os.X_OK)
    stats = log.with_suffix(".time")
    full = [_TIME, "-v", "-o", str(stats), *command] if timed else command
    started = time.perf_counter()
    polled = 0.0
    with log.open("w") as out:
        child = subprocess.Popen(
            full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout kills all of it
            env={**os.environ, **(env or {})},
        )
        status = None
        while status is None:
            try:
                child.wait(timeout=0.2)
                status = "done"
            except subprocess.TimeoutExpired:
                polled = max(polled, _vmhwm(child.pid))  # kept if time -v never reports
                if time.perf_counter() - started > timeout:
                    status = "timeout"
        if status == "timeout":
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(child.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    child.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
    seconds = time.perf_counter() - started
    peak = polled or None
    if timed and stats.is_file():
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stats.read_text())
        if found:
            peak = int(found.group(1)) / 1024
    if status == "timeout":
        last = _last_line(log)
        line = f"timed out after {timeout:.0f} s" + (f"; last output: {last}" if last else "")
        return Run("timeout", seconds, peak, None, line[:300])
    code = child.returncode
    return Run("ok" if code == 0 else "failed", seconds, peak, code, _last_line(log))
