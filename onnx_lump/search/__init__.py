"""Choosing a method's knob: the :class:`Evaluator` of a knob value
(:mod:`~onnx_lump.search.evaluator`), bisection to a size or an error target
(:mod:`~onnx_lump.search.bisection`) and sweeps (:mod:`~onnx_lump.search.sweeps`)."""

from onnx_lump.search.bisection import TimeLimitReached, bisect
from onnx_lump.search.evaluator import FINAL_REFINE_FLOOR_SECONDS, Evaluator
from onnx_lump.search.sweeps import parse_knobs, sweep, write_table
from onnx_lump.types import SweepPoint

__all__ = [
    "FINAL_REFINE_FLOOR_SECONDS",
    "Evaluator",
    "SweepPoint",
    "TimeLimitReached",
    "bisect",
    "parse_knobs",
    "sweep",
    "write_table",
]
