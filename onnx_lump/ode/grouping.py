"""Grouping row vectors that lie within epsilon of each other in L1 distance.

Wide layers rule out a Python loop over neuron pairs and an n x n x d distance tensor.

1. Sort-based splitting: for any sign vector u, ``|u.x - u.y| <= |x - y|_1``, so along a
   projection onto u, epsilon-linked points are never separated by a gap wider than
   epsilon. Cutting at such gaps, for several projections in turn, yields blocks that
   hold whole groups; at epsilon 0 this alone separates almost everything.
2. Inside a block, bounds on L1 from one matrix product (BLAS) decide most pairs.
3. Exact L1 distances are computed only for the pairs the bounds leave open, likeliest
   links first, skipping pairs already joined.
"""

from __future__ import annotations

import enum
import functools
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

__all__ = [
    "SMALL_BLOCK",
    "L1Bounds",
    "Linkage",
    "RowSource",
    "StoredRows",
    "group_rows",
    "number_by_first_row",
    "projection_directions",
    "split_by_projections",
]

_N_PROJECTIONS = 8
_MAX_DISTANCE_ENTRIES = 1 << 22  # bounds the memory of one distance computation
SMALL_BLOCK = 32  # below this, all pairwise distances are cheaper than bounds


class Linkage(enum.Enum):
    SINGLE = "single"  # connected components of the epsilon relation, as ERODE does
    COMPLETE = "complete"  # every pair of a group within epsilon


class RowSource(Protocol):
    """Rows that are computed on demand rather than stored, so that a wide layer is
    grouped without a full-size copy: only the projections and the rows of the blocks
    that the projections cannot split are ever formed."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The rows ``indices``, as a float64 array."""
        ...

    def project(self, directions: np.ndarray) -> np.ndarray:
        """``rows @ directions`` for a (dim x k) matrix, accumulated in float64."""
        ...


class StoredRows:
    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.shape = rows.shape

    def take(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.rows[indices], dtype=np.float64)

    def project(self, directions: np.ndarray) -> np.ndarray:
        return self.rows @ directions


def group_rows(
    rows: np.ndarray | RowSource, eps: float, linkage: Linkage = Linkage.SINGLE
) -> np.ndarray:
    """Label each row with a group; labels number groups by their first row."""
    source = StoredRows(rows) if isinstance(rows, np.ndarray) else rows
    n = source.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    projections = source.project(projection_directions(source.shape[1]))
    coarse = _split_projections(projections, eps)
    order = np.argsort(coarse, kind="stable")
    starts = np.flatnonzero(np.diff(coarse[order], prepend=-1))
    sizes = np.diff(np.append(starts, n))
    if linkage is Linkage.COMPLETE:
        labels = np.full(n, -1, dtype=np.int64)
        next_label = 0
        for start, size in zip(starts, sizes, strict=True):
            members = order[start : start + size]
            local = _cliques(source.take(members), eps) if size > 1 else np.zeros(1, np.int64)
            labels[members] = local + next_label
            next_label += int(local.max()) + 1
        return number_by_first_row(labels)
    # Single linkage: the components of one graph whose edges come from every block;
    # blocks of a few rows (most of them in a wide layer) are checked all at once.
    small = (sizes > 1) & (sizes <= SMALL_BLOCK)
    edges = [_small_block_edges(source, order, starts[small], sizes[small], eps)]
    for start, size in zip(starts[sizes > SMALL_BLOCK], sizes[sizes > SMALL_BLOCK], strict=True):
        members = order[start : start + size]
        projected = _projected_components(source, members, projections[members], eps)
        local = _components(source.take(members), eps) if projected is None else projected
        _, first = np.unique(local, return_index=True)
        edges.append((members[first[local]], members))
    left = np.concatenate([e[0] for e in edges])
    right = np.concatenate([e[1] for e in edges])
    return number_by_first_row(_connected(n, left, right))


def _small_block_edges(
    source: RowSource, order: np.ndarray, starts: np.ndarray, sizes: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs within eps inside blocks of at most SMALL_BLOCK rows, as (left, right) row
    indices. The rows of many blocks are formed in one call (at most
    _MAX_DISTANCE_ENTRIES entries), then each block's distances come from one cdist."""
    found_left, found_right = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    per_batch = max(1, _MAX_DISTANCE_ENTRIES // max(source.shape[1], 1))
    ends = np.cumsum(sizes)
    first = 0
    while first < starts.size:
        last = max(first + 1, int(np.searchsorted(ends, ends[first] - sizes[first] + per_batch)))
        members = np.concatenate(
            [order[a : a + b] for a, b in zip(starts[first:last], sizes[first:last], strict=True)]
        )
        points = source.take(members)
        at = 0
        for size in sizes[first:last]:
            block = points[at : at + size]
            left, right = np.nonzero((cdist(block, block, "cityblock") <= eps) & _upper(size))
            found_left.append(members[at + left])
            found_right.append(members[at + right])
            at += size
        first = last
    return np.concatenate(found_left), np.concatenate(found_right)


def projection_directions(dim: int) -> np.ndarray:
    """The (dim x k) sign vectors that :func:`group_rows` projects rows of width ``dim``
    onto (seeded, so a :class:`RowSource` can compute the product in an earlier pass)."""
    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], size=(dim, _N_PROJECTIONS))
    signs[:, 0] = 1.0  # the plain sum is one of the projections
    return signs


@functools.cache
def _upper(size: int) -> np.ndarray:
    return np.triu(np.ones((size, size), dtype=bool), 1)


def split_by_projections(rows: RowSource, eps: float) -> np.ndarray:
    """Blocks that hold whole groups: along a projection onto a sign vector, rows
    within eps in L1 are never more than eps apart, so a gap wider than eps in any
    projection separates no related rows."""
    return _split_projections(rows.project(projection_directions(rows.shape[1])), eps)


def _split_projections(projections: np.ndarray, eps: float) -> np.ndarray:
    """:func:`split_by_projections` from the rows' projections."""
    block = np.zeros(projections.shape[0], dtype=np.int64)
    n_blocks = 1
    for _ in range(3):  # a split along one projection can enable one along another
        before = n_blocks
        for k in range(_N_PROJECTIONS):
            p = projections[:, k]
            order = np.lexsort((p, block))
            new_block = (np.diff(block[order]) != 0) | (np.diff(p[order]) > eps)
            ids = np.concatenate([[0], np.cumsum(new_block)])
            block = np.empty_like(block)
            block[order] = ids
            n_blocks = int(ids[-1]) + 1
        if n_blocks == before:
            break
    return block


def _projected_components(
    source: RowSource, members: np.ndarray, projections: np.ndarray, eps: float
) -> np.ndarray | None:
    """:func:`_components` of the rows ``members`` (one block that no gap split), from
    pairs that lie within eps of each other in every projection (``projections``: theirs
    onto :func:`projection_directions`): a pair further apart in any is further apart in
    L1. Rows spread evenly (a wide random layer) leave no gap wider than eps in a
    projection, but few pairs within eps in all of them, so only those pairs' rows are
    read, a batch at a time, instead of the block's rows whole and the bounds of every
    pair (a product over the width). A pair links where :func:`_components` links it:
    its exact L1 distance, or the sum of the rows' L1 norms, is at most eps. None when
    the projections leave too many pairs open (rows that do lie close): the bounds then
    decide more of them for less."""
    n = members.size
    order = np.argsort(projections[:, 0], kind="stable")
    ranked = projections[order]
    reach = np.searchsorted(ranked[:, 0], ranked[:, 0] + eps, side="right")
    counts = reach - np.arange(n) - 1  # rows after each, within eps along the first
    if int(counts.sum()) > n * n // 8:
        return None
    lefts, rights, gaps = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    # pairs of a few rows at a time, dropped projection by projection
    step = max(1, (_MAX_DISTANCE_ENTRIES >> 4) // max(int(counts.max(initial=0)), 1))
    for start in range(0, n, step):
        rows = np.arange(start, min(start + step, n))
        per = counts[rows]
        if not per.any():
            continue
        i = np.repeat(rows, per)
        j = i + 1 + (np.arange(i.size) - np.repeat(np.cumsum(per) - per, per))
        gap = ranked[j, 0] - ranked[i, 0]
        for k in range(1, projections.shape[1]):
            apart = np.abs(ranked[i, k] - ranked[j, k])
            near = apart <= eps
            i, j, gap = i[near], j[near], np.maximum(gap[near], apart[near])
        lefts.append(order[i])
        rights.append(order[j])
        gaps.append(gap)
    left, right, gap = np.concatenate(lefts), np.concatenate(rights), np.concatenate(gaps)
    if left.size > SMALL_BLOCK * n:
        return None
    first = np.argsort(gap, kind="stable")  # likeliest links first
    left, right = left[first], right[first]
    edges_i, edges_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    labels = np.arange(n)
    batch = max(1, _MAX_DISTANCE_ENTRIES // (2 * max(source.shape[1], 1)))
    while left.size:
        undecided = labels[left] != labels[right]
        left, right = left[undecided], right[undecided]
        head_l, head_r = left[:batch], right[:batch]
        a, b = source.take(members[head_l]), source.take(members[head_r])
        norms = np.abs(a).sum(axis=1) + np.abs(b).sum(axis=1)
        a -= b
        linked = (np.abs(a, out=a).sum(axis=1) <= eps) | (norms <= eps)
        if linked.any():
            edges_i.append(head_l[linked])
            edges_j.append(head_r[linked])
            labels = _connected(n, np.concatenate(edges_i), np.concatenate(edges_j))
        left, right = left[batch:], right[batch:]
    return labels


class L1Bounds:
    """Cheap bounds on pairwise L1 distances from one matrix product (BLAS), so that exact
    L1 distances are computed only for the pairs the bounds cannot decide.

    lower: ``|d|_1 >= |d|_2`` and ``|d|_1 >= |d|_2^2 / |d|_inf``;
    upper: ``|d|_1 <= sqrt(dim) |d|_2`` and ``|d|_1 <= |x|_1 + |y|_1``.
    """

    def __init__(self, points: np.ndarray) -> None:
        self.points = points
        self.sq = np.einsum("ij,ij->i", points, points)
        self.l1 = np.abs(points).sum(axis=1)
        self.linf = np.abs(points).max(axis=1)
        self.sqrt_dim = np.sqrt(points.shape[1])

    def between(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) bounds for every pair in rows x cols."""
        sq_sum = self.sq[rows, None] + self.sq[None, cols]
        d2 = sq_sum - 2.0 * (self.points[rows] @ self.points[cols].T)
        slack = 1e-9 * sq_sum + 1e-300  # rounding of the expansion
        d2_low = np.maximum(d2 - slack, 0.0)
        d2_high = np.maximum(d2, 0.0) + slack
        linf = self.linf[rows, None] + self.linf[None, cols]
        lower = np.maximum(np.sqrt(d2_low), d2_low / np.maximum(linf, 1e-300))
        upper = np.minimum(
            self.sqrt_dim * np.sqrt(d2_high), self.l1[rows, None] + self.l1[None, cols]
        )
        return lower, upper

    def exact(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Exact L1 distances of the pairs (left[k], right[k])."""
        out = np.empty(left.size)
        step = max(1, _MAX_DISTANCE_ENTRIES // self.points.shape[1])
        for start in range(0, left.size, step):
            sl = slice(start, start + step)
            out[sl] = np.abs(self.points[left[sl]] - self.points[right[sl]]).sum(axis=1)
        return out


def _components(points: np.ndarray, eps: float) -> np.ndarray:
    """Connected components of the graph with an edge wherever the L1 distance <= eps."""
    n = points.shape[0]
    if n <= SMALL_BLOCK:
        adjacent = cdist(points, points, "cityblock") <= eps
        labels = np.arange(n)
        while True:  # propagate the smallest label through the neighbours
            spread = np.where(adjacent, labels[None, :], n).min(axis=1)
            if np.array_equal(spread, labels):
                return labels
            labels = spread
    bounds = L1Bounds(points)
    sure_i, sure_j, open_i, open_j, open_lower = [], [], [], [], []
    step = max(1, _MAX_DISTANCE_ENTRIES // n)
    everyone = np.arange(n)
    for start in range(0, n, step):
        rows, cols = everyone[start : start + step], everyone[start:]  # upper triangle only
        lower, upper = bounds.between(rows, cols)
        upper_tri = cols[None, :] > rows[:, None]
        i, j = np.nonzero(upper_tri & (upper <= eps))
        sure_i.append(rows[i])
        sure_j.append(cols[j])
        i, j = np.nonzero(upper_tri & (lower <= eps) & (upper > eps))
        open_i.append(rows[i])
        open_j.append(cols[j])
        open_lower.append(lower[i, j])
    edges_i, edges_j = np.concatenate(sure_i), np.concatenate(sure_j)
    labels = _connected(n, edges_i, edges_j)
    left, right = np.concatenate(open_i), np.concatenate(open_j)
    order = np.argsort(np.concatenate(open_lower), kind="stable")  # likeliest links first
    left, right = left[order], right[order]
    batch = 1024
    while left.size:
        undecided = labels[left] != labels[right]
        left, right = left[undecided], right[undecided]
        head_l, head_r = left[:batch], right[:batch]
        linked = bounds.exact(head_l, head_r) <= eps
        if linked.any():
            edges_i = np.concatenate([edges_i, head_l[linked]])
            edges_j = np.concatenate([edges_j, head_r[linked]])
            labels = _connected(n, edges_i, edges_j)
        left, right = left[batch:], right[batch:]
        batch = min(batch * 2, 1 << 16)
    return labels


def _connected(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    graph = sp.coo_matrix((np.ones(left.size), (left, right)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def _cliques(points: np.ndarray, eps: float) -> np.ndarray:
    """Greedy complete-linkage groups: grow each group from a seed, nearest first,
    admitting a point only if it is within eps of every member."""
    n = points.shape[0]
    bounds = L1Bounds(points)
    labels = np.full(n, -1, dtype=np.int64)
    label = 0
    for seed in range(n):
        if labels[seed] >= 0:
            continue
        labels[seed] = label
        open_idx = np.flatnonzero(labels < 0)
        lower, _ = bounds.between(np.array([seed]), open_idx)
        maybe = open_idx[lower[0] <= eps]
        to_seed = bounds.exact(np.full(maybe.size, seed), maybe)
        near = to_seed <= eps
        candidates = maybe[near][np.argsort(to_seed[near], kind="stable")]
        admitted = np.zeros(candidates.size, dtype=bool)
        worst = np.zeros(candidates.size)  # largest distance to any admitted member
        for position in range(candidates.size):
            if worst[position] <= eps:
                admitted[position] = True
                member = points[candidates[position]][None, :]
                worst = np.maximum(worst, cdist(member, points[candidates], "cityblock")[0])
        labels[candidates[admitted]] = label
        label += 1
    return labels


def number_by_first_row(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0, 1, ... in the order in which they first appear."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse]
