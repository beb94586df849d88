"""The one place the stages are strung together: :func:`run` reads the model's chains
and their calibration rows (:mod:`~onnx_lump.pipeline.prepare`), compresses, refines and
rewrites each chain (:mod:`~onnx_lump.pipeline.compress`), and exports, reports and
checks the result (:mod:`~onnx_lump.pipeline.finish`). :func:`onnx_lump.compress`,
:func:`onnx_lump.lump`, the search, the onnx-ir and Olive passes and the command line
all come through here."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnx_lump.data.cache import SearchCache
from onnx_lump.data.holdout import check_metric
from onnx_lump.data.refine import RefineOptions
from onnx_lump.errors import LumpError
from onnx_lump.methods import Method
from onnx_lump.pipeline.compress import compress_chains, refine_options_for
from onnx_lump.pipeline.finish import finish
from onnx_lump.pipeline.options import CalibrationOptions, CheckOptions
from onnx_lump.pipeline.prepare import prepare
from onnx_lump.pipeline.report import Report
from onnx_lump.runtime import resolve_providers
from onnx_lump.types import RMSE, ChainResult

__all__ = ["run"]


def run(
    model: onnx.ModelProto,
    method: Method,
    calibration: Mapping[str, np.ndarray] | None = None,
    *,
    data: CalibrationOptions | None = None,
    refine: RefineOptions | bool | None = None,
    check: CheckOptions | None = None,
    providers: Sequence[str] = ("cpu",),
    metric: str = RMSE,
    warm_start: Sequence[ChainResult] | None = None,
    cache: SearchCache | None = None,
) -> tuple[onnx.ModelProto, Report]:
    """Compress every dense chain of ``model`` (a ModelProto) with ``method``; see
    :func:`onnx_lump.compress` for what each option does."""
    check_metric(metric)
    if method.needs_data and calibration is None:
        raise LumpError(f"method '{method.name}' needs calibration inputs (--calib)")
    started = time.perf_counter()
    run_on = resolve_providers(providers)
    data = data or CalibrationOptions()
    chains = None if warm_start is None else len(warm_start)
    prepared = prepare(model, calibration, data, cache, run_on, warm_start_chains=chains)
    refine_options = refine_options_for(refine, method, prepared.split)
    compressed = compress_chains(prepared, method, refine_options, warm_start)
    return finish(prepared, compressed, method, metric, check or CheckOptions(), started)
