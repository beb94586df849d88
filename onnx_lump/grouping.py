"""Grouping row vectors that lie within epsilon of each other in L1 distance.

Wide layers rule out a loop over neuron pairs and an n x n x d distance tensor. The
grouping first splits by sorting: for any sign vector u, ``|u.x - u.y| <= |x - y|_1``,
so along a projection onto u, points that are epsilon-linked are never separated by a
gap larger than epsilon. Cutting at such gaps, for several projections in turn, yields
blocks that contain whole connected components. Only inside the (usually small) blocks
that remain are L1 distances computed, from a frontier to the unassigned points.
"""

from __future__ import annotations

import enum

import numpy as np
from scipy.spatial.distance import cdist

__all__ = ["Linkage", "group_rows"]

_N_PROJECTIONS = 8
_MAX_DISTANCE_ENTRIES = 1 << 22  # bounds the memory of one cdist call


class Linkage(enum.Enum):
    SINGLE = "single"  # connected components of the epsilon relation, as ERODE does
    COMPLETE = "complete"  # every pair of a group within epsilon


def group_rows(rows: np.ndarray, eps: float, linkage: Linkage = Linkage.SINGLE) -> np.ndarray:
    """Label each row with a group; labels number groups by their first row."""
    n = rows.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    coarse = _split_by_projections(rows, eps)
    labels = np.full(n, -1, dtype=np.int64)
    next_label = 0
    order = np.argsort(coarse, kind="stable")
    for members in np.split(order, np.flatnonzero(np.diff(coarse[order])) + 1):
        if len(members) == 1:
            labels[members] = next_label
            next_label += 1
            continue
        split = _components if linkage is Linkage.SINGLE else _cliques
        local = split(rows[members], eps)
        labels[members] = local + next_label
        next_label += int(local.max()) + 1
    return _number_by_first_row(labels)


def _split_by_projections(rows: np.ndarray, eps: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    block = np.zeros(rows.shape[0], dtype=np.int64)
    signs = rng.choice([-1.0, 1.0], size=(rows.shape[1], _N_PROJECTIONS))
    signs[:, 0] = 1.0  # the plain sum is one of the projections
    projections = rows @ signs
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


def _components(points: np.ndarray, eps: float) -> np.ndarray:
    """Connected components of the graph with an edge wherever the L1 distance <= eps."""
    n = points.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    label = 0
    for seed in range(n):
        if labels[seed] >= 0:
            continue
        labels[seed] = label
        frontier = np.array([seed])
        while frontier.size:
            open_idx = np.flatnonzero(labels < 0)
            if open_idx.size == 0:
                break
            reached = np.zeros(open_idx.size, dtype=bool)
            step = max(1, _MAX_DISTANCE_ENTRIES // max(open_idx.size, 1))
            for start in range(0, frontier.size, step):
                chunk = frontier[start : start + step]
                dist = cdist(points[chunk], points[open_idx], "cityblock")
                reached |= (dist <= eps).any(axis=0)
            frontier = open_idx[reached]
            labels[frontier] = label
        label += 1
    return labels


def _cliques(points: np.ndarray, eps: float) -> np.ndarray:
    """Greedy complete-linkage groups: grow each group from a seed, nearest first,
    admitting a point only if it is within eps of every member."""
    n = points.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    label = 0
    for seed in range(n):
        if labels[seed] >= 0:
            continue
        labels[seed] = label
        open_idx = np.flatnonzero(labels < 0)
        to_seed = cdist(points[seed : seed + 1], points[open_idx], "cityblock")[0]
        near = to_seed <= eps
        candidates = open_idx[near][np.argsort(to_seed[near], kind="stable")]
        worst = np.zeros(candidates.size)  # largest distance to any member so far
        admitted = np.zeros(candidates.size, dtype=bool)
        for position, candidate in enumerate(candidates):
            if admitted[position] or worst[position] > eps:
                continue
            admitted[position] = True
            labels[candidate] = label
            worst = np.maximum(
                worst, cdist(points[candidate : candidate + 1], points[candidates], "cityblock")[0]
            )
        label += 1
    return labels


def _number_by_first_row(labels: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse]
