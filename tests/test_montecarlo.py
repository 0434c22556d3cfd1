"""Monte Carlo nulls against an independent slow implementation, and their invariances."""

import numpy as np
import pytest
from conftest import dense_ma_maps, random_dataset
from scipy import ndimage

from gpuale.backends.numpy_ import NumpyBackend
from gpuale.inference import (
    MonteCarloNull,
    correct_fwe,
    label_clusters,
    monte_carlo_null,
    threshold_interval,
)
from gpuale.problem import Problem, compile_problem
from gpuale.rng import relocation_draws


def _slow_null(problem: Problem, seed, n_iters, threshold, connectivity):
    """Dense MA maps, a full-volume ALE and scipy labelling for each permutation."""
    grid = problem.grid
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    out = []
    for i in range(n_iters):
        choice = relocation_draws(seed, i, 1, problem.n_foci, grid.n_voxels)[0]
        ijk = np.stack(np.unravel_index(grid.in_mask_flat[choice], grid.shape), 1)
        moved = Problem(
            grid=grid, focus_ijk=ijk.astype(np.int32),
            experiment_offsets=problem.experiment_offsets, kernel_index=problem.kernel_index,
            kernels=problem.kernels, fwhm_mm=problem.fwhm_mm,
            experiment_ids=problem.experiment_ids,
        )
        ma = dense_ma_maps(moved).astype(np.float64)
        ale = (1.0 - np.prod(1.0 - ma, axis=0)).astype(np.float32)
        ale[~grid.mask] = 0
        labels, n = ndimage.label(ale > threshold, structure)
        sizes = np.bincount(labels.ravel())[1:]
        masses = ndimage.sum(ale.astype(np.float64) - threshold, labels, np.arange(1, n + 1))
        out.append((ale.max(), sizes.max() if n else 0, masses.max() if n else 0.0))
    return np.array(out)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_permutation_maxima_match_brute_force(small_grid, connectivity):
    rng = np.random.default_rng(21)
    dataset = random_dataset(small_grid, 12, rng, foci_range=(2, 7))
    problem = compile_problem(dataset, small_grid)
    threshold = 0.02
    got = NumpyBackend().null_batch(problem, 9, 0, 6, threshold, connectivity)
    want = _slow_null(problem, 9, 6, threshold, connectivity)
    np.testing.assert_allclose(got[0], want[:, 0], rtol=1e-6)
    np.testing.assert_array_equal(got[1], want[:, 1])
    np.testing.assert_allclose(got[2], want[:, 2], rtol=1e-6, atol=1e-9)
    assert got[1].max() > 0  # the threshold forms clusters, so the check has teeth


def test_null_is_the_same_for_any_batch_size_and_worker_split(small_grid):
    rng = np.random.default_rng(2)
    dataset = random_dataset(small_grid, 10, rng)
    problem = compile_problem(dataset, small_grid)
    kwargs = dict(seed=4, n_iters=24, threshold=0.015, connectivity=6)
    serial = monte_carlo_null(problem, n_workers=1, **kwargs)
    parallel = monte_carlo_null(problem, n_workers=2, **kwargs)
    pieces = [NumpyBackend().null_batch(problem, 4, first, 5, 0.015, 6) for first in (0, 5, 10,
                                                                                       15, 20)]
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
