"""The command line, ``python -m onnx_lump`` and the ``onnx-lump`` script:
:mod:`~onnx_lump.cli.command` runs it (:func:`main`), :mod:`~onnx_lump.cli.parser` builds
the parser, :mod:`~onnx_lump.cli.checks` validates the options before any work and
:mod:`~onnx_lump.cli.console` owns stdout, stderr, logging and signals."""

from onnx_lump.cli.command import build_method, build_parser, main, run_parsed

__all__ = ["build_method", "build_parser", "main", "run_parsed"]
