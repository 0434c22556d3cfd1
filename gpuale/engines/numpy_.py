"""The numpy engine: the definition of every computation, and the portable CPU path.

MA maps are never materialised as experiments x voxels. Each experiment's foci are
stamped into a scratch volume box by box (maximum of the kernel, Turkeltaub et al. 2012),
the experiment's contribution ``log1p(-MA)`` is added to a running log-sum box by box,
and the scratch boxes are cleared as they are read, so a voxel covered by several boxes
of one experiment is counted once. ``log1p(-kernel)`` is tabulated once per kernel, so a
permutation does no transcendental work until the final ``1 - exp(log-sum)``.

Global nulls hold the GIL (one numpy call per kernel box), so they run in processes;
contrast nulls spend their time in BLAS, which releases it, so they run on threads.
"""

from __future__ import annotations

import threading

import numpy as np

from gpuale.clusters import cluster_measures, connectivity_structure
from gpuale.engines import _contrast_blocks, _subsets
from gpuale.engines._boxes import clipped_boxes
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
from gpuale.tfce import tfce_definition

__all__ = ["NumpyEngine"]

#: Permutations per chunk of a global null (in a worker process) and of a contrast null.
GLOBAL_CHUNK = 8
CONTRAST_CHUNK = 128


def _focus_kernel_sides(problem: Problem, exp_of_focus: np.ndarray) -> np.ndarray:
    sides = np.array([k.shape[0] for k in problem.kernels], dtype=np.int64)
    return sides[problem.kernel_index[exp_of_focus]]


class _KernelRanks:
    """A kernel as ranks into its sorted distinct values, with ``log1p(-value)`` per rank."""

    def __init__(self, kernel: np.ndarray) -> None:
        values, inverse = np.unique(kernel, return_inverse=True)
        self.values = values
        self.ranks = (inverse.reshape(kernel.shape) + 1).astype(np.int32)
        # Rank 0 (untouched) adds log1p(-0) = 0. float32 log1p, as NiMARE applies it.
        self.log1m = np.concatenate([[0.0], np.log1p(-values).astype(np.float64)])


def flat_rank_tables(problem: Problem) -> tuple[list[_KernelRanks], np.ndarray, np.ndarray,
                                                np.ndarray, np.ndarray]:
    """Every kernel of a problem as :class:`_KernelRanks`, and their ranks and
    ``log1p(-value)`` laid end to end for the compiled and device passes:
    ``(tables, ranks, rank_start, log1m, log1m_start)``; ``*_start[k]`` is where kernel k
    begins."""
    tables = [_KernelRanks(k) for k in problem.kernels]
    rank_parts = [t.ranks.ravel() for t in tables]
    rank_start = np.concatenate([[0], np.cumsum([r.size for r in rank_parts])[:-1]])
    log1m_start = np.concatenate([[0], np.cumsum([t.log1m.size for t in tables])[:-1]])
    return (tables, np.concatenate(rank_parts), rank_start.astype(np.int64),
            np.concatenate([t.log1m for t in tables]), log1m_start.astype(np.int64))


class NumpyEngine:
    """The numpy engine (see the module docstring)."""

    name = "numpy"
    device = "cpu"

    def __init__(self) -> None:
        # Scratch volumes per thread; prepared contrast blocks are read-only and shared.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._contrast: tuple[ContrastNullSpec, list] | None = None

    def __getstate__(self) -> dict:
        return {}  # a worker process builds its own scratch

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def describe(self) -> str:
        return "the CPU"

    def chunk_size(self, spec) -> int:
        if getattr(spec, "kind", None) == _subsets.COACTIVATION:
            return spec.chunk_columns
        return GLOBAL_CHUNK if isinstance(spec, GlobalNullSpec | ScaleNullSpec) else CONTRAST_CHUNK

    def concurrency(self, spec) -> str:
        return "processes" if isinstance(spec, GlobalNullSpec | ScaleNullSpec) else "threads"

    def observed_ale(self, problem: Problem) -> ObservedALE:
        """ALE map of the observed foci, with each experiment's MA values."""
        grid = problem.grid
        shape = grid.shape
        mask = grid.mask
        log_sum = np.zeros(shape, dtype=np.float64)
        # The MA of a voxel is the largest kernel value stamped on it, so it is enough to
        # stamp each value's rank (0 = untouched) and look values up afterwards.
        scratch = np.zeros(shape, dtype=np.int32)
        tables = [_KernelRanks(k) for k in problem.kernels]
        exp_of_focus = problem.focus_experiment
        lo, hi, klo, khi = clipped_boxes(
            problem.focus_ijk, _focus_kernel_sides(problem, exp_of_focus), shape
        )
        focus_ids = np.flatnonzero(np.all(hi > lo, axis=1))
        boxes = [
            (
                (slice(x0, x1), slice(y0, y1), slice(z0, z1)),
                (slice(a0, a1), slice(b0, b1), slice(c0, c1)),
            )
            for (x0, y0, z0), (x1, y1, z1), (a0, b0, c0), (a1, b1, c1) in zip(
                lo[focus_ids].tolist(), hi[focus_ids].tolist(), klo[focus_ids].tolist(),
                khi[focus_ids].tolist(),
            )
        ]
        ma_values = []
        for e in range(problem.n_experiments):
            table = tables[problem.kernel_index[e]]
            first, stop = np.searchsorted(focus_ids, problem.experiment_offsets[e : e + 2])
            for vol_box, ker_box in boxes[first:stop]:
                sub = scratch[vol_box]
                np.maximum(sub, table.ranks[ker_box], out=sub)
            counts = np.zeros(table.values.size + 1, dtype=np.int64)
            for vol_box, _ in boxes[first:stop]:
                sub = scratch[vol_box]
                log_sum[vol_box] += table.log1m[sub]
                counts += np.bincount(sub[mask[vol_box]], minlength=counts.size)
                sub.fill(0)  # a voxel in several boxes of this experiment counts once
            used = np.flatnonzero(counts[1:])
            ma_values.append((table.values[used], counts[1:][used]))
        masked = log_sum.reshape(-1)[grid.in_mask_flat]
        return ObservedALE(ale=ale_from_log_sum(masked), log_sum=masked, ma_values=ma_values)

    def experiment_log_maps(self, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
        """``log1p(-MA)`` of every experiment over the voxels any experiment reaches.

        Returns
        -------
        support : ndarray of int64
            In-mask voxel indices with a non-zero MA in some experiment.
        log_maps : ndarray of float32, shape (n_experiments, support.size)
            float32 ``log1p(-MA)`` (exact: that is how it is computed), 0 where MA = 0.
        """
        rows = []
        for e in range(problem.n_experiments):
            log_sum = self.observed_ale(problem.subset([e])).log_sum
            touched = np.flatnonzero(log_sum)
            rows.append((touched, log_sum[touched].astype(np.float32)))
        support = np.unique(np.concatenate([touched for touched, _ in rows]))
        log_maps = np.zeros((problem.n_experiments, support.size), dtype=np.float32)
        for e, (touched, values) in enumerate(rows):
            log_maps[e, np.searchsorted(support, touched)] = values
        return support, log_maps

    def subset_ale_maps(self, spec: _subsets.CoactivationSpec, first: int,
                        count: int) -> np.ndarray:
        """ALE maps of nested experiment subsets at columns ``first .. first + count - 1``
        (:mod:`gpuale.engines._subsets`; this is its definition)."""
        _subsets.check_chunk(spec, first, count)
        pool = _subsets.pool_log_maps(spec.problem, first, count, self.experiment_log_maps)
        return _subsets.subset_maps_definition(spec, pool, 0, count)

    def null_chunk(self, spec, seed: int, first: int, count: int):
        """Permutations ``first .. first + count - 1`` of a global or contrast null (or
        columns of a co-activation spec: sums and products of the maps there)."""
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        if getattr(spec, "kind", None) == _subsets.COACTIVATION:
            _subsets.check_chunk(spec, first, count)
            pool = _subsets.pool_log_maps(spec.problem, first, count,
                                          self.experiment_log_maps)
            return _subsets.coactivation_partial(
                np, spec, first, count,
                lambda lo, hi: _subsets.subset_maps_definition(spec, pool, lo, hi))
        if getattr(spec, "kind", None) == "balanced":
            from gpuale.engines._balanced_chunk import balanced_null_chunk

            return balanced_null_chunk(np, spec, seed, first, count, self.experiment_log_maps)
        if isinstance(spec, GlobalNullSpec):
            return self._global_chunk(spec, seed, first, count)
        if isinstance(spec, ScaleNullSpec):
            return self._scale_chunk(spec, seed, first, count)
        blocks = self._blocks(spec)
        if tuple(spec.statistics) != CONTRAST_STATISTICS:
            return contrast_partial(
                first, _contrast_blocks.statistics_chunk(np, blocks, spec, seed, first, count))
        upper, lower, max_abs = _contrast_blocks.contrast_chunk(
            np, blocks, spec.n_voxels, seed, first, count, spec.n_total, spec.n_a
        )
        return ContrastNullPartial(upper, lower, {int(first): (max_abs.astype(np.float64),)})

    def observed_difference(self, spec: ContrastNullSpec) -> np.ndarray:
        return _contrast_blocks.observed_difference(np, self._blocks(spec), spec.n_voxels)

    def _blocks(self, spec: ContrastNullSpec) -> list:
        with self._lock:
            # The cache holds the spec itself, so its log maps' id cannot be reused by
            # another; specs of the same data (the passes of a cluster null) share blocks.
            if self._contrast is None or not self._contrast[0].same_data(spec):
                self._contrast = (spec, _contrast_blocks.voxel_blocks(np, spec.log_maps,
                                                                      spec.n_a))
            return self._contrast[1]

    def _global_chunk(self, spec: GlobalNullSpec, seed: int, first: int,
                      count: int) -> GlobalNullPartial:
        cached = getattr(self._local, "permutation", None)
        if cached is None or cached[0] is not spec:
            cached = (spec, _PermutationScratch(spec.problem, spec.threshold,
                                                spec.connectivity))
            self._local.permutation = cached
        scratch = cached[1]
        problem = spec.problem
        grid = problem.grid
        out = (
            np.empty(count, dtype=np.float64),
            np.empty(count, dtype=np.int64),
            np.empty(count, dtype=np.float64),
        )
        if spec.tfce:
            out += (np.empty(count, dtype=np.float64),)
        for b in range(count):
            choice = relocation_draws(seed, first + b, 1, problem.n_foci, grid.n_voxels)[0]
            flat = grid.in_mask_flat[choice]
            ijk = np.stack(np.unravel_index(flat, grid.shape), axis=1)
            log_sum = scratch.log_sum(ijk)
            out[0][b], out[1][b], out[2][b] = scratch.maxima(log_sum)
            if spec.tfce:  # the definition: one labelling per height
                volume = np.zeros(grid.mask.size, dtype=np.float64)
                volume[grid.in_mask_flat] = spec.tfce_z(ale_from_log_sum(log_sum))
                out[3][b] = tfce_definition(volume.reshape(grid.shape)).max()
        return GlobalNullPartial.of(first, *out)

    def _scale_chunk(self, spec: ScaleNullSpec, seed: int, first: int,
                     count: int) -> ScaleNullPartial:
        """SCALE: foci at database foci's voxels; counts of fixed-point -S >= observed."""
        cached = getattr(self._local, "scale", None)
        if cached is None or cached[0] is not spec:
            scratch = _ScaleScratch(spec.problem)
            cached = (spec, scratch, scratch.neg_log_sum(spec.problem.focus_ijk))
            self._local.scale = cached
        _, scratch, observed = cached
        counts = np.zeros(spec.problem.grid.n_voxels, dtype=np.int64)
        largest = np.empty(count, dtype=np.int64)
        draws = pool_draws(seed, first, count, spec.problem.n_foci, spec.n_pool)
        for b in range(count):
            neg = scratch.neg_log_sum(spec.pool_ijk[draws[b]])
            counts += neg >= observed
            largest[b] = neg.max()
        return ScaleNullPartial.of(first, counts, ale_of_fixed(largest))


class _ScaleScratch:
    """SCALE's fixed-point ``-S`` of one configuration of the foci (the definition)."""

    def __init__(self, problem: Problem) -> None:
        self.grid = problem.grid
        tables = [fixed_neg_log_kernel(k) for k in problem.kernels]
        exp_of_focus = problem.focus_experiment
        self.focus_table = [tables[k] for k in problem.kernel_index[exp_of_focus]]
        self.sides = _focus_kernel_sides(problem, exp_of_focus)
        offsets = problem.experiment_offsets.tolist()
        self.ranges = list(zip(offsets[:-1], offsets[1:]))
        self.scratch = np.zeros(self.grid.shape, dtype=np.int64)
        self.total = np.zeros(self.grid.shape, dtype=np.int64)

    def neg_log_sum(self, ijk: np.ndarray) -> np.ndarray:
        """In-mask ``-sum_e log1p(-MA_e)`` (fixed point) for foci at ``ijk``: per
        experiment the largest kernel term of its foci, added once (integers: any order
        gives the same sum)."""
        scratch, total = self.scratch, self.total
        total.fill(0)
        lo, hi, klo, khi = clipped_boxes(ijk, self.sides, self.grid.shape)
        inside = np.all(hi > lo, axis=1).tolist()  # a box wholly off the grid adds nothing
        boxes = [((slice(x0, x1), slice(y0, y1), slice(z0, z1)),
                  (slice(a0, a1), slice(b0, b1), slice(c0, c1)))
                 for (x0, y0, z0), (x1, y1, z1), (a0, b0, c0), (a1, b1, c1)
                 in zip(lo.tolist(), hi.tolist(), klo.tolist(), khi.tolist())]
        for start, stop in self.ranges:
            foci = [f for f in range(start, stop) if inside[f]]
            for f in foci:
                box, kbox = boxes[f]
                sub = scratch[box]
                np.maximum(sub, self.focus_table[f][kbox], out=sub)
            for f in foci:
                box = boxes[f][0]
                total[box] += scratch[box]
                scratch[box] = 0  # a voxel in several boxes of this experiment counts once
        return total.reshape(-1)[self.grid.in_mask_flat]


class _PermutationScratch:
    """Scratch volumes and tables reused across the permutations of one worker."""

    def __init__(self, problem: Problem, threshold: float, connectivity: int) -> None:
        self.problem = problem
        self.grid = problem.grid
        # NiMARE compares float32 ALE with a float64 bin centre: in float64.
        self.threshold = np.float64(threshold)
        self.structure = connectivity_structure(connectivity)
        # float32 log1p (as NiMARE), held as float64 so adds need no casting.
        self.log_kernels = [np.log1p(-k).astype(np.float64) for k in problem.kernels]
        self.scratch = np.zeros(self.grid.shape, dtype=np.float64)
        self.sum_volume = np.zeros(self.grid.shape, dtype=np.float64)
        exp_of_focus = problem.focus_experiment
        self.sides = _focus_kernel_sides(problem, exp_of_focus)
        self.focus_log_kernel = [self.log_kernels[k] for k in problem.kernel_index[exp_of_focus]]
        offsets = problem.experiment_offsets.tolist()
        self.experiment_ranges = list(zip(offsets[:-1], offsets[1:]))
        self.pairs = _pairs_within_experiments(problem.experiment_offsets)
        # ALE > t  <=>  log-sum < log1p(-t); a small slack admits every voxel whose
        # float32 ALE could round above t, and the exact test is made on those.
        self.log_cut = float(np.log1p(-self.threshold * (1 - 1e-6)))

    def log_sum(self, ijk: np.ndarray) -> np.ndarray:
        """In-mask ``sum_e log1p(-MA_e)`` for foci at ``ijk`` (n_foci x 3)."""
        scratch, total = self.scratch, self.sum_volume
        total.fill(0.0)
        lo, hi, klo, khi = clipped_boxes(ijk, self.sides, self.grid.shape)
        shared = self._shares_box(ijk)
        lo, hi, klo, khi = lo.tolist(), hi.tolist(), klo.tolist(), khi.tolist()
        for start, stop in self.experiment_ranges:
            overlapping = [f for f in range(start, stop) if shared[f]]
            for f in range(start, stop):
                if shared[f]:
                    continue
                # A box no other focus of the experiment touches: its MA is the kernel.
                (x0, y0, z0), (x1, y1, z1) = lo[f], hi[f]
                (a0, b0, c0), (a1, b1, c1) = klo[f], khi[f]
                total[x0:x1, y0:y1, z0:z1] += self.focus_log_kernel[f][a0:a1, b0:b1, c0:c1]
            for f in overlapping:
                (x0, y0, z0), (x1, y1, z1) = lo[f], hi[f]
                (a0, b0, c0), (a1, b1, c1) = klo[f], khi[f]
                sub = scratch[x0:x1, y0:y1, z0:z1]
                np.minimum(sub, self.focus_log_kernel[f][a0:a1, b0:b1, c0:c1], out=sub)
            for f in overlapping:
                (x0, y0, z0), (x1, y1, z1) = lo[f], hi[f]
                sub = scratch[x0:x1, y0:y1, z0:z1]
                total[x0:x1, y0:y1, z0:z1] += sub
                sub.fill(0.0)  # a voxel in several boxes counts once
        return total.reshape(-1)[self.grid.in_mask_flat]

    def _shares_box(self, ijk: np.ndarray) -> np.ndarray:
        """Whether each focus's kernel box overlaps another box of its experiment."""
        first, second = self.pairs
        reach = (self.sides[first] + self.sides[second]) // 2
        close = np.all(np.abs(ijk[first] - ijk[second]) <= reach[:, None], axis=1)
        shared = np.zeros(len(ijk), dtype=bool)
        shared[first[close]] = True
        shared[second[close]] = True
        return shared.tolist()

    def maxima(self, log_sum: np.ndarray) -> tuple[float, int, float]:
        """(max ALE, largest cluster size, largest cluster mass) of one permuted map."""
        max_ale = float(ale_from_log_sum(np.array([log_sum.min()]))[0])
        candidates = np.flatnonzero(log_sum < self.log_cut)
        if candidates.size == 0:
            return max_ale, 0, 0.0
        ale = ale_from_log_sum(log_sum[candidates])
        keep = ale > self.threshold
        if not keep.any():
            return max_ale, 0, 0.0
        sizes, masses, _ = cluster_measures(
            self.grid.in_mask_flat[candidates[keep]],
            ale[keep].astype(np.float64) - self.threshold,
            self.grid.shape,
            self.structure,
        )
        return max_ale, int(sizes.max()), float(masses.max())


def _pairs_within_experiments(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j), i < j, of foci in the same experiment."""
    firsts, seconds = [], []
    for start, stop in zip(offsets[:-1], offsets[1:]):
        i, j = np.triu_indices(int(stop - start), k=1)
        firsts.append(i + start)
        seconds.append(j + start)
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)
