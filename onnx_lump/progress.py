"""What the pass is doing now (its stage), for whoever shows it: every stage is an INFO
record of this module's logger (the command line prints it with -v), and each display
registered with :func:`showing` gets its text (the command line's bar on a terminal).
Nothing is shown by the library itself."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

_displays: list[Callable[[str], None]] = []


def stage(text: str, *, log: bool = True) -> None:
    """Announce the stage ``text`` (``log=False``: to the displays alone, where the caller
    logs it in its own words)."""
    if log:
        logger.info(text)
    for display in tuple(_displays):
        try:
            display(text)
        except Exception:  # a display must never take the pass down
            logger.debug("progress display failed", exc_info=True)


@contextlib.contextmanager
def showing(display: Callable[[str], None]) -> Iterator[None]:
    """Within this block, every :func:`stage` text also goes to ``display``."""
    _displays.append(display)
    try:
        yield
    finally:
        _displays.remove(display)
