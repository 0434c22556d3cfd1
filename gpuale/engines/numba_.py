"""The numba engine: the numpy engine's computations compiled, on threads.

The same numbers as :class:`gpuale.engines.numpy_.NumpyEngine`, bit for bit: per voxel,
each experiment's ``log1p(-MA)`` (the largest kernel value of its foci) is added in
experiment order, exactly as the numpy engine adds it; clusters are the same connected
components, and cluster masses are summed over a cluster's voxels in the same (ascending)
order. The one transcendental step, ALE = 1 - exp(log-sum), is left to numpy on the few
voxels that can pass the cluster-forming threshold, because numba's ``exp`` may differ
from numpy's in the last bit. The largest TFCE of a permutation (``--tfce``) is the
compiled union-find of :mod:`gpuale.tfce` on those voxels' z; it agrees with the numpy
engine's definition (100 labellings) to rounding, as its sums run in another order.

What makes it fast: a permutation is one compiled pass over the kernel boxes, a slab of
x-planes at a time (:mod:`gpuale.engines._numba_slab`), so the sum being built stays in
cache; overlapping boxes of an experiment take their maximum in a row buffer. Labelling
is a union-find over the supra-threshold voxels only. The compiled functions release the
GIL, so permutations run on threads (one slab per thread): no worker processes, no
pickling, and the same behaviour from a script, a notebook or standard input.

The compiled code is cached on disk (``cache=True``); where the package folder is not
writable the cache goes to the user's cache folder (see :func:`_cache_dir`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gpuale._cores import default_workers
from gpuale.clusters import CONNECTIVITY_RANK
from gpuale.engines import _numba_subsets, _subsets
from gpuale.engines.numpy_ import NumpyEngine, flat_rank_tables
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
    fixed_neg_log_kernel,
)
from gpuale.problem import Problem
from gpuale.rng import pool_draws, relocation_draws
from gpuale.stats import ObservedALE, ale_from_log_sum
from gpuale.tfce import TfceWork, largest_tfce, tfce_log_cut

__all__ = ["NumbaEngine", "numba_available"]

#: Permutations per chunk of a global null: a thread takes a chunk at a time.
GLOBAL_CHUNK = 8
#: Size of the slab of x-planes a permutation's log-sum is built in: it should stay in a
#: core's L2 cache (the volume itself, 7 MB at 2 mm, does not).
SLAB_BYTES = 512 * 1024


def _cache_dir() -> Path | None:
    """Where numba caches compiled code when this package's folder is read-only
    (a system-wide install): ``$XDG_CACHE_HOME/gpuale/numba`` or ``~/.cache/...``."""
    if os.access(Path(__file__).parent, os.W_OK):
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gpuale" / "numba"


def _configure_cache() -> None:
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    folder = _cache_dir()
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    try:  # numba may have been imported (and its config read) by someone else already
        from numba.core import config

        config.reload_config()
    except ImportError:
        pass


_configure_cache()

try:
    import numba

    from gpuale.engines import _numba_contrast
    from gpuale.engines._numba_slab import (
        SlabWork,
        padded_table,
        permuted_log_sum,
        scale_pass,
        slab_layout,
    )
except ImportError:  # pragma: no cover - numba is a dependency; this guards broken installs
    numba = None


def numba_available() -> bool:
    """Whether numba imports (it is a dependency; a broken install falls back to numpy)."""
    return numba is not None


def _njit(function):
    return numba.njit(cache=True, nogil=True)(function) if numba is not None else function


# --- Compiled kernels -----------------------------------------------------------------------


@_njit
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return root


@_njit
def _largest_cluster(flat, excess, nx, ny, nz, offsets, label, parent, size, mass):
    """Largest size and mass of the clusters formed by voxels ``flat`` (ascending flat
    indices, supra-threshold), under the neighbourhood ``offsets`` (neighbours that come
    earlier in flat order). ``label`` is a volume of -1 and is left so."""
    n = flat.size
    for i in range(n):
        label[flat[i]] = i
        parent[i] = i
    for i in range(n):
        v = flat[i]
        x = v // (ny * nz)
        y = (v // nz) % ny
        z = v % nz
        for o in range(offsets.shape[0]):
            xx, yy, zz = x + offsets[o, 0], y + offsets[o, 1], z + offsets[o, 2]
            if 0 <= xx < nx and 0 <= yy < ny and 0 <= zz < nz:
                j = label[(xx * ny + yy) * nz + zz]
                if j >= 0:
                    a, b = _find(parent, i), _find(parent, j)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    for i in range(n):
        size[i] = 0
        mass[i] = 0.0
    # Masses are summed over each cluster's voxels in ascending order, as bincount does.
    for i in range(n):
        root = _find(parent, i)
        size[root] += 1
        mass[root] += excess[i]
    largest_size = 0
    largest_mass = 0.0
    for i in range(n):
        if size[i] > largest_size:
            largest_size = size[i]
        if size[i] > 0 and mass[i] > largest_mass:
            largest_mass = mass[i]
        label[flat[i]] = -1
    return largest_size, largest_mass


@_njit
def _largest_per_group(bounds, flat, excess, nx, ny, nz, offsets, label, parent, size, mass,
                       max_size, max_mass):
    """Largest cluster size and mass per permutation over its two groups of voxels.

    Group g (voxels ``bounds[g] .. bounds[g + 1] - 1``, ascending) holds permutation
    ``g // 2``'s positive (even g) or negative differences, which are labelled apart.
    """
    for g in range(bounds.size - 1):
        start, stop = bounds[g], bounds[g + 1]
        if stop == start:
            continue
        s, m = _largest_cluster(flat[start:stop], excess[start:stop], nx, ny, nz, offsets,
                                label, parent, size, mass)
        p = g // 2
        if s > max_size[p]:
            max_size[p] = s
        if m > max_mass[p]:
            max_mass[p] = m


@_njit
def _stamp_ranks(scratch, first, stop, ijk, focus_side, focus_start, rank_table, x_lo,
                 x_hi, ny, nz):
    """Stamp the kernel ranks of foci ``first .. stop - 1`` (one experiment) into
    ``scratch`` at planes ``x_lo .. x_hi - 1``, keeping the largest: ranks grow with the
    kernel value, so the largest rank is the maximum MA."""
    for f in range(first, stop):
        side = focus_side[f]
        r = side // 2
        x, y, z = ijk[f, 0], ijk[f, 1], ijk[f, 2]
        for i in range(max(x - r, x_lo), min(x + r + 1, x_hi)):
            for j in range(max(y - r, 0), min(y + r + 1, ny)):
                row = (i * ny + j) * nz
                krow = focus_start[f] + ((i - x + r) * side + j - y + r) * side - z + r
                # Unsigned offsets: with signed ones numba checks each index for
                # wraparound and LLVM leaves the loop scalar.
                z0 = max(z - r, 0)
                to = np.uint64(row + z0)
                at = np.uint64(krow + z0)
                for k in range(np.uint64(max(min(z + r + 1, nz) - z0, 0))):
                    scratch[to + k] = max(scratch[to + k], rank_table[at + k])


@_njit
def _observed_log_sum(ijk, offsets, focus_side, focus_start, kernel_of_experiment,
                      rank_table, log1m_table, log1m_start, x_lo, x_hi, ny, nz, mask_flat,
                      log_sum, scratch, counts, counts_start):
    """The observed log-sum at planes ``x_lo .. x_hi - 1`` and, per experiment, how many
    in-mask voxels there hold each distinct kernel value (``counts[counts_start[e] +
    rank]``).

    Each experiment stamps the rank of its kernel values (ranks grow with the value, so
    the largest rank is the maximum MA) into ``scratch``, then adds ``log1p(-value)`` of
    each stamped voxel once and clears it: experiment by experiment, as the numpy engine.
    Threads given disjoint planes share ``log_sum`` and ``scratch``, not ``counts``.
    """
    for e in range(offsets.size - 1):
        table = log1m_start[kernel_of_experiment[e]]
        base = counts_start[e]
        _stamp_ranks(scratch, offsets[e], offsets[e + 1], ijk, focus_side, focus_start,
                     rank_table, x_lo, x_hi, ny, nz)
        for f in range(offsets[e], offsets[e + 1]):
            side = focus_side[f]
            r = side // 2
            x, y, z = ijk[f, 0], ijk[f, 1], ijk[f, 2]
            for i in range(max(x - r, x_lo), min(x + r + 1, x_hi)):
                for j in range(max(y - r, 0), min(y + r + 1, ny)):
                    row = (i * ny + j) * nz
                    for k in range(max(z - r, 0), min(z + r + 1, nz)):
                        rank = scratch[row + k]
                        if rank > 0:  # 0: added already with an earlier box
                            log_sum[row + k] += log1m_table[table + rank]
                            if mask_flat[row + k]:
                                counts[base + rank] += 1
                            scratch[row + k] = 0


@_njit
def _experiment_terms(ijk, offsets, focus_side, focus_start, kernel_of_experiment,
                      rank_table, log1m_table, log1m_start, nx, ny, nz, mask_index, scratch,
                      out_experiment, out_voxel, out_value):
    """Every experiment's non-zero ``log1p(-MA)`` at in-mask voxels, as (experiment,
    in-mask index, value) triples in experiment order; returns how many were written.

    The maximum within an experiment is taken on kernel ranks in ``scratch`` (zeros, left
    so), as :func:`_observed_log_sum` does.
    """
    n = 0
    for e in range(offsets.size - 1):
        table = log1m_start[kernel_of_experiment[e]]
        _stamp_ranks(scratch, offsets[e], offsets[e + 1], ijk, focus_side, focus_start,
                     rank_table, 0, nx, ny, nz)
        for f in range(offsets[e], offsets[e + 1]):
            side = focus_side[f]
            r = side // 2
            x, y, z = ijk[f, 0], ijk[f, 1], ijk[f, 2]
            for i in range(max(x - r, 0), min(x + r + 1, nx)):
                for j in range(max(y - r, 0), min(y + r + 1, ny)):
                    row = (i * ny + j) * nz
                    for k in range(max(z - r, 0), min(z + r + 1, nz)):
                        rank = scratch[row + k]
                        if rank > 0:
                            value = log1m_table[table + rank]
                            m = mask_index[row + k]
                            if m >= 0 and value != 0.0:
                                out_experiment[n] = e
                                out_voxel[n] = m
                                out_value[n] = value
                                n += 1
                            scratch[row + k] = 0
    return n


def balanced_planes(x: np.ndarray, side: np.ndarray, nx: int, parts: int) -> np.ndarray:
    """Plane bounds ``0 = b[0] < b[1] < ... = nx`` that split the stamping of kernel boxes
    (centred at planes ``x``, of ``side`` voxels; ``side**2`` voxels a plane) into at
    most ``parts`` shares of about equal work."""
    r = side // 2
    area = (side.astype(np.float64)) ** 2
    change = (np.bincount(np.clip(x - r, 0, nx), area, minlength=nx + 1)
              - np.bincount(np.clip(x + r + 1, 0, nx), area, minlength=nx + 1))
    done = np.cumsum(np.cumsum(change[:nx]))  # work of planes 0 .. i
    if parts <= 1 or nx <= 1 or done[-1] <= 0:
        return np.array([0, nx], dtype=np.int64)
    cuts = np.searchsorted(done, done[-1] * np.arange(1, parts) / parts) + 1
    return np.unique(np.concatenate([[0], np.clip(cuts, 1, nx), [nx]])).astype(np.int64)


def _rank_tables(problem: Problem) -> tuple[list, tuple]:
    """Kernel ranks and ``log1p(-value)`` tables of a problem, flattened for the compiled
    passes: (tables, (ijk, offsets, focus_side, focus_start, kernel_of_experiment,
    rank_table, log1m_table, log1m_start))."""
    tables, ranks, rank_start, log1m, log1m_start = flat_rank_tables(problem)
    sides = np.array([k.shape[0] for k in problem.kernels], dtype=np.int64)
    kernel_of_focus = problem.kernel_index[problem.focus_experiment]
    return tables, (
        problem.focus_ijk.astype(np.int64), problem.experiment_offsets.astype(np.int64),
        sides[kernel_of_focus], rank_start[kernel_of_focus],
        problem.kernel_index.astype(np.int64), ranks.astype(np.int64), log1m, log1m_start,
    )


def _scale_pass(ijk: np.ndarray, prepared: tuple, work: SlabWork, observed: np.ndarray,
                counts: np.ndarray, values: np.ndarray) -> int:
    """SCALE's ``-S`` of foci at ``ijk`` (see :func:`~gpuale.engines._numba_slab.scale_pass`):
    ``prepared`` is (offsets, focus_side, focus_start, focus_width, table, nx, ny, nz,
    in_mask_flat, slab_planes, slab_mask_start, row_lo, row_hi)."""
    (offsets, side, start, width, table, nx, ny, nz, in_mask, planes, mask_start, lo,
     hi) = prepared
    return scale_pass(ijk, offsets, side, start, width, table, nx, ny, nz, in_mask,
                      mask_start, planes, *work.arrays(), lo, hi, observed, counts, values)


def earlier_neighbours(connectivity: int) -> np.ndarray:
    """Offsets (dx, dy, dz) of the neighbours that come before a voxel in C order."""
    rank = CONNECTIVITY_RANK[connectivity]
    offsets = [
        (dx, dy, dz)
        for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
        if 0 < abs(dx) + abs(dy) + abs(dz) <= rank and (dx, dy, dz) < (0, 0, 0)
    ]
    return np.array(offsets, dtype=np.int64)


# --- The engine -----------------------------------------------------------------------------


class _GlobalTables:
    """What every permutation of a global null reads (shared by the threads)."""

    def __init__(self, spec: GlobalNullSpec) -> None:
        problem = spec.problem
        grid = problem.grid
        self.shape = tuple(int(s) for s in grid.shape)
        self.in_mask_flat = np.ascontiguousarray(grid.in_mask_flat, dtype=np.int64)
        # float32 log1p (as NiMARE), held as float64, as the numpy engine does.
        logs = [np.log1p(-k).astype(np.float64) for k in problem.kernels]
        sides = np.array([k.shape[0] for k in problem.kernels], dtype=np.int64)
        kernel_of_focus = problem.kernel_index[problem.focus_experiment]
        self.log_table, starts, widths = padded_table(logs, np.float64)
        self.focus_start = starts[kernel_of_focus]
        self.focus_width = widths[kernel_of_focus]
        self.focus_side = sides[kernel_of_focus]
        self.offsets = np.ascontiguousarray(problem.experiment_offsets, dtype=np.int64)
        self.threshold = np.float64(spec.threshold)
        # ALE > t  <=>  log-sum < log1p(-t); a small slack admits every voxel whose
        # float32 ALE could round above t, and the exact test is made on those (numpy).
        self.log_cut = float(np.log1p(-self.threshold * (1 - 1e-6)))
        if spec.tfce:  # TFCE needs every voxel with z > 0 (a lower ALE, usually)
            self.log_cut = max(self.log_cut, tfce_log_cut(spec.tfce_z))
        self._tfce_work: TfceWork | None = None
        self._mask = grid.mask
        self.neighbours = earlier_neighbours(spec.connectivity)
        self.slab_planes, self.slab_mask_start, self.row_lo, self.row_hi = slab_layout(
            grid.mask, self.in_mask_flat, SLAB_BYTES, 8)

    def tfce_work(self) -> TfceWork:
        """The mask's TFCE neighbour table, made once (threads take their own scratch)."""
        if self._tfce_work is None:
            self._tfce_work = TfceWork(self._mask)
        return self._tfce_work


class _Scratch:
    """One thread's volumes and buffers (never shared)."""

    def __init__(self, tables: _GlobalTables, problem: Problem) -> None:
        n_volume = int(np.prod(tables.shape))
        n_mask = tables.in_mask_flat.size
        n_foci = problem.n_foci
        nx, ny, nz = tables.shape
        self.slab = SlabWork(tables.shape, tables.slab_planes, n_foci, np.float64)
        self.label = np.full(n_volume, -1, dtype=np.int64)
        self.candidates = np.empty(n_mask, dtype=np.int64)
        self.candidate_log = np.empty(n_mask, dtype=np.float64)
        self.parent = np.empty(n_mask, dtype=np.int64)
        self.size = np.empty(n_mask, dtype=np.int64)
        self.mass = np.empty(n_mask, dtype=np.float64)


class NumbaEngine:
    """The compiled CPU engine (see the module docstring); contrast nulls are
    :mod:`gpuale.engines._numba_contrast` (sparse exact integer sums)."""

    name = "numba"
    device = "cpu"
    subset_ale_maps = _numba_subsets.engine_subset_ale_maps  # nested subsets (CBP)

    def __init__(self) -> None:
        if numba is None:
            raise ImportError("the numba engine needs numba (pip install numba)")
        self._numpy = NumpyEngine()
        self._lock = threading.Lock()
        self._tables: tuple[GlobalNullSpec, _GlobalTables] | None = None
        self._contrast: tuple[ContrastNullSpec, object] | None = None
        self._scale: tuple | None = None
        self._local = threading.local()
        #: Threads of the observed pass (planes split among them; any number gives the
        #: same bits).
        self.observed_threads = default_workers()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def describe(self) -> str:
        return "the CPU"

    def chunk_size(self, spec) -> int:
        if isinstance(spec, GlobalNullSpec | ScaleNullSpec):
            return GLOBAL_CHUNK
        return self._numpy.chunk_size(spec)

    def concurrency(self, spec) -> str:
        return "threads"

    def observed_ale(self, problem: Problem) -> ObservedALE:
        """ALE map of the observed foci, with each experiment's MA values (the numpy
        engine's, bit for bit)."""
        grid = problem.grid
        nx, ny, nz = (int(n) for n in grid.shape)
        tables, kernel_arrays = _rank_tables(problem)
        n_ranks = np.array([t.log1m.size for t in tables])[problem.kernel_index]
        counts_start = np.concatenate([[0], np.cumsum(n_ranks)]).astype(np.int64)
        log_sum = np.zeros(nx * ny * nz, dtype=np.float64)
        scratch = np.zeros(nx * ny * nz, dtype=np.int64)
        # The planes split among threads: each voxel's sum is still added experiment by
        # experiment, in one thread; only the integer counts are summed afterwards.
        bounds = balanced_planes(kernel_arrays[0][:, 0], kernel_arrays[2], nx,
                                 self.observed_threads)
        counts = np.zeros((bounds.size - 1, int(counts_start[-1])), dtype=np.int64)

        def planes(part: int) -> None:
            _observed_log_sum(*kernel_arrays, bounds[part], bounds[part + 1], ny, nz,
                              grid.mask.reshape(-1), log_sum, scratch, counts[part],
                              counts_start)

        if bounds.size == 2:
            planes(0)
        else:
            with ThreadPoolExecutor(max_workers=bounds.size - 1) as pool:
                list(pool.map(planes, range(bounds.size - 1)))
        counts = counts.sum(axis=0)
        ma_values = []
        for e in range(problem.n_experiments):
            table = tables[problem.kernel_index[e]]
            per_rank = counts[counts_start[e] + 1 : counts_start[e + 1]]
            used = np.flatnonzero(per_rank)
            ma_values.append((table.values[used], per_rank[used]))
        masked = log_sum[grid.in_mask_flat]
        return ObservedALE(ale=ale_from_log_sum(masked), log_sum=masked, ma_values=ma_values)

    def experiment_log_maps(self, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
        """Each experiment's float32 ``log1p(-MA)`` over the voxels any experiment reaches
        (the numpy engine's, bit for bit), from one compiled pass."""
        grid = problem.grid
        nx, ny, nz = (int(n) for n in grid.shape)
        _, kernel_arrays = _rank_tables(problem)
        mask_index = np.full(nx * ny * nz, -1, dtype=np.int64)
        mask_index[grid.in_mask_flat] = np.arange(grid.n_voxels)
        sides = kernel_arrays[2]
        bound = int(np.sum(sides.astype(np.int64) ** 3))  # every box voxel, at most
        experiment = np.empty(bound, dtype=np.int64)
        voxel = np.empty(bound, dtype=np.int64)
        value = np.empty(bound, dtype=np.float64)
        n = _experiment_terms(*kernel_arrays, nx, ny, nz, mask_index,
                              np.zeros(nx * ny * nz, dtype=np.int64), experiment, voxel, value)
        reached = np.zeros(grid.n_voxels, dtype=bool)
        reached[voxel[:n]] = True
        support = np.flatnonzero(reached)  # ascending, as np.unique would give
        column = np.cumsum(reached) - 1
        log_maps = np.zeros((problem.n_experiments, support.size), dtype=np.float32)
        log_maps[experiment[:n], column[voxel[:n]]] = value[:n]
        return support, log_maps

    def observed_difference(self, spec: ContrastNullSpec) -> np.ndarray:
        return _numba_contrast.observed_difference(self._contrast_tables(spec))

    def null_chunk(self, spec, seed: int, first: int, count: int):
        """Permutations ``first .. first + count - 1`` of a global or contrast null."""
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        if getattr(spec, "kind", None) == _subsets.COACTIVATION:  # columns of a CBP
            return _numba_subsets.coactivation_chunk(self, spec, first, count)
        if getattr(spec, "kind", None) == "balanced":
            from gpuale.engines._balanced_chunk import balanced_null_chunk
            from gpuale.engines._numba_balanced import mean_no_activation

            return balanced_null_chunk(np, spec, seed, first, count, self.experiment_log_maps,
                                       mean_no_activation)
        if isinstance(spec, ScaleNullSpec):
            return self._scale_chunk(spec, seed, first, count)
        if not isinstance(spec, GlobalNullSpec):
            if tuple(spec.statistics) != CONTRAST_STATISTICS:
                return self._contrast_statistics(spec, seed, first, count)
            upper, lower, max_abs = _numba_contrast.contrast_chunk(
                self._contrast_tables(spec), seed, first, count)
            return ContrastNullPartial(upper, lower, {int(first): (max_abs,)})
        tables = self._tables_for(spec)
        cached = getattr(self._local, "scratch", None)
        if cached is None or cached[0] is not tables:
            cached = (tables, _Scratch(tables, spec.problem))
            self._local.scratch = cached
        scratch = cached[1]
        problem = spec.problem
        grid = problem.grid
        nx, ny, nz = tables.shape
        choices = relocation_draws(seed, first, count, problem.n_foci, grid.n_voxels)
        out = (np.empty(count), np.empty(count, dtype=np.int64), np.empty(count))
        if spec.tfce:
            out += (np.empty(count),)
        for b in range(count):
            flat = tables.in_mask_flat[choices[b]]
            ijk = np.stack(np.unravel_index(flat, tables.shape), axis=1)
            smallest, n = permuted_log_sum(
                ijk, tables.offsets, tables.focus_side, tables.focus_start,
                tables.focus_width, tables.log_table, nx, ny, nz, tables.in_mask_flat,
                tables.slab_mask_start, tables.slab_planes,
                tables.log_cut, *scratch.slab.arrays(), scratch.candidates,
                scratch.candidate_log, tables.row_lo, tables.row_hi,
            )
            out[0][b] = ale_from_log_sum(np.array([smallest]))[0]
            ale = ale_from_log_sum(scratch.candidate_log[:n]) if spec.tfce else None
            out[1][b], out[2][b] = self._largest_cluster(tables, scratch, n, ale)
            if spec.tfce:
                out[3][b] = self._largest_tfce(spec, tables, scratch, n, ale)
        return GlobalNullPartial.of(first, *out)

    def _scale_chunk(self, spec: ScaleNullSpec, seed: int, first: int,
                     count: int) -> ScaleNullPartial:
        """SCALE: each focus at a database focus's voxel, compiled (the numpy engine's
        fixed-point counts, bit for bit)."""
        problem = spec.problem
        grid = problem.grid
        nx, ny, nz = (int(n) for n in grid.shape)
        with self._lock:
            if self._scale is None or self._scale[0] is not spec:
                table, starts, widths = padded_table(
                    [fixed_neg_log_kernel(k) for k in problem.kernels], np.int64)
                sides = np.array([k.shape[0] for k in problem.kernels], dtype=np.int64)
                of_focus = problem.kernel_index[problem.focus_experiment]
                in_mask = np.ascontiguousarray(grid.in_mask_flat, dtype=np.int64)
                prepared = (
                    np.ascontiguousarray(problem.experiment_offsets, dtype=np.int64),
                    sides[of_focus], starts[of_focus], widths[of_focus], table,
                    nx, ny, nz, in_mask,
                    *slab_layout(grid.mask, in_mask, SLAB_BYTES, 8),
                )
                work = SlabWork((nx, ny, nz), prepared[9], problem.n_foci, np.int64)
                observed = np.empty(in_mask.size, dtype=np.int64)
                _scale_pass(np.ascontiguousarray(problem.focus_ijk, dtype=np.int64), prepared,
                            work, np.zeros(in_mask.size, dtype=np.int64),
                            np.zeros(in_mask.size, dtype=np.int64), observed)
                self._scale = (spec, prepared, observed)
            _, prepared, observed = self._scale
        cached = getattr(self._local, "scale_scratch", None)
        if cached is None or cached[0] is not prepared:
            cached = (prepared, SlabWork((nx, ny, nz), prepared[9], problem.n_foci, np.int64))
            self._local.scale_scratch = cached
        work = cached[1]
        counts = np.zeros(observed.size, dtype=np.int64)
        largest = np.empty(count, dtype=np.int64)
        draws = pool_draws(seed, first, count, problem.n_foci, spec.n_pool)
        nothing = np.empty(0, dtype=np.int64)
        for b in range(count):
            ijk = np.ascontiguousarray(spec.pool_ijk[draws[b]], dtype=np.int64)
            largest[b] = _scale_pass(ijk, prepared, work, observed, counts, nothing)
        return ScaleNullPartial.of(first, counts, ale_of_fixed(largest))

    def _largest_tfce(self, spec: GlobalNullSpec, tables: _GlobalTables, scratch: _Scratch,
                      n: int, ale: np.ndarray) -> float:
        """Largest TFCE of a permuted map: its candidates' z (the spec's table, so the
        observed data's analytic null), then the compiled union-find."""
        work = getattr(self._local, "tfce", None)
        if work is None or work[0] is not tables:
            work = (tables, tables.tfce_work().for_thread())
            self._local.tfce = work
        return largest_tfce(scratch.candidates[:n], ale, spec.tfce_z, work[1])

    @staticmethod
    def _largest_cluster(tables: _GlobalTables, scratch: _Scratch, n: int,
                         ale: np.ndarray | None = None) -> tuple[int, float]:
        if n == 0:
            return 0, 0.0
        if ale is None:
            ale = ale_from_log_sum(scratch.candidate_log[:n])
        keep = ale > tables.threshold
        if not keep.any():
            return 0, 0.0
        flat = tables.in_mask_flat[scratch.candidates[:n][keep]]
        excess = ale[keep].astype(np.float64) - tables.threshold
        nx, ny, nz = tables.shape
        return _largest_cluster(flat, excess, nx, ny, nz, tables.neighbours, scratch.label,
                                scratch.parent, scratch.size, scratch.mass)

    def _contrast_statistics(self, spec: ContrastNullSpec, seed: int, first: int,
                             count: int) -> ContrastNullPartial:
        """A chunk of a contrast null with histograms or cluster statistics."""
        results = _numba_contrast.statistics_chunk(self._contrast_tables(spec), spec, seed,
                                                   first, count)
        picked = results.pop("picked")
        if picked is not None:
            results["max_size"], results["max_mass"] = self._largest_contrast_clusters(
                spec, picked, count)
        return contrast_partial(first, results)

    def _largest_contrast_clusters(self, spec: ContrastNullSpec, picked, count: int):
        """Per permutation, the largest cluster size and mass of the supra-threshold
        voxels, positive and negative differences apart (the numpy engine's
        :func:`~gpuale.engines._contrast_blocks.largest_clusters`, by union-find)."""
        permutation, column, values = picked
        negative = values < 0
        # Grouped by (permutation, sign), each group in ascending voxel order, so that
        # masses are summed in the numpy engine's order.
        order = np.lexsort((column, negative, permutation))
        group = (2 * permutation + negative)[order]
        bounds = np.searchsorted(group, np.arange(2 * count + 1)).astype(np.int64)
        flat = np.ascontiguousarray(spec.voxel_flat[column[order]], dtype=np.int64)
        excess = (np.abs(values[order]).astype(np.float64)
                  - np.float64(np.float32(spec.cluster_forming_abs_difference)))
        nx, ny, nz = (int(n) for n in spec.shape)
        key = (nx, ny, nz, spec.n_voxels)
        cached = getattr(self._local, "contrast_scratch", None)
        if cached is None or cached[0] != key:
            cached = (key, np.full(nx * ny * nz, -1, dtype=np.int64),
                      np.empty(spec.n_voxels, dtype=np.int64),
                      np.empty(spec.n_voxels, dtype=np.int64),
                      np.empty(spec.n_voxels, dtype=np.float64))
            self._local.contrast_scratch = cached
        _, label, parent, size, mass = cached
        max_size = np.zeros(count, dtype=np.int64)
        max_mass = np.zeros(count, dtype=np.float64)
        _largest_per_group(bounds, flat, excess, nx, ny, nz,
                           earlier_neighbours(spec.connectivity), label, parent, size, mass,
                           max_size, max_mass)
        return max_size, max_mass

    def _contrast_tables(self, spec: ContrastNullSpec):
        with self._lock:
            # Specs of the same data (the passes of a cluster null) share the tables.
            if self._contrast is None or not self._contrast[0].same_data(spec):
                self._contrast = None  # free the previous tables first
                self._contrast = (spec, _numba_contrast.prepare(spec.log_maps, spec.n_a))
            return self._contrast[1]

    def _tables_for(self, spec: GlobalNullSpec) -> _GlobalTables:
        with self._lock:
            if self._tables is None or self._tables[0] is not spec:
                self._tables = (spec, _GlobalTables(spec))
            return self._tables[1]
