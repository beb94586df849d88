"""Single-linkage groups of data-similarity rows: one row per neuron, one column per
calibration row (its scaled pre-activation), so rows are long (thousands of columns)
and, at the larger epsilons a search tries, hardly any pair is decided by projections or
by bounds from one matrix product.

The groups are exactly those of :func:`onnx_lump.ode.grouping.group_rows`: the components of
the graph with an edge wherever the L1 distance is at most epsilon. What changes is how
the distances of the undecided pairs are found. L1 distance is a sum of non-negative
terms, so the sum over some of the columns is a lower bound: the columns are read in
a seeded random order, a share at a time, all pairs of a tile at once (``cdist``, no
gathered copies), and a pair leaves as soon as its partial sum passes epsilon or its two
rows are already joined. Only pairs that really link, or nearly do, are read in full.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from onnx_lump.ode.grouping import (
    Linkage,
    RowSource,
    group_rows,
    number_by_first_row,
    split_by_projections,
)

__all__ = ["group_data_rows"]

_TILE_ENTRIES = 1 << 20  # pairs of one tile (its float64 partial sums: 8 MiB)
_SHARES = (16, 4, 1)  # read 1/16 of the columns, then 1/4, then all
_SMALL_BLOCK = 64  # blocks up to this size: every pair at once
_WHOLE_TILE = 0.25  # sum a share of the columns for the whole tile above this open share


def group_data_rows(rows: RowSource, eps: float, linkage: Linkage = Linkage.SINGLE) -> np.ndarray:
    """Label each row with a group (numbered by first row), as ``group_rows`` does."""
    if linkage is not Linkage.SINGLE:
        return group_rows(rows, eps, linkage)
    n = rows.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    coarse = split_by_projections(rows, eps)
    order = np.argsort(coarse, kind="stable")
    starts = np.flatnonzero(np.diff(coarse[order], prepend=-1))
    sizes = np.diff(np.append(starts, n))
    left, right = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    small = (sizes > 1) & (sizes <= _SMALL_BLOCK)
    # Most blocks of a wide layer hold a few rows: their rows are formed many blocks at
    # a time (one product with the inputs), then each block's distances come at once.
    per_batch = max(1, _TILE_ENTRIES * 4 // max(rows.shape[1], 1))
    small_starts, small_sizes = starts[small], sizes[small]
    ends = np.cumsum(small_sizes)
    first = 0
    while first < small_starts.size:
        done = ends[first] - small_sizes[first]
        last = max(first + 1, int(np.searchsorted(ends, done + per_batch, side="right")))
        spans = zip(small_starts[first:last], small_sizes[first:last], strict=True)
        members = np.concatenate([order[a : a + b] for a, b in spans])
        points = rows.take(members)
        at = 0
        for size in small_sizes[first:last]:
            block = np.arange(at, at + size)
            i, j = _pairs_within(points, block, block, eps)
            left.append(members[i])
            right.append(members[j])
            at += size
        first = last
    for start, size in zip(starts[sizes > _SMALL_BLOCK], sizes[sizes > _SMALL_BLOCK], strict=True):
        members = order[start : start + size]
        local = _components(rows.take(members), eps)
        left.append(members)
        right.append(members[local])
    return number_by_first_row(_connected(n, np.concatenate(left), np.concatenate(right)))


def _components(points: np.ndarray, eps: float) -> np.ndarray:
    """For each row of ``points``, the index of a row of its component (the graph with
    an edge wherever the L1 distance is at most eps).

    A tile of pairs at a time: bounds from one matrix product decide some pairs
    (``|d|_2 <= |d|_1 <= sqrt(dim) |d|_2``, ``|d|_1 >= |d|_2^2 / |d|_inf``,
    ``|d|_1 <= |x|_1 + |y|_1``), then partial sums over growing shares of the columns
    drop the pairs that pass eps; a share is summed for the whole tile while most of
    its pairs are open, else for the open pairs only."""
    m, dim = points.shape
    points = points[:, np.random.default_rng(0).permutation(dim)]
    cuts = [0, *sorted({max(1, dim // share) for share in _SHARES} | {dim})]
    sq = np.einsum("ij,ij->i", points, points)
    l1 = np.abs(points).sum(axis=1)
    linf = np.abs(points).max(axis=1)
    roots = np.arange(m)
    step = max(1, _TILE_ENTRIES // m)
    for start in range(0, m, step):
        tile = np.arange(start, min(start + step, m))
        others = np.arange(start, m)
        sq_sum = sq[tile, None] + sq[None, others]
        d2 = sq_sum - 2.0 * (points[tile] @ points[others].T)
        slack = 1e-9 * sq_sum + 1e-300  # rounding of the expansion
        d2_low, d2_high = np.maximum(d2 - slack, 0.0), np.maximum(d2, 0.0) + slack
        lower = np.maximum(
            np.sqrt(d2_low), d2_low / np.maximum(linf[tile, None] + linf[None, others], 1e-300)
        )
        upper = np.minimum(np.sqrt(dim * d2_high), l1[tile, None] + l1[None, others])
        pair = others[None, :] > tile[:, None]
        sure = pair & (upper <= eps)
        roots = _merge(roots, tile[np.nonzero(sure)[0]], others[np.nonzero(sure)[1]])
        alive = pair & (lower <= eps) & ~sure
        partial = np.zeros(alive.shape)
        for low, high in itertools.pairwise(cuts):
            alive &= roots[tile, None] != roots[None, others]  # joined: no distance needed
            if not alive.any():
                break
            if alive.mean() > _WHOLE_TILE:
                partial += cdist(points[tile, low:high], points[others, low:high], "cityblock")
                alive &= partial <= eps
                if high == dim:
                    a, b = np.nonzero(alive)
                    roots = _merge(roots, tile[a], others[b])
                continue
            a, b = np.nonzero(alive)
            if high < dim:
                partial[a, b] += _pair_l1(points, tile[a], others[b], low, high)
                alive &= partial <= eps
                continue
            order = np.argsort(partial[a, b], kind="stable")  # likeliest links first
            a, b = a[order], b[order]
            batch, at = 1024, 0
            while at < a.size:
                ba, bb = a[at : at + batch], b[at : at + batch]
                open_ = roots[tile[ba]] != roots[others[bb]]
                ba, bb = ba[open_], bb[open_]
                near = partial[ba, bb] + _pair_l1(points, tile[ba], others[bb], low, high) <= eps
                roots = _merge(roots, tile[ba[near]], others[bb[near]])
                at += batch
                batch = min(2 * batch, 1 << 16)
    return roots


def _merge(roots: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component roots (each component's smallest row) after adding edges (i, j)."""
    if not i.size:
        return roots
    m = roots.size
    labels = _connected(m, np.concatenate([np.arange(m), i]), np.concatenate([roots, j]))
    _, first = np.unique(labels, return_index=True)
    return first[labels]


def _pair_l1(points: np.ndarray, i: np.ndarray, j: np.ndarray, low: int, high: int):
    """L1 distances of the pairs (i[k], j[k]) over columns low:high, in batches."""
    out = np.empty(i.size)
    batch = max(1, _TILE_ENTRIES // max(high - low, 1))
    for start in range(0, i.size, batch):
        part = slice(start, start + batch)
        out[part] = np.abs(points[i[part], low:high] - points[j[part], low:high]).sum(axis=1)
    return out


def _pairs_within(points, rows, cols, eps):
    distance = cdist(points[rows], points[cols], "cityblock")
    i, j = np.nonzero((distance <= eps) & (cols[None, :] > rows[:, None]))
    return rows[i], cols[j]


def _connected(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    graph = sp.coo_matrix((np.ones(left.size), (left, right)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)
