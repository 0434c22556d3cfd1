"""The CUDA backend against the numpy backend, on a GPU (skipped without one).

The same seed must give the same null: the same maximum ALE, and the same largest cluster
sizes except where a voxel's ALE lies within float rounding of the threshold (there the
GPU's ``exp`` may round the float32 ALE to the other side); such differences are counted
and explained, never silently allowed.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuale import _hostshim
from gpuale.backends import cupy_
from gpuale.backends.numpy_ import NumpyBackend, _PermutationEngine, ale_from_log_sum
from gpuale.grid import Grid
from gpuale.kernel import ale_kernel
from gpuale.problem import Problem
from gpuale.rng import relocation_draws

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cupy_.gpu_available(), reason="needs CuPy and a CUDA device"),
]

SEED = 20240607
FIRST = 11
COUNT = 24
THRESHOLD = 0.02
ALE_RTOL = 1e-5
MASS_RTOL = 1e-5
NEAR_THRESHOLD = 1e-6


@pytest.fixture(scope="module")
def problem() -> Problem:
    rs = np.random.default_rng(3)
    shape = (30, 34, 28)
    centre = (np.array(shape) - 1) / 2
    radius = np.linalg.norm((np.indices(shape).T - centre) / (np.array(shape) / 2), axis=-1).T
    grid = Grid(mask=radius < 1.0, affine=np.eye(4), voxel_sizes=(2.0, 2.0, 2.0))
    foci_per_experiment = rs.integers(2, 9, size=14)
    offsets = np.concatenate([[0], np.cumsum(foci_per_experiment)]).astype(np.int64)
    n_foci = int(offsets[-1])
    return Problem(
        grid=grid,
        focus_ijk=(rs.random((n_foci, 3)) * shape).astype(np.int32),
        experiment_offsets=offsets,
        kernel_index=rs.integers(0, 3, size=foci_per_experiment.size).astype(np.int32),
        kernels=(ale_kernel(1.5), ale_kernel(2.0), ale_kernel(2.5)),
        fwhm_mm=np.full(foci_per_experiment.size, 10.0),
        experiment_ids=tuple(f"e{i}" for i in range(foci_per_experiment.size)),
    )


def _near_threshold_voxels(problem: Problem, permutation: int, connectivity: int) -> int:
    """In-mask voxels of one permutation whose ALE is within NEAR_THRESHOLD of it."""
    engine = _PermutationEngine(problem, THRESHOLD, connectivity)
    grid = problem.grid
    choice = relocation_draws(SEED, permutation, 1, problem.n_foci, grid.n_voxels)[0]
    ijk = np.stack(np.unravel_index(grid.in_mask_flat[choice], grid.shape), axis=1)
    ale = ale_from_log_sum(engine.log_sum(ijk)).astype(np.float64)
    return int(np.sum(np.abs(ale - THRESHOLD) <= NEAR_THRESHOLD))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_gpu_null_matches_cpu(problem, connectivity):
    got = cupy_.CupyBackend().null_batch(problem, SEED, FIRST, COUNT, THRESHOLD, connectivity)
    want = NumpyBackend().null_batch(problem, SEED, FIRST, COUNT, THRESHOLD, connectivity)
    assert want[1].max() > 1, "the test threshold should leave clusters"
    np.testing.assert_allclose(got[0], want[0], rtol=ALE_RTOL)
    differ = np.flatnonzero((got[1] != want[1]) | ~np.isclose(got[2], want[2], rtol=MASS_RTOL))
    unexplained = [
        b for b in differ if _near_threshold_voxels(problem, FIRST + b, connectivity) == 0
    ]
    print(f"connectivity {connectivity}: {differ.size} of {COUNT} permutations differ")
    assert not unexplained, (
        f"permutations {[FIRST + b for b in unexplained]} differ with no voxel near the "
        f"threshold: GPU sizes {got[1][unexplained]}, CPU {want[1][unexplained]}"
    )


def test_every_output_is_written(problem):
    import cupy

    pipeline = cupy_._NullPipeline(problem, THRESHOLD, 18, xp=cupy, launch=cupy_._cupy_launcher())
    buf = pipeline.buffers(COUNT)
    # Poison the scratch too: the kernels must not rely on anything left from before.
    for array in (buf.focus_pos, buf.label, buf.size, buf.max_size):
        array.fill(-7 if array.dtype.kind == "i" else 7)
    for array in (buf.neg_log_sum, buf.max_neg_log_sum, buf.max_mass):
        array.fill(12345)
    max_ale = cupy.full(COUNT, cupy.nan)
    max_size = cupy.full(COUNT, -1, dtype=cupy.int64)
    max_mass = cupy.full(COUNT, cupy.nan)
    pipeline.run(buf, SEED, FIRST, COUNT, max_ale, max_size, max_mass)
    got = [a.get() for a in (max_ale, max_size, max_mass)]  # synchronize
    assert np.all(np.isfinite(got[0])) and np.all(got[0] > 0)
    assert np.all(got[1] >= 0)
    assert np.all(np.isfinite(got[2])) and np.all(got[2] >= 0)
    want = cupy_.CupyBackend().null_batch(problem, SEED, FIRST, COUNT, THRESHOLD, 18)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_batch_size_does_not_change_results(problem):
    whole = cupy_.CupyBackend().null_batch(problem, SEED, FIRST, COUNT, THRESHOLD, 26)
    pieces = cupy_.CupyBackend(max_batch=5).null_batch(problem, SEED, FIRST, COUNT, THRESHOLD, 26)
    for a, b in zip(whole, pieces, strict=True):
        np.testing.assert_array_equal(a, b)


def test_observed_ale_is_the_cpu_one(problem):
    got = cupy_.CupyBackend().observed_ale(problem)
    np.testing.assert_array_equal(got.ale, NumpyBackend().observed_ale(problem).ale)


@pytest.mark.skipif(not _hostshim.compiler_available(), reason="needs g++ for the host shim")
def test_gpu_log_sum_equals_host_shim_bit_for_bit(problem):
    # Fixed point makes the log-sum independent of the order of atomic additions.
    import cupy

    host = _hostshim.load(cupy_.kernel_dir() / cupy_.NULL_KERNEL_FILE)
    sums = []
    for xp, launch in ((cupy, cupy_._cupy_launcher()), (np, host.launch)):
        pipeline = cupy_._NullPipeline(problem, THRESHOLD, 6, xp=xp, launch=launch)
        buf = pipeline.buffers(4)
        pipeline.draw(buf, SEED, FIRST, 4)
        pipeline.log_sum(buf, 4)
        sums.append(buf.neg_log_sum if xp is np else buf.neg_log_sum.get())  # synchronize
    np.testing.assert_array_equal(sums[0], sums[1])
