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
needs: every row within epsilon of a pivot row (the one nearest the mean) joins it, in
one pass over the rows; links are then sought between each other row and its nearest
rows (in a random projection, among the rows whose distance to the pivot is within
epsilon of its own, as no other can link), then the components this leaves are compared
as balls (centre and radius, the triangle inequality), and members only where the balls
leave it open. Distances to the pivots (the triangle inequality again) rule out pairs
before any of their columns are read.

Pairs whose distance is within rounding of epsilon (a tie, which the summation order
decides) are decided by the sums group_rows takes, over the rows in their own order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
from scipy.spatial.distance import cdist

from onnx_lump.ode.data_scan import (
    SHARES,
    TIE,
    TILE_ENTRIES,
    LazyBounds,
    connected,
    cuts,
    key_window,
    merge_roots,
    pair_l1,
    pairs_within,
    reference_within,
    scan,
)
from onnx_lump.ode.grouping import (
    Linkage,
    RowSource,
    StoredRows,
    group_rows,
    number_by_first_row,
    split_by_projections,
)

__all__ = [
    "NEIGHBOURS",
    "find_pivot",
    "group_data_rows",
    "pivot_distances",
    "seed_groups",
]

_SMALL_BLOCK = 64  # blocks up to this size: every pair at once
NEIGHBOURS = 8  # nearest rows each row (or component) is compared with in seeding
_MISSES = 2  # candidates beyond eps after which a row's seeding stops
_LATER = 4  # later seeding rounds (few rows) compare this many times more candidates
_NEAR_MISS = 1.5  # seeding goes on from components that missed by less (times eps)
_SAMPLE = 512  # rows of the largest component that later seeding rounds look among
_SKETCH = 16  # dimensions of the random projection the nearest rows are found in
_SKETCH_SHARE = 4  # the projection is of the first 1/4 of the (shuffled) columns
_BLOCK = 16  # sketch distances are ranked from the minima of this many columns
_TIGHT = 0.25  # a component's links bound its radius where their sum is below this x eps
_DROP = 1.25  # seeding drops a candidate whose distance estimated from a share is above


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
    per_batch = max(1, TILE_ENTRIES * 4 // max(rows.shape[1], 1))
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
            i, j = pairs_within(points, block, eps)
            left.append(members[i])
            right.append(members[j])
            at += size
        first = last
    # Columns in a seeded random order, so that a share of them is a fair sample.
    columns = np.random.default_rng(0).permutation(rows.shape[1])
    for start, size in zip(starts[sizes > _SMALL_BLOCK], sizes[sizes > _SMALL_BLOCK], strict=True):
        members = order[start : start + size]
        local = _components(_block(rows, members), columns, eps)
        left.append(members)
        right.append(members[local])
    return number_by_first_row(connected(n, np.concatenate(left), np.concatenate(right)))


def _block(rows: RowSource, members: np.ndarray) -> np.ndarray:
    """Rows ``members``, read only: the stored rows themselves, not a copy, where the
    block is all of them (as at the larger epsilons)."""
    if (
        isinstance(rows, StoredRows)
        and members.size == rows.shape[0]
        and rows.rows.dtype == np.float64
    ):  # the block is all the stored rows: members is then 0, 1, ..., n - 1
        return rows.rows
    return rows.take(members)


def _components(points: np.ndarray, columns: np.ndarray, eps: float) -> np.ndarray:
    """For each row of ``points`` (read only), the smallest row of its component (the
    graph with an edge wherever the L1 distance is at most eps); ``columns``: the order
    in which partial sums read the columns.

    A spanning forest is enough, so links are looked for where they are likeliest first:
    every row within eps of a pivot row joins it (:func:`find_pivot`: one pass over the rows,
    which at large epsilons settles most of them), then each other row is compared with
    its nearest rows (:func:`seed_groups`). The components this leaves are then told apart by
    their centres (the pivot, else their smallest row) and radii: by the triangle
    inequality no pair of members of two components is within eps when their centres
    are more than eps plus both radii apart, and the two are joined when the centres are
    within eps. Only the members of the pairs of components left open are compared,
    skipping those joined by then."""
    m, dim = points.shape
    pivot, reach, joined = find_pivot(points, eps)
    if joined.all():
        return np.zeros(m, dtype=np.int64)
    reach = reach[:, None]
    if 2 * eps < reach.max():  # else the distances to a second pivot rule out little
        reach = np.column_stack([reach, pivot_distances(points, int(np.argmax(reach)))])
    original, points = points, np.take(points, columns, axis=1)
    ties: list[tuple[np.ndarray, np.ndarray]] = []  # pairs at eps, to decide at the end
    seed = np.arange(m)
    seed[joined] = np.flatnonzero(joined)[0]
    seed, (link_i, link_d) = seed_groups(points, eps, seed, np.flatnonzero(~joined), reach, ties)
    with_pivot = seed == seed[pivot]
    centre = np.where(with_pivot, pivot, seed)
    reps = np.flatnonzero(centre == np.arange(m))
    # Radii: the pivot pass gives the pivot's; a path of links joins every other member
    # to its centre, so the sum of a component's links bounds its radius; members are
    # read only where that sum is loose.
    radius = np.zeros(m)
    np.add.at(radius, seed[link_i], link_d)
    radius[seed[pivot]] = 0.0
    radius[pivot] = reach[with_pivot, 0].max()
    loose = np.flatnonzero(~with_pivot & (radius[seed] > _TIGHT * eps))
    if loose.size:
        radius[seed[loose]] = 0.0
        np.maximum.at(radius, seed[loose], pair_l1(points, loose, seed[loose], 0, dim))
    norms = LazyBounds(points)
    # The radii and the distances are sums of dim terms, rounded in another order than a
    # member pair's distance: a margin far above that rounding keeps the exclusion safe.
    extra = np.zeros(m)
    extra[reps] = radius[reps] * (1.0 + 1e-9) + 1e-9 * norms.l1_of(reps)
    roots, left, right = scan(points, norms, reps, reps, eps, seed, ties, extra, extra, True, reach)
    by_root = np.argsort(seed, kind="stable")
    first = np.searchsorted(seed[by_root], np.arange(m + 1))  # seed component r's members

    def members(of: Iterable[int]) -> np.ndarray:
        return np.concatenate([by_root[first[seed[c]] : first[seed[c] + 1]] for c in of])

    # Pairs of components left open: each member of the wider one against the narrower
    # one as a ball (no member of it is within eps of a row more than eps plus its
    # radius from its centre), then against the members of the balls it nears.
    narrow = radius[left] < radius[right]
    wide, ball = np.where(narrow, right, left), np.where(narrow, left, right)
    near_rows, near_balls = [], []
    for whole, balls in _runs(wide, ball):
        balls = balls[roots[balls] != roots[whole]]
        if balls.size:
            rows = members([whole])
            roots, x, b = scan(
                points, norms, rows, balls, eps, roots, ties, None, extra, False, reach
            )
            near_rows.append(x)
            near_balls.append(b)
    if near_rows:
        for b, rows in _runs(np.concatenate(near_balls), np.concatenate(near_rows)):
            rows = rows[roots[rows] != roots[b]]
            if rows.size:
                roots = scan(points, norms, members([b]), rows, eps, roots, ties, reach=reach)[0]
    # Ties were left out of the graph (a spanning forest of the rest): those that link
    # by group_rows's sums join their components now.
    i, j = (np.concatenate(x) for x in zip(*ties, strict=True)) if ties else (seed[:0], seed[:0])
    i, j = i[roots[i] != roots[j]], j[roots[i] != roots[j]]
    within = reference_within(original, i, j, eps)
    return merge_roots(roots, i[within], j[within])


def find_pivot(points: np.ndarray, eps: float) -> tuple[int, np.ndarray, np.ndarray]:
    """A pivot row (the one nearest the mean row), its L1 distance to every row, and
    which rows are within eps of it by more than the rounding of any summation order (a
    relative 1e-9, far above dim ulps): one pass over the rows links them all, which at
    large epsilons is most rows."""
    pivot = int(np.argmin(cdist(points.mean(axis=0)[None], points, "cityblock")[0]))
    reach = pivot_distances(points, pivot)
    return pivot, reach, reach * (1.0 + TIE) <= eps


def pivot_distances(points: np.ndarray, pivot: int) -> np.ndarray:
    """L1 distance of every row to row ``pivot``. By the triangle inequality two rows
    are at least as far apart as their distances to any one row differ: the distances
    to two pivots (the second the row farthest from the first) rule out most pairs at
    the smaller epsilons, and narrow each row's candidates to a window of rows."""
    return cdist(points[pivot : pivot + 1], points, "cityblock")[0]


def _runs(keys: np.ndarray, values: np.ndarray):
    """(key, its values) for each distinct key."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    heads = np.flatnonzero(np.diff(keys, prepend=-1))
    for head, stop in zip(heads, [*heads[1:], keys.size][: heads.size], strict=True):
        yield keys[head], values[head:stop]


def seed_groups(
    points: np.ndarray,
    eps: float,
    roots: np.ndarray,
    which: np.ndarray,
    reach: np.ndarray,
    ties: list,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``roots`` after the links between each row of ``which`` and its nearest rows by L2
    distance in a random projection to a few dimensions (near in L2 is likely near in
    L1), nearest first, skipping rows joined by then; also the links made (a row of
    each, their distances); pairs at eps go to ``ties``.

    Near-copies fill each other's lists of nearest rows, so rounds follow (as in
    Boruvka's algorithm) from each component but the largest that came close to linking
    (and, after the second round, grew): from its smallest row, among a sample of the
    largest component's rows and the other components' smallest rows (one row standing
    for the near-copies of each), by the L1 distance over a share of the columns."""
    m = points.shape[0]
    k = min(NEIGHBOURS, m - 1)
    if k < 1 or not which.size:
        return roots, (np.zeros(0, np.int64), np.zeros(0))
    # Candidates: the rows to seed and a sample of the others (already joined: one link
    # to them will do).
    others = np.setdiff1d(np.arange(m), which)
    if others.size > _SAMPLE:
        others = np.random.default_rng(3).choice(others, _SAMPLE, replace=False)
    which, nearest = _nearest(points, which, np.union1d(which, others), k, reach, eps)
    linked, lengths = [np.zeros(0, np.int64)], [np.zeros(0)]
    for round_ in itertools.count():
        before = roots
        misses = _MISSES if round_ == 0 else _LATER * _MISSES
        roots, i, d, near_miss = _link(points, eps, roots, which, nearest, ties, misses)
        linked.append(i)
        lengths.append(d)
        go_on = np.zeros(m, dtype=bool)
        go_on[roots[which[near_miss <= _NEAR_MISS * eps]]] = True
        if round_ > 0:  # the same rows would find the same candidates
            go_on[np.setdiff1d(roots, roots[roots != before])] = False
        largest = np.argmax(np.bincount(roots, minlength=m))
        go_on[largest] = False
        which = np.flatnonzero(go_on)
        if not which.size:
            return roots, (np.concatenate(linked), np.concatenate(lengths))
        # A sample of the largest component will do: one link joins it.
        inside = np.flatnonzero(roots == largest)
        if inside.size > _SAMPLE:
            inside = np.sort(np.random.default_rng(2).choice(inside, _SAMPLE, replace=False))
        allowed = np.union1d(np.flatnonzero(roots == np.arange(m)), inside)
        nearest = _nearest_l1(points, roots, which, _LATER * k, allowed)
    raise AssertionError("unreachable: itertools.count() does not end")


def _nearest(
    points: np.ndarray,
    which: np.ndarray,
    pool: np.ndarray,
    k: int,
    reach: np.ndarray,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``which`` (rows alone in their components) in the order of their distance
    to the pivot, and for each its k nearest rows of ``pool`` (which holds them) in the
    sketch, among those whose distance to the pivot is within eps of its own (no other
    can link), nearest first; the row itself where there are fewer."""
    pool = pool[np.argsort(reach[pool, 0], kind="stable")]
    key = reach[pool, 0]
    position = np.empty(points.shape[0], dtype=np.int64)
    position[pool] = np.arange(pool.size)
    # Only an order of candidates: float32 is plenty (and halves the cost of ranking). A
    # column of ones and one of the squared norms fold the distance into the product
    # (a row's own norm leaves its ranking as it is).
    head = points[pool, : max(1, points.shape[1] // _SKETCH_SHARE)]
    sketch = head @ np.random.default_rng(1).standard_normal((head.shape[1], _SKETCH))
    sketch = sketch.astype(np.float32)
    left = np.hstack([-2.0 * sketch, np.ones((pool.size, 1), dtype=np.float32)])
    right = np.hstack([sketch, np.einsum("ij,ij->i", sketch, sketch)[:, None]])
    which = which[np.argsort(position[which], kind="stable")]  # tiles of near rows
    nearest = np.repeat(which[:, None], k, axis=1)
    step = max(1, TILE_ENTRIES // pool.size)
    for start in range(0, which.size, step):
        tile = which[start : start + step]
        low, high = key_window(key, key[position[tile[0]]], key[position[tile[-1]]], eps)
        window = pool[low:high]
        d2 = left[position[tile]] @ right[low:high].T
        d2[np.arange(tile.size), position[tile] - low] = np.inf  # not its own neighbour
        size = window.size
        blocks = size // _BLOCK
        if blocks > k:
            # The k nearest lie in the k blocks of columns (b, b + blocks, ...) with the
            # smallest minima (a block holding one of them has its minimum below the k-th).
            minima = d2[:, : blocks * _BLOCK].reshape(tile.size, _BLOCK, blocks).min(axis=1)
            best = np.argpartition(minima, k - 1, axis=1)[:, :k]
            candidates = (best[:, :, None] + np.arange(_BLOCK) * blocks).reshape(tile.size, -1)
            tail = np.arange(blocks * _BLOCK, size)
            candidates = np.hstack([candidates, np.broadcast_to(tail, (tile.size, tail.size))])
        else:
            candidates = np.broadcast_to(np.arange(size), (tile.size, size))
        picked, values = _k_smallest(np.take_along_axis(d2, candidates, axis=1), candidates, k)
        found = np.where(np.isfinite(values), window[picked], tile[:, None])
        nearest[start : start + tile.size, : found.shape[1]] = found
    return which, nearest


def _nearest_l1(
    points: np.ndarray, roots: np.ndarray, which: np.ndarray, k: int, allowed: np.ndarray
) -> np.ndarray:
    """For each row of ``which``, its k nearest rows of ``allowed`` in other components
    by the L1 distance over the first share of the (shuffled) columns, nearest first."""
    width = max(1, points.shape[1] // SHARES[0])
    k = min(k, allowed.size)
    nearest = np.empty((which.size, k), dtype=np.int64)
    targets = points[allowed, :width]
    step = max(1, TILE_ENTRIES // allowed.size)
    for start in range(0, which.size, step):
        tile = which[start : start + step]
        d = cdist(points[tile, :width], targets, "cityblock")
        d[roots[tile, None] == roots[None, allowed]] = np.inf
        nearest[start : start + tile.size] = _k_smallest(d, np.broadcast_to(allowed, d.shape), k)[0]
    return nearest


def _k_smallest(values: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the labels of its k smallest values (all where fewer), smallest first,
    and those values."""
    if k < values.shape[1]:
        part = np.argpartition(values, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    values = np.take_along_axis(values, part, axis=1)
    rank = np.argsort(values, axis=1, kind="stable")
    labels = np.take_along_axis(labels, np.take_along_axis(part, rank, axis=1), axis=1)
    return labels, np.take_along_axis(values, rank, axis=1)


def _link(
    points: np.ndarray,
    eps: float,
    roots: np.ndarray,
    which: np.ndarray,
    nearest: np.ndarray,
    ties: list,
    misses: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``roots`` after joining each row of ``which`` to its candidates (``nearest``, a
    column at a time) within eps, skipping pairs joined by then and rows past ``misses``
    candidates beyond eps; also a row of each link, its distance, and each row's nearest
    miss (its distance estimated from the share read); pairs at eps go to ``ties``."""
    dim = points.shape[1]
    missed = np.zeros(which.size, dtype=np.int64)
    near_miss = np.full(which.size, np.inf)
    linked, lengths = [np.zeros(0, np.int64)], [np.zeros(0)]
    for column in nearest.T:
        at = np.flatnonzero((missed < misses) & (roots[which] != roots[column]))
        i, j = which[at], column[at]
        # Mutual nearest rows (i, j) and (j, i) are read once.
        pair = np.minimum(i, j) * roots.size + np.maximum(i, j)
        once = np.unique(pair, return_index=True)[1]
        at, i, j = at[once], i[once], j[once]
        partial = np.zeros(i.size)
        for low, high in itertools.pairwise(cuts(dim)):  # most far pairs leave on a share
            partial += pair_l1(points, i, j, low, high)
            # Only likely links are worth reading on (the exact stages find any other).
            near = partial <= eps * (1.0 + TIE if high == dim else _DROP * high / dim)
            miss = at[~near]
            missed[miss] += 1
            near_miss[miss] = np.minimum(near_miss[miss], partial[~near] * (dim / high))
            i, j, partial, at = i[near], j[near], partial[near], at[near]
        tie = partial > eps * (1.0 - TIE)
        ties.append((i[tie], j[tie]))
        i, j, partial = i[~tie], j[~tie], partial[~tie]
        roots = merge_roots(roots, i, j)
        linked.append(i)
        lengths.append(partial)
    return roots, np.concatenate(linked), np.concatenate(lengths), near_miss
