"""The pass as one call: :func:`lump` and :func:`compress` (keyword options, handed to
:func:`onnx_lump.pipeline.run.run` in groups)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnx_lump.data.cache import SearchCache
from onnx_lump.data.calibration import AUTO_MASK_INPUT
from onnx_lump.data.holdout import DEFAULT_HOLDOUT
from onnx_lump.data.refine import RefineOptions
from onnx_lump.errors import LumpError
from onnx_lump.graph.io.source import to_model_proto
from onnx_lump.methods import Method
from onnx_lump.methods.lumping import LumpOptions
from onnx_lump.pipeline.options import CalibrationOptions, CheckOptions
from onnx_lump.pipeline.report import Report
from onnx_lump.pipeline.run import run
from onnx_lump.pipeline.write import FileChecks, Reference, write_checked
from onnx_lump.runtime import resolve_providers
from onnx_lump.types import RMSE, ChainResult

__all__ = [
    "compress",
    "lump",
]


def lump(
    model: onnx.ModelProto,
    eps: float = 0.0,
    *,
    options: LumpOptions | None = None,
    calibration: Mapping[str, np.ndarray] | None = None,
    **kwargs,
) -> tuple[onnx.ModelProto, Report]:
    """Merge epsilon-equivalent neurons of every dense chain of ``model``.

    Data-free unless ``calibration`` inputs are given; then the reduction defaults to
    ``DEFAULT_REDUCTION_WITH_DATA`` (span: ``eps`` is the share of activation energy left
    out, 0..1; partitions where a ``similarity`` is given), and each next layer is refit
    in closed form (unless ``refit`` is False). The lumping options are ``options`` or, one by one,
    keyword arguments named after :class:`LumpOptions`' fields (``equivalence``,
    ``linkage``, ``symmetries``, ``similarity``, ``refit``, ``ridge``, ``reduction``,
    ``force_refit``); other keyword arguments go to :func:`compress`. Returns a new model
    (``model`` is not modified) and a Report.
    """
    given = len(kwargs)
    named = LumpOptions.take(kwargs)
    if options is None:
        options = named
    elif len(kwargs) != given:
        raise LumpError("give the lumping options either as options=LumpOptions(...) or by name")
    method = options.method(eps, with_data=calibration is not None)
    return compress(to_model_proto(model), method, calibration=calibration, **kwargs)


def compress(
    model: onnx.ModelProto,
    method: Method,
    *,
    calibration: Mapping[str, np.ndarray] | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    validation: Mapping[str, np.ndarray] | None = None,
    validation_targets: np.ndarray | None = None,
    refine: RefineOptions | bool | None = None,
    warm_start: Sequence[ChainResult] | None = None,
    cache: SearchCache | None = None,
    verify: bool = True,
    measure_holdout: bool = True,
    inputs: Mapping[str, np.ndarray] | None = None,
    n_check: int = 64,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    providers: Sequence[str] = ("cpu",),
    atol: float | None = None,
    rtol: float | None = None,
    mask_input: str | None = AUTO_MASK_INPUT,
    sequential: bool = False,
    metric: str = RMSE,
    out: str | os.PathLike | None = None,
) -> tuple[onnx.ModelProto, Report]:
    """Compress every dense chain of ``model`` with ``method``.

    With ``calibration``, a seeded ``holdout`` share of its rows (or ``validation``,
    with optional reference ``validation_targets``) is set aside: the method and the
    refinement fit on the rest, and ``report.holdout_error`` is measured on the held-out
    rows by onnxruntime (unless ``measure_holdout`` is False: it then stays None).
    ``refine`` is None for the default (refine after every structured method that is not
    lossless, when calibration is given), False for never, or the options to refine
    with. ``warm_start`` (one ChainResult per chain, e.g. ``report.results`` of an
    earlier call with the same method) replaces the method's own result as the starting
    point. ``cache`` keeps what does not depend on the method's knob between calls on
    the same model and calibration (see :mod:`onnx_lump.data.cache`). With ``verify``,
    both models run in onnxruntime on ``inputs`` (else the held-out rows, else
    ``n_check`` seeded random inputs) and ``report.verification`` holds the output
    errors, judged against ``atol``/``rtol``.

    ``mask_input`` names the calibration input whose zeros mark padding (by default
    ``attention_mask`` where the model has it; None for none): the chain rows of those
    positions are left out of every fit. With ``sequential``, each chain after the first
    is fitted on its inputs in the model whose earlier chains are already compressed,
    onto the original chain's outputs on the original inputs, so that it corrects what
    the chains before it changed (GPTQ's sequential mode).

    ``metric`` is how ``report.holdout_error`` measures a float output: ``"rmse"`` (the
    relative RMSE of the output change) or ``"cosine"`` (the mean 1 - cosine of its
    rows, the last axis, padding positions of ``mask_input`` left out; see
    :mod:`onnx_lump.data.holdout`). Refinement keeps its own chain-level loss.

    With ``out``, the model is written there the way the command line writes it: staged
    beside ``out``, checked, and its held-out error and verification measured by
    onnxruntime on the staged file itself (not the model in memory); it is moved into
    place only when the verification is within ``atol``/``rtol``, else a LumpError says
    by how much it missed and nothing is written.
    """
    model = to_model_proto(model)
    data = CalibrationOptions(holdout, seed, validation, validation_targets, mask_input, sequential)
    wanted = CheckOptions(verify, inputs, n_check, input_shapes, atol, rtol, measure_holdout)
    # Written, the file is what is measured and checked, not the model in memory too.
    in_memory = wanted if out is None else CheckOptions(verify=False, measure_holdout=False)
    reduced, report = run(
        model,
        method,
        calibration,
        data=data,
        refine=refine,
        check=in_memory,
        providers=providers,
        metric=metric,
        warm_start=warm_start,
        cache=cache,
    )
    if out is None:
        return reduced, report
    checks = FileChecks.of(wanted, metric, mask_input)
    reference = Reference(model, resolve_providers(providers))
    with write_checked(reduced, out, report, model, reference, checks) as file:
        if not file.passed:
            assert file.report.verification is not None  # only a verification fails
            raise LumpError(f"{file.report.verification.miss()}: '{out}' not written")
        file.commit()
    return reduced, file.report
