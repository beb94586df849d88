"""The command line, ``python -m onnx_lump`` and the ``onnx-lump`` script:
:mod:`~onnx_lump.cli.command` runs it (:func:`main`), :mod:`~onnx_lump.cli.parser` builds
the parser from the flag groups of :mod:`~onnx_lump.cli.args` (each declares its flags,
ranges, combinations and no-effect rules), :mod:`~onnx_lump.cli.checks` holds the checks
that need the model and what the groups share, and :mod:`~onnx_lump.cli.console` owns
stdout, stderr, logging and signals."""

from onnx_lump.cli.command import build_method, build_parser, main, run_parsed

__all__ = ["build_method", "build_parser", "main", "run_parsed"]
