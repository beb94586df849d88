"""One layer's lumping on the data path, through a search's cache, and the eps at which
a layer keeps a given width (the size search's hint).

A search evaluates many eps on the same layer states: a lumping is kept under its layer
state and options, an eps between two seen ones that gave the same lumping reuses it,
and the comparison on the data (its rows and statistics) is kept across eps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from onnx_lump.data.cache import ChainCache, digest
from onnx_lump.data.reference import frozen
from onnx_lump.methods.base import ChainProblem
from onnx_lump.ode.encoding import Lumping
from onnx_lump.ode.equivalence import backward_lumping
from onnx_lump.ode.grouping import Linkage
from onnx_lump.ode.partition import Equivalence, PartitionOptions

__all__ = ["eps_for_width", "layer_lumping", "lumping_digest"]


# Weight-row L1 norms this close (relative to the largest) to an eps already seen may
# sit on either side of the constant-row test, whatever its rounding allowance.
_CONSTANT_SLACK = 1e-4


def layer_lumping(
    problem: ChainProblem,
    index: int,
    weight: np.ndarray,
    bias: np.ndarray,
    inputs: np.ndarray,
    held_inputs: np.ndarray | None,
    options: PartitionOptions,
    forward: tuple[Lumping, ...] | None,
    state: tuple,
) -> Lumping:
    """The lumping of hidden layer ``index`` from its (aggregated or refit) weights and
    its inputs on the data, in layer state ``state`` (the setting and the lumpings before
    it; ``()`` for the first layer), through the cache when there is one."""
    memo = problem.cache
    layer = problem.system.hidden[index]
    # only another eps reuses a comparison: within one call it is not kept
    remember = _data_memo(memo, options, state) if memo is not None and memo.across_calls else None

    def partition() -> Lumping:
        if forward is not None:
            return _with_data_constants(forward[index], weight, bias, layer, inputs)
        return backward_lumping(
            weight,
            bias,
            layer.activation,
            options,
            problem.system.precision,
            inputs,
            held_inputs,
            remember=remember,
        )

    if memo is None:
        return partition()
    return _remembered_lumping(memo, options, forward is not None, state, weight, partition)


def _remembered_lumping(
    memo: ChainCache,
    options: PartitionOptions,
    forward: bool,
    state: tuple,
    weight: np.ndarray,
    partition: Callable[[], Lumping],
) -> Lumping:
    """``partition()`` for this layer state and options, or a lumping found earlier that
    it must equal.

    With single linkage and backward equivalence, a layer's lumping depends on eps only
    through the groups at eps (coarser as eps grows), the rows within eps of zero (more
    as eps grows) and whether eps > 0 (data similarity). So when the nearest values
    a < eps < b already seen gave the same lumping and no weight row's L1 norm lies
    between them (the same rows were constant), eps gives that lumping too: a search step
    inside such an interval is not recomputed.
    """
    exact = ("lumping", options, forward, state)
    eps = options.eps
    if (
        eps <= 0
        or options.linkage is not Linkage.SINGLE
        or options.equivalence is not Equivalence.BACKWARD
    ):
        return memo.get(exact, partition)
    seen = memo.get(("lumpings", dataclasses.replace(options, eps=0.0), state), dict, pin=True)
    if eps in seen:
        return seen[eps][0]
    below = max((e for e in seen if e < eps), default=None)
    above = min((e for e in seen if e > eps), default=None)
    if below is not None and above is not None and seen[below][1] == seen[above][1]:
        l1 = memo.get(("row l1", state), lambda: np.abs(weight).sum(axis=1, dtype=np.float64))
        slack = _CONSTANT_SLACK * float(l1.max(initial=0.0))
        if not np.any((l1 >= below) & (l1 <= above + slack)):
            seen[eps] = seen[below]
            return seen[eps][0]
    lumping = partition()
    seen[eps] = (lumping, lumping_digest(lumping))
    return lumping


def _data_memo(memo: ChainCache, options: PartitionOptions, state: tuple):
    """``remember`` for :func:`backward_lumping`: a layer state's comparison on the data,
    kept under the state, the options but eps, and the rows constant at eps."""
    without_eps = dataclasses.replace(options, eps=0.0)

    def remember(constant: np.ndarray, compute: Callable):
        key = ("data rows", without_eps, state, digest(constant))
        return memo.get(key, lambda: _frozen_data(*compute()))

    return remember


def _frozen_data(rows, *statistics: np.ndarray) -> tuple:
    """A comparison on the data, read-only: it is cached."""
    if rows is not None:
        frozen(rows.rows)
    return (rows, *(frozen(a) for a in statistics))


def lumping_digest(lumping: Lumping) -> bytes:
    return digest(lumping.block, lumping.scale, lumping.offset, lumping.representative)


# eps_for_width looks up and down from 1 by this factor, then narrows (in log eps) to
# the exact width or this relative resolution, finer than the search's 1e-4: the retry
# hint needs the first layer's width to the neuron (on the wide benchmark model one
# neuron there moves the size by 0.01% of the parameters, a third of the tolerance);
# below _HINT_FLOOR eps is as good as 0.
_HINT_FACTOR = 16.0
_HINT_RESOLUTION = 1e-6
_HINT_FLOOR = 1e-12
_HINT_CEILING = 1e6
# An interpolated eps stays this share of the (log) interval away from either end.
_HINT_MARGIN = 0.05


def eps_for_width(width: Callable[[float], int], want: int, slack: int = 0) -> float | None:
    """The smallest eps (to :data:`_HINT_RESOLUTION`, or where the width is ``want``
    exactly, or within ``slack`` neurons below it) at which ``width(eps)``, the
    non-increasing width of a layer, is at most ``want``: 0 when eps down to
    :data:`_HINT_FLOOR` do, None when no eps up to :data:`_HINT_CEILING` does. Between
    the ends the log width is interpolated, linear in log eps, while that halves the
    interval; else the middle is taken."""
    known: dict[float, int] = {}

    def measure(eps: float) -> int:
        if eps not in known:
            known[eps] = width(eps)
        return known[eps]

    high = 1.0
    while measure(high) > want:
        high *= _HINT_FACTOR
        if high > _HINT_CEILING:
            return None
    low = high / _HINT_FACTOR
    while measure(low) <= want:
        high, low = low, low / _HINT_FACTOR
        if low < _HINT_FLOOR:
            return 0.0
    interpolate = True
    while high > low * (1.0 + _HINT_RESOLUTION) and measure(high) < want - slack:
        span = np.log(high / low)
        share = 0.5
        wide, narrow = known[low], known[high]
        if interpolate and narrow > 0:
            share = np.log(wide / want) / np.log(wide / narrow)
            share = min(max(share, _HINT_MARGIN), 1.0 - _HINT_MARGIN)
        middle = float(low * np.exp(share * span))
        if measure(middle) > want:
            low = middle
        else:
            high = middle
        # interpolation that does not halve the interval gives way to one middle step
        interpolate = not interpolate or np.log(high / low) <= 0.5 * span
    return high


def _with_data_constants(lumping: Lumping, weight, bias, layer, inputs) -> Lumping:
    """A forward lumping whose removed neurons are replaced by their mean activation on
    the calibration data (exact for constant neurons, the best constant otherwise)."""
    removed = lumping.block < 0
    if not removed.any():
        return lumping
    mean = layer.activation(inputs @ weight.T + bias).mean(axis=0)
    return Lumping(
        lumping.block, lumping.scale, np.where(removed, mean, lumping.offset), lumping.n_blocks
    )
