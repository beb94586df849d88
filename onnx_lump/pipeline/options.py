"""The pipeline's options in groups, each read by the stage that needs it: the
calibration rows and how they are split and fitted (:class:`CalibrationOptions`) and the
onnxruntime check of the result (:class:`CheckOptions`). :func:`onnx_lump.compress` takes
them as keywords and builds these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnx_lump.data.calibration import AUTO_MASK_INPUT
from onnx_lump.data.holdout import DEFAULT_HOLDOUT

__all__ = ["CalibrationOptions", "CheckOptions"]


@dataclass(frozen=True, eq=False)
class CalibrationOptions:
    """How the calibration inputs are used: a seeded ``holdout`` share set aside (or
    ``validation`` rows instead, with optional reference ``validation_targets``), the
    input whose zeros mark padding (``mask_input``), and ``sequential`` calibration."""

    holdout: float = DEFAULT_HOLDOUT
    seed: int = 0
    validation: Mapping[str, np.ndarray] | None = None
    validation_targets: np.ndarray | None = None
    mask_input: str | None = AUTO_MASK_INPUT
    sequential: bool = False


@dataclass(frozen=True, eq=False)
class CheckOptions:
    """The check of the result: with ``verify``, both models run in onnxruntime on
    ``inputs`` (else the held-out rows, else ``n_check`` seeded random inputs of
    ``input_shapes``) and the output errors are judged against ``atol``/``rtol``;
    ``measure_holdout`` measures the held-out error (a search's size steps skip it)."""

    verify: bool = True
    inputs: Mapping[str, np.ndarray] | None = None
    n_check: int = 64
    input_shapes: Mapping[str, Sequence[int]] | None = None
    atol: float | None = None
    rtol: float | None = None
    measure_holdout: bool = True
