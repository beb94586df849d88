"""onnx_lump as an onnx-ir pass, for ``ir.passes.PassManager`` pipelines.

    import onnx_ir as ir
    from onnx_ir.passes.common import IdentityEliminationPass, RemoveUnusedNodesPass
    from onnx_lump.integrations.onnx_ir import LumpPass

    model = ir.load("model.onnx")  # weights may stay in external data
    pipeline = ir.passes.PassManager(
        [IdentityEliminationPass(), LumpPass(eps=0.05), RemoveUnusedNodesPass()]
    )
    result = pipeline(model)  # result.model is smaller; the input model is untouched
    ir.save(result.model, "small.onnx")

The pass converts to a ModelProto, runs :func:`onnx_lump.lump` (or
:func:`onnx_lump.compress` with a given method), and converts back. Initializers the pass
did not change keep the caller's tensor objects, so weights that were memory-mapped from
external data stay so in the result.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir

from onnx_lump.api import compress
from onnx_lump.errors import LumpError
from onnx_lump.graph.io.source import ir_to_proto
from onnx_lump.methods import Method
from onnx_lump.methods.lumping import LumpOptions
from onnx_lump.pipeline.report import Report
from onnx_lump.runtime import check_versions

__all__ = ["LumpPass", "LumpPassResult", "ToleranceExceeded"]

logger = logging.getLogger("onnx_lump.passes")  # the pass's notes keep their name

_NO_CHAIN = "no dense chain found"
# compress()'s keywords the pass hands on (calibration is the pass's own)
_COMPRESS_KEYWORDS = {
    name
    for name, parameter in inspect.signature(compress).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("calibration", "out")
}


@dataclasses.dataclass
class LumpPassResult(ir.passes.PassResult):
    """onnx-ir's pass result with the :class:`~onnx_lump.pipeline.report.Report` of the
    call (None when the model had no dense chain and passed through)."""

    report: Report | None = None


class ToleranceExceeded(LumpError, ir.passes.PostconditionError):
    """The pass's post-condition failed: the outputs differ beyond ``atol``/``rtol``. A
    LumpError as every error of the pass, and a PostconditionError for onnx-ir."""


class LumpPass(ir.passes.FunctionalPass):
    """Merge epsilon-equivalent neurons of every dense chain; configured like ``lump()``:
    ``options`` or the :class:`~onnx_lump.LumpOptions` fields by name (``equivalence``,
    ``similarity``, ``reduction``...), checked here, when the pass is made.

    Other keyword arguments (``verify``, ``atol``, ``rtol``, ``inputs``, ``providers``...)
    go to :func:`onnx_lump.compress`. With ``method``, that method runs instead and no
    lumping option may be given.

    A model without a dense chain passes through unchanged (``modified`` False) unless
    ``require_chain``. The result is a :class:`LumpPassResult` carrying the report;
    ``last_report`` holds it too. When verification ran with ``atol``/``rtol`` and failed,
    the post-condition (:meth:`ensures`) raises :class:`ToleranceExceeded`.
    """

    def __init__(
        self,
        eps: float = 0.0,
        *,
        options: LumpOptions | None = None,
        calibration: Mapping[str, np.ndarray] | None = None,
        method: Method | None = None,
        require_chain: bool = False,
        **kwargs,
    ) -> None:
        super().__init__()
        given = len(kwargs)
        named = LumpOptions.take(kwargs)
        if (options is not None or method is not None) and len(kwargs) != given:
            raise LumpError(
                "give the lumping options either as options=LumpOptions(...) or by name, "
                "and none with method="
            )
        if options is not None and method is not None:
            raise LumpError("options= is for lumping; a given method= carries its own")
        unknown = sorted(set(kwargs) - _COMPRESS_KEYWORDS)
        if unknown:
            known = sorted({*_COMPRESS_KEYWORDS, *LumpOptions.__dataclass_fields__})
            raise LumpError(f"LumpPass does not take {unknown}; it takes {known}")
        self.options = named if options is None else options
        self.eps = float(eps)
        self.calibration = calibration
        self.method = method
        self.require_chain = require_chain
        self.kwargs = kwargs
        self.last_report: Report | None = None
        self._interface: tuple | None = None

    def __repr__(self) -> str:
        what = self.method.describe() if self.method is not None else f"lump eps={self.eps:g}"
        return f"{type(self).__name__}({what})"

    def requires(self, model: ir.Model) -> None:
        """onnx-ir's pre-condition: a graph with inputs, calibration inputs named after
        them (a PreconditionError names the ones that are not), an IR version and opset
        that onnxruntime runs, and with ``require_chain`` a dense chain. Records the
        graph's interface for :meth:`ensures`."""
        inputs = [value.name for value in model.graph.inputs]
        if not inputs:
            raise ir.passes.PreconditionError(f"{self}: the graph has no inputs")
        try:
            check_versions(model.ir_version, model.opset_imports)
        except LumpError as exc:
            raise ir.passes.PreconditionError(f"{self}: {exc}") from None
        unknown = sorted(set(self.calibration or {}) - set(inputs))
        if unknown:
            raise ir.passes.PreconditionError(
                f"{self}: calibration inputs {unknown} are not inputs of the graph {inputs}"
            )
        self._interface = _interface(model)

    def ensures(self, model: ir.Model) -> None:
        """onnx-ir's post-condition: the graph keeps its inputs and outputs (names, types
        and order), only the chains inside it changed, and where the verification ran
        with a tolerance, the outputs are within it (else :class:`ToleranceExceeded`)."""
        expected = self._interface
        if expected is not None and _interface(model) != expected:
            raise ir.passes.PostconditionError(
                f"{self}: the graph's inputs or outputs changed: {expected} -> {_interface(model)}"
            )
        check = None if self.last_report is None else self.last_report.verification
        if check is not None and not check:
            raise ToleranceExceeded(f"{self}: {check.miss()}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        proto = ir_to_proto(model)
        try:
            reduced, report = self._run(proto)
        except LumpError as exc:
            if self.require_chain or not str(exc).startswith(_NO_CHAIN):
                raise
            logger.info("%s: %s; model left as it was", self, exc)
            self.last_report = None
            return LumpPassResult(model.clone(), modified=False)
        self.last_report = report  # ensures() judges its verification
        if reduced.graph == proto.graph:  # nothing merged: hand back the model, unstamped
            return LumpPassResult(model.clone(), modified=False, report=report)
        result = ir.from_proto(reduced)
        _reuse_unchanged_tensors(model, result)
        return LumpPassResult(result, modified=True, report=report)

    def _run(self, proto: onnx.ModelProto) -> tuple[onnx.ModelProto, Report]:
        method = self.method or self.options.method(self.eps, self.calibration is not None)
        return compress(proto, method, calibration=self.calibration, **self.kwargs)


def _interface(model: ir.Model) -> tuple:
    """The graph's inputs and outputs as (name, element type) in order."""
    return tuple(
        tuple((value.name, str(value.dtype)) for value in values)
        for values in (model.graph.inputs, model.graph.outputs)
    )


def _reuse_unchanged_tensors(original: ir.Model, result: ir.Model) -> None:
    """Give initializers whose data the pass left alone the caller's tensor objects back,
    so an external (memory-mapped) weight is not held in memory twice, nor saved twice."""
    before = {
        name: value.const_value
        for name, value in original.graph.initializers.items()
        if value.const_value is not None
    }
    for name, value in result.graph.initializers.items():
        old, new = before.get(name), value.const_value
        if old is None or new is None or old is new:
            continue
        if old.dtype == new.dtype and old.shape == new.shape and old.tobytes() == new.tobytes():
            value.const_value = old
