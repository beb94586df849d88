"""The command line's console: every message as one line on stderr, the package's log
records, onnx-graphsurgeon's messages and Python warnings routed there for one run,
SIGTERM/SIGHUP turned into an exception so that staging files are cleaned up before the
exit code is returned, and a closed stdout (``| head``) ended quietly."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Iterator

__all__ = [
    "SIGPIPE",
    "Stopped",
    "graphsurgeon_logging",
    "one_line_warnings",
    "print_line",
    "quiet_broken_pipe",
    "signals_raise",
    "stderr_logging",
]

# The signal a write to a closed pipe raises where there is one (Python ignores it and
# raises BrokenPipeError instead); exit 128 + SIGPIPE is what a shell reports for it.
SIGPIPE = int(getattr(signal, "SIGPIPE", 13))


def print_line(text: str) -> None:
    """One line on stderr, whatever line breaks the text carries (onnx and onnxruntime
    messages often span several); above the progress bars where some are drawn."""
    line = re.sub(r"\s*\n\s*", " ", str(text).strip())
    bars = sys.modules.get("tqdm")
    if bars is not None and getattr(bars.tqdm, "_instances", None):
        bars.tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


class _StderrHandler(logging.Handler):
    # Looks sys.stderr up at each record, so that redirections made after setup hold.
    def emit(self, record: logging.LogRecord) -> None:
        try:
            print_line(self.format(record))
        except Exception:  # logging must never take the command down
            self.handleError(record)


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


@contextlib.contextmanager
def stderr_logging(verbose: bool) -> Iterator[None]:
    """The package's log records on stderr for the duration of one run: warnings as
    ``warning: ...`` lines; with -v every stage as ``[INFO] module: ...``."""
    logger = logging.getLogger("onnx_lump")
    handler = _StderrHandler(logging.INFO if verbose else logging.WARNING)
    handler.setFormatter(
        logging.Formatter("[%(levelname)s] %(name)s: %(message)s") if verbose else _LevelFormatter()
    )
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(handler.level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextlib.contextmanager
def graphsurgeon_logging() -> Iterator[None]:
    """onnx-graphsurgeon's messages (it prints ``[W] ...`` to stdout) into the package's
    log for one run, so that stdout carries only the result: its warnings are about its
    own representation (a tensor type it keeps as it was), shown with -v; its errors as
    ``warning:`` lines (a critical one raises an exception that carries it)."""
    try:
        from onnx_graphsurgeon.logger import G_LOGGER
    except ImportError:  # pragma: no cover - a dependency of the pass
        yield
        return
    logger = logging.getLogger("onnx_lump.graphsurgeon")
    seen: set[str] = set()

    def log(message, severity, mode=None, stack_depth=2) -> None:
        text = str(message() if callable(message) else message)
        if getattr(mode, "name", "") == "ONCE":
            if text in seen:
                return
            seen.add(text)
        if G_LOGGER.ERROR <= severity < G_LOGGER.CRITICAL:
            level = logging.WARNING
        elif severity >= G_LOGGER.WARNING:  # a critical one raises, with its message
            level = logging.INFO
        else:
            level = logging.DEBUG
        logger.log(level, "onnx-graphsurgeon: %s", text.strip())

    had_own = "log" in vars(G_LOGGER)
    saved = vars(G_LOGGER).get("log")
    G_LOGGER.log = log  # the instance's methods call self.log
    try:
        yield
    finally:
        if had_own:
            G_LOGGER.log = saved
        else:
            del G_LOGGER.log


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Python warnings (numpy's overflow, deprecations) as one ``warning:`` line each."""

    def show(message, category, filename, lineno, file=None, line=None):
        print_line(f"warning: {category.__name__}: {message}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived; a BaseException so that no ``except Exception`` in the
    pass swallows it, while every ``finally`` (staging folders) still runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`Stopped` so that cleanup runs; the default
    action would end the process on the spot and leave staging files behind."""

    def stop(signum, frame):
        signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the cleanup
        raise Stopped(signum)

    names = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    previous = {}
    try:
        for name in names:
            number = getattr(signal, name)
            previous[number] = signal.signal(number, stop)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def quiet_broken_pipe() -> None:
    """After a BrokenPipeError (the reader of stdout, e.g. ``head``, has gone): point the
    closed stream at /dev/null so that neither this exit nor the interpreter's final flush
    writes to it again (the recipe of Python's signal module docs). Nothing is printed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
            except Exception:  # not a real file (captured in tests): nothing to point
                pass
