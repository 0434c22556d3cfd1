"""The CUDA kernels of the null, compiled for the CPU (kernels/host_shim.h), step by step.

The launch sequence is the CUDA engine's own (`_NullPipeline`), run with numpy arrays and
the host shim, on a small volume where kernel boxes are clipped by the volume's edges.
Each kernel's output is checked against its numpy twin; the whole engine is checked
against the brute-force references in test_engines.py.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from conftest import null_maxima
from scipy import ndimage

from gpuale import _hostshim
from gpuale.clusters import connectivity_structure
from gpuale.engines.cuda import (
    LOG_SUM_FRAC_BITS,
    SCATTER_MAX_THREADS,
    SCATTER_SHAPE,
    _NullPipeline,
    kernel_dir,
    supra_threshold_cut,
)
from gpuale.engines.numpy_ import NumpyEngine, _PermutationScratch
from gpuale.grid import Grid
from gpuale.kernel import ale_kernel
from gpuale.problem import Problem
from gpuale.rng import relocation_draws
from gpuale.stats import ale_from_log_sum

pytestmark = pytest.mark.skipif(
    not _hostshim.compiler_available(), reason="g++ is needed to run the kernels on the host"
)

SHAPE = (12, 14, 10)
THRESHOLD = 0.04
SEED = 2**40 + 12345  # both key words non-zero
FIRST = 3
COUNT = 8
LOG_SUM_ATOL = 1e-12
REL = 1e-6


@pytest.fixture(scope="module")
def module() -> _hostshim.HostModule:
    return _hostshim.load(kernel_dir() / "ale_null.cu")


@pytest.fixture(scope="module")
def problem() -> Problem:
    rs = np.random.default_rng(7)
    centre = (np.array(SHAPE) - 1) / 2
    radius = np.linalg.norm((np.indices(SHAPE).T - centre) / (np.array(SHAPE) / 2), axis=-1).T
    mask = (radius < 1.05) & (rs.random(SHAPE) > 0.1)
    grid = Grid(mask=mask, affine=np.eye(4), voxel_sizes=(2.0, 2.0, 2.0))
    foci_per_experiment = np.array([2, 5, 3, 4, 2, 3, 5, 2])
    offsets = np.concatenate([[0], np.cumsum(foci_per_experiment)]).astype(np.int64)
    n_foci = int(offsets[-1])
    return Problem(
        grid=grid,
        focus_ijk=(rs.random((n_foci, 3)) * SHAPE).astype(np.int32),
        experiment_offsets=offsets,
        kernel_index=np.array([0, 1, 2, 1, 0, 2, 1, 0], dtype=np.int32),
        kernels=(ale_kernel(0.8), ale_kernel(1.0), ale_kernel(1.2)),
        fwhm_mm=np.full(foci_per_experiment.size, 10.0),
        experiment_ids=tuple(f"e{i}" for i in range(foci_per_experiment.size)),
    )


def _pipeline(
    problem, module, connectivity=6, block_size=16, max_grid=(3, 5), threshold=THRESHOLD,
    scatter_shape=(5, 3, 17),
):
    # Small blocks and grids make every grid-stride loop take several turns; teams of 5
    # lanes over chunks of 17 columns make lanes run from one box into the next.
    return _NullPipeline(
        problem,
        threshold,
        connectivity,
        xp=np,
        launch=module.launch,
        block_size=block_size,
        max_grid=max_grid,
        scatter_shape=scatter_shape,
        list_threads=32,
    )


def _run(pipeline, seed=SEED, first=FIRST, count=COUNT):
    buf = pipeline.buffers(count)
    out = (
        np.full(count, np.nan),
        np.full(count, -1, dtype=np.int64),
        np.full(count, np.nan),
    )
    pipeline.run(buf, seed, first, count, *out)
    return buf, out


def _neg_log_sum(buf, count):
    return -buf.neg_log_sum[:count].astype(np.float64) * 2.0**-LOG_SUM_FRAC_BITS


@pytest.mark.parametrize("seed", [0, SEED, 2**64 - 1])
def test_draws_match_numpy_bit_for_bit(problem, module, seed):
    pipeline = _pipeline(problem, module)
    first = 2**32 - COUNT if seed == 2**64 - 1 else FIRST  # the last permutation indices
    buf = pipeline.buffers(COUNT)
    pipeline.draw(buf, seed, first, COUNT)
    grid = problem.grid
    choice = relocation_draws(seed, first, COUNT, problem.n_foci, grid.n_voxels)
    flat = grid.in_mask_flat[choice]
    np.testing.assert_array_equal(buf.focus_pos[..., 3], flat)
    ijk = np.stack(np.unravel_index(flat, grid.shape), axis=-1)
    np.testing.assert_array_equal(buf.focus_pos[..., :3], ijk)


# Lanes per team, teams per block, columns per team: one lane and column; lanes that
# cross boxes; the GPU's shape; more lanes than a chunk has columns; chunks of many boxes.
SCATTER_SHAPES = [(1, 1, 1), (5, 3, 17), (32, 8, 256), (32, 2, 7), (256, 2, 1000)]


@pytest.mark.parametrize("scatter_shape", SCATTER_SHAPES, ids=str)
def test_log_sum_matches_numpy(problem, module, scatter_shape):
    pipeline = _pipeline(problem, module, scatter_shape=scatter_shape)
    buf = pipeline.buffers(COUNT)
    pipeline.draw(buf, SEED, FIRST, COUNT)
    pipeline.log_sum(buf, COUNT)
    engine = _PermutationScratch(problem, THRESHOLD, 6)
    got = _neg_log_sum(buf, COUNT)
    for b in range(COUNT):
        want = engine.log_sum(buf.focus_pos[b, :, :3].astype(np.int64))
        np.testing.assert_allclose(got[b], want, rtol=0, atol=LOG_SUM_ATOL)


def test_log_sum_counts_an_experiment_once_where_its_boxes_overlap(problem, module):
    # Foci of one experiment on the same voxel (a tie), next to each other, at the
    # volume's corners, and a row that overlaps another experiment's.
    pipeline = _pipeline(problem, module)
    buf = pipeline.buffers(1)
    nx, ny, nz = SHAPE
    spots = [(5, 6, 5), (5, 6, 5), (5, 6, 6), (0, 0, 0), (nx - 1, ny - 1, nz - 1), (5, 7, 5)]
    ijk = np.array([spots[f % len(spots)] for f in range(problem.n_foci)], dtype=np.int32)
    buf.focus_pos[0, :, :3] = ijk
    buf.focus_pos[0, :, 3] = np.ravel_multi_index(tuple(ijk.T), SHAPE)
    pipeline.log_sum(buf, 1)
    want = _PermutationScratch(problem, THRESHOLD, 6).log_sum(ijk.astype(np.int64))
    np.testing.assert_allclose(_neg_log_sum(buf, 1)[0], want, rtol=0, atol=LOG_SUM_ATOL)


def test_overlap_lists_hold_the_overlapping_foci_of_the_experiment(problem, module):
    pipeline = _pipeline(problem, module)
    buf = pipeline.buffers(COUNT)
    pipeline.draw(buf, SEED, FIRST, COUNT)
    pipeline.log_sum(buf, COUNT)
    info = pipeline.focus_info
    for b in range(COUNT):
        pos = buf.focus_pos[b, :, :3].astype(np.int64)
        for f in range(problem.n_foci):
            first, stop, _, side, start, _ = info[f]
            others = [g for g in range(first, stop)
                      if g != f and np.all(np.abs(pos[g] - pos[f]) < side)]
            n = buf.overlap_count[b, f]
            entries = buf.overlap_list[b, start : start + n].astype(np.int64)
            delta = np.stack([(entries >> s & 0xFF) - 128 for s in (0, 8, 16)], axis=1)
            np.testing.assert_array_equal(delta, pos[others] - pos[f])
            np.testing.assert_array_equal(entries >> 24 & 1, np.array(others) < f)


def test_log_sum_of_small_boxes_matches_numpy(module):
    # Sides 3 and 5 (9 and 25 columns) with teams of 32 and 256 lanes: every lane runs
    # through several boxes per round, and through boxes clipped by the volume's faces.
    shape = (6, 7, 5)
    rs = np.random.default_rng(5)
    grid = Grid(mask=rs.random(shape) > 0.2, affine=np.eye(4), voxel_sizes=(2.0, 2.0, 2.0))
    offsets = np.array([0, 3, 4, 9, 11])
    problem = Problem(
        grid=grid,
        focus_ijk=(rs.random((11, 3)) * shape).astype(np.int32),
        experiment_offsets=offsets,
        kernel_index=np.array([0, 1, 0, 1], dtype=np.int32),
        kernels=(ale_kernel(0.3), ale_kernel(0.5)),
        fwhm_mm=np.full(4, 10.0),
        experiment_ids=("a", "b", "c", "d"),
    )
    engine = _PermutationScratch(problem, THRESHOLD, 6)
    sums = []
    for scatter_shape in [(32, 1, 64), (256, 2, 512), (3, 2, 7)]:
        pipeline = _pipeline(problem, module, scatter_shape=scatter_shape)
        buf = pipeline.buffers(6)
        pipeline.draw(buf, SEED, 0, 6)
        pipeline.log_sum(buf, 6)
        for b in range(6):
            want = engine.log_sum(buf.focus_pos[b, :, :3].astype(np.int64))
            np.testing.assert_allclose(_neg_log_sum(buf, 6)[b], want, rtol=0,
                                       atol=LOG_SUM_ATOL)
        sums.append(buf.neg_log_sum[:6].copy())
    for other in sums[1:]:
        np.testing.assert_array_equal(other, sums[0])  # fixed point: any shape, same bits


@pytest.mark.parametrize("unroll", [1, 2, 3, 7, 32])
def test_the_unrolled_column_walk_gives_the_same_bits(problem, module, unroll):
    """The scatter walks a column GPUALE_SCATTER_UNROLL voxels at a time (6 by default),
    loading them together: any width, wider than a column too, gives the same log-sums
    and maxima bit for bit, where columns are clipped by the volume and the mask."""
    source = (kernel_dir() / "ale_null.cu").read_text()
    other = _hostshim.load(kernel_dir() / "ale_null.cu",
                           source=f"#define GPUALE_SCATTER_UNROLL {unroll}\n{source}")
    results = []
    for launch_module in (module, other):
        buf, out = _run(_pipeline(problem, launch_module))
        results.append((buf.neg_log_sum[:COUNT].copy(), out))
    np.testing.assert_array_equal(results[1][0], results[0][0])
    for got, want in zip(results[1][1], results[0][1], strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_gpu_scatter_shape_fits_the_kernels_launch_bounds():
    source = (kernel_dir() / "ale_null.cu").read_text()
    threads = int(re.search(r"#define GPUALE_SCATTER_THREADS (\d+)", source).group(1))
    assert threads == SCATTER_MAX_THREADS
    assert SCATTER_SHAPE[0] * SCATTER_SHAPE[1] <= SCATTER_MAX_THREADS
    assert re.search(r"__launch_bounds__\(GPUALE_SCATTER_THREADS, GPUALE_SCATTER_MIN_BLOCKS\)"
                     r"\s*gpuale_log_sum_scatter\(", source)
    assert "gpuale_log_sum_scatter" in module_names(source)


def test_a_gpu_scatter_block_beyond_the_launch_bounds_is_refused(problem):
    # The host shim ignores launch bounds (the tests run wider blocks through it); a GPU
    # would refuse the launch, so the engine refuses the shape first.
    with pytest.raises(ValueError, match="launch bounds"):
        _NullPipeline(problem, THRESHOLD, 6, xp=object(), launch=None,
                      scatter_shape=(256, 2, 1000))


def module_names(source: str) -> tuple[str, ...]:
    """The kernels the host shim exports, as it finds them (launch bounds included)."""
    return tuple(_hostshim._KERNEL_NAME.findall(source))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_labels_are_the_connected_components(problem, module, connectivity):
    pipeline = _pipeline(problem, module, connectivity)
    buf, _ = _run(pipeline)
    engine = _PermutationScratch(problem, THRESHOLD, connectivity)
    grid = problem.grid
    for b in range(COUNT):
        ijk = buf.focus_pos[b, :, :3].astype(np.int64)
        supra = ale_from_log_sum(engine.log_sum(ijk)) > THRESHOLD
        # The compact list holds exactly the supra-threshold voxels (in any order).
        listed = np.sort(buf.supra_list[b, : buf.supra_count[b]])
        np.testing.assert_array_equal(listed, np.flatnonzero(supra))
        labels = buf.label[b]
        volume = np.zeros(grid.shape, dtype=bool)
        volume.reshape(-1)[grid.in_mask_flat[supra]] = True
        want, _ = ndimage.label(volume, connectivity_structure(connectivity))
        want = want.reshape(-1)[grid.in_mask_flat[supra]]
        got = labels[listed]
        # Every voxel points at a root, and a root is its component's smallest index.
        np.testing.assert_array_equal(labels[got], got)
        assert np.all(got <= listed)
        # The same partition as scipy's: labels correspond one to one.
        pairs = np.unique(np.stack([got, want]), axis=1)
        assert pairs.shape[1] == np.unique(got).size == np.unique(want).size
        # Sizes were accumulated into the roots.
        roots, sizes = np.unique(got, return_counts=True)
        np.testing.assert_array_equal(buf.size[b, roots], sizes)


def test_threshold_is_compared_in_float64_as_nimare_does(problem, module):
    # NiMARE compares its float32 ALE with a float64 bin centre, in float64: a threshold
    # just below a voxel's ALE, which rounds to that ALE in float32, keeps the voxel in.
    engine = _PermutationScratch(problem, THRESHOLD, 6)
    ijk = np.stack(
        np.unravel_index(
            problem.grid.in_mask_flat[
                relocation_draws(SEED, FIRST, 1, problem.n_foci, problem.grid.n_voxels)[0]
            ],
            SHAPE,
        ),
        axis=1,
    )
    ale = ale_from_log_sum(engine.log_sum(ijk))
    value = float(np.sort(ale)[-5])
    threshold = value - value * 1e-9
    assert np.float32(threshold) == np.float32(value)
    assert (ale.astype(np.float64) > threshold).sum() > (ale > np.float32(threshold)).sum()
    buf, got = _run(_pipeline(problem, module, threshold=threshold), count=1)
    listed = np.sort(buf.supra_list[0, : buf.supra_count[0]])
    np.testing.assert_array_equal(listed, np.flatnonzero(ale.astype(np.float64) > threshold))
    want = null_maxima(NumpyEngine(), problem, SEED, FIRST, 1, threshold, 6)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=REL, atol=0)


def test_results_do_not_depend_on_launch_shape_or_batch_split(problem, module):
    _, whole = _run(_pipeline(problem, module, 26, block_size=1, max_grid=(1, 1)))
    _, head = _run(_pipeline(problem, module, 26, block_size=64), first=FIRST, count=2)
    _, tail = _run(_pipeline(problem, module, 26), first=FIRST + 2, count=COUNT - 2)
    for a, b, c in zip(whole, head, tail, strict=True):
        np.testing.assert_array_equal(a, np.concatenate([b, c]))


def test_launch_rejects_untyped_or_mismatched_arguments(module):
    buf = np.zeros(4, dtype=np.int32)
    count = np.zeros(1, dtype=np.int32)
    with pytest.raises(TypeError, match="numpy scalar"):
        module.launch("gpuale_label_compress", (1,), (1,), (1, np.int32(4), count, buf, buf))
    with pytest.raises(ValueError, match="has 4 bytes, got int64"):
        module.launch("gpuale_label_compress", (1,), (1,),
                      (np.int64(1), np.int32(4), count, buf, buf))
    with pytest.raises(ValueError, match="takes 5 arguments"):
        module.launch("gpuale_label_compress", (1,), (1,), (np.int32(1),))


_FINISH_ARGS = (np.int32(0), np.zeros(1, np.uint64), np.zeros(1, np.uint32),
                np.zeros(1, np.uint64), np.zeros(1), np.zeros(1, np.int64), np.zeros(1))


@pytest.mark.parametrize(("grid", "block", "limit"), [
    ((2**31,), (1,), "gridDim.x = 2,147,483,648"),
    ((1, 65536), (1,), "gridDim.y = 65,536"),
    ((1, 1, 65536), (1,), "gridDim.z = 65,536"),
    ((1,), (1025,), "blockDim.x = 1,025"),
    ((1,), (1, 1, 65), "blockDim.z = 65"),
    ((1,), (32, 33), "threads per block = 1,056"),
])
def test_launch_keeps_cuda_limits(module, grid, block, limit):
    with pytest.raises(ValueError, match=f"{limit} exceeds CUDA's limit"):
        module.launch("gpuale_finish", grid, block, _FINISH_ARGS)


def test_launch_accepts_the_largest_shapes(module):
    for grid, block in [((1, 65535), (1,)), ((1, 1, 65535), (1,)), ((1,), (1024,)),
                        ((1,), (16, 1, 64))]:
        module.launch("gpuale_finish", grid, block, _FINISH_ARGS)


def test_grid_stride_loops_count_in_64_bits():
    # A 32-bit counter of a grid-stride loop wraps past 2**31 (issue 11: the draws wrote
    # out of bounds at 100,000 permutations x 15,000 foci), whatever the host checks.
    loop = re.compile(r"for\s*\(([^;]*);([^;]*);([^)]*)\)")
    for source in sorted(kernel_dir().glob("*.cu")):
        for init, _, step in loop.findall(source.read_text()):
            if re.search(r"blockIdx|gridDim|blockDim|threadIdx|stride|n_teams", init + step):
                assert init.strip().startswith("long long"), f"{source.name}: for ({init}; ...)"


def test_supra_threshold_cut_is_where_float32_ale_passes_the_threshold():
    unit = 2.0**-LOG_SUM_FRAC_BITS
    for threshold in [0.001, 0.0123456, THRESHOLD, 0.5, 0.999]:
        cut = supra_threshold_cut(threshold)
        below, at = (np.float32(1.0 - math.exp(-float(d) * unit)) for d in (cut - 1, cut))
        assert float(below) <= threshold < float(at)
    assert supra_threshold_cut(-1.0) == 0  # every voxel, even ALE 0
    assert supra_threshold_cut(1.0) == 2**64 - 1  # none: ALE never exceeds 1
