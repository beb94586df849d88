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
from onnx_lump.ode.data_grouping import group_data_rows
from onnx_lump.ode.grouping import _StoredRows, group_rows


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
            group_data_rows(_StoredRows(rows), eps), group_rows(rows, eps), err_msg=f"eps {eps}"
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
    monkeypatch.setattr(data_grouping, "_NEIGHBOURS", neighbours)
    monkeypatch.setattr(data_grouping, "_TILE_ENTRIES", 1 << 12)  # several tiles a stage
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
    labels = group_data_rows(_StoredRows(rows), 1.01)
    np.testing.assert_array_equal(labels, group_rows(rows, 1.01))
    assert labels.max() + 1 == 3
