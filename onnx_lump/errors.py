"""The one exception type the pass raises for problems the user can fix, and the CLI's
exit codes."""

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "EXIT_NOT_MET",
    "EXIT_OK",
    "EXIT_SIGNAL_BASE",
    "LumpError",
]

EXIT_OK = 0  # the model (or the table) was written
EXIT_NOT_MET = 1  # a target or a tolerance was not met; nothing written
EXIT_BAD_INPUT = 2  # bad options, model or data (a LumpError, or an argparse usage error)
EXIT_INTERNAL = 3  # anything else: a bug in onnx_lump
EXIT_SIGNAL_BASE = 128  # stopped by signal N: exit 128 + N, as shells report it


class LumpError(Exception):
    """A user-facing error: its message is one line that says what is wrong and what to do.

    The CLI prints it without a traceback and exits with :data:`EXIT_BAD_INPUT`; anything
    else escaping the pass is a bug in onnx_lump (:data:`EXIT_INTERNAL`).
    """
