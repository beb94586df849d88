"""The command line's progress display: on a terminal (stderr a TTY, no -q), one tqdm line
on stderr naming the stage the run is in (reading the model, reading the calibration
rows, collecting the chains' inputs, each search step and its knob as it starts, then its
size and widths, the final network, the written file's check), with the time since the
run began, redrawn every second so that a long stage is seen to be alive. Refinement
shows its own bar below it. Off a terminal nothing is drawn: -v logs the same stages as
lines. The line is cleared before anything is printed on stdout (:meth:`RunProgress.pause`)
and log lines are written above it (:func:`onnx_lump.cli_console.print_line`)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from onnx_lump import progress

# seconds between redraws of the line while a stage computes
REDRAW_SECONDS = 1.0


class RunProgress:
    """The run's progress line (see the module); ``enabled`` False: nothing is drawn."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.text = ""
        self._started = time.time()  # tqdm's clock: the line shows the time since this
        self._bar: Any = None  # a tqdm bar while a stage line is drawn
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_args(cls, quiet: bool) -> RunProgress:
        isatty = getattr(sys.stderr, "isatty", None)
        return cls(not quiet and callable(isatty) and bool(isatty()))

    @contextlib.contextmanager
    def active(self) -> Iterator[RunProgress]:
        """Show every stage announced within this block; the line is gone after it."""
        if not self.enabled:
            yield self
            return
        self._thread = threading.Thread(target=self._redraw, name="onnx_lump-progress", daemon=True)
        self._thread.start()
        try:
            with progress.showing(self.show):
                yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=2 * REDRAW_SECONDS)
            self.pause()

    def show(self, text: str) -> None:
        """Draw ``text`` as the stage now (opening the line if it was paused)."""
        if not self.enabled:
            return
        with self._lock:
            self.text = text
            if self._bar is None:
                from tqdm import tqdm

                columns, rows = _size()
                bar = tqdm(
                    desc=text,
                    total=None,
                    bar_format="{desc} [{elapsed}]",
                    leave=False,
                    file=sys.stderr,
                    ncols=columns,
                    nrows=rows,
                    position=0,
                )
                bar.start_t = self._started
                self._bar = bar
            self._bar.set_description_str(text, refresh=True)

    def pause(self) -> None:
        """Clear the line (before results go to stdout); the next stage draws it again."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def _redraw(self) -> None:
        while not self._stop.wait(REDRAW_SECONDS):
            with self._lock:
                if self._bar is not None:
                    try:
                        self._bar.refresh()
                    except Exception:  # a redraw must never take the run down
                        return


def _size() -> tuple[int, int]:
    """stderr's columns and rows; 100 x 24 where the terminal does not say (tqdm draws
    nothing on a pseudo-terminal of size 0 x 0)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        columns, rows = size.columns, size.lines
    except (AttributeError, OSError, ValueError):
        columns = rows = 0
    return (columns if columns > 0 else 100), (rows if rows > 0 else 24)
