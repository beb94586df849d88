"""The epsilon grouping against brute force, on blocks small and large."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from onnx_lump.ode.grouping import Linkage, group_rows


def clustered(n_clusters: int, per_cluster: int, dim: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    points = np.repeat(centres, per_cluster, axis=0)
    points += spread * rng.standard_normal(points.shape)
    return points[rng.permutation(len(points))]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs_a = a[:, None] == a[None, :]
    pairs_b = b[:, None] == b[None, :]
    return bool(np.array_equal(pairs_a, pairs_b))


@pytest.mark.parametrize("n_clusters,per_cluster,dim", [(5, 4, 6), (40, 8, 30), (12, 30, 200)])
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.5, 2.0, 8.0, 40.0])
def test_single_linkage_is_connected_components_of_l1_relation(n_clusters, per_cluster, dim, eps):
    points = clustered(n_clusters, per_cluster, dim, spread=0.01, seed=dim)
    labels = group_rows(points, eps, Linkage.SINGLE)
    adjacency = cdist(points, points, "cityblock") <= eps
    _, expected = connected_components(adjacency, directed=False)
    assert same_partition(labels, expected)


@pytest.mark.parametrize("eps", [0.0, 0.3, 3.0, 30.0])
def test_complete_linkage_groups_are_cliques(eps):
    points = clustered(20, 10, 25, spread=0.05, seed=1)
    labels = group_rows(points, eps, Linkage.COMPLETE)
    distances = cdist(points, points, "cityblock")
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        assert distances[np.ix_(members, members)].max() <= eps
    single = group_rows(points, eps, Linkage.SINGLE)
    assert len(np.unique(labels)) >= len(np.unique(single))


def test_exact_duplicates_group_at_zero_and_labels_follow_first_rows():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((6, 5))
    points = np.vstack([base, base[[2, 0]]])
    labels = group_rows(points, 0.0)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 2, 0]


def test_wide_layer_groups_without_pairwise_loops():
    points = clustered(512, 8, 1024, spread=1e-3, seed=5)
    # within a cluster L1 distances are about 1.2, between clusters about 1100
    assert len(np.unique(group_rows(points, 0.5, Linkage.SINGLE))) == len(points)
    assert len(np.unique(group_rows(points, 3.0, Linkage.SINGLE))) == 512
    assert len(np.unique(group_rows(points, 3.0, Linkage.COMPLETE))) == 512
