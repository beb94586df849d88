"""What one search keeps between its compress calls.

A search compresses the same model with the same calibration data at many knob values.
Much of each call does not depend on the knob: the chain inputs read by onnxruntime,
the original network's activations and outputs on the calibration rows, its outputs on
the held-out rows; and in the data-aware lumping, everything a layer's result depends on
(its inputs on the data and its refit weights) is fixed by the lumpings of the layers
before it, which often repeat from one knob value to the next. A :class:`SearchCache`,
passed to :func:`onnx_lump.api.compress` as ``cache=``, keeps these for the lifetime of
one :class:`onnx_lump.search.Evaluator`; results are the same with and without it.

A cache belongs to one model and one calibration split: it refuses (ValueError) to serve
another. Per-chain entries live in a :class:`ChainCache` (``ChainProblem.cache``), an
LRU store bounded in bytes, so a long search does not grow without limit.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from onnx_lump.data.holdout import CalibrationSplit
from onnx_lump.runtime import run_model

__all__ = ["DEFAULT_CACHE_BYTES", "ChainCache", "SearchCache", "digest"]

# Bound on the layer states one chain keeps (inputs on the data, refit weights): on the
# 4 x 4096 benchmark with 2,048 rows a state is about 30 MB.
DEFAULT_CACHE_BYTES = 1 << 30


def digest(*arrays: np.ndarray | None) -> bytes:
    """A key for the exact contents (dtype, shape and bytes) of some arrays."""
    h = hashlib.blake2b(digest_size=20)
    for array in arrays:
        if array is None:
            h.update(b"-")
            continue
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(array.data)
    return h.digest()


def _nbytes(value: Any) -> int:
    """Memory an entry holds. A read-only view holds none of its own: those cached are
    the chain's pinned float64 weights, passed on as they are where a layer's inputs
    are not merged (counting them evicted every full-width state of the 4 x 4096
    benchmark from a 1 GiB cache: each 160 MiB, 128 of it a view)."""
    if isinstance(value, np.ndarray):
        shared = not value.flags.owndata and not value.flags.writeable
        return 0 if shared else value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if hasattr(value, "__dict__"):
        return sum(_nbytes(v) for v in vars(value).values())
    return 64


class ChainCache:
    """Memo of one chain's knob-independent results, least recently used out first once
    the entries pass ``max_bytes`` (entries asked for with ``pin`` are never dropped).
    ``across_calls`` says whether it serves several compress calls (a search) or one:
    what only another knob could reuse is kept in the first case only."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, across_calls: bool = True) -> None:
        self.max_bytes = max_bytes
        self.across_calls = across_calls
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._pinned: dict[Hashable, Any] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], Any], pin: bool = False) -> Any:
        if key in self._pinned:
            self.hits += 1
            return self._pinned[key]
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key][0]
        self.misses += 1
        value = compute()
        if pin:
            self._pinned[key] = value
            return value
        size = _nbytes(value)
        self._entries[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped
        return value


class SearchCache:
    """Results shared by every compress call of one search on one model and calibration
    split (see the module's docstring)."""

    def __init__(
        self, max_bytes_per_chain: int = DEFAULT_CACHE_BYTES, across_calls: bool = True
    ) -> None:
        self.max_bytes_per_chain = max_bytes_per_chain
        self.across_calls = across_calls
        self._bound: tuple | None = None
        self._keep: tuple = ()
        self._memo: dict[Hashable, Any] = {}
        self._chains: dict[int, ChainCache] = {}

    def bind(
        self,
        model: onnx.ModelProto,
        calibration: Mapping[str, np.ndarray] | None,
        *settings: Hashable,
    ) -> None:
        """Tie the cache to ``model``, ``calibration`` (by identity) and the split's
        ``settings``; a later call with other ones is a programming error."""
        key = (id(model), id(calibration), *settings)
        if self._bound is None:
            self._bound, self._keep = key, (model, calibration)  # ids stay valid
        elif key != self._bound:
            raise ValueError("a SearchCache serves one model, calibration and split only")

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def chain(self, index: int) -> ChainCache:
        if index not in self._chains:
            self._chains[index] = ChainCache(self.max_bytes_per_chain, self.across_calls)
        return self._chains[index]

    def held_out_reference(
        self, original: onnx.ModelProto, split: CalibrationSplit, providers: Sequence
    ) -> dict[str, np.ndarray]:
        """The original's outputs on the held-out rows (by name, as onnxruntime gives
        them), run once for every step's error and the final verification."""
        return self.get("reference outputs", lambda: run_model(original, split.holdout, providers))
