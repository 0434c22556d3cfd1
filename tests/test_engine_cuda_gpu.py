"""What only a GPU can show about the CUDA engine (skipped without one).

The engine's results against the brute-force references are checked in test_engines.py,
on the GPU too; here: every output is written whatever the scratch held, batches split by
memory give the same null, the device's fixed-point log-sums, supra-threshold lists,
labels and cluster sizes equal the host shim's bit for bit, and the engine computes on the
device it was made for.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuale import _hostshim
from gpuale.engines import cuda, gpu_available
from gpuale.grid import Grid
from gpuale.kernel import ale_kernel
from gpuale.nullspecs import ContrastNullSpec, GlobalNullSpec
from gpuale.problem import Problem

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device"),
]

SEED = 20240607
FIRST = 11
COUNT = 24
THRESHOLD = 0.02


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


def test_every_output_is_written(problem):
    import cupy

    pipeline = cuda._NullPipeline(problem, THRESHOLD, 18, xp=cupy, launch=cuda._cupy_launcher())
    buf = pipeline.buffers(COUNT)
    # Poison the scratch too: the kernels must not rely on anything left from before.
    for array in (buf.focus_pos, buf.overlap_count, buf.overlap_list, buf.supra_count,
                  buf.supra_list, buf.label, buf.size, buf.max_size):
        array.fill(-7 if array.dtype.kind == "i" else 7)
    for array in (buf.neg_log_sum, buf.mass, buf.max_neg_log_sum, buf.max_mass):
        array.fill(12345)
    max_ale = cupy.full(COUNT, cupy.nan)
    max_size = cupy.full(COUNT, -1, dtype=cupy.int64)
    max_mass = cupy.full(COUNT, cupy.nan)
    pipeline.run(buf, SEED, FIRST, COUNT, max_ale, max_size, max_mass)
    got = [a.get() for a in (max_ale, max_size, max_mass)]  # synchronize
    assert np.all(np.isfinite(got[0])) and np.all(got[0] > 0)
    assert np.all(got[1] >= 0)
    assert np.all(np.isfinite(got[2])) and np.all(got[2] >= 0)
    want = _maxima(cuda.CudaEngine(), problem, 18)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def _maxima(engine, problem, connectivity):
    spec = GlobalNullSpec(problem, THRESHOLD, connectivity)
    return engine.null_chunk(spec, SEED, FIRST, COUNT).chunks[FIRST]


def test_batch_size_does_not_change_results(problem):
    whole = _maxima(cuda.CudaEngine(), problem, 26)
    pieces = _maxima(cuda.CudaEngine(max_batch=5), problem, 26)
    for a, b in zip(whole, pieces, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not _hostshim.compiler_available(), reason="needs g++ for the host shim")
def test_gpu_log_sum_equals_host_shim_bit_for_bit(problem):
    # Fixed point makes the log-sum independent of the order of atomic additions.
    import cupy

    host = _hostshim.load(cuda.kernel_dir() / cuda.NULL_KERNEL_FILE)
    sums = []
    for xp, launch in ((cupy, cuda._cupy_launcher()), (np, host.launch)):
        pipeline = cuda._NullPipeline(problem, THRESHOLD, 6, xp=xp, launch=launch)
        buf = pipeline.buffers(4)
        pipeline.draw(buf, SEED, FIRST, 4)
        pipeline.log_sum(buf, 4)
        sums.append(buf.neg_log_sum if xp is np else buf.neg_log_sum.get())  # synchronize
    np.testing.assert_array_equal(sums[0], sums[1])


@pytest.mark.skipif(not _hostshim.compiler_available(), reason="needs g++ for the host shim")
@pytest.mark.parametrize("connectivity", [6, 26])
def test_gpu_labelling_equals_host_shim_bit_for_bit(problem, connectivity):
    # Equal log-sums and one integer cut: the same supra-threshold voxels; roots are the
    # smallest index of each component whatever the order of the unions.
    import cupy

    host = _hostshim.load(cuda.kernel_dir() / cuda.NULL_KERNEL_FILE)
    results = []
    for xp, launch in ((cupy, cuda._cupy_launcher()), (np, host.launch)):
        pipeline = cuda._NullPipeline(problem, THRESHOLD, connectivity, xp=xp, launch=launch)
        buf = pipeline.buffers(COUNT)
        out = (xp.empty(COUNT), xp.empty(COUNT, dtype=xp.int64), xp.empty(COUNT))
        pipeline.run(buf, SEED, FIRST, COUNT, *out)
        get = (lambda a: a) if xp is np else (lambda a: a.get())  # synchronize
        count, listed = get(buf.supra_count), get(buf.supra_list)
        label, size = get(buf.label), get(buf.size)
        per_perm = []
        for b in range(COUNT):
            voxels = np.sort(listed[b, : count[b]])
            per_perm.append((voxels, label[b, voxels], size[b, label[b, voxels]]))
        results.append((per_perm, get(out[1])))
    (gpu, gpu_sizes), (shim, shim_sizes) = results
    for a, b in zip(gpu, shim, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(gpu_sizes, shim_sizes)


def test_engine_computes_on_its_own_device(problem):
    # Every allocation of a chunk happens under cupy.cuda.Device(device_id): the current
    # device outside is left alone, and the memory pool of the chosen device is used.
    import cupy

    last = cupy.cuda.runtime.getDeviceCount() - 1
    engine = cuda.CudaEngine(device_id=last)
    with cupy.cuda.Device(0):
        before = cupy.get_default_memory_pool().used_bytes()
        _maxima(engine, problem, 6)
        rng = np.random.default_rng(0)
        spec = ContrastNullSpec(np.log1p(-rng.random((6, 50)) * 0.1).astype(np.float32), 3)
        engine.null_chunk(spec, SEED, 0, 16)
        assert cupy.cuda.Device().id == 0
    with cupy.cuda.Device(last):
        assert engine._pipeline is not None and engine._pipeline[1].table.device.id == last
        assert engine._contrast[1][0].log.device.id == last
    if last != 0:
        with cupy.cuda.Device(0):
            assert cupy.get_default_memory_pool().used_bytes() == before
