"""Shared fixtures: small synthetic grids and datasets with known structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from gpuale import _hostshim
from gpuale.dataset import Dataset, Experiment
from gpuale.engines import gpu_available
from gpuale.engines.numba_ import NumbaEngine
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.grid import Grid
from gpuale.nullspecs import GlobalNullSpec
from gpuale.problem import Problem
from gpuale.rng import relocation_draws

REPO = Path(__file__).resolve().parents[1]

#: A small Sleuth file (three studies, MNI) for command-line and scheduler tests.
SLEUTH = """// Reference=MNI
// Study A
// Subjects=20
-40\t20\t10
-42\t24\t12
38\t22\t8

// Study B
// Subjects=12
-38\t18\t12
-44\t22\t10

// Study C
// Subjects=30
-40\t22\t8
40\t20\t10
0\t-60\t30
"""


def shared_data_dir() -> Path | None:
    """The workplace's shared data folder, if this checkout has one beside or inside it."""
    for candidate in (REPO / "shared" / "data", REPO.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None

#: Two disjoint groups of experiments (A1-A3, B1-B2) for contrast and run-folder tests.
SLEUTH_GROUP_A = """// Reference=MNI
// A1
// Subjects=20
-40\t20\t10
-42\t24\t12
38\t22\t8

// A2
// Subjects=12
-38\t18\t12
-44\t22\t10

// A3
// Subjects=30
-40\t22\t8
40\t20\t10
"""
SLEUTH_GROUP_B = """// Reference=MNI
// B1
// Subjects=18
40\t-60\t30
42\t-62\t28

// B2
// Subjects=25
38\t-58\t32
-40\t22\t8
"""

#: Four experiments (A-D, MNI) that study tests split into two groups by id.
SLEUTH_FOUR = """// Reference=MNI
// A
// Subjects=20
-40\t20\t10
38\t22\t8

// B
// Subjects=12
-38\t18\t12

// C
// Subjects=30
-40\t22\t8
0\t-60\t30

// D
// Subjects=25
40\t-60\t30
"""
#: Its first two experiments (A, B).
SLEUTH_TWO = SLEUTH_FOUR[: SLEUTH_FOUR.index("\n\n// C") + 1]

#: The last analysis of :func:`two_group_study` by default: the two groups contrasted.
CONTRAST_LEFT_RIGHT = """
[analyses.left_vs_right]
type = "contrast"
a = "left"
b = "right"
"""


def two_group_study(iterations, last: str = CONTRAST_LEFT_RIGHT, *, each: str = "",
                    min_volume: bool = True) -> str:
    """A study file over ``foci.txt`` (:data:`SLEUTH_FOUR`): global analyses ``left``
    (A, B) and ``right`` (C, D), each ending with the lines ``each``, then ``last``.
    ``min_volume=False`` leaves out ``min_volume = 0``."""
    head = f"\n[study]\niterations = {iterations}\nworkers = 1\n"
    head += "min_volume = 0\n" if min_volume else ""
    head += 'device = "cpu"\n\n[inputs]\ndata = "foci.txt"\n'
    groups = "".join(f'\n[analyses.{name}]\ntype = "global"\ninput = "data"\n'
                     f'where = "id in [{ids}]"\n{each}'
                     for name, ids in (("left", "A, B"), ("right", "C, D")))
    return head + groups + last


def cuda_host_engine():
    """The CUDA engine with its kernels run on the CPU through the host shim. Small blocks,
    grids and batches make every grid-stride and batch loop take turns."""
    from gpuale.engines.cuda import CudaEngine, kernel_dir

    module = _hostshim.load(kernel_dir() / "ale_null.cu")
    return CudaEngine.on_host(module.launch, max_batch=3, block_size=32, max_grid=(7, 5))


def _cuda_gpu_engine():
    from gpuale.engines.cuda import CudaEngine

    return CudaEngine(device_id=0)


#: Every engine, as factories: the numpy definition, numba, CUDA through the host shim,
#: and CUDA on a GPU (skipped without one).
ENGINES = [
    pytest.param(NumpyEngine, id="numpy"),
    pytest.param(NumbaEngine, id="numba"),
    pytest.param(cuda_host_engine, id="cuda-host-shim", marks=pytest.mark.skipif(
        not _hostshim.compiler_available(), reason="g++ is needed to run kernels on the host")),
    pytest.param(_cuda_gpu_engine, id="cuda-gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not gpu_available(), reason="needs CuPy and a CUDA device")]),
]


@pytest.fixture
def small_grid() -> Grid:
    """A 24 x 26 x 22 grid of 2 mm voxels with an ellipsoidal mask."""
    return make_small_grid()


def make_small_grid() -> Grid:
    """A 24 x 26 x 22 grid of 2 mm voxels with an ellipsoidal mask."""
    shape = (24, 26, 22)
    ijk = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    radii = np.array(shape) / 2.2
    inside = (((ijk - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-24.0, -26.0, -22.0]
    return Grid(mask=inside, affine=affine, voxel_sizes=(np.float32(2),) * 3, source="synthetic")


def random_dataset(grid: Grid, n_experiments: int, rng: np.random.Generator,
                   foci_range=(1, 6), n_range=(5, 40)) -> Dataset:
    """Experiments with foci at random in-mask voxel centres (some near the edge)."""
    in_mask = np.argwhere(grid.mask)
    experiments = []
    for e in range(n_experiments):
        k = int(rng.integers(*foci_range))
        vox = in_mask[rng.integers(0, len(in_mask), size=k)]
        experiments.append(
            Experiment(
                id=f"exp{e:03d}", label=f"experiment {e}", n_subjects=int(rng.integers(*n_range)),
                foci=grid.voxel_to_mm(vox),
            )
        )
    return Dataset(tuple(experiments))


def null_maxima(engine, problem, seed, first, count, threshold, connectivity=6):
    """``(max_ale, max_cluster_size, max_cluster_mass)`` of permutations
    ``first .. first + count - 1`` of a global null, computed by ``engine``."""
    spec = GlobalNullSpec(problem, threshold, connectivity)
    return engine.null_chunk(spec, seed, first, count).chunks[first]


def dense_ma_maps(problem) -> np.ndarray:
    """Brute force: every experiment's MA over the whole volume by direct evaluation.

    For every voxel and focus, the kernel value at their offset (0 outside the kernel's
    cube), and the maximum over the experiment's foci. Independent of the box stamping.
    """
    grid = problem.grid
    vox = np.indices(grid.shape).reshape(3, -1).T
    maps = np.zeros((problem.n_experiments, vox.shape[0]), dtype=np.float32)
    for e in range(problem.n_experiments):
        kernel = problem.experiment_kernel(e)
        r = kernel.shape[0] // 2
        for f in range(problem.experiment_offsets[e], problem.experiment_offsets[e + 1]):
            off = vox - problem.focus_ijk[f]
            inside = np.all(np.abs(off) <= r, axis=1)
            idx = off[inside] + r
            values = np.zeros(vox.shape[0], dtype=np.float32)
            values[inside] = kernel[idx[:, 0], idx[:, 1], idx[:, 2]]
            maps[e] = np.maximum(maps[e], values)
    return maps.reshape((problem.n_experiments, *grid.shape))


def permuted_problem(problem, seed: int, i: int) -> Problem:
    """Permutation ``i``: every focus moved to its in-mask voxel drawn by ``gpuale.rng``."""
    grid = problem.grid
    choice = relocation_draws(seed, i, 1, problem.n_foci, grid.n_voxels)[0]
    ijk = np.stack(np.unravel_index(grid.in_mask_flat[choice], grid.shape), 1)
    return Problem(
        grid=grid, focus_ijk=ijk.astype(np.int32),
        experiment_offsets=problem.experiment_offsets, kernel_index=problem.kernel_index,
        kernels=problem.kernels, fwhm_mm=problem.fwhm_mm,
        experiment_ids=problem.experiment_ids,
    )


def brute_force_global_null(problem, seed, n_iters, threshold, connectivity):
    """Dense MA maps, a full-volume ALE and scipy labelling for each permutation."""
    grid = problem.grid
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    out = []
    for i in range(n_iters):
        moved = permuted_problem(problem, seed, i)
        ma = dense_ma_maps(moved).astype(np.float64)
        ale = (1.0 - np.prod(1.0 - ma, axis=0)).astype(np.float32)
        ale[~grid.mask] = 0
        labels, n = ndimage.label(ale > threshold, structure)
        sizes = np.bincount(labels.ravel())[1:]
        masses = ndimage.sum(ale.astype(np.float64) - threshold, labels, np.arange(1, n + 1))
        out.append((ale.max(), sizes.max() if n else 0, masses.max() if n else 0.0))
    return np.array(out)
