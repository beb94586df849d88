"""The command line's flags, one module per flag group, in the order ``--help`` lists
them. Each group module declares (:class:`FlagGroup`):

- ``TITLE``, its section of ``--help`` (data.py and verify.py share one);
- ``add(group)``, its flags with their defaults and help;
- ``RANGES``, the range of each of its numeric options, and ``validate(args)``, the
  combinations it refuses;
- its no-effect rules, ``unused_by_*(args, context)``: which of its options this run
  would ignore, and why;
- ``to_options(args)``, its parsed values as a frozen dataclass (the library's own
  option objects inside where they fit: ``LumpOptions``, ``RefineOptions``).

:func:`validate` runs them all before any work. A new option is lines in its group's
module (and a line in :data:`NO_EFFECT` only for a new kind of no-effect rule)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Protocol

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
from onnx_lump.cli.checks import Context, Range, Unused, check_ranges, flag
from onnx_lump.methods.registry import METHODS

__all__ = ["GROUPS", "NO_EFFECT", "FlagGroup", "NoEffectRule", "no_effect", "validate"]


class FlagGroup(Protocol):
    """What every module of this package declares (mypy checks the modules of
    :data:`GROUPS` against it)."""

    @property
    def TITLE(self) -> str: ...

    @property
    def RANGES(self) -> Mapping[str, Range]: ...

    def add(self, group: argparse._ActionsContainer) -> None: ...

    def validate(self, args: argparse.Namespace) -> None: ...

    def to_options(self, args: argparse.Namespace) -> object: ...


# The groups in the order of --help (and of the usage line and the checks).
GROUPS: tuple[FlagGroup, ...] = (
    model,
    lumping,
    refine,
    pruning,
    search,
    data,
    verify,
    quantize,
    output,
)

NoEffectRule = Callable[[argparse.Namespace, Context], list[Unused]]
# Every group's no-effect rules, in the order their warnings print: the order of the
# single function they came from, kept so that stderr reads as it did. (Rules that never
# fire together may stand in either order: verify's need --calib, data's first ones its
# absence.)
NO_EFFECT: tuple[NoEffectRule, ...] = (
    lumping.unused_by_method,
    pruning.unused_by_method,
    lumping.unused_in_search,
    pruning.unused_in_search,
    search.unused_by_sweep,
    verify.unused_by_sweep,
    lumping.unused_by_sweep,
    output.unused_by_sweep,
    verify.unused_by_data,
    data.unused_by_data,
    search.unused_by_data,
    refine.unused_by_refinement,
)


def validate(args: argparse.Namespace) -> None:
    """Refuse bad option values and combinations before any work: every group's ranges
    first, then each group's combinations, in the order of :data:`GROUPS`. Warnings
    about options that have no effect are collected in ``args.option_warnings`` (printed
    once the inputs have been checked too, see :func:`onnx_lump.cli.checks.preflight`)."""
    for group in GROUPS:
        check_ranges(args, group.RANGES)
    for group in GROUPS:
        group.validate(args)
    args.option_warnings = no_effect(args)


def no_effect(args: argparse.Namespace) -> list[str]:
    """One warning per option the user gave that this run would silently ignore."""
    given: set[str] = getattr(args, "given_options", set())
    context = Context(
        method=args.method,
        spec=METHODS[args.method],
        calib=args.calib is not None,
        val=args.val is not None,
        searching=search.is_searching(args),
        sweep=args.sweep is not None,
    )
    seen, messages = set(), []
    for rule in NO_EFFECT:
        for dest, why in rule(args, context):
            if dest in given and dest not in seen:
                seen.add(dest)
                messages.append(f"{flag(dest)} has no effect {why}")
    return messages
