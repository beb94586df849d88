"""The methods by name: one row per method, read by the CLI (its ``--method`` choices,
knob, option warnings and builder) and by anything else that builds a method from a
name. A new method is its module plus one row here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from onnx_lump.errors import LumpError
from onnx_lump.methods.base import Method
from onnx_lump.methods.combined import Sequence
from onnx_lump.methods.linear import LinearFolding
from onnx_lump.methods.lumping import Exact, LumpOptions
from onnx_lump.methods.pruning import EliminationCompensation, Magnitude, Scope, Wanda

__all__ = [
    "EPS",
    "METHODS",
    "ONE_MINUS_TAU",
    "SPARSITY",
    "MethodSettings",
    "MethodSpec",
    "build_method",
    "method_spec",
]

# The knobs methods trade size for accuracy with (larger = smaller).
EPS = "eps"
SPARSITY = "sparsity"
ONE_MINUS_TAU = "1-tau"


@dataclass(frozen=True)
class MethodSettings:
    """Every method option but the knob: the lumping options, the pruning scope (None:
    each method's own default) and linear folding's tau where it is not the knob."""

    lumping: LumpOptions = field(default_factory=LumpOptions)
    scope: Scope | None = None
    tau: float = 1.0
    with_data: bool = False  # calibration inputs given (lumping's default similarity)


@dataclass(frozen=True)
class MethodSpec:
    """A method by name: its knob (None: it has none) and the knob's largest value, the
    option groups it reads (``lumping``, ``sparsity``, ``scope``, ``tau``: the CLI warns
    about the others), and how to build it at a knob value."""

    name: str
    knob: str | None
    knob_limit: float | None
    reads: frozenset[str]
    build: Callable[[float, MethodSettings], Method]

    @property
    def is_lumping(self) -> bool:
        return "lumping" in self.reads

    @property
    def is_pruning(self) -> bool:
        return "sparsity" in self.reads


def _lump(knob: float, settings: MethodSettings) -> Method:
    return settings.lumping.method(knob, settings.with_data)


def _lump_then_fold(knob: float, settings: MethodSettings) -> Method:
    return Sequence(_lump(knob, settings), LinearFolding(settings.tau))


_SPECS = (
    MethodSpec("lump", EPS, None, frozenset({"lumping"}), _lump),
    MethodSpec("exact", None, None, frozenset(), lambda knob, settings: Exact()),
    MethodSpec(
        "magnitude",
        SPARSITY,
        0.999,
        frozenset({"sparsity", "scope"}),
        lambda knob, settings: Magnitude(knob, settings.scope or Scope.LAYER),
    ),
    MethodSpec("wanda", SPARSITY, 0.999, frozenset({"sparsity"}), lambda k, s: Wanda(k)),
    MethodSpec(
        "ec",
        SPARSITY,
        0.999,
        frozenset({"sparsity", "scope"}),
        lambda knob, settings: EliminationCompensation(knob, settings.scope or Scope.GLOBAL),
    ),
    MethodSpec(
        "linear", ONE_MINUS_TAU, 0.999, frozenset({"tau"}), lambda k, s: LinearFolding(1.0 - k)
    ),
    MethodSpec("lump+linear", EPS, None, frozenset({"lumping", "tau"}), _lump_then_fold),
)
METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}


def method_spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise LumpError(f"unknown method {name!r} (known: {', '.join(METHODS)})") from None


def build_method(name: str, knob: float, settings: MethodSettings | None = None) -> Method:
    """The method ``name`` with its knob at ``knob`` (ignored by a method without one)."""
    return method_spec(name).build(knob, settings or MethodSettings())
