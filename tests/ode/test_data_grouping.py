"""The grouping of long data rows gives exactly the groups of the general grouping, on
clustered rows (clusters of near-copies inside clusters, as wide layers hold) at
epsilons across the distance range, whichever stage (seed links, representatives,
balls, member pairs) decides a pair."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import onnx_lump.ode.data_grouping as data_grouping
import onnx_lump.ode.data_scan as data_scan
from onnx_lump.ode.data_grouping import group_data_rows
from onnx_lump.ode.grouping import StoredRows, group_rows


def _clustered(seed: int, n: int, dim: int, spread: float, copies: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // (copies * 4)), dim)) / dim
    prototypes = centres[rng.integers(0, len(centres), -(-n // copies))]
    prototypes = prototypes + spread * rng.standard_normal(prototypes.shape) / dim
    rows = np.repeat(prototypes, copies, axis=0)[:n]
    rows = rows + spread * 1e-3 * rng.standard_normal(rows.shape) / dim
    return rows[rng.permutation(n)]


def _check(rows: np.ndarray, quantiles) -> None:
    distances = np.abs(rows[:, None] - rows[None]).sum(-1)
    for eps in (0.0, *np.quantile(distances[np.triu_indices(len(rows), 1)], quantiles)):
        np.testing.assert_array_equal(
            group_data_rows(StoredRows(rows), eps), group_rows(rows, eps), err_msg=f"eps {eps}"
        )


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(65, 220),
    dim=st.integers(8, 160),
    spread=st.sampled_from([1e-3, 0.05, 0.3, 1.0]),
    copies=st.sampled_from([1, 3, 8]),
    quantiles=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3),
)
def test_groups_match_the_general_grouping(seed, n, dim, spread, copies, quantiles):
    _check(_clustered(seed, n, dim, spread, copies), quantiles)


@pytest.mark.parametrize("neighbours", [0, 1, 3])
@pytest.mark.parametrize("seed", range(4))
def test_groups_match_whatever_the_seed_links_miss(monkeypatch, neighbours, seed):
    # Fewer seed links leave more components for the later stages to join or part.
    monkeypatch.setattr(data_grouping, "NEIGHBOURS", neighbours)
    for module in (data_grouping, data_scan):  # several tiles a stage
        monkeypatch.setattr(module, "TILE_ENTRIES", 1 << 12)
    rows = _clustered(seed, 300, 64, [0.05, 0.3, 1.0, 3.0][seed], 8)
    _check(rows, [0.001, 0.01, 0.05, 0.2, 0.5, 0.9])


def test_chains_join_through_every_link():
    # Rows along a line, each within eps of the next only: one group, or a cut.
    rng = np.random.default_rng(3)
    steps = np.full(200, 1.0)
    steps[[50, 120]] = 1.5  # two gaps wider than eps
    line = np.cumsum(steps)[rng.permutation(200)]
    direction = rng.standard_normal(40)
    rows = line[:, None] * direction / np.abs(direction).sum()
    rows = rows + 1e-6 * rng.standard_normal(rows.shape)
    labels = group_data_rows(StoredRows(rows), 1.01)
    np.testing.assert_array_equal(labels, group_rows(rows, 1.01))
    assert labels.max() + 1 == 3


def _core_and_outskirts(seed: int, dim: int = 48) -> tuple[np.ndarray, float]:
    """Rows most of which lie within eps of one another (a core around a centre), with
    outskirts the pivot pass does not settle: chains leading out of the core one link at
    a time, clusters of near-copies further out, and rows just beyond eps of all."""
    rng = np.random.default_rng(seed)
    eps = 1.0

    def around(centre, count, radius):
        steps = rng.standard_normal((count, dim))
        return centre + radius * steps / np.abs(steps).sum(axis=1, keepdims=True)

    centre = rng.standard_normal(dim) / dim
    parts = [around(centre, 300, 0.45 * eps * rng.uniform(0.0, 1.0, (300, 1)))]
    for _ in range(3):  # chains: each row 0.8 eps beyond the last, away from the centre
        heading = rng.standard_normal(dim)
        heading /= np.abs(heading).sum()
        parts.append(centre + np.outer(0.45 * eps + 0.8 * eps * np.arange(1, 9), heading))
    for _ in range(4):  # near-copies, 3 eps out
        heading = rng.standard_normal(dim)
        parts.append(around(centre + 3.0 * eps * heading / np.abs(heading).sum(), 8, 1e-4))
    for _ in range(6):  # alone: just beyond eps of the core's edge
        heading = rng.standard_normal(dim)
        parts.append(centre + (0.45 + 1.02) * eps * heading[None] / np.abs(heading).sum())
    rows = np.concatenate(parts)
    return rows[rng.permutation(len(rows))], eps


@pytest.mark.parametrize("seed", range(4))
def test_groups_match_where_the_pivot_settles_most_rows(seed):
    rows, eps = _core_and_outskirts(seed)
    joined = data_grouping.find_pivot(rows, eps)[2]
    assert 0.5 < joined.mean() < 1.0  # most rows, not all: every later stage has work
    for scale in (0.5, 0.8, 1.0, 1.3, 3.0):
        labels = group_data_rows(StoredRows(rows), scale * eps)
        np.testing.assert_array_equal(labels, group_rows(rows, scale * eps), err_msg=f"x{scale}")
    assert 2 < group_data_rows(StoredRows(rows), eps).max() + 1 < len(rows) // 4


@pytest.mark.parametrize("case", [(0, 65, 35, 0.3), (469253410, 143, 143, 1.0), (3, 300, 64, 0.05)])
def test_ties_at_eps_are_decided_as_the_general_grouping_decides(case):
    # eps equal to a pairwise distance: the order of summation can put that distance on
    # either side of eps, and the groups follow group_rows's sums.
    rows = _clustered(*case, copies=1)
    distances = np.abs(rows[:, None] - rows[None]).sum(-1)[np.triu_indices(len(rows), 1)]
    for eps in np.quantile(distances, [0.0, 0.3, 1.0], method="nearest"):
        labels = group_data_rows(StoredRows(rows), eps)
        np.testing.assert_array_equal(labels, group_rows(rows, eps), err_msg=f"eps {eps}")


@pytest.mark.parametrize("seed", range(3))
def test_seed_links_bound_the_radius_of_their_components(seed):
    # The radius of a component the seeding forms is taken as the sum of its links'
    # lengths (a path of links joins each member to the smallest): never below the real.
    rows = _clustered(seed, 400, 40, [0.05, 0.3, 1.0][seed], 8)
    distances = np.abs(rows[:, None] - rows[None]).sum(-1)
    eps = np.quantile(distances, 0.02)
    reach = np.column_stack(
        [data_grouping.pivot_distances(rows, 0), data_grouping.pivot_distances(rows, 1)]
    )
    roots, (linked, lengths) = data_grouping.seed_groups(
        rows, eps, np.arange(len(rows)), np.arange(len(rows)), reach, []
    )
    bound = np.zeros(len(rows))
    np.add.at(bound, roots[linked], lengths)
    assert (roots != np.arange(len(rows))).sum() > len(rows) // 4  # seeding joined rows
    assert np.all(distances[np.arange(len(rows)), roots] <= bound[roots] * (1 + 1e-9))
