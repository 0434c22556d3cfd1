"""SCALE's null (Langner et al. 2014; NiMARE 0.22.1 ``SCALE``) on every engine: draws
depend only on (seed, permutation, focus), so every engine, chunking and scheduler gives
the same exceedance counts and maxima, which equal a brute-force dense computation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gpuale import _hostshim
from gpuale.nulls import SerialScheduler, ThreadScheduler, run_null
from gpuale.nullspecs import ScaleNullSpec, ale_of_fixed, fixed_neg_log_kernel
from gpuale.problem import compile_problem
from gpuale.rng import pool_draws
from tests.conftest import ENGINES, dense_ma_maps, make_small_grid, random_dataset


def _spec(seed=3, n_pool=60):
    grid = make_small_grid()
    rng = np.random.default_rng(seed)
    problem = compile_problem(random_dataset(grid, 7, rng), grid)
    # The database's foci: some in the mask, some outside it, some off the grid.
    in_mask = np.argwhere(grid.mask)
    pool = in_mask[rng.integers(0, len(in_mask), n_pool)]
    pool[:4] = [[-3, 5, 5], [30, 10, 10], [5, -9, 2], [0, 0, 0]]
    return ScaleNullSpec(problem, pool.astype(np.int32)), None


def _dense_fixed(problem):
    """Brute force: each experiment's dense MA, its fixed-point -log1p(-MA), summed."""
    ma = dense_ma_maps(problem)
    neg = fixed_neg_log_kernel(ma)  # the term of the largest kernel value (0 where none)
    return neg.sum(axis=0).reshape(-1)[problem.grid.in_mask_flat]


def _brute_force(spec, seed, n_iters):
    problem, grid = spec.problem, spec.problem.grid
    observed = _dense_fixed(problem)
    counts = np.zeros(grid.n_voxels, dtype=np.int64)
    maxima = []
    for i in range(n_iters):
        ijk = spec.pool_ijk[pool_draws(seed, i, 1, problem.n_foci, spec.n_pool)[0]]
        neg = _dense_fixed(dataclasses.replace(problem, focus_ijk=ijk))
        counts += neg >= observed
        maxima.append(ale_of_fixed(neg.max()))
    return counts, np.array(maxima)


@pytest.mark.parametrize("make_engine", ENGINES)
def test_scale_counts_equal_brute_force_on_every_engine(make_engine):
    spec, observed = _spec()
    engine = make_engine()
    null = run_null(spec, engine, seed=11, n_iters=10, scheduler=SerialScheduler())
    counts, maxima = _brute_force(spec, 11, 10)
    np.testing.assert_array_equal(null.counts, counts)
    np.testing.assert_allclose(null.max_ale, maxima, rtol=1e-6, atol=0)  # ALE is float32
    p = null.p_values()
    assert p.min() >= 0.1 and p.max() <= 0.9


@pytest.mark.parametrize("make_engine", ENGINES)
def test_scale_counts_do_not_depend_on_chunks_or_threads(make_engine):
    spec, _ = _spec(seed=5)
    engine = make_engine()
    whole = run_null(spec, engine, seed=2, n_iters=13, scheduler=SerialScheduler())
    parts = [engine.null_chunk(spec, 2, first, count)
             for first, count in [(0, 5), (5, 1), (6, 7)]]
    merged = parts[0].merge(parts[2]).merge(parts[1]).finish(spec, 2, 13)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_array_equal(merged.max_ale, whole.max_ale)
    threaded = run_null(spec, engine, seed=2, n_iters=13, scheduler=ThreadScheduler(2))
    np.testing.assert_array_equal(threaded.counts, whole.counts)


def test_scale_spec_refuses_bad_pools():
    spec, _ = _spec()
    with pytest.raises(ValueError, match="pool_ijk"):
        ScaleNullSpec(spec.problem, np.zeros((0, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="pool_ijk"):
        ScaleNullSpec(spec.problem, np.zeros((4, 2), dtype=np.int32))


def test_fixed_point_matches_the_cuda_engines_tables():
    from gpuale.engines import cuda

    spec, _ = _spec()
    table, starts = cuda.neg_log_tables(spec.problem)
    ours = np.concatenate([fixed_neg_log_kernel(k).ravel() for k in spec.problem.kernels])
    np.testing.assert_array_equal(table.astype(np.int64), ours)


# --- The CUDA kernels of SCALE under the host shim -------------------------------------------


@pytest.mark.skipif(not _hostshim.compiler_available(), reason="g++ runs the kernels here")
@pytest.mark.parametrize("mode", ["sequential", "fibers"])
def test_scale_kernels_under_the_host_shim_equal_the_numpy_definition(mode):
    """gpuale_scale_draw_foci and gpuale_scale_exceed (with the global null's scatter)
    give the numpy engine's counts bit for bit, thread after thread and as randomly
    interleaved fibers that may read older values (the concurrency stress)."""
    from gpuale.engines.cuda import CudaEngine, kernel_dir
    from gpuale.engines.numpy_ import NumpyEngine

    spec, _ = _spec(seed=9)
    module = _hostshim.load(kernel_dir() / "ale_null.cu", mode=mode)
    want = NumpyEngine().null_chunk(spec, 6, 0, 7)
    for trial in range(2 if mode == "fibers" else 1):
        if mode == "fibers":
            module.configure_fibers(trial, switch_probability=0.5, stale_probability=0.5)
        engine = CudaEngine.on_host(module.launch, max_batch=3, block_size=32,
                                    max_grid=(5, 2), scatter_shape=(8, 2, 20),
                                    list_threads=64)
        got = engine.null_chunk(spec, 6, 0, 7)
        np.testing.assert_array_equal(got.counts, want.counts)
        np.testing.assert_array_equal(got.chunks[0][0], want.chunks[0][0])


def test_pool_draws_are_the_kernels_draws():
    """The numpy twin of gpuale_pool_draw: the draws the host shim's kernel writes."""
    from gpuale.engines.cuda import _NullPipeline, kernel_dir

    if not _hostshim.compiler_available():
        pytest.skip("g++ runs the kernels here")
    spec, _ = _spec(seed=2)
    module = _hostshim.load(kernel_dir() / "ale_null.cu")
    pipeline = _NullPipeline(spec.problem, 0.5, 6, xp=np, launch=module.launch,
                             block_size=32, max_grid=(3, 1))
    buf = pipeline.buffers(4)
    nx, ny, nz = pipeline.shape
    seed = 2**40 + 17
    module.launch("gpuale_scale_draw_foci", (3,), (32,),
                  (np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32), np.uint32(5),
                   np.int32(4), pipeline.n_foci, np.uint32(spec.n_pool), spec.pool_ijk,
                   nx, ny, nz, buf.focus_pos))
    draws = pool_draws(seed, 5, 4, spec.problem.n_foci, spec.n_pool)
    np.testing.assert_array_equal(buf.focus_pos[:, :, :3], spec.pool_ijk[draws])
