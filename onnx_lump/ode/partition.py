"""What stage 3 hands on: the options of a partition and the partition itself, one
:class:`~onnx_lump.ode.encoding.Lumping` per hidden layer. Kept apart from the
algorithms (:mod:`onnx_lump.ode.equivalence`) so that the stages that read a partition
(reduction, the data-driven similarity) need not import them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from onnx_lump.errors import LumpError
from onnx_lump.ode.encoding import Lumping, OdeSystem
from onnx_lump.ode.grouping import Linkage
from onnx_lump.types import ReducedLayer

__all__ = ["Equivalence", "Partition", "PartitionOptions", "Similarity"]


class Similarity(enum.Enum):
    WEIGHTS = "weights"  # rows of coefficients and bias
    DATA = "data"  # pre-activations on calibration inputs
    AFFINE = "affine"  # activations on calibration inputs, equal up to an affine map


class Equivalence(enum.Enum):
    BACKWARD = "backward"
    FORWARD = "forward"


@dataclass(frozen=True)
class PartitionOptions:
    eps: float = 0.0
    equivalence: Equivalence = Equivalence.BACKWARD
    linkage: Linkage = Linkage.SINGLE
    symmetries: bool = True
    similarity: Similarity = Similarity.WEIGHTS

    def __post_init__(self) -> None:
        if not np.isfinite(self.eps) or self.eps < 0:
            raise LumpError(f"epsilon must be a finite number >= 0, got {self.eps}")


@dataclass(frozen=True, eq=False)
class Partition:
    """One :class:`Lumping` per hidden layer of an ODE system.

    A backward partition also carries the reduced layers of ``system``, built on the way:
    they need the same aggregation of each layer over the blocks upstream, which is the
    costliest step on a wide layer (:func:`onnx_lump.ode.reduction.reduce_system` returns them).
    """

    options: PartitionOptions
    lumpings: tuple[Lumping, ...]
    system: OdeSystem | None = field(default=None, repr=False)
    reduced: tuple[ReducedLayer, ...] | None = field(default=None, repr=False)

    @property
    def widths(self) -> list[int]:
        return [lumping.n_blocks for lumping in self.lumpings]
