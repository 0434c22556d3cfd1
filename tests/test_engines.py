"""The engine contract: every available engine against the brute-force references.

Engines: numpy (always), the CUDA engine with its kernels run on the CPU through the host
shim (where g++ exists), and the CUDA engine on a GPU (where CuPy sees one). Each must give
what the slow, obviously correct references in conftest.py give, under one tolerance rule:

* draws, cluster-forming and labelling are exact, so the largest cluster size and mass of
  a permutation are those of the reference, except where a voxel's ALE lies within
  NEAR_THRESHOLD of the threshold (there a GPU's ``exp`` may round the float32 ALE to the
  other side): such permutations are counted and explained, never silently allowed;
* the largest ALE and cluster mass agree to ALE_RTOL (float32 ALE, float64 sums);
* a chunk's result does not depend on how the permutations are chunked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import (
    ENGINES,
    brute_force_global_null,
    dense_ma_maps,
    make_small_grid,
    random_dataset,
)

from gpuale.engines import Engine, get_engine, gpu_available
from gpuale.engines.numba_ import NumbaEngine
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.nulls import run_null
from gpuale.nullspecs import ContrastNullSpec, GlobalNullSpec
from gpuale.problem import Problem, compile_problem
from gpuale.rng import random_splits, relocation_draws
from gpuale.schedulers import ProcessScheduler, SerialScheduler, ThreadScheduler
from gpuale.stats import LOG_SCALE, ale_from_log_sum

ALE_RTOL = 1e-5
NEAR_THRESHOLD = 1e-6
THRESHOLD = 0.02


@pytest.fixture(params=ENGINES, scope="module")
def engine(request) -> Engine:
    return request.param()


@pytest.fixture(scope="module")
def problem():
    grid = make_small_grid()
    dataset = random_dataset(grid, 12, np.random.default_rng(21), foci_range=(2, 7))
    return compile_problem(dataset, grid)


def _near_threshold(problem, seed, permutation) -> int:
    """In-mask voxels of one permutation whose ALE is within NEAR_THRESHOLD of it."""
    grid = problem.grid
    choice = relocation_draws(seed, permutation, 1, problem.n_foci, grid.n_voxels)[0]
    ijk = np.stack(np.unravel_index(grid.in_mask_flat[choice], grid.shape), axis=1)
    moved = dense_ma_maps(Problem(
        grid=grid, focus_ijk=ijk.astype(np.int32), experiment_offsets=problem.experiment_offsets,
        kernel_index=problem.kernel_index, kernels=problem.kernels, fwhm_mm=problem.fwhm_mm,
        experiment_ids=problem.experiment_ids,
    )).astype(np.float64)
    ale = (1.0 - np.prod(1.0 - moved, axis=0)).astype(np.float32)[grid.mask]
    return int(np.sum(np.abs(ale.astype(np.float64) - THRESHOLD) <= NEAR_THRESHOLD))


def assert_null_matches(got, want, problem, seed, first=0):
    """The one tolerance rule of the module docstring."""
    got_ale, got_size, got_mass = got
    np.testing.assert_allclose(got_ale, want[:, 0], rtol=ALE_RTOL)
    differ = np.flatnonzero(
        (got_size != want[:, 1]) | ~np.isclose(got_mass, want[:, 2], rtol=ALE_RTOL, atol=1e-9)
    )
    unexplained = [b for b in differ if _near_threshold(problem, seed, first + b) == 0]
    assert not unexplained, (
        f"permutations {[first + b for b in unexplained]} differ with no voxel near the "
        f"threshold: sizes {got_size[unexplained]}, reference {want[unexplained, 1]}"
    )


def test_engines_have_the_interface(engine):
    assert isinstance(engine, Engine)
    assert engine.describe()
    assert engine.device in ("cpu", "gpu:0")


def test_observed_ale_is_the_dense_product(engine, problem):
    observed = engine.observed_ale(problem)
    ma = dense_ma_maps(problem).astype(np.float64)
    want = (1.0 - np.prod(1.0 - ma, axis=0))[problem.grid.mask]
    np.testing.assert_allclose(observed.ale, want, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(observed.ale, ale_from_log_sum(observed.log_sum))


def test_experiment_log_maps_are_the_dense_ma_maps(engine, problem):
    support, log_maps = engine.experiment_log_maps(problem)
    ma = dense_ma_maps(problem).reshape(problem.n_experiments, -1)
    ma = ma[:, problem.grid.in_mask_flat]
    reached = np.flatnonzero(ma.max(axis=0) > 0)
    np.testing.assert_array_equal(support, reached)
    np.testing.assert_array_equal(log_maps, np.log1p(-ma[:, support]))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_global_null_matches_brute_force(engine, problem, connectivity):
    seed, count = 9, 6
    spec = GlobalNullSpec(problem, THRESHOLD, connectivity)
    got = engine.null_chunk(spec, seed, 0, count).chunks[0]
    want = brute_force_global_null(problem, seed, count, THRESHOLD, connectivity)
    assert want[:, 1].max() > 1, "the test threshold should leave clusters"
    assert_null_matches(got, want, problem, seed)


def test_global_null_does_not_depend_on_chunking(engine, problem):
    spec = GlobalNullSpec(problem, THRESHOLD, 26)
    seed = 2**40 + 12345  # both key words non-zero
    whole = engine.null_chunk(spec, seed, 3, 8).chunks[3]
    head = engine.null_chunk(spec, seed, 3, 2).chunks[3]
    tail = engine.null_chunk(spec, seed, 5, 6).chunks[5]
    for a, b, c in zip(whole, head, tail, strict=True):
        np.testing.assert_array_equal(a, np.concatenate([b, c]))


def _brute_force_contrast(problem, support, log_maps, n_a, seed, n_iters):
    """A permutation loop over whole group ALE maps (NumpyEngine's observed_ale)."""
    reference = NumpyEngine()
    n_total = problem.n_experiments

    def group_ale(members):
        log_sum = reference.observed_ale(problem.subset(np.flatnonzero(members))).log_sum
        return 1.0 - np.exp(log_sum[support])

    def exact_group_sums(members):
        # The contract: each log1p(-MA) counted in units of 2**-40 (so terms below that,
        # from the kernels' far corners, do not break ties), summed exactly.
        rows = np.rint(log_maps[members].astype(np.float64) * LOG_SCALE)
        return np.array([math.fsum(column) for column in rows.T])

    observed = np.arange(n_total) < n_a
    diff = group_ale(observed) - group_ale(~observed)
    sum_obs = exact_group_sums(observed)
    upper = np.zeros(support.size, int)
    lower = np.zeros(support.size, int)
    max_abs = []
    for split in random_splits(seed, 0, n_iters, n_total, n_a):
        # ALE_A - ALE_B falls as group A's log-sum rises.
        sums = exact_group_sums(split)
        upper += sums <= sum_obs
        lower += sums >= sum_obs
        max_abs.append(np.abs(group_ale(split) - group_ale(~split)).max())
    return diff, upper, lower, np.array(max_abs)


def test_contrast_null_matches_brute_force(engine, problem):
    subset = problem.subset(np.arange(9))
    support, log_maps = engine.experiment_log_maps(subset)
    n_a, n_iters, seed = 4, 40, 5
    null = run_null(ContrastNullSpec(log_maps, n_a), engine, seed=seed, n_iters=n_iters,
                    scheduler=SerialScheduler())
    diff, upper, lower, max_abs = _brute_force_contrast(subset, support, log_maps, n_a, seed,
                                                        n_iters)
    np.testing.assert_allclose(null.diff, diff, rtol=0, atol=1e-11)  # 2**-40 units
    np.testing.assert_array_equal(null.upper, upper)
    np.testing.assert_array_equal(null.lower, lower)
    np.testing.assert_allclose(null.max_abs, max_abs, rtol=1e-4)


def test_contrast_null_does_not_depend_on_chunking(engine, problem):
    _, log_maps = engine.experiment_log_maps(problem)
    spec = ContrastNullSpec(log_maps, 5)
    whole = engine.null_chunk(spec, 7, 10, 30)
    head = engine.null_chunk(spec, 7, 10, 11)
    tail = engine.null_chunk(spec, 7, 21, 19)
    joined = head.merge(tail)
    np.testing.assert_array_equal(whole.upper, joined.upper)
    np.testing.assert_array_equal(whole.lower, joined.lower)
    np.testing.assert_array_equal(whole.chunks[10][0],
                                  np.concatenate([head.chunks[10][0], tail.chunks[21][0]]))


@pytest.mark.parametrize("make_scheduler", [
    pytest.param(SerialScheduler, id="serial"),
    pytest.param(lambda: ThreadScheduler(3), id="threads"),
    pytest.param(lambda: ProcessScheduler(2), id="processes"),
])
def test_schedulers_give_the_same_null(problem, make_scheduler):
    # Processes take the engine by pickle; threads share one: neither may change a number.
    engine = NumpyEngine()
    spec = GlobalNullSpec(problem, THRESHOLD, 6)
    reference = engine.null_chunk(spec, 4, 0, 20).chunks[0]
    null = run_null(spec, engine, seed=4, n_iters=20, scheduler=make_scheduler())
    for got, want in zip((null.max_ale, null.max_cluster_size, null.max_cluster_mass),
                         reference, strict=True):
        np.testing.assert_array_equal(got, want)
    _, log_maps = engine.experiment_log_maps(problem)
    contrast = ContrastNullSpec(log_maps, 5)
    want = engine.null_chunk(contrast, 4, 0, 300)
    got = run_null(contrast, engine, seed=4, n_iters=300, scheduler=make_scheduler())
    np.testing.assert_array_equal(got.upper, want.upper)
    np.testing.assert_array_equal(got.max_abs, want.chunks[0][0])


def test_get_engine_decides_the_device():
    assert isinstance(get_engine("cpu"), NumbaEngine)
    with pytest.raises(ValueError, match="unknown device"):
        get_engine("tpu")
    if not gpu_available():
        with pytest.raises(ValueError, match="GPU"):
            get_engine("gpu:1")
    else:
        assert get_engine("gpu:0").device == "gpu:0"
