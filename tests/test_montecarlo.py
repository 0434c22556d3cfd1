"""Monte Carlo nulls run by the schedulers, and inference from them (the engines' nulls
against brute force are in test_engines.py)."""

import numpy as np
import pytest
from conftest import null_maxima, random_dataset

from gpuale.clusters import label_clusters
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.inference import correct_fwe, threshold_interval
from gpuale.nulls import monte_carlo_null
from gpuale.nullspecs import MonteCarloNull
from gpuale.problem import compile_problem


def test_null_is_the_same_for_any_batch_size_and_worker_split(small_grid):
    rng = np.random.default_rng(2)
    dataset = random_dataset(small_grid, 10, rng)
    problem = compile_problem(dataset, small_grid)
    kwargs = dict(seed=4, n_iters=24, threshold=0.015, connectivity=6)
    serial = monte_carlo_null(problem, n_workers=1, **kwargs)
    parallel = monte_carlo_null(problem, n_workers=2, **kwargs)
    pieces = [null_maxima(NumpyEngine(), problem, 4, first, 5, 0.015, 6)
              for first in (0, 5, 10, 15, 20)]
    for field, index in (("max_ale", 0), ("max_cluster_size", 1), ("max_cluster_mass", 2)):
        np.testing.assert_array_equal(getattr(serial, field), getattr(parallel, field))
        joined = np.concatenate([p[index] for p in pieces])[:24]
        np.testing.assert_array_equal(getattr(serial, field), joined)


def test_progress_reports_every_permutation(small_grid):
    problem = compile_problem(random_dataset(small_grid, 5, np.random.default_rng(1)),
                              small_grid)
    done = []
    monte_carlo_null(problem, seed=0, n_iters=19, threshold=0.02, n_workers=1,
                     progress=done.append)
    assert sum(done) == 19


def test_corrected_maps_follow_the_null(small_grid):
    ale = np.zeros(small_grid.n_voxels, dtype=np.float32)
    volume_index = small_grid.to_volume(np.arange(small_grid.n_voxels), fill=-1)
    big = volume_index[10:13, 10:13, 10:13].ravel()  # 27 voxels
    small = volume_index[3:5, 12, 11].ravel()  # 2 voxels... if in mask
    small = small[small >= 0]
    ale[big] = 0.05
    ale[small] = 0.03
    null = MonteCarloNull(
        max_ale=np.linspace(0.01, 0.06, 100), max_cluster_size=np.arange(100),
        max_cluster_mass=np.linspace(0, 1, 100), seed=0, threshold=0.02, connectivity=6,
    )
    result = correct_fwe(ale, small_grid, null)
    assert result.cluster_size[1] == 27 and result.labels[big[0]] == 1
    # p = share of null sizes >= 27 -> 73/100.
    assert result.p_size[1] == pytest.approx(0.73)
    assert result.p_cluster_size[big].max() == pytest.approx(0.73)
    # Mass = 27 * (0.05 - 0.02) = 0.81 -> null masses >= 0.81: 19 of 100.
    assert result.cluster_mass[1] == pytest.approx(0.81, rel=1e-6)
    assert result.p_mass[1] == pytest.approx(0.19)
    # Voxel level: null maxima >= 0.05 -> 21 of 100.
    assert result.p_voxel[big[0]] == pytest.approx(0.21, abs=0.011)
    # Background: clipped at 1 - 1/n.
    assert result.p_cluster_size[ale == 0].max() == pytest.approx(0.99)


def test_clusters_numbered_by_size(small_grid):
    ale = np.zeros(small_grid.n_voxels, dtype=np.float32)
    vol = small_grid.to_volume(np.arange(small_grid.n_voxels), fill=-1)
    ale[vol[8:10, 12, 11]] = 0.1   # 2 voxels
    ale[vol[14:19, 12, 11]] = 0.1  # 5 voxels
    labels, sizes, _ = label_clusters(ale, small_grid, 0.05, 6)
    assert sizes.tolist() == [0, 5, 2]
    assert labels[vol[15, 12, 11]] == 1 and labels[vol[8, 12, 11]] == 2


def test_threshold_interval_brackets_the_quantile():
    rng = np.random.default_rng(0)
    null = rng.exponential(size=5000)
    estimate, low, high = threshold_interval(null, 0.05)
    true = -np.log(0.05)
    assert low <= estimate <= high
    assert low < true < high
    assert high - low < 0.5
