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

At the larger epsilons most pairs link, and a spanning forest is all that single linkage
needs: links are first sought between each row and its nearest rows (in a random
projection), then the components this leaves are compared as balls (representative and
radius, the triangle inequality), and members only where the balls leave it open.
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
    _L1Bounds,
    group_rows,
    number_by_first_row,
    split_by_projections,
)

__all__ = ["group_data_rows"]

_TILE_ENTRIES = 1 << 20  # pairs of one tile (its float64 partial sums: 8 MiB)
_SHARES = (16, 4, 1)  # read 1/16 of the columns, then 1/4, then all
_SMALL_BLOCK = 64  # blocks up to this size: every pair at once
_WHOLE_TILE = 0.25  # sum a share of the columns for the whole tile above this open share
_PAIR_BATCH = 1 << 16  # entries of the gathered rows of one batch of pairs
_NEIGHBOURS = 16  # nearest rows in the sketch each row is first compared with
_SKETCH = 32  # dimensions of the random projection the nearest rows are found in


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
    """For each row of ``points``, the smallest row of its component (the graph with an
    edge wherever the L1 distance is at most eps).

    A spanning forest is enough, so links are looked for where they are likeliest first
    (:func:`_seed`: each row against its nearest rows in a random projection). The
    components this leaves are then told apart by their smallest rows (representatives)
    and radii: by the triangle inequality no pair of members of two components is within
    eps when their representatives are more than eps plus both radii apart, and the two
    are joined when the representatives are within eps. Only the members of the pairs
    of components left open are compared, skipping those joined by then."""
    m, dim = points.shape
    points = points[:, np.random.default_rng(0).permutation(dim)]
    norms = _L1Bounds(points)
    seed = _seed(points, eps, np.arange(m))
    reps = np.flatnonzero(seed == np.arange(m))
    radius = np.zeros(m)
    np.maximum.at(radius, seed, _pair_l1(points, np.arange(m), seed, 0, dim))
    # The radii and the distances are sums of dim terms, rounded in another order than a
    # member pair's distance: a margin far above that rounding keeps the exclusion safe.
    extra = radius * (1.0 + 1e-9) + 1e-9 * norms.l1
    roots, left, right = _scan(points, norms, reps, reps, eps, seed, extra, extra, upper=True)
    by_root = np.argsort(seed, kind="stable")
    first = np.searchsorted(seed[by_root], np.arange(m + 1))  # seed component r's members

    def members(of: np.ndarray) -> np.ndarray:
        return np.concatenate([by_root[first[r] : first[r + 1]] for r in of])

    # Pairs of components left open: each member of the wider one against the narrower
    # one as a ball (no member of it is within eps of a row more than eps plus its
    # radius from its representative), then against the members of the balls it nears.
    narrow = radius[left] < radius[right]
    wide, ball = np.where(narrow, right, left), np.where(narrow, left, right)
    near_rows, near_balls = [], []
    for whole, balls in _runs(wide, ball):
        balls = balls[roots[balls] != roots[whole]]
        if balls.size:
            rows = members([whole])
            roots, x, b = _scan(points, norms, rows, balls, eps, roots, None, extra)
            near_rows.append(x)
            near_balls.append(b)
    if near_rows:
        for b, rows in _runs(np.concatenate(near_balls), np.concatenate(near_rows)):
            rows = rows[roots[rows] != roots[b]]
            if rows.size:
                roots = _scan(points, norms, members([b]), rows, eps, roots)[0]
    return roots


def _runs(keys: np.ndarray, values: np.ndarray):
    """(key, its values) for each distinct key."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    heads = np.flatnonzero(np.diff(keys, prepend=-1))
    for head, stop in zip(heads, [*heads[1:], keys.size][: heads.size], strict=True):
        yield keys[head], values[head:stop]


def _seed(points: np.ndarray, eps: float, roots: np.ndarray) -> np.ndarray:
    """``roots`` after the links between each row and its nearest rows by L2 distance in
    a random projection to a few dimensions (near in L2 is likely near in L1), nearest
    first, skipping rows joined by then."""
    m, dim = points.shape
    k = min(_NEIGHBOURS, m - 1)
    if k < 1:
        return roots
    # Only an order of candidates: float32 is plenty (and halves the cost of ranking).
    sketch = (points @ np.random.default_rng(1).standard_normal((dim, _SKETCH))).astype(np.float32)
    sq = np.einsum("ij,ij->i", sketch, sketch)
    nearest = np.empty((m, k), dtype=np.int64)
    step = max(1, _TILE_ENTRIES // m)
    for start in range(0, m, step):
        tile = np.arange(start, min(start + step, m))
        d2 = sketch[tile] @ sketch.T  # a row's own norm leaves its ranking as it is
        d2 *= -2.0
        d2 += sq[None, :]
        d2[np.arange(tile.size), tile] = np.inf  # not its own neighbour
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        rank = np.argsort(np.take_along_axis(d2, part, axis=1), axis=1, kind="stable")
        nearest[tile] = np.take_along_axis(part, rank, axis=1)
    cuts = [0, *sorted({max(1, dim // share) for share in _SHARES} | {dim})]
    everyone = np.arange(m)
    for column in nearest.T:
        open_ = roots[everyone] != roots[column]
        i, j = everyone[open_], column[open_]
        partial = np.zeros(i.size)
        for low, high in itertools.pairwise(cuts):  # most far pairs leave on a share
            partial += _pair_l1(points, i, j, low, high)
            near = partial <= eps
            i, j, partial = i[near], j[near], partial[near]
        roots = _merge(roots, i, j)
    return roots


def _scan(
    points: np.ndarray,
    norms: _L1Bounds,
    rows: np.ndarray,
    cols: np.ndarray,
    eps: float,
    roots: np.ndarray,
    extra_rows: np.ndarray | None = None,
    extra_cols: np.ndarray | None = None,
    upper: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join the pairs of rows x cols within eps (only col > row with ``upper``, where
    rows are cols), skipping pairs joined by then; also return the pairs not joined
    that lie within ``eps + extra_rows[row] + extra_cols[col]`` (indexed by row; None:
    zero).

    A tile of pairs at a time: the bounds of `_L1Bounds` (grouping.py) decide some pairs, then
    partial sums over growing shares of the columns drop the pairs that pass their
    threshold; a share is summed for the whole tile while most of its pairs are open,
    else for the open pairs only; the last share goes likeliest links first."""
    dim = points.shape[1]
    cuts = [0, *sorted({max(1, dim // share) for share in _SHARES} | {dim})]
    kept_left, kept_right = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    step = max(1, _TILE_ENTRIES // max(cols.size, 1))
    for start in range(0, rows.size, step):
        tile = rows[start : start + step]
        at = slice(start, None) if upper else slice(None)
        others = cols[at]
        far = np.full((tile.size, others.size), float(eps))
        if extra_rows is not None:
            far += extra_rows[tile, None]
        if extra_cols is not None:
            far += extra_cols[None, others]
        lower, high_bound = norms.between(tile, others)
        alive = roots[tile, None] != roots[None, others]
        if upper:
            alive &= others[None, :] > tile[:, None]
        sure = alive & (high_bound <= eps)
        roots = _merge(roots, tile[np.nonzero(sure)[0]], others[np.nonzero(sure)[1]])
        alive &= (lower <= far) & ~sure
        partial = np.zeros(alive.shape)
        for low, high in itertools.pairwise(cuts):
            alive &= roots[tile, None] != roots[None, others]  # joined: no distance needed
            if not alive.any():
                break
            if alive.mean() > _WHOLE_TILE:
                partial += cdist(points[tile, low:high], points[others, low:high], "cityblock")
                alive &= partial <= far
                if high == dim:
                    a, b = np.nonzero(alive & (partial <= eps))
                    roots = _merge(roots, tile[a], others[b])
                    a, b = np.nonzero(alive & (partial > eps))
                    kept_left.append(tile[a])
                    kept_right.append(others[b])
                continue
            a, b = np.nonzero(alive)
            if high < dim:
                partial[a, b] += _pair_l1(points, tile[a], others[b], low, high)
                alive &= partial <= far
                continue
            order = np.argsort(partial[a, b], kind="stable")  # likeliest links first
            a, b = a[order], b[order]
            batch, at_pair = 1024, 0
            while at_pair < a.size:
                ba, bb = a[at_pair : at_pair + batch], b[at_pair : at_pair + batch]
                open_ = roots[tile[ba]] != roots[others[bb]]
                ba, bb = ba[open_], bb[open_]
                total = partial[ba, bb] + _pair_l1(points, tile[ba], others[bb], low, high)
                near = total <= eps
                roots = _merge(roots, tile[ba[near]], others[bb[near]])
                mid = ~near & (total <= far[ba, bb])
                kept_left.append(tile[ba[mid]])
                kept_right.append(others[bb[mid]])
                at_pair += batch
                batch = min(2 * batch, 1 << 16)
    return roots, np.concatenate(kept_left), np.concatenate(kept_right)


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
    batch = max(1, _PAIR_BATCH // max(high - low, 1))  # gathered rows that stay in cache
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
