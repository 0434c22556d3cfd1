"""Many observed ALE maps at once: nested subsets of a pool of experiments (CBP).

A co-activation-based parcellation needs, for every seed voxel of a region and every
filter size, the ALE map of the experiments nearest to the seed: thousands of maps whose
experiment sets are *nested* (the 20 nearest are among the 40 nearest). A
:class:`CoactivationSpec` holds a pool of experiments (a :class:`Problem`), each seed's
experiments in the order they join its sets (``order``) and the sizes of the sets
(``counts``): the map of seed ``s`` at filter ``f`` is the ALE of
``order[s, :counts[s, f]]``. The log-sum of a larger set is the smaller set's plus the
added experiments' ``log1p(-MA)``, so a seed's maps cost one pass over its largest set.

Exactness across engines. Each experiment's ``log1p(-MA)`` (float32, as every engine
computes it) is held in integer units of ``2**-40`` (float64), as contrasts hold it
(:data:`gpuale.stats.LOG_SCALE`): every partial log-sum is then an integer below
``2**53``, exact in any summation order, so the numpy engine's running sums, the numba
engine's and the CUDA engine's matrix products (cuBLAS) give the same log-sums bit for
bit; the rounding costs at most ``2**-41`` per experiment (below 1e-10 in ALE).

Chunks run over the *columns* (the brain mask's voxels, in order): a chunk reads the
pool's log terms there (:func:`pool_log_maps`, on a crop of the grid around the chunk's
x-planes; the CUDA engine reads the same terms on the device,
:mod:`gpuale.engines._cuda_subsets`) and reduces every seed's maps, a block of columns
at a time, to the sums and cross-products of the maps per filter size
(:func:`coactivation_partial`); these add up
over chunks into the voxel-by-voxel correlation of the maps. Memory is bounded by one
chunk's log terms and one block's maps, never all maps at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from gpuale.grid import Grid
from gpuale.problem import Problem
from gpuale.stats import LOG_SCALE

__all__ = [
    "COACTIVATION",
    "CoactivationPartial",
    "CoactivationSpec",
    "coactivation_partial",
    "increments",
    "matmul_subset_maps",
    "pool_log_maps",
    "units",
    "chunk_problem",
    "subset_maps_definition",
]

#: The ``kind`` of a :class:`CoactivationSpec` (engines' ``null_chunk`` dispatch on it).
COACTIVATION = "coactivation"
#: Columns per chunk by default (the pool's log terms are held for a chunk at a time).
CHUNK_COLUMNS = 2**15
#: Bytes of the maps held at once (seeds x filters x columns float32) by default.
BLOCK_BYTES = 2**25
#: Experiments per call of an engine's ``experiment_log_maps`` when the pool is read, and
#: the kernel-box voxels of their foci together (the numba engine's scratch: 24 bytes
#: each).
POOL_BLOCK = 64
POOL_BOX_VOXELS = 2**22


@dataclasses.dataclass(frozen=True, eq=False)
class CoactivationSpec:
    """Nested experiment subsets of a pool, one list per seed.

    Attributes
    ----------
    problem : Problem
        The pool: every experiment some seed uses.
    order : ndarray of int64, shape (n_seeds, depth)
        Row ``s``: pool indices in the order they join seed ``s``'s sets (only the first
        ``counts[s, -1]`` are read; the rest may be -1).
    counts : ndarray of int64, shape (n_seeds, n_filters)
        Set sizes, non-decreasing along each row, from 1 to ``depth``.
    chunk_columns : int
        In-mask voxels (columns) per chunk: the pool's log terms are read for one chunk
        at a time (default :data:`CHUNK_COLUMNS`).
    block_columns : int
        Columns whose maps are held at once within a chunk (default: the maps of a block
        in :data:`BLOCK_BYTES`).
    """

    problem: Problem
    order: np.ndarray
    counts: np.ndarray
    chunk_columns: int = 0
    block_columns: int = 0
    kind: str = COACTIVATION

    def __post_init__(self) -> None:
        order = np.asarray(self.order, dtype=np.int64)
        counts = np.asarray(self.counts, dtype=np.int64)
        if order.ndim != 2 or counts.ndim != 2 or counts.shape[0] != order.shape[0]:
            raise ValueError(f"order {order.shape} and counts {counts.shape} must be 2-D "
                             "with a row per seed")
        if counts.size and (counts.min() < 1 or counts.max() > order.shape[1]
                            or np.any(np.diff(counts, axis=1) < 0)):
            raise ValueError(f"counts must be non-decreasing along each row, within 1 .. "
                             f"{order.shape[1]}")
        for s in range(order.shape[0]):
            used = order[s, : counts[s, -1]]
            if used.size and (used.min() < 0 or used.max() >= self.problem.n_experiments
                              or np.unique(used).size != used.size):
                raise ValueError(f"seed {s}: its experiments must be distinct pool indices "
                                 f"in 0 .. {self.problem.n_experiments - 1}")
        if self.chunk_columns < 1:
            object.__setattr__(self, "chunk_columns", CHUNK_COLUMNS)
        if self.block_columns < 1:
            per_column = 4 * max(1, counts.size)
            object.__setattr__(self, "block_columns", max(64, BLOCK_BYTES // per_column))
        for name, value in (("order", order), ("counts", counts)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @property
    def n_seeds(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_filters(self) -> int:
        return int(self.counts.shape[1])

    @property
    def n_columns(self) -> int:
        """Voxels of the brain mask: the length of every map."""
        return int(self.problem.grid.n_voxels)

    @property
    def n_voxels(self) -> int:
        return self.n_columns


@dataclasses.dataclass(eq=False)
class CoactivationPartial:
    """Sums and cross-products of the maps at some chunks of columns.

    Attributes
    ----------
    chunks : dict of int to int
        First column -> number of columns, of every chunk merged in.
    sums : ndarray of float64, shape (n_filters, n_seeds)
    products : ndarray of float64, shape (n_filters, n_seeds, n_seeds)
    """

    chunks: dict[int, int]
    sums: np.ndarray
    products: np.ndarray

    @property
    def n_permutations(self) -> int:
        """Columns done (what a scheduler's progress callback counts)."""
        return int(sum(self.chunks.values()))

    def merge(self, other: CoactivationPartial) -> CoactivationPartial:
        overlap = self.chunks.keys() & other.chunks.keys()
        if overlap:
            raise ValueError(f"chunks starting at {sorted(overlap)} were merged twice")
        return CoactivationPartial({**self.chunks, **other.chunks}, self.sums + other.sums,
                                   self.products + other.products)

    def correlations(self, spec: CoactivationSpec) -> np.ndarray:
        """Pearson correlation between the seeds' maps over the brain mask, per filter
        size (n_filters x n_seeds x n_seeds).

        Raises
        ------
        ValueError
            Unless every column of ``spec`` was computed exactly once.
        """
        done = sorted(self.chunks.items())
        covered = sum(count for _, count in done)
        contiguous = all(a + n == b for (a, n), (b, _) in zip(done, done[1:]))
        if covered != spec.n_columns or not contiguous or (done and done[0][0] != 0):
            raise ValueError(f"the chunks cover {covered} of {spec.n_columns} columns "
                             f"({done[:3]}...): every column must be computed once")
        n = float(spec.n_voxels)
        mean = self.sums / n
        cov = self.products / n - mean[:, :, None] * mean[:, None, :]
        sd = np.sqrt(np.clip(np.einsum("fss->fs", cov), 0.0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / (sd[:, :, None] * sd[:, None, :])
        r = np.clip(r, -1.0, 1.0)
        idx = np.arange(spec.n_seeds)
        r[:, idx, idx] = 1.0
        return r


# --- The pool's log terms at a chunk of columns --------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PoolLogMaps:
    """Every pool experiment's ``log1p(-MA)`` at a chunk of columns, as compressed
    rows: ``indices[indptr[e]:indptr[e + 1]]`` are the chunk's columns (0-based within
    the chunk, ascending) that experiment ``e`` reaches, ``values`` the matching float32
    ``log1p(-MA)`` (negative; :func:`units` turns them into integers)."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    def block_bounds(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Per experiment, the positions in ``indices`` of its columns in ``[lo, hi)``."""
        n = self.indptr.size - 1
        start = np.empty(n, dtype=np.int64)
        stop = np.empty(n, dtype=np.int64)
        for e in range(n):
            a, b = self.indptr[e], self.indptr[e + 1]
            row = self.indices[a:b]
            start[e] = a + np.searchsorted(row, lo)
            stop[e] = a + np.searchsorted(row, hi)
        return start, stop


def _pool_blocks(problem: Problem) -> list[np.ndarray]:
    """Consecutive experiments in blocks of at most :data:`POOL_BLOCK` whose kernel boxes
    hold at most :data:`POOL_BOX_VOXELS` voxels together (an engine's scratch for
    ``experiment_log_maps`` grows with them), one experiment at least."""
    sides = np.array([k.shape[0] for k in problem.kernels], dtype=np.int64)
    boxes = problem.foci_per_experiment * sides[problem.kernel_index] ** 3
    blocks, start, total = [], 0, 0
    for e, size in enumerate(boxes.tolist()):
        if e > start and (total + size > POOL_BOX_VOXELS or e - start >= POOL_BLOCK):
            blocks.append(np.arange(start, e))
            start, total = e, 0
        total += size
    if problem.n_experiments:
        blocks.append(np.arange(start, problem.n_experiments))
    return blocks


def chunk_problem(problem: Problem, first: int, count: int) -> Problem:
    """The pool on a crop of the grid whose mask holds only in-mask voxels ``first ..
    first + count - 1`` (x-planes around them, as wide as the largest kernel reaches),
    with the foci whose kernel boxes reach those planes, shifted into the crop.

    The crop's in-mask voxels are the chunk's, in the same order (both C order), and an
    experiment's MA there is the maximum over those foci, as on the whole grid."""
    grid = problem.grid
    nx, ny, nz = grid.shape
    flat = grid.in_mask_flat[first:first + count]
    x_lo, x_hi = int(flat[0]) // (ny * nz), int(flat[-1]) // (ny * nz)
    reach = max(k.shape[0] for k in problem.kernels) // 2
    a, b = max(x_lo - reach, 0), min(x_hi + reach + 1, nx)
    mask = np.zeros((b - a) * ny * nz, dtype=bool)
    mask[flat - a * ny * nz] = True
    affine = grid.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.array([a, 0, 0]) + affine[:3, 3]
    crop = Grid(mask=mask.reshape(b - a, ny, nz), affine=affine,
                voxel_sizes=grid.voxel_sizes, source=f"{grid.source} (x {a}-{b - 1})")
    sides = np.array([k.shape[0] for k in problem.kernels], dtype=np.int64)
    half = sides[problem.kernel_index[problem.focus_experiment]] // 2
    x = problem.focus_ijk[:, 0].astype(np.int64)
    keep = (x + half >= x_lo) & (x - half <= x_hi)
    per_experiment = np.add.reduceat(keep.astype(np.int64), problem.experiment_offsets[:-1]) \
        if problem.n_foci else np.zeros(problem.n_experiments, np.int64)
    per_experiment[problem.foci_per_experiment == 0] = 0
    ijk = problem.focus_ijk[keep].astype(np.int64) - np.array([a, 0, 0])
    return Problem(grid=crop, focus_ijk=ijk.astype(np.int32),
                   experiment_offsets=np.concatenate([[0], np.cumsum(per_experiment)]
                                                     ).astype(np.int64),
                   kernel_index=problem.kernel_index, kernels=problem.kernels,
                   fwhm_mm=problem.fwhm_mm, experiment_ids=problem.experiment_ids)


def pool_log_maps(problem: Problem, first: int, count: int,
                  experiment_log_maps: Callable[[Problem], tuple[np.ndarray, np.ndarray]]
                  ) -> PoolLogMaps:
    """The pool's log terms at columns ``first .. first + count - 1`` from an engine's
    ``experiment_log_maps`` (float32, exact) on :func:`chunk_problem`, a few experiments
    at a time (:func:`_pool_blocks`)."""
    crop = chunk_problem(problem, first, count)
    indptr = [0]
    indices, values = [], []
    for block in _pool_blocks(crop):
        support, log_maps = experiment_log_maps(crop.subset(block))
        for row in log_maps:
            nonzero = np.flatnonzero(row)
            indices.append(support[nonzero].astype(np.int32))
            values.append(row[nonzero])
            indptr.append(indptr[-1] + nonzero.size)
    return PoolLogMaps(np.asarray(indptr, dtype=np.int64),
                       np.concatenate(indices) if indices else np.zeros(0, np.int32),
                       np.concatenate(values) if values else np.zeros(0, np.float32))


def units(log_terms, xp=np):
    """float32 ``log1p(-MA)`` in integer units of 2**-40 (float64; exact below 2**53;
    numpy or CuPy arrays: a product by a power of two and a rounding to even, the same
    bits on either)."""
    return xp.rint(log_terms.astype(xp.float64) * LOG_SCALE)


def dense_block(pool: PoolLogMaps, lo: int, hi: int) -> np.ndarray:
    """The pool's log terms at chunk columns ``lo .. hi - 1``, dense: n_experiments x
    (hi - lo) float64."""
    out = np.zeros((pool.indptr.size - 1, hi - lo), dtype=np.float64)
    start, stop = pool.block_bounds(lo, hi)
    for e in range(out.shape[0]):
        out[e, pool.indices[start[e]:stop[e]] - lo] = units(pool.values[start[e]:stop[e]])
    return out


def ale_from_units(log_sum, xp=np):
    """ALE (float32) from a log-sum in units of 2**-40 (numpy or CuPy arrays)."""
    return (1.0 - xp.exp(log_sum / LOG_SCALE)).astype(xp.float32)


def subset_maps_definition(spec: CoactivationSpec, pool: PoolLogMaps, lo: int,
                           hi: int) -> np.ndarray:
    """The definition: seed ``s``'s map at filter ``f`` is the ALE of the sum of the log
    terms of ``order[s, :counts[s, f]]``, here at chunk columns ``lo .. hi - 1``.

    Returns
    -------
    ndarray of float32, shape (n_seeds, n_filters, hi - lo)
    """
    block = dense_block(pool, lo, hi)
    out = np.empty((spec.n_seeds, spec.n_filters, hi - lo), dtype=np.float32)
    for s in range(spec.n_seeds):
        for f in range(spec.n_filters):
            chosen = spec.order[s, : spec.counts[s, f]]
            out[s, f] = ale_from_units(block[chosen].sum(axis=0))
    return out


def increments(spec: CoactivationSpec) -> list[np.ndarray]:
    """Per filter size, the 0/1 matrix (n_seeds x pool, float64) of the experiments each
    seed's set gains at that size (the first: its whole set)."""
    out = []
    previous = np.zeros(spec.n_seeds, dtype=np.int64)
    for f in range(spec.n_filters):
        gained = np.zeros((spec.n_seeds, spec.problem.n_experiments))
        for s in range(spec.n_seeds):
            gained[s, spec.order[s, previous[s]:spec.counts[s, f]]] = 1.0
        out.append(gained)
        previous = spec.counts[:, f]
    return out


def matmul_subset_maps(xp, spec: CoactivationSpec, block, gained: list):
    """The maps as matrix products (a GPU's way): at each filter size the log-sums grow
    by ``gained[f] @ block``; integer-valued terms make the products exact, so the maps
    are :func:`subset_maps_definition`'s. ``block``: the pool's log terms at some
    columns in :func:`units` (an ``xp`` array, n_experiments x columns, as
    :func:`dense_block`); ``gained``: :func:`increments` as ``xp`` arrays. Returns an
    ``xp`` array (n_seeds x n_filters x columns float32)."""
    columns = block.shape[1]
    out = xp.empty((spec.n_seeds, spec.n_filters, columns), dtype=xp.float32)
    log_sum = xp.zeros((spec.n_seeds, columns), dtype=xp.float64)
    for f in range(spec.n_filters):
        log_sum += gained[f] @ block
        out[:, f, :] = ale_from_units(log_sum, xp)
    return out


def check_chunk(spec: CoactivationSpec, first: int, count: int) -> None:
    if count < 1 or first < 0 or first + count > spec.n_columns:
        raise ValueError(f"columns {first} .. {first + count - 1} lie outside 0 .. "
                         f"{spec.n_columns - 1}")


def coactivation_partial(xp, spec: CoactivationSpec, first: int, count: int,
                         maps: Callable[[int, int], object]) -> CoactivationPartial:
    """Columns ``first .. first + count - 1`` reduced to the sums and cross-products of the
    maps per filter size (float64), ``spec.block_columns`` at a time: ``maps(lo, hi)``
    gives the maps (numpy or CuPy, n_seeds x n_filters x (hi - lo)) at chunk columns
    ``lo .. hi - 1``."""
    sums = xp.zeros((spec.n_filters, spec.n_seeds))
    products = xp.zeros((spec.n_filters, spec.n_seeds, spec.n_seeds))
    for lo in range(0, count, spec.block_columns):
        hi = min(lo + spec.block_columns, count)
        x = xp.asarray(maps(lo, hi), dtype=xp.float64)
        for f in range(spec.n_filters):
            part = x[:, f, :]
            sums[f] += part.sum(axis=1)
            products[f] += part @ part.T  # BLAS's syrk on the CPU
    to_host = getattr(xp, "asnumpy", np.asarray)
    return CoactivationPartial({int(first): int(count)}, to_host(sums), to_host(products))
