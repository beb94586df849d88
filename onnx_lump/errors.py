"""The one exception type the pass raises for problems the user can fix."""

__all__ = ["LumpError"]


class LumpError(Exception):
    """A user-facing error: its message is one line that says what is wrong and what to do.

    The CLI prints it without a traceback and exits non-zero; anything else escaping
    the pass is a bug in onnx_lump.
    """
