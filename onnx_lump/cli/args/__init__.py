"""The command line's flags, one module per flag group, in the order ``--help`` lists
them. Each group module declares ``TITLE`` (its section of ``--help``; data.py and
verify.py share one) and ``add(group)``, which adds its flags with their defaults and
help. A new option is a line in its group's module."""

from onnx_lump.cli.args import (
    data,
    lumping,
    model,
    output,
    pruning,
    quantize,
    refine,
    search,
    verify,
)

__all__ = ["GROUPS"]

# The groups in the order of --help (and of the usage line).
GROUPS = (model, lumping, refine, pruning, search, data, verify, quantize, output)
