"""Contributions of experiments to clusters against brute force: NiMARE's jackknife (refit
without each experiment) and JALE's contribution table (SUM, AVG, NORM, MAX).

The brute force recomputes every MA map densely (conftest.dense_ma_maps) and the ALE
without each experiment as ``1 - prod(1 - MA)`` of the others, as JALE's
``core/utils/contribution.py:calculate_contributions`` does; NiMARE's own Jackknife is
compared in test_reference_contributions.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dense_ma_maps, random_dataset

from gpuale.clusters import (
    CONTRIBUTION_FIELDS,
    cluster_contributions,
    experiment_contributions,
    experiment_ma_at,
    label_clusters,
)
from gpuale.dataset import Dataset, Experiment
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.problem import compile_problem


@pytest.fixture(scope="module")
def clustered():
    """A random data set on the small grid, with clusters of its ALE above a quantile."""
    from conftest import make_small_grid

    grid = make_small_grid()
    rng = np.random.default_rng(11)
    # Foci crowded into one half of the mask, so that experiments overlap in clusters.
    dataset = random_dataset(grid, 12, rng, foci_range=(2, 7))
    problem = compile_problem(dataset, grid)
    observed = NumpyEngine().observed_ale(problem)
    threshold = float(np.quantile(observed.ale, 0.93))
    labels, sizes, _ = label_clusters(observed.ale, grid, threshold, 6)
    assert sizes.size > 3  # at least three clusters to check
    return grid, dataset, problem, observed, labels


def _jale_table(ma: np.ndarray) -> np.ndarray:
    """JALE's calculate_contributions, restated: (SUM, AVG, NORM, MAX) per experiment."""
    ale = 1.0 - np.prod(1.0 - ma, axis=0)
    table = np.zeros((ma.shape[0], 4))
    for e in range(ma.shape[0]):
        table[e, 0] = ma[e].sum()
        table[e, 1] = 100 * table[e, 0] / ma.shape[1]
        proportion = (1.0 - np.prod(1.0 - np.delete(ma, e, axis=0), axis=0)) / ale
        table[e, 2] = 100 * (1 - proportion.mean())
        table[e, 3] = 100 * (1 - proportion.min())
    table[:, 2] = table[:, 2] / table[:, 2].sum() * 100
    return table


def test_matches_brute_force_refit_and_jale_table(clustered):
    grid, dataset, problem, observed, labels = clustered
    dense = dense_ma_maps(problem)[:, grid.mask].astype(np.float64)
    for label in range(1, int(labels.max()) + 1):
        members = np.flatnonzero(labels == label)
        ours = cluster_contributions(problem, observed.log_sum, members)
        ma = dense[:, members]
        ale = 1.0 - np.prod(1.0 - ma, axis=0)
        # NiMARE's jackknife: mean over voxels of 1 - (ALE refitted without e) / ALE.
        jackknife = np.array([
            np.mean(1.0 - (1.0 - np.prod(1.0 - np.delete(ma, e, axis=0), axis=0)) / ale)
            for e in range(len(dataset))
        ])
        np.testing.assert_allclose(ours["jackknife"], jackknife, rtol=1e-5, atol=1e-7)
        jale = _jale_table(ma)
        np.testing.assert_allclose(ours["ma_sum"], jale[:, 0], rtol=1e-12)
        np.testing.assert_allclose(100 * ours["ma_mean"], jale[:, 1], rtol=1e-12)
        np.testing.assert_allclose(ours["contribution_pct"], jale[:, 2], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours["max_drop_pct"], jale[:, 3], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours["ma_max"], ma.max(axis=1), rtol=0)
        assert ours["contribution_pct"].sum() == pytest.approx(100.0)


def test_rows_list_the_experiments_that_reach_each_cluster(clustered):
    grid, dataset, problem, observed, labels = clustered
    clusters = [{"cluster": k + 1, "label": label}
                for k, label in enumerate(range(int(labels.max()), 0, -1))]
    rows = experiment_contributions(problem, dataset, observed.log_sum, labels, clusters)
    assert all(tuple(row) == CONTRIBUTION_FIELDS for row in rows)
    ijk = problem.focus_ijk
    for cluster in clusters:
        members = np.flatnonzero(labels == cluster["label"])
        ma = experiment_ma_at(problem, grid.in_mask_flat[members])
        mine = [r for r in rows if r["cluster"] == cluster["cluster"]]
        # Every experiment with MA > 0 in the cluster, and no other, by decreasing share.
        assert {r["experiment"] for r in mine} == {
            dataset[e].id for e in range(len(dataset)) if ma[e].max() > 0}
        shares = [r["contribution_pct"] for r in mine]
        assert shares == sorted(shares, reverse=True)
        assert sum(shares) == pytest.approx(100.0)
        # Foci counted where their voxel lies in the cluster.
        volume = grid.to_volume(labels == cluster["label"])
        for row in mine:
            e = dataset.ids.index(row["experiment"])
            foci = ijk[problem.experiment_offsets[e]:problem.experiment_offsets[e + 1]]
            assert row["foci_in_cluster"] == int(volume[tuple(foci.T)].sum())


def test_single_contributor_has_everything(small_grid):
    """A cluster only one experiment reaches is all its own: jackknife 1, 100%."""
    a = Experiment(id="a", label="a", n_subjects=20, foci=small_grid.voxel_to_mm([[6, 13, 11]]))
    b = Experiment(id="b", label="b", n_subjects=20,
                   foci=small_grid.voxel_to_mm([[19, 13, 11]]))
    dataset = Dataset((a, b))
    problem = compile_problem(dataset, small_grid)
    observed = NumpyEngine().observed_ale(problem)
    threshold = 0.5 * float(observed.ale.max())
    labels, sizes, _ = label_clusters(observed.ale, small_grid, threshold, 6)
    assert sizes.size == 3  # one cluster around each focus
    for label in (1, 2):
        members = np.flatnonzero(labels == label)
        measures = cluster_contributions(problem, observed.log_sum, members)
        owner = int(np.argmax(measures["jackknife"]))
        assert measures["jackknife"][owner] == pytest.approx(1.0)
        assert measures["contribution_pct"][owner] == pytest.approx(100.0)
        assert measures["max_drop_pct"][owner] == pytest.approx(100.0)
        assert measures["jackknife"][1 - owner] == 0.0
