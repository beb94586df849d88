"""The command line's console: every message as one line on stderr, the package's log
records and Python warnings routed there for one run, and SIGTERM/SIGHUP turned into an
exception so that staging files are cleaned up before the exit code is returned."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import warnings
from collections.abc import Iterator

__all__ = ["_Stopped", "_message", "_one_line_warnings", "_signals_raise", "_stderr_logging"]


def _message(text: str) -> None:
    """One line on stderr, whatever line breaks the text carries (onnx and onnxruntime
    messages often span several)."""
    print(re.sub(r"\s*\n\s*", " ", str(text).strip()), file=sys.stderr)


class _StderrHandler(logging.Handler):
    # Looks sys.stderr up at each record, so that redirections made after setup hold.
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _message(self.format(record))
        except Exception:  # logging must never take the command down
            self.handleError(record)


class _LevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


@contextlib.contextmanager
def _stderr_logging(verbose: bool) -> Iterator[None]:
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
def _one_line_warnings() -> Iterator[None]:
    """Python warnings (numpy's overflow, deprecations) as one ``warning:`` line each."""

    def show(message, category, filename, lineno, file=None, line=None):
        _message(f"warning: {category.__name__}: {message}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


class _Stopped(BaseException):
    """SIGTERM or SIGHUP arrived; a BaseException so that no ``except Exception`` in the
    pass swallows it, while every ``finally`` (staging folders) still runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`_Stopped` so that cleanup runs; the default
    action would end the process on the spot and leave staging files behind."""

    def stop(signum, frame):
        signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the cleanup
        raise _Stopped(signum)

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
