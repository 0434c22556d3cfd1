"""The CUDA engine's pool log terms for nested-subset maps (:mod:`gpuale.engines._subsets`).

A chunk of CBP columns needs every pool experiment's ``log1p(-MA)`` there. The CPU
engines read them on the host (:func:`gpuale.engines._subsets.pool_log_maps`: one ALE per
experiment on a crop of the grid); here ``gpuale_pool_ranks`` (``kernels/ale_null.cu``)
stamps every focus's kernel box of the crop on the device, keeping per (experiment,
column) the largest *rank* of a kernel value (the numpy engine's ``_KernelRanks``: ranks
order the values, so the largest rank is the MA), and the rank is looked up in the same
float32 ``log1p(-value)`` table the numpy engine adds. The terms are therefore the numpy
engine's bit for bit, whatever order the atomics ran in, and stay on the device as a dense
float32 matrix (pool experiments x the chunk's columns) for the matrix products.

As the rest of the CUDA engine, the code takes the array module and a launcher, so the
host shim runs it on the CPU with numpy (the tests do, sequentially and as fibers).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gpuale.engines._subsets import chunk_problem
from gpuale.engines.numpy_ import flat_rank_tables
from gpuale.problem import Problem

__all__ = ["RankTables", "pool_log_terms"]

#: Most (experiment, column) words of one ``gpuale_pool_ranks`` launch (its int32 output,
#: and the int64 lookup indices taken from it: 12 bytes each, so 192 MiB at most).
RANK_WORDS = 2**24


@dataclasses.dataclass(frozen=True, eq=False)
class RankTables:
    """A problem's kernels as ranks and their ``log1p(-value)``, on the device.

    Attributes
    ----------
    ranks : xp array of int32
        Every kernel's ranks (C order), one kernel after the other.
    rank_starts : ndarray of int64, shape (n_kernels,)
        Where each kernel starts in ``ranks``.
    log1m : xp array of float32
        Per kernel, ``log1p(-value)`` of rank 0 (untouched: 0), 1, 2, ... concatenated.
    log_starts : ndarray of int64, shape (n_kernels,)
        Where each kernel starts in ``log1m``.
    """

    ranks: Any
    rank_starts: np.ndarray
    log1m: Any
    log_starts: np.ndarray

    @classmethod
    def of(cls, xp, problem: Problem) -> RankTables:
        _, ranks, rank_starts, log1m, log_starts = flat_rank_tables(problem)
        if ranks.size >= 2**31:
            raise ValueError("the kernels hold too many values for the GPU backend")
        # float64 there, float32 values exactly: the numpy engine's float32 log1p.
        return cls(xp.asarray(ranks.astype(np.int32)), rank_starts,
                   xp.asarray(log1m.astype(np.float32)), log_starts)


def pool_log_terms(xp, launch, tables: RankTables, problem: Problem, first: int, count: int,
                   *, block_size: int, max_grid: tuple[int, int]):
    """Every pool experiment's float32 ``log1p(-MA)`` at columns ``first .. first + count
    - 1`` (0 where MA = 0): an ``xp`` array, n_experiments x count, equal to
    :func:`gpuale.engines._subsets.pool_log_maps` of the numpy engine made dense.

    ``launch(name, grid, block, args)`` runs a kernel (CuPy's, or the host shim's with
    ``xp`` numpy); ``tables`` are :meth:`RankTables.of` ``problem``."""
    crop = chunk_problem(problem, first, count)
    grid = crop.grid
    if grid.mask.size >= 2**31:
        raise ValueError(f"the GPU backend needs grids below 2**31 voxels, got {grid.shape}")
    nx, ny, nz = (np.int32(s) for s in grid.shape)
    vox_to_mask = np.full(grid.mask.size, -1, dtype=np.int32)
    vox_to_mask[grid.in_mask_flat] = np.arange(grid.n_voxels, dtype=np.int32)
    vox_to_mask = xp.asarray(vox_to_mask)
    sides = np.array([k.shape[0] for k in crop.kernels], dtype=np.int64)
    focus_kernel = crop.kernel_index[crop.focus_experiment]
    out = xp.zeros((crop.n_experiments, count), dtype=xp.float32)
    rows = max(1, RANK_WORDS // count)
    offsets = crop.experiment_offsets
    for r0 in range(0, crop.n_experiments, rows):
        r1 = min(r0 + rows, crop.n_experiments)
        f0, f1 = int(offsets[r0]), int(offsets[r1])
        if f1 == f0:
            continue
        side = sides[focus_kernel[f0:f1]]
        focus = np.column_stack([
            crop.focus_ijk[f0:f1].astype(np.int64),
            crop.focus_experiment[f0:f1] - r0,
            tables.rank_starts[focus_kernel[f0:f1]],
            side,
        ]).astype(np.int32)
        first_column = np.concatenate([[0], np.cumsum(side * side)]).astype(np.int64)
        ranks = xp.zeros((r1 - r0, count), dtype=xp.int32)
        n_columns = int(first_column[-1])
        blocks = min(-(-n_columns // block_size), max_grid[0])
        launch("gpuale_pool_ranks", (blocks,), (block_size,),
               (np.int32(f1 - f0), xp.asarray(focus), xp.asarray(first_column),
                tables.ranks, nx, ny, nz, vox_to_mask, np.int32(count), ranks))
        starts = xp.asarray(tables.log_starts[crop.kernel_index[r0:r1]])
        out[r0:r1] = tables.log1m[starts[:, None] + ranks]
    return out
