"""The numpy/scipy backend: the definition of every computation, and the laptop path.

MA maps are never materialised as experiments x voxels. Each experiment's foci are
stamped into a scratch volume box by box (maximum of the kernel, Turkeltaub et al. 2012),
the experiment's contribution ``log1p(-MA)`` is added to a running log-sum box by box,
and the scratch boxes are cleared as they are read, so a voxel covered by several boxes
of one experiment is counted once. ``log1p(-kernel)`` is tabulated once per kernel, so a
permutation does no transcendental work until the final ``1 - exp(log-sum)``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from gpuale.backends._boxes import clipped_boxes
from gpuale.problem import Problem
from gpuale.rng import relocation_draws

__all__ = ["NumpyBackend", "ObservedALE", "connectivity_structure"]

CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


def connectivity_structure(connectivity: int) -> np.ndarray:
    """Structuring element for 6 (faces), 18 (edges) or 26 (corners) connectivity."""
    if connectivity not in CONNECTIVITY_RANK:
        raise ValueError(f"connectivity must be one of 6, 18, 26; got {connectivity!r}")
    return ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[connectivity])


@dataclasses.dataclass(frozen=True, eq=False)
class ObservedALE:
    """ALE of the observed foci, and what the analytic null needs.

    Attributes
    ----------
    ale : ndarray of float32, shape (n_voxels,)
        In-mask ALE values.
    log_sum : ndarray of float64, shape (n_voxels,)
        ``sum_e log1p(-MA_e)`` at every in-mask voxel.
    ma_values : list of (values, counts)
        Per experiment: distinct non-zero in-mask MA values (float32) and their counts.
    """

    ale: np.ndarray
    log_sum: np.ndarray
    ma_values: list[tuple[np.ndarray, np.ndarray]]


def ale_from_log_sum(log_sum: np.ndarray) -> np.ndarray:
    """ALE = 1 - prod(1 - MA), from the log-sum, rounded to float32 as NiMARE stores it."""
    return (1.0 - np.exp(log_sum)).astype(np.float32)


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


class NumpyBackend:
    """Reference backend on the CPU."""

    name = "cpu"

    def __init__(self) -> None:
        self._engine: _PermutationEngine | None = None
        self._engine_key: tuple | None = None

    def _engine_for(self, problem: Problem, threshold: float, connectivity: int):
        key = (id(problem), float(threshold), int(connectivity))
        if self._engine_key != key:
            self._engine = _PermutationEngine(problem, threshold, connectivity)
            self._engine_key = key
        return self._engine

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

    def null_batch(
        self,
        problem: Problem,
        seed: int,
        first: int,
        count: int,
        threshold: float,
        connectivity: int = 6,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Monte Carlo null maxima for permutations ``first .. first + count - 1``.

        Returns
        -------
        max_ale : ndarray of float64, shape (count,)
        max_cluster_size : ndarray of int64, shape (count,)
            Largest cluster (voxels) of ALE > ``threshold``.
        max_cluster_mass : ndarray of float64, shape (count,)
            Largest sum of (ALE - threshold) over a cluster.
        """
        engine = self._engine_for(problem, threshold, connectivity)
        out = (
            np.empty(count, dtype=np.float64),
            np.empty(count, dtype=np.int64),
            np.empty(count, dtype=np.float64),
        )
        grid = problem.grid
        for b in range(count):
            choice = relocation_draws(seed, first + b, 1, problem.n_foci, grid.n_voxels)[0]
            flat = grid.in_mask_flat[choice]
            ijk = np.stack(np.unravel_index(flat, grid.shape), axis=1)
            log_sum = engine.log_sum(ijk)
            out[0][b], out[1][b], out[2][b] = engine.maxima(log_sum)
        return out


class _PermutationEngine:
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


def cluster_measures(
    flat_voxels: np.ndarray, excess: np.ndarray, shape: tuple[int, int, int], structure: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters formed by some voxels: sizes, masses and each voxel's label (1-based).

    Labels only the bounding box of the given (supra-threshold) voxels.
    """
    ijk = np.stack(np.unravel_index(flat_voxels, shape), axis=1)
    origin = ijk.min(axis=0)
    local = ijk - origin
    box = np.zeros(tuple(local.max(axis=0) + 1), dtype=bool)
    box[tuple(local.T)] = True
    labels, _ = ndimage.label(box, structure)
    voxel_labels = labels[tuple(local.T)]
    sizes = np.bincount(voxel_labels)[1:]
    masses = np.bincount(voxel_labels, weights=excess)[1:]
    return sizes, masses, voxel_labels
