"""The ``output`` flags: the report as JSON, and how much is printed (-q, -v)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["TITLE", "add"]

TITLE = "output"


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
