"""The pair scans of :mod:`onnx_lump.ode.data_grouping`: which pairs of long rows are
within eps in L1, read a share of the (shuffled) columns at a time so that a pair leaves
as soon as its partial sum passes eps or its rows are joined; bounds from the triangle
inequality (distances to a pivot) and from one matrix product (norms) rule pairs out
before their columns are read; ties (within rounding of eps) are collected for the
caller to decide as :func:`onnx_lump.ode.grouping.group_rows` does; and the union of
the links found (components by their smallest row).
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from onnx_lump.ode.grouping import SMALL_BLOCK as _GENERAL_SMALL_BLOCK
from onnx_lump.ode.grouping import L1Bounds

__all__ = [
    "SHARES",
    "TIE",
    "TILE_ENTRIES",
    "LazyBounds",
    "connected",
    "cuts",
    "key_window",
    "merge_roots",
    "pair_l1",
    "pairs_within",
    "reference_within",
    "scan",
]

# Distances within this relative margin of eps are ties, which the summation order can
# decide either way (a relative dim ulps apart): they are decided as group_rows decides
# them, by its sums over the rows in their own column order.
TIE = 1e-9
TILE_ENTRIES = 1 << 20  # pairs of one tile (its float64 partial sums: 8 MiB)
SHARES = (32, 8, 4, 2, 1)  # read 1/32 of the columns, then 1/8, 1/4, 1/2, then all
_WHOLE_TILE = 0.25  # sum a share of the columns for the whole tile above this open share
_PAIR_BATCH = 1 << 16  # entries of the gathered rows of one batch of pairs
_PROBE = 32  # rows of a tile on which the matrix-product bounds are tried first
_DECIDED = 0.125  # share of the probe's open pairs they must decide to be used
_WINDOWS = 16  # tiles of rows (in the order of their distance to the pivot) at least
_WINDOW_ROWS = 64  # rows of such a tile at least


def cuts(dim: int) -> list[int]:
    """Column bounds of the shares: 0, dim / 32, dim / 8, dim / 4, dim / 2, dim."""
    return [0, *sorted({max(1, dim // share) for share in SHARES} | {dim})]


def _pivot_gap(reach: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Lower bound on the distance of each pair of left x right from the pivots, less a
    relative 1e-9 (far above the rounding of the distances to the pivots)."""
    gap = np.zeros((left.size, right.size))
    for q in range(reach.shape[1]):
        a, b = reach[left, q][:, None], reach[right, q][None, :]
        np.maximum(gap, np.abs(a - b) - 1e-9 * (a + b), out=gap)
    return gap


def key_window(key: np.ndarray, low: float, high: float, margin: float) -> tuple[int, int]:
    """Positions [start, stop) of the sorted ``key`` within [low - margin, high + margin],
    widened by a relative 1e-9 for rounding."""
    slack = margin + 2e-9 * (abs(low) + abs(high) + margin)
    return int(np.searchsorted(key, low - slack)), int(np.searchsorted(key, high + slack, "right"))


class LazyBounds(L1Bounds):
    """`L1Bounds` whose norms are found for the rows that are compared only (often the
    components' centres alone)."""

    def __init__(self, points: np.ndarray) -> None:
        self.points = points
        self.sqrt_dim = np.sqrt(points.shape[1])
        self.sq, self.l1, self.linf = (np.zeros(points.shape[0]) for _ in range(3))
        self.known = np.zeros(points.shape[0], dtype=bool)

    def l1_of(self, rows: np.ndarray) -> np.ndarray:
        new = np.unique(rows[~self.known[rows]])
        for start in range(0, new.size, 256):  # gathered rows that stay in cache
            at = new[start : start + 256]
            part = self.points[at]
            self.sq[at] = np.einsum("ij,ij->i", part, part)
            np.abs(part, out=part)
            self.l1[at], self.linf[at] = part.sum(axis=1), part.max(axis=1)
        self.known[new] = True
        return self.l1[rows]

    def between(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.l1_of(rows)
        self.l1_of(cols)
        return super().between(rows, cols)


def scan(
    points: np.ndarray,
    norms: L1Bounds,
    rows: np.ndarray,
    cols: np.ndarray,
    eps: float,
    roots: np.ndarray,
    ties: list,
    extra_rows: np.ndarray | None = None,
    extra_cols: np.ndarray | None = None,
    upper: bool = False,
    reach: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join the pairs of rows x cols within eps (each pair once with ``upper``, where
    rows are cols), skipping pairs joined by then; also return the pairs not joined
    that lie within ``eps + extra_rows[row] + extra_cols[col]`` (indexed by row; None:
    zero), ties among them (pairs at eps) also going to ``ties``.

    With ``reach`` (distances to pivots), rows and cols go in the order of their distance
    to the first pivot, each tile of rows meets only the window of cols that it leaves
    open, and the pivots rule out pairs (:func:`_reach`).

    A tile of pairs at a time: the bounds of `L1Bounds` (grouping.py) decide some pairs, then
    partial sums over growing shares of the columns drop the pairs that pass their
    threshold; a share is summed for the whole tile while most of its pairs are open,
    else for the open pairs only. Pairs whose partial sum, scaled to all the columns, is
    within eps are likely links: they are read in full at once, likeliest first, as is
    the last share, so that each join skips the pairs it settles."""
    dim = points.shape[1]
    kept_left, kept_right = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    step = max(1, TILE_ENTRIES // max(cols.size, 1))
    if upper:  # tiles of rows against the cols after them: half the square, not all
        step = min(step, max(_WINDOW_ROWS, -(-rows.size // _WINDOWS)))
    if reach is not None:
        rows = rows[np.argsort(reach[rows, 0], kind="stable")]
        cols = rows if upper else cols[np.argsort(reach[cols, 0], kind="stable")]
        key = reach[cols, 0]
        widest = eps + sum(
            0.0 if x is None or not y.size else x[y].max()
            for x, y in ((extra_rows, rows), (extra_cols, cols))
        )
        if cols.size and 2 * widest < key[-1] - key[0]:  # else each window is all cols
            step = min(step, max(_WINDOW_ROWS, -(-rows.size // _WINDOWS)))
    for start in range(0, rows.size, step):
        tile = rows[start : start + step]
        first, stop = (start, cols.size) if upper else (0, cols.size)
        if reach is not None:
            window = key_window(key, reach[tile[0], 0], reach[tile[-1], 0], widest)
            first, stop = max(first, window[0]), window[1]
        others = cols[first:stop]
        far = np.full((tile.size, others.size), float(eps))
        if extra_rows is not None:
            far += extra_rows[tile, None]
        if extra_cols is not None:
            far += extra_cols[None, others]
        far *= 1.0 + TIE  # ties go on to be read in full
        alive = roots[tile, None] != roots[None, others]
        if upper:  # each pair once: by position, as the rows are the cols
            alive &= np.arange(first, stop)[None, :] > np.arange(start, start + tile.size)[:, None]
        if reach is not None:
            alive &= _pivot_gap(reach, tile, others) <= far
        if _bounds_decide(norms, tile, others, alive, far, eps):
            lower, high_bound = norms.between(tile, others)
            sure = alive & (high_bound <= eps * (1.0 - TIE))
            roots = merge_roots(roots, tile[np.nonzero(sure)[0]], others[np.nonzero(sure)[1]])
            alive &= (lower <= far) & ~sure
        partial = np.zeros(alive.shape)
        for low, high in itertools.pairwise(cuts(dim)):
            alive &= roots[tile, None] != roots[None, others]  # joined: no distance needed
            if not alive.any():
                break
            # The open pairs often lie in a few rows or columns (balls far from all): the
            # rectangle of those is summed whole where most of its pairs are open.
            ra, cb = np.flatnonzero(alive.any(axis=1)), np.flatnonzero(alive.any(axis=0))
            if alive.sum() > _WHOLE_TILE * ra.size * cb.size:
                box = np.ix_(ra, cb)
                partial[box] += cdist(
                    points[tile[ra], low:high], points[others[cb], low:high], "cityblock"
                )
                alive &= partial <= far
                if high == dim:
                    a, b = np.nonzero(alive & (partial <= eps * (1.0 - TIE)))
                    roots = merge_roots(roots, tile[a], others[b])
                    a, b = np.nonzero(alive & (partial > eps * (1.0 - TIE)))
                    kept_left.append(tile[a])
                    kept_right.append(others[b])
                    tie = partial[a, b] <= eps * (1.0 + TIE)
                    ties.append((tile[a[tie]], others[b[tie]]))
                    break
            elif high == dim:
                roots, a, b = _likeliest_first(
                    points, tile, others, alive, partial, far, eps, roots, low, ties
                )
                kept_left.append(a)
                kept_right.append(b)
                break
            else:
                a, b = np.nonzero(alive)
                partial[a, b] += pair_l1(points, tile[a], others[b], low, high)
                alive &= partial <= far
            likely = alive & (partial * (dim / high) <= eps)
            if likely.any():
                roots, a, b = _likeliest_first(
                    points, tile, others, likely, partial, far, eps, roots, high, ties
                )
                kept_left.append(a)
                kept_right.append(b)
                alive &= ~likely
    return roots, np.concatenate(kept_left), np.concatenate(kept_right)


def _bounds_decide(norms, tile, others, alive, far, eps) -> bool:
    """Whether the bounds of one matrix product are worth it for this tile: they decide
    pairs far apart in a few columns (sparse differences), or near at large eps, which
    dense rows seldom are, so a few of its rows are tried first."""
    probe = slice(0, _PROBE)
    if tile.size <= 2 * _PROBE:
        return True
    lower, upper = norms.between(tile[probe], others)
    open_ = alive[probe]
    decided = open_ & ((upper <= eps * (1.0 - TIE)) | (lower > far[probe]))
    return decided.sum() > _DECIDED * max(open_.sum(), 1)


def _likeliest_first(points, tile, others, chosen, partial, far, eps, roots, low, ties):
    """``roots`` after joining the ``chosen`` pairs of tile x others whose distance (the
    partial sum plus columns low:) is within eps, in growing batches, skipping pairs
    joined by then; also the pairs read that stay within far (ties also to ``ties``).

    Each column's likeliest pair (smallest partial sum) comes first, then each one's
    second, and so on: one link settles a column's component, so that its other pairs
    are mostly skipped."""
    a, b = np.nonzero(chosen)
    sums = partial[a, b]
    by_column = np.lexsort((sums, b))
    a, b, sums = a[by_column], b[by_column], sums[by_column]
    heads = np.flatnonzero(np.diff(b, prepend=-1))
    rank = np.arange(b.size) - np.repeat(heads, np.diff(np.append(heads, b.size)))
    order = np.lexsort((sums, rank))
    a, b = a[order], b[order]
    dim = points.shape[1]
    kept_left, kept_right = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    batch, at_pair = max(64, heads.size), 0
    while at_pair < a.size:
        ba, bb = a[at_pair : at_pair + batch], b[at_pair : at_pair + batch]
        open_ = roots[tile[ba]] != roots[others[bb]]
        ba, bb = ba[open_], bb[open_]
        total = partial[ba, bb] + pair_l1(points, tile[ba], others[bb], low, dim)
        near = total <= eps * (1.0 - TIE)
        roots = merge_roots(roots, tile[ba[near]], others[bb[near]])
        tie = ~near & (total <= eps * (1.0 + TIE))
        ties.append((tile[ba[tie]], others[bb[tie]]))
        mid = ~near & (total <= far[ba, bb])
        kept_left.append(tile[ba[mid]])
        kept_right.append(others[bb[mid]])
        at_pair += batch
        batch = min(2 * batch, 1 << 16)
    return roots, np.concatenate(kept_left), np.concatenate(kept_right)


def merge_roots(roots: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component roots (each component's smallest row) after adding edges (i, j): the
    components of the graph on the roots the edges join (small), not on every row."""
    a, b = roots[i], roots[j]
    a, b = a[a != b], b[a != b]
    if not a.size:
        return roots
    nodes, index = np.unique(np.concatenate([a, b]), return_inverse=True)
    labels = connected(nodes.size, index[: a.size], index[a.size :])
    smallest = np.full(labels.max() + 1, roots.size)
    np.minimum.at(smallest, labels, nodes)
    lookup = np.arange(roots.size)
    lookup[nodes] = smallest[labels]
    return lookup[roots]


def pair_l1(points: np.ndarray, i: np.ndarray, j: np.ndarray, low: int, high: int):
    """L1 distances of the pairs (i[k], j[k]) over columns low:high, in batches."""
    out = np.empty(i.size)
    batch = max(1, _PAIR_BATCH // max(high - low, 1))  # gathered rows that stay in cache
    for start in range(0, i.size, batch):
        part = slice(start, start + batch)
        # In place: a fresh temporary of this size costs more than the arithmetic.
        difference = points[i[part], low:high]
        difference -= points[j[part], low:high]
        out[part] = np.abs(difference, out=difference).sum(axis=1)
    return out


def pairs_within(points: np.ndarray, block: np.ndarray, eps: float):
    """Pairs of rows of ``block`` within eps (row < col); ties decided as group_rows does
    (``cdist`` for its small blocks, its row sums above that)."""
    distance = cdist(points[block], points[block], "cityblock")
    within = distance <= eps
    if block.size > _GENERAL_SMALL_BLOCK:
        a, b = np.nonzero(np.abs(distance - eps) <= TIE * eps)
        within[a, b] = reference_within(points, block[a], block[b], eps)
    i, j = np.nonzero(within & (block[None, :] > block[:, None]))
    return block[i], block[j]


def reference_within(points: np.ndarray, i: np.ndarray, j: np.ndarray, eps: float):
    """Whether each pair (i[k], j[k]) of rows (in their own column order) links by the
    sums group_rows takes: its exact distance, and the sum of the rows' L1 norms that
    bounds it."""
    l1 = np.abs(points[i]).sum(axis=1) + np.abs(points[j]).sum(axis=1)
    return (pair_l1(points, i, j, 0, points.shape[1]) <= eps) | (l1 <= eps)


def connected(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    graph = sp.coo_matrix((np.ones(left.size), (left, right)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)
