"""The ``output`` flags: the report as JSON, and how much is printed (-q, -v)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from onnx_lump.cli.checks import ONLY_THE_TABLE, Context, Range, Unused

__all__ = ["RANGES", "TITLE", "OutputArgs", "add", "to_options", "unused_by_sweep", "validate"]

TITLE = "output"
RANGES: dict[str, Range] = {}


@dataclass(frozen=True)
class OutputArgs:
    """Where the report goes as JSON (None: nowhere), and -q / -v."""

    report_json: Path | None = None
    quiet: bool = False
    verbose: bool = False


def add(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--report-json",
        type=Path,
        metavar="FILE",
        help="also write the report as JSON (with the model: not when nothing is written)",
    )
    verbosity = group.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only the final line")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log each stage")


def validate(args: argparse.Namespace) -> None:
    """No combination to check."""


def unused_by_sweep(args: argparse.Namespace, context: Context) -> list[Unused]:
    """--report-json with --sweep, which writes only the table."""
    return [("report_json", ONLY_THE_TABLE)] if context.sweep else []


def to_options(args: argparse.Namespace) -> OutputArgs:
    return OutputArgs(args.report_json, args.quiet, args.verbose)
