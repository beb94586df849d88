"""The command line's argparse parser: the flag groups of :mod:`onnx_lump.cli.args`
assembled in order, usage errors as one ``error:`` line (exit 2), and which options the
user actually gave."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onnx_lump._version import __version__
from onnx_lump.cli.args import GROUPS
from onnx_lump.cli.console import print_line
from onnx_lump.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_NOT_MET,
    EXIT_OK,
    EXIT_SIGNAL_BASE,
)

__all__ = [
    "EXIT_CODES",
    "explicit_options",
    "make_parser",
    "program_name",
]


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line on stderr (exit 2), like every other error."""

    def error(self, message: str):
        print_line(f"error: {message} (see '{self.prog} --help')")
        raise SystemExit(EXIT_BAD_INPUT)


MODULE_PROG = "python -m onnx_lump"
SCRIPT_PROG = "onnx-lump"  # the console script (pyproject's [project.scripts])

EXIT_CODES = f"""exit codes:
  {EXIT_OK}      written (the model, or the table with --sweep)
  {EXIT_NOT_MET}      a target (--target-params, --max-error) or a tolerance (--atol, --rtol) not
         met: nothing written (no model, --report-json or --dump-ode)
  {EXIT_BAD_INPUT}      bad input (an option, the model, the data, an output path): one error: line
  {EXIT_INTERNAL}      internal error, a bug: one line asking for a report (the traceback with -v)
  {EXIT_SIGNAL_BASE}+N  stopped by signal N (130 SIGINT, 143 SIGTERM), staging files removed; 141
         (SIGPIPE) quietly when the reader of stdout goes early (| head)
stdout carries the result, stderr one line per message (error: ..., warning: ...)."""


def program_name(argv0: str | None = None) -> str:
    """How the user ran the command: ``onnx-lump`` for the console script (``onnx-lump``,
    ``onnx-lump.exe``, ``onnx-lump-script.py``), else ``python -m onnx_lump``."""
    if argv0 is None:
        argv0 = sys.argv[0] if sys.argv else ""
    return SCRIPT_PROG if Path(argv0).name.lower().startswith(SCRIPT_PROG) else MODULE_PROG


def make_parser(doc: str) -> argparse.ArgumentParser:
    """The parser, flag group by flag group (:data:`~onnx_lump.cli.args.GROUPS`), each in
    its section of ``--help``; ``doc``'s first paragraph is the description and the rest
    the epilog, followed by the exit codes. Usage and examples name the command as it was
    run (:func:`program_name`)."""
    prog = program_name()
    epilog = doc.split("\n\n", 1)[1].rstrip("\n") + "\n\n" + EXIT_CODES
    parser = _Parser(
        prog=prog,
        description=doc.split("\n\n")[0],
        epilog=epilog.replace(MODULE_PROG, prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"onnx_lump {__version__}")
    sections: dict[str, argparse._ActionsContainer] = {}
    for group in GROUPS:  # a section of --help per title, created where it first appears
        if group.TITLE not in sections:
            sections[group.TITLE] = parser.add_argument_group(group.TITLE)
        group.add(sections[group.TITLE])
    return parser


def explicit_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests the user gave on the command line, defaults aside: parse again with
    every default suppressed, so that only given options land in the namespace."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given))
