"""The CUDA kernels under the host shim's concurrency-stress mode (fibers).

The sequential shim (tests/test_kernels_host.py) runs one thread after another, so it
cannot see a race. Here every thread is a fiber; a seeded scheduler switches at random
before and after every atomic and relaxed access and at ``__syncthreads``, and a relaxed
load may return an older value of its word (kernels/host_shim.h). The labelling kernels
and the whole null pipeline must give the sequential results bit for bit (fixed-point
sums make them independent of order) under every schedule, and match the definitions
(scipy's connected components, the numpy engine).

The harness must also be able to fail: mutants of the kernels with the races a
reviewer would look for (a union without its retry loop; a plain store where atomicMin
belongs; a plain store where atomicMax belongs) pass the sequential shim and a shuffled
thread order, and are caught here. The ``slow`` sweeps run more seeds; set
GPUALE_STRESS_TRIALS to run longer ones (e.g. 1000 before a release).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from conftest import make_small_grid, null_maxima, random_dataset
from scipy import ndimage

from gpuale import _hostshim
from gpuale.clusters import connectivity_structure
from gpuale.engines.cuda import _NullPipeline, kernel_dir
from gpuale.engines.numpy_ import NumpyEngine, _PermutationScratch
from gpuale.grid import Grid
from gpuale.kernel import ale_kernel
from gpuale.problem import Problem, compile_problem
from gpuale.stats import ale_from_log_sum

pytestmark = pytest.mark.skipif(
    not _hostshim.compiler_available(), reason="g++ is needed to run the kernels on the host"
)

KERNELS = kernel_dir() / "ale_null.cu"
SOURCE = KERNELS.read_text()
THRESHOLD = 0.02
#: Seeds per schedule of the slow labelling sweep (the pipeline sweep runs a tenth).
SWEEP = int(os.environ.get("GPUALE_STRESS_TRIALS", "40"))
# Neighbour-pair densities near each connectivity's site-percolation threshold (0.31,
# 0.14, 0.10): clusters are then trees of many voxels, so a lost union splits one instead
# of being healed by another path.
DENSITY = {6: 0.3, 18: 0.15, 26: 0.1}
# Schedules: switch probability, stale-read probability.
SCHEDULES = {
    "switches": (0.5, 0.0),
    "stale-reads": (0.0, 0.5),
    "both": (0.5, 0.5),
    "always": (1.0, 1.0),
}
SHUFFLED = (0.0, 0.0)  # whole threads in a random order: no interleaving, no stale reads

UNION = re.compile(
    r"__device__ __forceinline__ void gpuale_union\(int\* label, int a, int b\) \{\n.*?\n\}\n",
    re.S,
)
MUTANTS = {
    # One attempt: if b stopped being a root between find_root and atomicMin, the union
    # hooks a under b's new parent or not at all.
    "union-without-retry": (UNION, """\
__device__ __forceinline__ void gpuale_union(int* label, int a, int b) {
    a = gpuale_find_root(label, a);
    b = gpuale_find_root(label, b);
    if (a < b) atomicMin(&label[b], a);
    else if (b < a) atomicMin(&label[a], b);
}
"""),
    # Check-then-act: the root found may have been hooked under another since.
    "plain-store-for-atomicMin": (UNION, """\
__device__ __forceinline__ void gpuale_union(int* label, int a, int b) {
    a = gpuale_find_root(label, a);
    b = gpuale_find_root(label, b);
    if (a < b) label[b] = a;
    else if (b < a) label[a] = b;
}
"""),
    # A lost update of the running maximum: another thread's larger value is overwritten.
    "plain-store-for-atomicMax": (
        re.compile(re.escape("atomicMax(&max_size[b], cluster_size);")),
        "max_size[b] = cluster_size;",
    ),
}


def _mutant_source(name: str) -> str:
    pattern, replacement = MUTANTS[name]
    text, n = pattern.subn(lambda _: replacement, SOURCE)
    assert n == 1, f"mutant {name}: its pattern must match the kernels exactly once"
    return text


@pytest.fixture(scope="module")
def sequential() -> _hostshim.HostModule:
    return _hostshim.load(KERNELS)


@pytest.fixture(scope="module")
def fibers() -> _hostshim.HostModule:
    return _hostshim.load(KERNELS, mode="fibers")


@pytest.fixture(scope="module")
def labelling_problem() -> Problem:
    """A small grid with holes in its mask; foci and kernels are not used by labelling."""
    shape = (9, 10, 8)
    mask = np.random.default_rng(0).random(shape) < 0.95
    return Problem(
        grid=Grid(mask=mask, affine=np.eye(4), voxel_sizes=(2.0, 2.0, 2.0)),
        focus_ijk=np.zeros((1, 3), dtype=np.int32),
        experiment_offsets=np.array([0, 1]),
        kernel_index=np.zeros(1, dtype=np.int32),
        kernels=(ale_kernel(1.0),),
        fwhm_mm=np.array([10.0]),
        experiment_ids=("e",),
    )


def _schedule(module, seed, schedule):
    if module.mode == "fibers":
        switch, stale = schedule
        module.configure_fibers(seed, switch_probability=switch, stale_probability=stale)


def _random_log_sums(problem, seed, connectivity, count=2):
    """Fixed-point -S per permutation: supra-threshold voxels at random, with random ALEs."""
    rng = np.random.default_rng(seed)
    supra = rng.random((count, problem.grid.n_voxels)) < DENSITY[connectivity]
    # ALE between 0.03 and 0.2: -S = -log(1 - ALE) in units of 2**-50.
    ale = rng.uniform(0.03, 0.2, supra.shape)
    neg_log_sum = np.rint(-np.log1p(-ale) * 2.0**50).astype(np.uint64)
    return np.where(supra, neg_log_sum, np.uint64(0)), supra


def _label(module, problem, neg_log_sum, connectivity):
    """The reduction passes (threshold, labelling, sizes, maxima) on given log-sums."""
    count = neg_log_sum.shape[0]
    # Small blocks and grids: several fibers per list, several blocks per permutation.
    pipeline = _NullPipeline(problem, THRESHOLD, connectivity, xp=np, launch=module.launch,
                             block_size=16, max_grid=(4, 2), list_threads=64)
    buf = pipeline.buffers(count)
    buf.neg_log_sum[:count] = neg_log_sum
    out = (np.full(count, np.nan), np.full(count, -1, dtype=np.int64), np.full(count, np.nan))
    pipeline.reduce(buf, count, *out)
    return buf, out


def _partition_errors(buf, problem, supra, connectivity) -> list[str]:
    """How the labels differ from scipy's components (empty when they do not)."""
    grid = problem.grid
    errors = []
    for b in range(supra.shape[0]):
        listed = np.sort(buf.supra_list[b, : buf.supra_count[b]])
        if not np.array_equal(listed, np.flatnonzero(supra[b])):
            errors.append(f"permutation {b}: the list is not the supra-threshold voxels")
            continue
        volume = np.zeros(grid.shape, dtype=bool)
        volume[grid.mask] = supra[b]
        want, _ = ndimage.label(volume, connectivity_structure(connectivity))
        want = want[grid.mask][listed]
        got = buf.label[b][listed]
        if not np.array_equal(buf.label[b][got], got):
            errors.append(f"permutation {b}: labels that are not roots after compression")
        pairs = np.unique(np.stack([got, want]), axis=1).shape[1]
        if not pairs == np.unique(got).size == np.unique(want).size:
            errors.append(f"permutation {b}: {np.unique(got).size} clusters, scipy finds "
                          f"{np.unique(want).size}")
    return errors


def _labelling_trials(module, problem, seeds, schedule, connectivities=(6, 18, 26)):
    """Seeds whose labelling differs from scipy's components or from its sizes."""
    sequential = _hostshim.load(KERNELS)
    failed = []
    for seed in seeds:
        connectivity = connectivities[seed % len(connectivities)]
        neg_log_sum, supra = _random_log_sums(problem, seed, connectivity)
        _, want = _label(sequential, problem, neg_log_sum, connectivity)
        _schedule(module, seed, schedule)
        buf, got = _label(module, problem, neg_log_sum, connectivity)
        errors = _partition_errors(buf, problem, supra, connectivity)
        if errors or not all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)):
            failed.append(seed)
    return failed


def test_the_stress_mode_switches_and_reads_older_values(fibers, labelling_problem):
    neg_log_sum, _ = _random_log_sums(labelling_problem, 0, 6)
    fibers.configure_fibers(0, switch_probability=0.5, stale_probability=0.5)
    _label(fibers, labelling_problem, neg_log_sum, 6)
    stats = fibers.fiber_stats()
    assert stats["launches"] == 6
    assert stats["switches"] > 0.3 * stats["switch_points"] > 0
    assert stats["stale_loads"] > 0.1 * stats["relaxed_loads"] > 0
    assert stats["relaxed_stores"] > 0 and stats["atomics"] > 0


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_labelling_is_race_free(fibers, labelling_problem, schedule):
    failed = _labelling_trials(fibers, labelling_problem, range(6), SCHEDULES[schedule])
    assert not failed, f"seeds {failed} label differently from scipy or the sequential shim"


@pytest.mark.parametrize("mutant", MUTANTS)
def test_mutants_are_caught(labelling_problem, mutant):
    seeds = range(8)
    source = _mutant_source(mutant)
    sequential = _hostshim.load(KERNELS, source=source)
    assert not _labelling_trials(sequential, labelling_problem, seeds, None), (
        "the sequential shim should pass the mutant (it cannot see races)"
    )
    fibers = _hostshim.load(KERNELS, source=source, mode="fibers")
    assert not _labelling_trials(fibers, labelling_problem, seeds, SHUFFLED), (
        "a shuffled thread order with no interleaving should pass the mutant"
    )
    caught = _labelling_trials(fibers, labelling_problem, seeds, SCHEDULES["both"])
    assert len(caught) >= len(seeds) // 2, f"caught in {len(caught)} of {len(seeds)} trials"


@pytest.fixture(scope="module", params=[0, 1], ids=["problem0", "problem1"])
def random_problem(request) -> Problem:
    grid = make_small_grid()
    rng = np.random.default_rng(100 + request.param)
    return compile_problem(random_dataset(grid, 8, rng, foci_range=(2, 6)), grid)


def _null(module, problem, seed, connectivity, count=3):
    pipeline = _NullPipeline(problem, THRESHOLD, connectivity, xp=np, launch=module.launch,
                             block_size=32, max_grid=(3, 2), scatter_shape=(8, 2, 20),
                             list_threads=64)
    buf = pipeline.buffers(count)
    out = (np.full(count, np.nan), np.full(count, -1, dtype=np.int64), np.full(count, np.nan))
    pipeline.run(buf, seed, 0, count, *out)
    return buf, out


def test_null_pipeline_is_race_free(sequential, fibers, random_problem):
    seed, connectivity = 3, 26
    buf_seq, want = _null(sequential, random_problem, seed, connectivity)
    fibers.configure_fibers(seed, switch_probability=0.5, stale_probability=0.5)
    buf, got = _null(fibers, random_problem, seed, connectivity)
    # Fixed point: the same bits whatever the order of the atomics.
    np.testing.assert_array_equal(buf.neg_log_sum, buf_seq.neg_log_sum)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    # And the numpy definition's null (float32 ALE; sums in float64).
    reference = null_maxima(NumpyEngine(), random_problem, seed, 0, 3, THRESHOLD,
                            connectivity)
    np.testing.assert_allclose(got[0], reference[0], rtol=1e-6)
    scratch = _PermutationScratch(random_problem, THRESHOLD, connectivity)
    for b in range(3):
        ijk = buf.focus_pos[b, :, :3].astype(np.int64)
        ale = ale_from_log_sum(scratch.log_sum(ijk)).astype(np.float64)
        if np.any(np.abs(ale - THRESHOLD) < 1e-6):
            continue  # a voxel this close may round to the other side (test_engines.py)
        assert got[1][b] == reference[1][b]
        np.testing.assert_allclose(got[2][b], reference[2][b], rtol=1e-6, atol=1e-9)


# Two tiny kernels that check the model itself: __syncthreads, and relaxed loads that
# may see one word's newer value and another's older one (which a GPU allows).
BARRIER_KERNELS = """
extern "C" __global__ void rotate(int* slots, int* out) {
    const int t = threadIdx.x;
    slots[t] = t + 1;
    __syncthreads();
    out[t] = slots[(t + 1) % blockDim.x];
}
extern "C" __global__ void rotate_unsynchronised(int* slots, int* out) {
    const int t = threadIdx.x;
    atomicExch(&slots[t], t + 1);  // a switch point, so threads interleave
    out[t] = slots[(t + 1) % blockDim.x];
}
extern "C" __global__ void message(unsigned int* data, unsigned int* flag, unsigned int* seen) {
    if (threadIdx.x == 0) {
        gpuale_st_relaxed(data, 42u);
        gpuale_st_relaxed(flag, 1u);
    } else {
        const unsigned int f = gpuale_ld_relaxed(flag);
        const unsigned int d = gpuale_ld_relaxed(data);
        seen[threadIdx.x] = f * 100u + d;
    }
}
"""


@pytest.fixture(scope="module")
def model_kernels() -> _hostshim.HostModule:
    return _hostshim.load(kernel_dir() / "model_check.cu", source=BARRIER_KERNELS,
                          mode="fibers")


def test_syncthreads_is_a_barrier(model_kernels):
    for seed in range(5):
        model_kernels.configure_fibers(seed, switch_probability=0.7)
        slots, out = np.zeros(16, dtype=np.int32), np.zeros(16, dtype=np.int32)
        model_kernels.launch("rotate", (1,), (16,), (slots, out))
        np.testing.assert_array_equal(out, np.roll(np.arange(1, 17), -1))
    assert model_kernels.fiber_stats()["barriers"] == 5 * 16
    wrong = 0
    for seed in range(5):
        model_kernels.configure_fibers(seed, switch_probability=0.7)
        slots, out = np.zeros(16, dtype=np.int32), np.zeros(16, dtype=np.int32)
        model_kernels.launch("rotate_unsynchronised", (1,), (16,), (slots, out))
        wrong += not np.array_equal(out, np.roll(np.arange(1, 17), -1))
    assert wrong > 0, "without the barrier, some thread should read a slot not yet written"


def test_relaxed_loads_are_weaker_than_interleaving(model_kernels):
    # Writer: data = 42 then flag = 1. Interleavings alone never show flag 1 with data 0;
    # relaxed loads (no acquire) may, on a GPU and in the model.
    def outcomes(stale):
        seen = set()
        for seed in range(40):
            model_kernels.configure_fibers(seed, switch_probability=0.7,
                                           stale_probability=stale)
            data, flag = np.zeros(1, dtype=np.uint32), np.zeros(1, dtype=np.uint32)
            out = np.zeros(8, dtype=np.uint32)
            model_kernels.launch("message", (1,), (8,), (data, flag, out))
            seen |= set(out[1:].tolist())
        return seen

    assert 100 not in outcomes(0.0)
    assert 100 in outcomes(0.9)


def test_fiber_mode_keeps_the_launch_limits(model_kernels):
    slots = np.zeros(2048, dtype=np.int32)
    with pytest.raises(ValueError, match="blockDim.x = 2,048 exceeds"):
        model_kernels.launch("rotate", (1,), (2048,), (slots, slots))


@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_labelling_sweep(fibers, labelling_problem, schedule):
    failed = _labelling_trials(fibers, labelling_problem, range(6, 6 + SWEEP),
                               SCHEDULES[schedule])
    assert not failed, f"seeds {failed} label differently from scipy or the sequential shim"


@pytest.mark.slow
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_null_pipeline_sweep(sequential, fibers, connectivity):
    grid = make_small_grid()
    for trial in range(max(SWEEP // 10, 2)):
        rng = np.random.default_rng(1000 + trial)
        problem = compile_problem(random_dataset(grid, 10, rng, foci_range=(1, 8)), grid)
        buf_seq, want = _null(sequential, problem, trial, connectivity)
        switch, stale = list(SCHEDULES.values())[trial % len(SCHEDULES)]
        fibers.configure_fibers(trial, switch_probability=switch, stale_probability=stale,
                                resident_blocks=trial % 3)
        buf, got = _null(fibers, problem, trial, connectivity)
        np.testing.assert_array_equal(buf.neg_log_sum, buf_seq.neg_log_sum)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
