"""The contrast null as batched matrix products, for any array module (numpy or CuPy).

Every experiment's ``L = log1p(-MA)`` is held once, quantized (:data:`LOG_SCALE`); a chunk
of splits is a 0/1 matrix G, so the group-A log-sums of a chunk are one matrix product
``G @ L`` (BLAS on the CPU, cuBLAS on the GPU), taken block of voxels by block of voxels.

ALE_A - ALE_B = exp(S_pool - S_A) - exp(S_A) falls strictly as the group-A log-sum S_A
rises (S_pool is the same for every split), so a permuted difference reaches the observed
one exactly when its S_A is at most the observed S_A: the exceedance counts need no
exponentials. The largest |difference| of each permutation (voxel-level FWE) is evaluated
in float32, and only where it can occur: blocks are visited by falling pooled ALE, which
bounds |ALE_A - ALE_B|, and the search stops once that bound is below every permutation's
maximum so far.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuale.rng import random_splits
from gpuale.stats import LOG_SCALE, quantize_log_maps

#: Voxels per block of the L matrix.
VOXEL_BLOCK = 4096


def _ale_difference(xp, sum_a, total, dtype):
    """ALE_A - ALE_B = exp(S_B) - exp(S_A), with S_B = S_pool - S_A exact (2**-40 units).

    Equal group sums give exactly 0.
    """
    survival_b = ((total - sum_a) * (1.0 / LOG_SCALE)).astype(dtype)
    survival_a = (sum_a * (1.0 / LOG_SCALE)).astype(dtype)
    xp.exp(survival_b, out=survival_b)
    xp.exp(survival_a, out=survival_a)
    survival_b -= survival_a
    return survival_b


class VoxelBlock:
    """One block of voxels: its quantized log maps, pooled log-sum and observed sums."""

    def __init__(self, xp, log_maps: np.ndarray, columns: np.ndarray,
                 observed_split: np.ndarray) -> None:
        self.columns = xp.asarray(columns)
        self.log = xp.asarray(quantize_log_maps(log_maps[:, columns]))
        self.total = self.log.sum(axis=0)[None, :]
        self.observed = xp.asarray(observed_split) @ self.log
        # |ALE_A - ALE_B| <= max(ALE_A, ALE_B) <= ALE of the pool, whatever the split.
        self.ceiling = float(1.0 - np.exp(float(self.total.min()) / LOG_SCALE))

    def count(self, xp, splits, upper, lower):
        """Add one chunk's exceedances; return the group-A log-sums."""
        sum_a = splits @ self.log
        upper[self.columns] += xp.count_nonzero(sum_a <= self.observed[None, :], axis=0)
        lower[self.columns] += xp.count_nonzero(sum_a >= self.observed[None, :], axis=0)
        return sum_a

    def largest_difference(self, xp, sum_a):
        diff = _ale_difference(xp, sum_a, self.total, xp.float32)
        return xp.maximum(diff.max(axis=1), -diff.min(axis=1))

    def observed_difference(self, xp):
        return _ale_difference(xp, self.observed[None, :], self.total, xp.float64)[0]


def voxel_blocks(xp, log_maps: np.ndarray, n_a: int) -> list[VoxelBlock]:
    """The blocks of a contrast, by falling pooled ALE (group A's rows first)."""
    observed_split = np.zeros(log_maps.shape[0])
    observed_split[:n_a] = 1.0
    by_pooled_ale = np.argsort(log_maps.astype(np.float64).sum(axis=0), kind="stable")
    return [
        VoxelBlock(xp, log_maps, by_pooled_ale[a : a + VOXEL_BLOCK], observed_split)
        for a in range(0, log_maps.shape[1], VOXEL_BLOCK)
    ]


def contrast_chunk(xp, blocks: list[VoxelBlock], n_voxels: int, seed: int, first: int,
                   count: int, n_total: int, n_a: int) -> tuple[Any, Any, Any]:
    """``(upper, lower, max_abs)`` of permutations ``first .. first + count - 1``, as
    arrays of ``xp``."""
    splits = xp.asarray(random_splits(seed, first, count, n_total, n_a), dtype=xp.float64)
    upper = xp.zeros(n_voxels, dtype=xp.int64)
    lower = xp.zeros(n_voxels, dtype=xp.int64)
    chunk_max = xp.zeros(count, dtype=xp.float32)
    still_open = True
    for block in blocks:
        sum_a = block.count(xp, splits, upper, lower)
        # synchronize: one scalar per block while the maxima are still open
        still_open = still_open and block.ceiling >= float(chunk_max.min())
        if still_open:
            xp.maximum(chunk_max, block.largest_difference(xp, sum_a), out=chunk_max)
    return upper, lower, chunk_max


def statistics_chunk(xp, blocks: list[VoxelBlock], spec, seed: int, first: int,
                     count: int) -> dict:
    """Every statistic of a :class:`~gpuale.nullspecs.ContrastNullSpec` for permutations
    ``first .. first + count - 1``, from every voxel's float32 difference (the definition
    of the histogram and cluster statistics; no voxel is skipped).

    Returns
    -------
    dict
        ``upper``, ``lower`` (None without ``exceedance``), ``max_abs`` (float64),
        ``histogram`` and ``above`` (None and inf without a histogram), ``max_size`` and
        ``max_mass`` (None without cluster statistics); host (numpy) arrays.
    """
    from gpuale.nullspecs import ABS_DIFFERENCE_HISTOGRAM, abs_difference_histogram

    statistics = spec.statistics
    splits = xp.asarray(random_splits(seed, first, count, spec.n_total, spec.n_a),
                        dtype=xp.float64)
    exceedance = "exceedance" in statistics
    upper = xp.zeros(spec.n_voxels, dtype=xp.int64) if exceedance else None
    lower = xp.zeros(spec.n_voxels, dtype=xp.int64) if exceedance else None
    chunk_max = xp.zeros(count, dtype=xp.float32)
    histogram, above = None, float("inf")
    clusters = "max_cluster_size" in statistics
    threshold = np.float32(spec.cluster_forming_abs_difference) if clusters else None
    picked = []
    still_open = True
    for block in blocks:
        if exceedance:
            sum_a = block.count(xp, splits, upper, lower)
        else:
            sum_a = splits @ block.log
        diff = _ale_difference(xp, sum_a, block.total, xp.float32)
        magnitude = xp.abs(diff)
        # The largest |difference| exactly as contrast_chunk finds it (the same blocks
        # searched), so that it does not depend on what else is collected.
        still_open = still_open and block.ceiling >= float(chunk_max.min())
        if still_open:
            xp.maximum(chunk_max, magnitude.max(axis=1), out=chunk_max)
        if ABS_DIFFERENCE_HISTOGRAM in statistics:
            counts, smallest = abs_difference_histogram(xp, magnitude, spec.histogram_bin,
                                                        spec.histogram_floor)
            histogram = counts if histogram is None else histogram + counts
            above = min(above, smallest)
        if clusters:
            permutation, column = xp.nonzero(magnitude > threshold)
            picked.append((permutation, block.columns[column], diff[permutation, column]))
    out = {
        "upper": None if upper is None else _host(upper),
        "lower": None if lower is None else _host(lower),
        # synchronize: a chunk's results come back once
        "max_abs": _host(chunk_max).astype(np.float64),
        "histogram": None if histogram is None else _host(histogram),
        "above": above,
        "max_size": None,
        "max_mass": None,
    }
    if clusters:
        if picked:
            permutation, column, values = (
                np.concatenate([_host(part[i]) for part in picked]) for i in range(3)
            )
        else:
            permutation = column = np.zeros(0, np.int64)
            values = np.zeros(0, np.float32)
        out["max_size"], out["max_mass"] = largest_clusters(
            permutation, column, values, count, spec.voxel_flat, spec.shape,
            spec.connectivity, threshold)
    return out


def largest_clusters(permutation: np.ndarray, column: np.ndarray, values: np.ndarray,
                     count: int, voxel_flat: np.ndarray, shape: tuple[int, int, int],
                     connectivity: int, threshold) -> tuple[np.ndarray, np.ndarray]:
    """Per permutation, the largest cluster size and mass of its supra-threshold voxels.

    Parameters
    ----------
    permutation, column, values : ndarray
        The supra-threshold (|difference| > threshold) voxels of every permutation of a
        chunk: permutation within the chunk, column and float32 difference, in any order.
    count : int
        Permutations in the chunk.
    voxel_flat, shape, connectivity
        The columns' places in the volume and the neighbourhood.
    threshold : float32
        The cluster-forming |difference|.

    Returns
    -------
    max_size : ndarray of int64, shape (count,)
    max_mass : ndarray of float64, shape (count,)
        Positive and negative differences are labelled apart and the largest over both
        kept, as NiMARE's ``_calculate_cluster_measures(tail="two")``; a cluster's mass is
        the sum of float64 (|difference| - threshold) over its voxels in ascending order.
    """
    from gpuale.clusters import cluster_measures, connectivity_structure

    structure = connectivity_structure(connectivity)
    order = np.lexsort((column, permutation))
    permutation, column, values = permutation[order], column[order], values[order]
    bounds = np.searchsorted(permutation, np.arange(count + 1))
    max_size = np.zeros(count, dtype=np.int64)
    max_mass = np.zeros(count, dtype=np.float64)
    cut = np.float64(np.float32(threshold))
    for p in range(count):
        part = slice(bounds[p], bounds[p + 1])
        for tail in (values[part] > 0, values[part] < 0):
            if not tail.any():
                continue
            flat = voxel_flat[column[part][tail]]
            excess = np.abs(values[part][tail]).astype(np.float64) - cut
            sizes, masses, _ = cluster_measures(flat, excess, shape, structure)
            max_size[p] = max(max_size[p], int(sizes.max()))
            max_mass[p] = max(max_mass[p], float(masses.max()))
    return max_size, max_mass


def _host(array) -> np.ndarray:
    """A device array's values on the host (numpy arrays pass through)."""
    return array if isinstance(array, np.ndarray) else array.get()


def observed_difference(xp, blocks: list[VoxelBlock], n_voxels: int):
    """Observed ALE_A - ALE_B (float64) at every voxel of the blocks."""
    diff = xp.zeros(n_voxels, dtype=xp.float64)
    for block in blocks:
        diff[block.columns] = block.observed_difference(xp)
    return diff
