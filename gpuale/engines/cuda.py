"""The CUDA engine: permutation nulls on an NVIDIA GPU through CuPy.

Each batch of a global null runs entirely on the device (``kernels/ale_null.cu``): draws,
log-sum, maximum ALE, thresholding, connected components and the per-permutation maxima,
with three numbers per permutation coming back. With TFCE (``--tfce``) each permuted
map's log-sums come back too: TFCE of GPU permutations is computed on the host, by the
compiled union-find of :mod:`gpuale.tfce` on the CPU's threads (``_host_tfce``). Results match
:class:`gpuale.engines.numpy_.NumpyEngine` for the same seed: draws are the same Philox
function, and sums are carried in fixed point so that they do not depend on the order of
atomic additions. Contrast nulls are cuBLAS matrix products
(:mod:`gpuale.engines._contrast_blocks`, the numpy engine's code on CuPy arrays),
including the histograms and cluster statistics of cluster-level FWE, whose few
supra-threshold voxels per permutation are copied back and labelled on the host. (That
path is the numpy engine's on CuPy arrays and runs through the host shim in the tests,
but has not run on a GPU yet.)

Everything runs under ``cupy.cuda.Device(device_id)``. CuPy is imported only inside
functions, so this module imports on machines without it. The launch sequence
(:class:`_NullPipeline`) takes the array module and a launcher as arguments, so
:meth:`CudaEngine.on_host` runs the very same sequence on the CPU with numpy and
:mod:`gpuale._hostshim` (the tests do).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpuale.clusters import CONNECTIVITY_RANK
from gpuale.engines import _contrast_blocks, _cuda_subsets, _subsets
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.nullspecs import (
    CONTRAST_STATISTICS,
    ContrastNullPartial,
    ContrastNullSpec,
    GlobalNullPartial,
    GlobalNullSpec,
    ScaleNullPartial,
    ScaleNullSpec,
    ale_of_fixed,
    contrast_partial,
)
from gpuale.problem import Problem
from gpuale.stats import ObservedALE
from gpuale.tfce import TfceWork, largest_tfce, tfce_log_cut

__all__ = ["CudaEngine", "kernel_dir", "supra_threshold_cut"]

#: The kernels of the Monte Carlo null.
NULL_KERNEL_FILE = "ale_null.cu"
#: Fixed-point fraction bits of the log-sum (GPUALE_LOG_SUM_FRAC_BITS in the kernels).
LOG_SUM_FRAC_BITS = 50
#: Fixed-point fraction bits of cluster masses (GPUALE_MASS_FRAC_BITS in the kernels).
MASS_FRAC_BITS = 40
#: A log-sum term is clamped here: exp(-64) < 2**-53, so ALE is 1 exactly either way.
MAX_LOG_TERM = 64.0
#: Threads per block of the one-dimensional kernels.
BLOCK_SIZE = 256
#: Scatter launch shape: lanes per team (one warp), teams per block, and box-face columns
#: per team (8 rounds of its lanes: resident teams then cover ~2 adults permutations).
SCATTER_SHAPE = (32, 8, 256)
#: Most threads in a scatter block on a GPU: the kernel's __launch_bounds__
#: (GPUALE_SCATTER_THREADS in kernels/ale_null.cu), which a larger launch would fail.
SCATTER_MAX_THREADS = 256
#: Threads per permutation of the passes over the supra-threshold lists (they loop over
#: longer lists): a null permutation has a few hundred supra-threshold voxels.
LIST_THREADS = 1024
#: Largest grid in x and y (CUDA limits; the kernels' grid-stride loops cover the rest).
MAX_GRID = (2**31 - 1, 65535)
#: Largest number of permutations in one batch, whatever the free memory.
MAX_BATCH = 4096
#: Share of the free device memory a batch may use.
MEMORY_FRACTION = 0.5
#: Masses are sums of excesses < 1 in 63-bit fixed point with MASS_FRAC_BITS fraction bits.
MAX_MASK_VOXELS = 2 ** (63 - MASS_FRAC_BITS)
#: Overlap-list entries hold position differences in 8 bits (GPUALE_OVERLAP_BIAS).
MAX_KERNEL_SIDE = 128

Launcher = Callable[[str, tuple[int, ...], tuple[int, ...], tuple[Any, ...]], None]


def kernel_dir() -> Path:
    """Folder of the ``.cu`` sources: ``gpuale/kernels/`` when installed, else ``kernels/``.

    Raises
    ------
    FileNotFoundError
        If neither folder holds the kernels.
    """
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "kernels", package.parent / "kernels"):
        if (folder / NULL_KERNEL_FILE).is_file():
            return folder
    raise FileNotFoundError(
        f"CUDA kernel sources ({NULL_KERNEL_FILE}) are neither in {package / 'kernels'} "
        f"nor in {package.parent / 'kernels'}; reinstall gpuale"
    )


@functools.cache
def _null_module(device_id: int) -> Any:
    """The compiled null kernels on one device (compiled once per device and process)."""
    import cupy

    folder = kernel_dir()
    source = (folder / NULL_KERNEL_FILE).read_text()
    # CuPy's on-disk cache keys on the source and options, not on included headers: a
    # hash of the headers in the options recompiles when one of them changes.
    headers = hashlib.sha256()
    for header in sorted(folder.glob("*.cuh")):
        headers.update(header.read_bytes())
    options = ("-std=c++17", f"-I{folder}", f"-DGPUALE_HEADERS_SHA={headers.hexdigest()[:16]}")
    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=source, options=options)


def _cupy_launcher() -> Launcher:
    import cupy

    module = _null_module(cupy.cuda.Device().id)
    functions: dict[str, Any] = {}

    def launch(name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
        if name not in functions:
            functions[name] = module.get_function(name)
        functions[name](grid, block, args)

    return launch


def neg_log_tables(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """``-log1p(-kernel)`` of every kernel in fixed point, concatenated.

    The log is taken in float32 and held as float64, as the numpy engine does, then
    rounded to units of ``2**-LOG_SUM_FRAC_BITS``.

    Returns
    -------
    table : ndarray of uint64
        The kernels one after the other, each C-ordered.
    starts : ndarray of int64, shape (n_kernels,)
        Where each kernel starts in ``table``.
    """
    parts = []
    for kernel in problem.kernels:
        neg_log = -np.log1p(-kernel).astype(np.float64).ravel()
        parts.append(np.rint(np.minimum(neg_log, MAX_LOG_TERM) * 2.0**LOG_SUM_FRAC_BITS))
    sizes = np.array([p.size for p in parts], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return np.concatenate(parts).astype(np.uint64), starts


def supra_threshold_cut(threshold: float) -> int:
    """The smallest fixed-point ``-S`` whose ALE the kernels count as supra-threshold.

    A voxel is supra-threshold when its float32 ALE, ``1 - exp(S)`` rounded as
    ``gpuale_ale_from_neg_log_sum`` rounds it, exceeds ``threshold`` compared in float64
    (as NiMARE compares). ALE only grows with ``-S``, so that is ``-S >= cut`` for one
    integer, found here by bisection with the host's ``exp``; the kernels then agree on
    every voxel without an ``exp`` per voxel.

    Returns
    -------
    int
        In ``[0, 2**64 - 1]``; ``2**64 - 1`` when no ALE can exceed the threshold.
    """
    unit = 2.0**-LOG_SUM_FRAC_BITS

    def supra(neg_log_sum: int) -> bool:
        ale = np.float32(1.0 - math.exp(-float(neg_log_sum) * unit))
        return float(ale) > threshold

    low, high = 0, 2**63  # -S never reaches 2**63 (see the kernels' fixed-point notes)
    if supra(low):
        return 0
    if not supra(high):
        return 2**64 - 1
    while high - low > 1:  # supra(low) is false, supra(high) true
        middle = (low + high) // 2
        if supra(middle):
            high = middle
        else:
            low = middle
    return high


def overlap_slots(problem: Problem) -> tuple[np.ndarray, int]:
    """Where each focus's overlap list starts in a permutation's slots, and their number.

    Focus ``f`` of an experiment with ``n`` foci can overlap at most the ``n - 1`` others,
    so it owns ``n - 1`` slots, its experiment's slots following the previous ones.

    Returns
    -------
    starts : ndarray of int64, shape (n_foci,)
    n_slots : int
    """
    per_experiment = problem.foci_per_experiment.astype(np.int64)
    per_focus = np.repeat(per_experiment - 1, per_experiment)
    starts = np.concatenate([[0], np.cumsum(per_focus)[:-1]]).astype(np.int64)
    return starts, int(per_focus.sum())


def face_columns(problem: Problem) -> tuple[np.ndarray, int]:
    """Where each focus's box face (side x side columns) starts among a permutation's
    columns, and their number (the scatter's work list).

    Returns
    -------
    starts : ndarray of int64, shape (n_foci,)
    n_columns : int
    """
    sides = np.array([k.shape[0] for k in problem.kernels], dtype=np.int64)
    faces = sides[problem.kernel_index[problem.focus_experiment]] ** 2
    starts = np.concatenate([[0], np.cumsum(faces)[:-1]]).astype(np.int64)
    return starts, int(faces.sum())


def chunk_first_focus(problem: Problem, chunk_columns: int) -> np.ndarray:
    """The focus whose box face holds the first column of each scatter chunk.

    Returns
    -------
    ndarray of int32, shape (ceil(n_columns / chunk_columns),)
    """
    starts, n_columns = face_columns(problem)
    firsts = np.arange(0, n_columns, chunk_columns, dtype=np.int64)
    return (np.searchsorted(starts, firsts, side="right") - 1).astype(np.int32)


def focus_info(problem: Problem, kernel_starts: np.ndarray) -> np.ndarray:
    """Per focus: (first focus of its experiment, end of its experiment, kernel start, side,
    start of its overlap-list slots, first column of its box face).

    Returns
    -------
    ndarray of int32, shape (n_foci, 6)
    """
    exp_of_focus = problem.focus_experiment
    kernel_of_focus = problem.kernel_index[exp_of_focus]
    sides = np.array([k.shape[0] for k in problem.kernels], dtype=np.int64)
    offsets = problem.experiment_offsets
    info = np.stack(
        [
            offsets[exp_of_focus],
            offsets[exp_of_focus + 1],
            kernel_starts[kernel_of_focus],
            sides[kernel_of_focus],
            overlap_slots(problem)[0],
            face_columns(problem)[0],
        ],
        axis=1,
    )
    return np.ascontiguousarray(info, dtype=np.int32)


@dataclasses.dataclass(eq=False)
class _Buffers:
    """Device scratch for up to ``capacity`` permutations."""

    capacity: int
    focus_pos: Any  # int32 (capacity, n_foci, 4): i, j, k, flat
    overlap_count: Any  # int32 (capacity, n_foci)
    overlap_list: Any  # uint32 (capacity, n_slots), at least one slot
    neg_log_sum: Any  # uint64 (capacity, n_mask): -S
    supra_count: Any  # int32 (capacity,)
    supra_list: Any  # int32 (capacity, n_mask): compact indices of supra-threshold voxels
    label: Any  # int32 (capacity, n_mask), written at supra-threshold voxels only
    size: Any  # uint32 (capacity, n_mask), at roots only
    mass: Any  # uint64 (capacity, n_mask), at roots only
    max_neg_log_sum: Any  # uint64 (capacity,)
    max_size: Any  # uint32 (capacity,)
    max_mass: Any  # uint64 (capacity,)


class _NullPipeline:
    """The launch sequence of one null batch, for one problem, threshold and connectivity.

    Parameters
    ----------
    problem : Problem
    threshold : float
        Cluster-forming ALE threshold.
    connectivity : {6, 18, 26}
    xp : module
        ``cupy``, or ``numpy`` together with a host-shim launcher.
    launch : callable
        ``launch(kernel_name, grid, block, args)``.
    block_size : int
        Threads per block of the one-dimensional kernels.
    max_grid : tuple of int
        Largest grid in x and y; small values exercise the grid-stride loops in tests.
    scatter_shape : tuple of int
        Lanes per team, teams per block and box-face columns per team of the scatter.
    list_threads : int
        Threads per permutation of the passes over supra-threshold lists.
    """

    def __init__(
        self,
        problem: Problem,
        threshold: float,
        connectivity: int,
        *,
        xp: Any,
        launch: Launcher,
        block_size: int = BLOCK_SIZE,
        max_grid: tuple[int, int] = MAX_GRID,
        scatter_shape: tuple[int, int, int] = SCATTER_SHAPE,
        list_threads: int = LIST_THREADS,
    ) -> None:
        if connectivity not in CONNECTIVITY_RANK:
            raise ValueError(f"connectivity must be one of 6, 18, 26; got {connectivity!r}")
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        grid = problem.grid
        if grid.mask.size >= 2**31:
            raise ValueError(f"the GPU backend needs grids below 2**31 voxels, got {grid.shape}")
        if grid.n_voxels >= MAX_MASK_VOXELS:
            raise ValueError(
                f"the GPU backend needs masks below {MAX_MASK_VOXELS} voxels, got {grid.n_voxels}"
            )
        sides = [k.shape[0] for k in problem.kernels]
        if any(side % 2 == 0 or side > MAX_KERNEL_SIDE for side in sides):
            raise ValueError(
                f"the GPU backend needs odd kernel sides up to {MAX_KERNEL_SIDE}, got {sides}"
            )
        starts, n_slots = overlap_slots(problem)
        if n_slots >= 2**31:
            raise ValueError(
                f"experiments with {problem.foci_per_experiment.max()} foci need {n_slots} "
                "overlap slots per permutation; the GPU backend allows fewer than 2**31"
            )
        self.problem = problem
        self.xp = xp
        self.launch = launch
        self.block = (int(block_size),)
        self.max_grid = max_grid
        self.scatter_shape = tuple(int(s) for s in scatter_shape)
        if xp is not np and self.scatter_shape[0] * self.scatter_shape[1] > SCATTER_MAX_THREADS:
            raise ValueError(f"scatter blocks of {self.scatter_shape[:2]} threads exceed the "
                             f"kernel's launch bounds ({SCATTER_MAX_THREADS} threads)")
        self.list_threads = int(list_threads)
        self.perm_columns = np.int32(face_columns(problem)[1])
        if int(self.perm_columns) + self.scatter_shape[2] + 1024 >= 2**31:  # int32 offsets
            raise ValueError(f"{problem.n_foci} foci have too many kernel-box columns for "
                             "the GPU backend")
        self.chunk_focus = xp.asarray(chunk_first_focus(problem, self.scatter_shape[2]))
        self.threshold = np.float64(threshold)
        self.cut = np.uint64(supra_threshold_cut(float(threshold)))
        self.connectivity = np.int32(connectivity)
        self.shape = tuple(np.int32(s) for s in grid.shape)
        self.n_mask = np.int32(grid.n_voxels)
        self.n_foci = np.int32(problem.n_foci)
        self.n_slots = np.int64(n_slots)
        table, kernel_starts = neg_log_tables(problem)
        if table.size >= 2**31:  # kernel starts are int32 in focus_info
            raise ValueError(f"the kernels hold {table.size} values; the GPU backend allows "
                             "fewer than 2**31")
        vox_to_mask = np.full(grid.mask.size, -1, dtype=np.int32)
        vox_to_mask[grid.in_mask_flat] = np.arange(grid.n_voxels, dtype=np.int32)
        self.table = xp.asarray(table)
        self.focus_info = xp.asarray(focus_info(problem, kernel_starts))
        self.in_mask_flat = xp.asarray(grid.in_mask_flat.astype(np.int32))
        self.vox_to_mask = xp.asarray(vox_to_mask)

    def bytes_per_permutation(self) -> int:
        """Device memory one permutation of a batch needs."""
        per_voxel = 8 + 4 + 4 + 4 + 8  # neg_log_sum, supra_list, label, size, mass
        per_focus = 16 + 4  # focus_pos, overlap_count
        return (int(self.n_mask) * per_voxel + int(self.n_foci) * per_focus
                + int(self.n_slots) * 4 + 4 + 8 + 4 + 8)

    def buffers(self, capacity: int) -> _Buffers:
        """Scratch for batches of up to ``capacity`` permutations."""
        if capacity * int(self.n_foci) >= 2**31:
            raise ValueError(f"batch of {capacity} permutations x {self.n_foci} foci is too big")
        xp, n_mask = self.xp, int(self.n_mask)
        return _Buffers(
            capacity=capacity,
            focus_pos=xp.empty((capacity, int(self.n_foci), 4), dtype=xp.int32),
            overlap_count=xp.empty((capacity, int(self.n_foci)), dtype=xp.int32),
            overlap_list=xp.empty((capacity, max(int(self.n_slots), 1)), dtype=xp.uint32),
            neg_log_sum=xp.empty((capacity, n_mask), dtype=xp.uint64),
            supra_count=xp.empty(capacity, dtype=xp.int32),
            supra_list=xp.empty((capacity, n_mask), dtype=xp.int32),
            label=xp.empty((capacity, n_mask), dtype=xp.int32),
            size=xp.empty((capacity, n_mask), dtype=xp.uint32),
            mass=xp.empty((capacity, n_mask), dtype=xp.uint64),
            max_neg_log_sum=xp.empty(capacity, dtype=xp.uint64),
            max_size=xp.empty(capacity, dtype=xp.uint32),
            max_mass=xp.empty(capacity, dtype=xp.uint64),
        )

    def _grid(self, n_x: int, n_y: int = 1, block: int | None = None) -> tuple[int, int]:
        threads = self.block[0] if block is None else block
        blocks_x = -(-max(n_x, 1) // threads)
        return min(blocks_x, self.max_grid[0]), min(max(n_y, 1), self.max_grid[1])

    def draw(self, buf: _Buffers, seed: int, first: int, count: int) -> None:
        """Relocate the foci of permutations ``first .. first + count - 1``."""
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
        if first < 0 or first + count > 2**32:
            raise ValueError("permutation indices must lie in [0, 2**32)")
        self._check_count(buf, count)
        _, _, nz = self.shape
        self.launch(
            "gpuale_draw_foci",
            self._grid(count * int(self.n_foci))[:1],
            self.block,
            (
                np.uint32(seed & 0xFFFFFFFF),
                np.uint32(seed >> 32),
                np.uint32(first),
                np.int32(count),
                self.n_foci,
                self.n_mask,
                self.in_mask_flat,
                self.shape[1],
                nz,
                buf.focus_pos,
            ),
        )

    def log_sum(self, buf: _Buffers, count: int) -> None:
        """``-sum_e log1p(-MA_e)`` of every in-mask voxel into ``buf.neg_log_sum``."""
        self._check_count(buf, count)
        buf.neg_log_sum[:count].fill(0)
        nx, ny, nz = self.shape
        n_pairs = count * int(self.n_foci)
        self.launch(
            "gpuale_overlap_lists",
            self._grid(n_pairs)[:1],
            self.block,
            (
                np.int32(count),
                self.n_foci,
                buf.focus_pos,
                self.focus_info,
                self.n_slots,
                buf.overlap_count,
                buf.overlap_list,
            ),
        )
        lanes, teams, chunk_columns = self.scatter_shape
        n_chunks = count * int(self.chunk_focus.size)
        self.launch(
            "gpuale_log_sum_scatter",
            self._grid(n_chunks, block=teams)[:1],
            (lanes, teams),
            (
                np.int32(count),
                self.n_foci,
                np.int32(chunk_columns),
                self.perm_columns,
                self.chunk_focus,
                buf.focus_pos,
                self.focus_info,
                buf.overlap_count,
                buf.overlap_list,
                self.n_slots,
                self.table,
                nx,
                ny,
                nz,
                self.vox_to_mask,
                self.n_mask,
                buf.neg_log_sum,
            ),
        )

    def reduce(
        self, buf: _Buffers, count: int, max_ale: Any, max_size: Any, max_mass: Any
    ) -> None:
        """Max ALE and largest cluster size and mass of each permutation.

        Reads ``buf.neg_log_sum``; writes every element of the three outputs (float64,
        int64, float64 arrays of length ``count``).
        """
        self._check_count(buf, count)
        for accumulator in (buf.supra_count, buf.max_neg_log_sum, buf.max_size, buf.max_mass):
            accumulator[:count].fill(0)
        voxels = self._grid(int(self.n_mask), count)
        listed = self._grid(min(self.list_threads, int(self.n_mask)), count)
        n_perm = np.int32(count)
        nx, ny, nz = self.shape
        self.launch(
            "gpuale_threshold_compact",
            voxels,
            self.block,
            (
                n_perm,
                self.n_mask,
                self.cut,
                buf.neg_log_sum,
                buf.max_neg_log_sum,
                buf.supra_count,
                buf.supra_list,
                buf.label,
                buf.size,
                buf.mass,
            ),
        )
        self.launch(
            "gpuale_label_merge",
            listed,
            self.block,
            (
                n_perm,
                self.n_mask,
                self.cut,
                buf.supra_count,
                buf.supra_list,
                buf.neg_log_sum,
                self.in_mask_flat,
                self.vox_to_mask,
                nx,
                ny,
                nz,
                self.connectivity,
                buf.label,
            ),
        )
        self.launch(
            "gpuale_label_compress",
            listed,
            self.block,
            (n_perm, self.n_mask, buf.supra_count, buf.supra_list, buf.label),
        )
        self.launch(
            "gpuale_cluster_accumulate",
            listed,
            self.block,
            (
                n_perm,
                self.n_mask,
                self.threshold,
                buf.supra_count,
                buf.supra_list,
                buf.neg_log_sum,
                buf.label,
                buf.size,
                buf.mass,
            ),
        )
        self.launch(
            "gpuale_cluster_maxima",
            listed,
            self.block,
            (
                n_perm,
                self.n_mask,
                buf.supra_count,
                buf.supra_list,
                buf.label,
                buf.size,
                buf.mass,
                buf.max_size,
                buf.max_mass,
            ),
        )
        self.launch(
            "gpuale_finish",
            self._grid(count)[:1],
            self.block,
            (
                n_perm,
                buf.max_neg_log_sum,
                buf.max_size,
                buf.max_mass,
                max_ale,
                max_size,
                max_mass,
            ),
        )

    def run(
        self,
        buf: _Buffers,
        seed: int,
        first: int,
        count: int,
        max_ale: Any,
        max_size: Any,
        max_mass: Any,
    ) -> None:
        """One batch, start to end, with no synchronisation."""
        self.draw(buf, seed, first, count)
        self.log_sum(buf, count)
        self.reduce(buf, count, max_ale, max_size, max_mass)

    @staticmethod
    def _check_count(buf: _Buffers, count: int) -> None:
        if not 0 < count <= buf.capacity:
            raise ValueError(f"count must be in [1, {buf.capacity}], got {count}")


class CudaEngine:
    """The CUDA engine; the same nulls as :class:`NumpyEngine` for the same seed.

    Parameters
    ----------
    device_id : int
        CUDA device to run on.
    max_batch : int
        Most permutations per kernel batch; a batch is also limited by free device memory
        and halved whenever the device runs out of memory.
    """

    name = "cuda"
    #: Permutations per chunk of a global and of a contrast null: large enough to keep the
    #: device busy, small enough for a live progress bar.
    GLOBAL_CHUNK = 1024
    CONTRAST_CHUNK = 512

    def __init__(self, device_id: int = 0, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.device_id = int(device_id)
        self.device = f"gpu:{self.device_id}"
        self.max_batch = int(max_batch)
        self._host_launch: Launcher | None = None
        self._launch_shape = {"block_size": BLOCK_SIZE, "max_grid": MAX_GRID}
        self._pipeline: tuple[GlobalNullSpec, _NullPipeline] | None = None
        self._contrast: tuple[ContrastNullSpec, list] | None = None
        self._tfce: tuple | None = None
        self._scale: tuple | None = None  # (spec, pipeline, observed -S, pool) of SCALE
        self._subsets: tuple | None = None  # (spec, gained, rank tables) of a CBP spec
        self._lock = threading.Lock()

    @classmethod
    def on_host(cls, launch: Launcher, *, max_batch: int = MAX_BATCH,
                block_size: int = BLOCK_SIZE, max_grid: tuple[int, int] = MAX_GRID,
                scatter_shape: tuple[int, int, int] = SCATTER_SHAPE,
                list_threads: int = LIST_THREADS) -> CudaEngine:
        """The engine with its kernels run on the CPU (numpy arrays and the host shim's
        ``launch``), to test the GPU code path without a GPU."""
        engine = cls(device_id=0, max_batch=max_batch)
        engine.device = "cpu"
        engine._host_launch = launch
        engine._launch_shape = {"block_size": block_size, "max_grid": max_grid,
                                "scatter_shape": scatter_shape, "list_threads": list_threads}
        return engine

    @property
    def on_gpu(self) -> bool:
        return self._host_launch is None

    def _xp(self):
        if not self.on_gpu:
            return np
        import cupy

        return cupy

    def _on_device(self):
        if not self.on_gpu:
            return contextlib.nullcontext()
        import cupy

        return cupy.cuda.Device(self.device_id)

    def describe(self) -> str:
        if not self.on_gpu:
            return "the CUDA kernels run on the CPU through the host shim"
        try:
            import cupy

            name = cupy.cuda.runtime.getDeviceProperties(self.device_id)["name"].decode()
            return f"{self.device} ({name})"
        except Exception:  # the name is decoration; the run itself reports real errors
            return self.device

    def chunk_size(self, spec) -> int:
        if getattr(spec, "kind", None) == _subsets.COACTIVATION:
            return spec.chunk_columns
        if getattr(spec, "kind", None) == "scale":
            return self.GLOBAL_CHUNK
        return self.GLOBAL_CHUNK if isinstance(spec, GlobalNullSpec) else self.CONTRAST_CHUNK

    def concurrency(self, spec) -> str:
        return "serial"  # one device, one queue

    def observed_ale(self, problem: Problem) -> ObservedALE:
        """ALE map of the observed foci (on the CPU: it is computed once and is cheap)."""
        return NumpyEngine().observed_ale(problem)

    def experiment_log_maps(self, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
        """Each experiment's ``log1p(-MA)`` (on the CPU, as :meth:`observed_ale`)."""
        return NumpyEngine().experiment_log_maps(problem)

    def observed_difference(self, spec: ContrastNullSpec) -> np.ndarray:
        """Observed ALE_A - ALE_B (on the CPU: exact integer sums, the same bits)."""
        return NumpyEngine().observed_difference(spec)

    def null_chunk(self, spec, seed: int, first: int, count: int):
        """Permutations ``first .. first + count - 1`` of a global or contrast null.

        Raises
        ------
        ValueError
            For a bad seed or permutation range.
        cupy.cuda.memory.OutOfMemoryError
            If not even one permutation fits on the device.
        """
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        with self._lock, self._on_device():
            if getattr(spec, "kind", None) == _subsets.COACTIVATION:  # columns of a CBP
                maps = self._subset_maps(spec, first, count)
                return _subsets.coactivation_partial(self._xp(), spec, first, count, maps)
            if getattr(spec, "kind", None) == "balanced":
                # Subsample products on the device; relocated foci's maps on the host,
                # compiled (the numpy engine's maps bit for bit, about 10x faster).
                from gpuale.engines._balanced_chunk import balanced_null_chunk
                from gpuale.engines.numba_ import NumbaEngine, numba_available

                host = NumbaEngine() if numba_available() else NumpyEngine()
                return balanced_null_chunk(self._xp(), spec, seed, first, count,
                                           host.experiment_log_maps)
            if getattr(spec, "kind", None) == "scale":
                return self._scale_chunk(spec, seed, first, count)
            if isinstance(spec, GlobalNullSpec):
                return GlobalNullPartial.of(first, *self._global_chunk(spec, seed, first,
                                                                       count))
            return self._contrast_chunk(spec, seed, first, count)

    def subset_ale_maps(self, spec: _subsets.CoactivationSpec, first: int,
                        count: int) -> np.ndarray:
        """ALE maps of nested experiment subsets at columns ``first .. first + count - 1``
        (:mod:`gpuale.engines._subsets`): exact matrix products on the device."""
        with self._lock, self._on_device():
            return _to_host(self._subset_maps(spec, first, count)(0, count))

    def _subset_maps(self, spec: _subsets.CoactivationSpec, first: int, count: int):
        """``maps(lo, hi)`` of the chunk's columns, on the device: the pool's log terms
        read there by ``gpuale_pool_ranks`` (:mod:`gpuale.engines._cuda_subsets`: the
        numpy engine's terms bit for bit), then exact matrix products."""
        _subsets.check_chunk(spec, first, count)
        xp = self._xp()
        if self._subsets is None or self._subsets[0] is not spec:
            self._subsets = None  # free the previous spec's tables first
            self._subsets = (spec, [xp.asarray(g) for g in _subsets.increments(spec)],
                             _cuda_subsets.RankTables.of(xp, spec.problem))
        _, gained, tables = self._subsets
        launch = _cupy_launcher() if self.on_gpu else self._host_launch
        terms = _cuda_subsets.pool_log_terms(
            xp, launch, tables, spec.problem, first, count,
            block_size=self._launch_shape["block_size"],
            max_grid=self._launch_shape["max_grid"])
        return lambda lo, hi: _subsets.matmul_subset_maps(
            xp, spec, _subsets.units(terms[:, lo:hi], xp), gained)

    def _contrast_chunk(self, spec: ContrastNullSpec, seed: int, first: int,
                        count: int) -> ContrastNullPartial:
        xp = self._xp()
        # Specs of the same data (the passes of a cluster null) share the blocks.
        if self._contrast is None or not self._contrast[0].same_data(spec):
            self._contrast = None  # free the previous blocks first
            self._contrast = (spec, _contrast_blocks.voxel_blocks(xp, spec.log_maps, spec.n_a))
        if tuple(spec.statistics) != CONTRAST_STATISTICS:
            # Histograms on the device (integer counts); the few supra-threshold voxels
            # are labelled on the host, as the numpy engine labels them.
            return contrast_partial(first, _contrast_blocks.statistics_chunk(
                xp, self._contrast[1], spec, seed, first, count))
        upper, lower, max_abs = _contrast_blocks.contrast_chunk(
            xp, self._contrast[1], spec.n_voxels, seed, first, count, spec.n_total, spec.n_a
        )
        # synchronize: a chunk's counts and maxima come back once
        return ContrastNullPartial(_to_host(upper), _to_host(lower),
                                   {int(first): (_to_host(max_abs).astype(np.float64),)})

    def _global_chunk(self, spec: GlobalNullSpec, seed: int, first: int, count: int):
        xp = self._xp()
        if self._pipeline is None or self._pipeline[0] is not spec:
            self._pipeline = None
            launch = _cupy_launcher() if self.on_gpu else self._host_launch
            self._pipeline = (spec, _NullPipeline(spec.problem, spec.threshold,
                                                  spec.connectivity, xp=xp, launch=launch,
                                                  **self._launch_shape))
        pipeline = self._pipeline[1]
        out_ale = xp.empty(count, dtype=xp.float64)
        out_size = xp.empty(count, dtype=xp.int64)
        out_mass = xp.empty(count, dtype=xp.float64)
        out_tfce = np.empty(count, dtype=np.float64) if spec.tfce else None
        batch = min(self._batch_size(pipeline), count)
        out_of_memory = _out_of_memory_errors() if self.on_gpu else ()
        buf = None
        done = 0
        while done < count:
            n = min(batch, count - done)
            try:
                if buf is None or buf.capacity < n:
                    buf = None
                    buf = pipeline.buffers(batch)
                part = slice(done, done + n)
                pipeline.run(
                    buf, seed, first + done, n, out_ale[part], out_size[part], out_mass[part]
                )
                if out_tfce is not None:
                    out_tfce[part] = self._host_tfce(spec, buf, n)
            except out_of_memory:
                if batch == 1:
                    raise
                buf = None
                xp.get_default_memory_pool().free_all_blocks()
                batch //= 2
                continue
            done += n
        # synchronize: the only device -> host copies of a null chunk (but TFCE's)
        maxima = (_to_host(out_ale), _to_host(out_size), _to_host(out_mass))
        return maxima if out_tfce is None else (*maxima, out_tfce)

    def _scale_chunk(self, spec: ScaleNullSpec, seed: int, first: int,
                     count: int) -> ScaleNullPartial:
        """SCALE on the device: draws from the database's foci, the global null's overlap
        lists and scatter, then per-voxel exceedance counts and maxima (integer compares
        of fixed-point sums: the numpy engine's counts, bit for bit)."""
        xp = self._xp()
        if self._scale is None or self._scale[0] is not spec:
            self._scale = None
            launch = _cupy_launcher() if self.on_gpu else self._host_launch
            # Threshold and connectivity are unused: only the log-sums are run.
            pipeline = _NullPipeline(spec.problem, 0.5, 6, xp=xp, launch=launch,
                                     **self._launch_shape)
            observed_buf = pipeline.buffers(1)
            grid = spec.problem.grid
            ijk = spec.problem.focus_ijk.astype(np.int64)
            inside = np.all((ijk >= 0) & (ijk < np.array(grid.shape)), axis=1)
            flat = np.where(inside, np.ravel_multi_index(tuple(np.clip(
                ijk, 0, np.array(grid.shape) - 1).T), grid.shape), -1)
            observed_buf.focus_pos[0] = xp.asarray(
                np.column_stack([ijk, flat]).astype(np.int32))
            pipeline.log_sum(observed_buf, 1)
            observed = observed_buf.neg_log_sum[0].copy()
            self._scale = (spec, pipeline, observed, xp.asarray(spec.pool_ijk))
        _, pipeline, observed, pool = self._scale
        n_mask = int(pipeline.n_mask)
        counts = xp.zeros(n_mask, dtype=xp.uint32)
        largest = xp.zeros(count, dtype=xp.uint64)
        batch = min(self._batch_size(pipeline), count)
        out_of_memory = _out_of_memory_errors() if self.on_gpu else ()
        buf = None
        done = 0
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
        if first < 0 or first + count > 2**32:
            raise ValueError("permutation indices must lie in [0, 2**32)")
        nx, ny, nz = pipeline.shape
        while done < count:
            n = min(batch, count - done)
            try:
                if buf is None or buf.capacity < n:
                    buf = None
                    buf = pipeline.buffers(batch)
                pipeline.launch(
                    "gpuale_scale_draw_foci", pipeline._grid(n * int(pipeline.n_foci))[:1],
                    pipeline.block,
                    (np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32),
                     np.uint32(first + done), np.int32(n), pipeline.n_foci,
                     np.uint32(spec.n_pool), pool, nx, ny, nz, buf.focus_pos))
                pipeline.log_sum(buf, n)
                pipeline.launch(
                    "gpuale_scale_exceed", pipeline._grid(n_mask, n), pipeline.block,
                    (np.int32(n), pipeline.n_mask, buf.neg_log_sum, observed, counts,
                     largest[done:done + n]))
            except out_of_memory:
                if batch == 1:
                    raise
                buf = None
                xp.get_default_memory_pool().free_all_blocks()
                batch //= 2
                continue
            done += n
        # synchronize: a chunk's counts and maxima come back once
        return ScaleNullPartial.of(first, _to_host(counts).astype(np.int64),
                                   ale_of_fixed(_to_host(largest)))

    def _host_tfce(self, spec: GlobalNullSpec, buf: _Buffers, count: int) -> np.ndarray:
        """Largest TFCE of each permuted map of a batch: TFCE of GPU permutations is
        computed on the host. Each map's fixed-point log-sums come back (a block of maps
        at a time), its ALE is ``1 - exp(S)`` in float64 rounded to float32 with the
        host's ``exp`` (as :func:`supra_threshold_cut` takes it), and the compiled
        union-find of :mod:`gpuale.tfce` runs on the host's cores, one map per thread. A
        device kernel for it is future work."""
        from concurrent.futures import ThreadPoolExecutor

        from gpuale._cores import default_workers

        if self._tfce is None or self._tfce[0] is not spec:
            # Voxels whose -S is at most this fixed point have z = 0.
            cut = -tfce_log_cut(spec.tfce_z) * 2.0**LOG_SUM_FRAC_BITS
            cut = min(max(math.floor(cut), 0), 2**63) if math.isfinite(cut) else 2**63
            work = TfceWork(spec.problem.grid.mask)
            self._tfce = (spec, np.uint64(cut), work, [])
        _, cut, work, spare = self._tfce
        workers = default_workers()
        while len(spare) < workers:  # one scratch per thread, sharing the table
            spare.append(work.for_thread())

        def largest(index: int, neg_log_sum: np.ndarray) -> float:
            candidates = np.flatnonzero(neg_log_sum > cut)
            ale = (1.0 - np.exp(-neg_log_sum[candidates].astype(np.float64)
                                * 2.0**-LOG_SUM_FRAC_BITS)).astype(np.float32)
            return largest_tfce(candidates, ale, spec.tfce_z, spare[index % workers])

        def strided(maps: np.ndarray, t: int) -> list[float]:
            # Thread t takes maps t, t + workers, ... with scratch t: none is shared.
            return [largest(t, maps[i]) for i in range(t, maps.shape[0], workers)]

        out = np.empty(count, dtype=np.float64)
        block = max(1, min(count, 4 * workers))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, count, block):
                stop = min(count, start + block)
                maps = _to_host(buf.neg_log_sum[start:stop])
                threads = range(min(workers, stop - start))
                for t, values in zip(threads, pool.map(strided, [maps] * len(threads),
                                                       threads)):
                    out[start + t : stop : workers] = values
        return out

    def _batch_size(self, pipeline: _NullPipeline) -> int:
        limit = min(self.max_batch, (2**31 - 1) // max(int(pipeline.n_foci), 1))
        if not self.on_gpu:
            return max(1, limit)
        import cupy

        free, _ = cupy.cuda.runtime.memGetInfo()
        free += cupy.get_default_memory_pool().free_bytes()
        fits = int(free * MEMORY_FRACTION) // pipeline.bytes_per_permutation()
        return max(1, min(fits, limit))


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    import cupy

    return (cupy.cuda.memory.OutOfMemoryError,)


def _to_host(array) -> np.ndarray:
    """A device array's values on the host (numpy arrays pass through)."""
    return array if isinstance(array, np.ndarray) else array.get()
