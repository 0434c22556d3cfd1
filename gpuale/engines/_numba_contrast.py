"""The contrast null compiled with numba, from the sparse log maps.

The same numbers as :func:`gpuale.engines._contrast_blocks.contrast_chunk`, bit for bit,
for any seed and chunk of permutations.

Each voxel is reached by a few experiments only, so the quantized log maps (integer units
of 2**-40, :data:`gpuale.stats.LOG_SCALE`) are held per voxel in compressed sparse rows of
int64: a split's group-A log-sum S_A is added up from a voxel's nonzeros alone, for every
permutation of a chunk at once (the inner loop runs over permutations, so it vectorizes).
Integer sums are exact in any order, as the float64 matrix products of the block code
are (every partial sum is a whole number below 2**53), so the exceedance counts
``S_A <= S_obs`` and ``S_A >= S_obs`` agree exactly.

The largest |ALE_A - ALE_B| of each permutation is evaluated in float32 as the block code
does it, and only where the block code evaluates it: blocks of :data:`VOXEL_BLOCK` voxels
by falling pooled ALE, stopping at the first block whose pooled-ALE ceiling is below every
permutation's maximum so far. Inside a block that is still open, a (voxel, permutation)
pair is skipped when even the voxel's pooled ALE plus a rounding margin cannot reach that
permutation's maximum so far, so it cannot change the result. The exponentials of the
remaining pairs are taken by numpy, because numba's ``exp`` may differ from numpy's
vectorized float32 ``exp`` in the last bit.

The compiled functions release the GIL (``nogil=True``) and keep no state between calls,
so several threads may run chunks of one :class:`ContrastTables` at once.
"""

from __future__ import annotations

import dataclasses

import numba
import numpy as np

from gpuale.engines._contrast_blocks import VOXEL_BLOCK
from gpuale.rng import random_splits
from gpuale.stats import LOG_SCALE, quantize_log_maps

__all__ = ["ContrastTables", "contrast_chunk", "observed_difference", "prepare"]

#: Added to a voxel's pooled ALE before comparing it with a permutation's maximum so far.
#: |ALE_A - ALE_B| <= pooled ALE holds exactly; the float32 difference may exceed the
#: exact one by the rounding of both exponents to float32 (relative 2**-24, which moves
#: exp(x) by at most exp(x) |x| 2**-24 < 2**-25), numpy's float32 ``exp`` (a few units in
#: the last place of a value below 1, each 2**-24 at most) and the subtraction (2**-24):
#: below 2**-20 in all. The margin leaves a wide berth and costs only a few extra pairs.
CEILING_MARGIN = 2.0**-16
#: Nonzeros a row holds come in whole groups of this many (padded with zeros).
NONZERO_GROUP = 4
#: (voxel, permutation) pairs whose exponentials are taken by one numpy call; small
#: batches let a permutation's maximum rise early inside a block, so more pairs are skipped.
PAIR_BATCH = 1 << 14

_INVERSE_SCALE = 1.0 / LOG_SCALE


@dataclasses.dataclass(frozen=True, eq=False)
class ContrastTables:
    """A contrast's quantized log maps as sparse rows, in falling pooled-ALE order.

    Row ``r`` of every per-row array belongs to voxel ``order[r]``; the rows of block
    ``b`` are ``block_starts[b] .. block_starts[b + 1] - 1``.

    Attributes
    ----------
    n_total, n_a : int
        Pooled experiments and the size of group A (the first ``n_a`` experiments).
    order : ndarray of int64, shape (n_voxels,)
        Voxel of each row (the block code's order).
    indptr : ndarray of int64, shape (n_voxels + 1,)
        Row ``r``'s nonzeros are ``indptr[r] .. indptr[r + 1] - 1``.
    experiments : ndarray of int64, shape (nnz,)
        Experiment of each nonzero; ``n_total`` for the padding that fills each row to
        whole groups of :data:`NONZERO_GROUP` (its value is 0).
    values : ndarray of int64, shape (nnz,)
        Quantized ``log1p(-MA)`` of each nonzero (units of 2**-40, <= 0).
    observed, total : ndarray of int64, shape (n_voxels,)
        Group-A log-sum of the observed split, and the pooled log-sum, per row.
    reach : ndarray of float64, shape (n_voxels,)
        Pooled ALE plus :data:`CEILING_MARGIN`, per row: no split's float32
        |ALE_A - ALE_B| exceeds it.
    block_starts : ndarray of int64, shape (n_blocks + 1,)
    block_ceilings : ndarray of float64, shape (n_blocks,)
        The block code's ceiling of each block (its largest pooled ALE).
    """

    n_total: int
    n_a: int
    order: np.ndarray
    indptr: np.ndarray
    experiments: np.ndarray
    values: np.ndarray
    observed: np.ndarray
    total: np.ndarray
    reach: np.ndarray
    block_starts: np.ndarray
    block_ceilings: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(self.order.size)


def prepare(log_maps: np.ndarray, n_a: int) -> ContrastTables:
    """The tables of a contrast.

    Parameters
    ----------
    log_maps : ndarray of float32, shape (n_experiments, n_voxels)
        ``log1p(-MA)`` of every pooled experiment, group A's rows first.
    n_a : int
        Size of group A.

    Raises
    ------
    ValueError
        If a group could be empty, or a log-sum could reach 2**53 (see
        :func:`gpuale.stats.quantize_log_maps`).
    """
    log_maps = np.asarray(log_maps)
    if log_maps.ndim != 2:
        raise ValueError(f"log_maps must be experiments x voxels, got shape {log_maps.shape}")
    n_total, n_voxels = log_maps.shape
    if not 0 < n_a < n_total:
        raise ValueError(f"both groups need experiments: group A has {n_a} of {n_total}")
    # The block code's order, from the same expression, so that ties fall the same way.
    order = np.argsort(log_maps.astype(np.float64).sum(axis=0), kind="stable")
    # Whole numbers below 2**53 in magnitude (checked), so int64 holds them exactly.
    by_row = np.ascontiguousarray(quantize_log_maps(log_maps).T[order]).astype(np.int64)
    rows, columns = np.nonzero(by_row)
    nnz = np.bincount(rows, minlength=n_voxels)
    # Padding: experiment n_total, whose mask row is all zeros, with value 0.
    padded = -(-nnz // NONZERO_GROUP) * NONZERO_GROUP
    indptr = np.zeros(n_voxels + 1, dtype=np.int64)
    np.cumsum(padded, out=indptr[1:])
    slots = np.arange(rows.size) + np.repeat(indptr[:-1] - (np.cumsum(nnz) - nnz), nnz)
    experiments = np.full(indptr[-1], n_total, dtype=np.int64)
    experiments[slots] = columns
    values = np.zeros(indptr[-1], dtype=np.int64)
    values[slots] = by_row[rows, columns]
    total = by_row.sum(axis=1)
    observed = by_row[:, :n_a].sum(axis=1)
    reach = (1.0 - np.exp(total * _INVERSE_SCALE)) + CEILING_MARGIN
    block_starts = np.append(np.arange(0, n_voxels, VOXEL_BLOCK), n_voxels).astype(np.int64)
    # Exactly the block code's expression (float64 scalar exp of the block's lowest sum).
    block_ceilings = np.array(
        [float(1.0 - np.exp(float(total[a:b].min()) / LOG_SCALE))
         for a, b in zip(block_starts[:-1], block_starts[1:])],
        dtype=np.float64,
    )
    return ContrastTables(
        n_total=int(n_total), n_a=int(n_a), order=order.astype(np.int64), indptr=indptr,
        experiments=experiments, values=values,
        observed=observed, total=total, reach=reach, block_starts=block_starts,
        block_ceilings=block_ceilings,
    )


@numba.njit(cache=True, nogil=True, inline="always")
def _pick4(m0, m1, m2, m3, v0, v1, v2, v3, p):
    """Group-A part of four nonzeros (masks rows ``m``, values ``v``) in permutation p."""
    return (m0[p] & v0) + (m1[p] & v1) + (m2[p] & v2) + (m3[p] & v3)


@numba.njit(cache=True, nogil=True)
def _count_exceedances(indptr, experiments, values, observed, order, masks, upper, lower):
    """Per row, the permutations whose S_A is <= / >= the observed one.

    ``masks[e, p]`` is -1 (all bits set) when experiment e is in group A in permutation p
    and 0 otherwise, so ``mask & value`` picks a value without a branch or a multiply.
    Nonzeros come four at a time (rows are padded, see :func:`prepare`): one vectorized
    pass over the permutations per four nonzeros, and the last pass compares instead of
    storing the sums.
    """
    count = masks.shape[1]
    sums = np.empty(count, dtype=np.int64)
    for r in range(indptr.size - 1):
        start, stop = indptr[r], indptr[r + 1]
        obs = observed[r]
        # A row no experiment reaches: S_A = 0 = S_obs in every permutation.
        n_upper = count if start == stop else 0
        n_lower = n_upper
        for k in range(start, stop, NONZERO_GROUP):
            # Loaded once per group, outside the loops over permutations.
            m0, m1 = masks[experiments[k]], masks[experiments[k + 1]]
            m2, m3 = masks[experiments[k + 2]], masks[experiments[k + 3]]
            v0, v1, v2, v3 = values[k], values[k + 1], values[k + 2], values[k + 3]
            first = k == start
            if k + NONZERO_GROUP < stop:
                if first:
                    for p in range(count):
                        sums[p] = _pick4(m0, m1, m2, m3, v0, v1, v2, v3, p)
                else:
                    for p in range(count):
                        sums[p] += _pick4(m0, m1, m2, m3, v0, v1, v2, v3, p)
            elif first:
                for p in range(count):
                    s = _pick4(m0, m1, m2, m3, v0, v1, v2, v3, p)
                    n_upper += s <= obs
                    n_lower += s >= obs
            else:
                for p in range(count):
                    s = sums[p] + _pick4(m0, m1, m2, m3, v0, v1, v2, v3, p)
                    n_upper += s <= obs
                    n_lower += s >= obs
        upper[order[r]] = n_upper
        lower[order[r]] = n_lower


@numba.njit(cache=True, nogil=True)
def _gather_pairs(indptr, experiments, values, total, reach, masks, running, start, stop,
                  perm, arg_a, arg_b):
    """The float32 exponents of the pairs that may raise a permutation's maximum.

    Walks rows from ``start`` and stops before ``stop`` or before the row whose pairs would
    not fit in the buffers. Returns ``(pairs filled, next row)``.
    """
    count = masks.shape[1]
    capacity = perm.size
    lowest = running.min()
    filled = 0
    r = start
    while r < stop:
        bound = reach[r]
        if bound >= lowest:
            if filled + count > capacity:
                break
            for p in range(count):
                if bound >= running[p]:
                    s = 0
                    for k in range(indptr[r], indptr[r + 1]):
                        s += masks[experiments[k], p] & values[k]
                    # As the block code rounds them: exact float64, then float32.
                    arg_b[filled] = np.float32((total[r] - s) * _INVERSE_SCALE)
                    arg_a[filled] = np.float32(s * _INVERSE_SCALE)
                    perm[filled] = p
                    filled += 1
        r += 1
    return filled, r


@numba.njit(cache=True, nogil=True)
def _fold_maxima(running, perm, exp_a, exp_b, n):
    """``running[p] = max(running[p], |exp_b - exp_a|)`` over the first n pairs (float32)."""
    for i in range(n):
        diff = exp_b[i] - exp_a[i]
        if diff < 0:
            diff = -diff
        if diff > running[perm[i]]:
            running[perm[i]] = diff


def contrast_chunk(tables: ContrastTables, seed: int, first: int,
                   count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permutations ``first .. first + count - 1`` of the contrast null.

    Returns
    -------
    upper, lower : ndarray of int64, shape (n_voxels,)
        Permutations whose ALE_A - ALE_B is >= / <= the observed one, per voxel.
    max_abs : ndarray of float64, shape (count,)
        Largest |ALE_A - ALE_B| of each permutation (evaluated in float32).
    """
    masks = _split_masks(tables, seed, first, count)
    upper = np.empty(tables.n_voxels, dtype=np.int64)
    lower = np.empty(tables.n_voxels, dtype=np.int64)
    _count_exceedances(tables.indptr, tables.experiments, tables.values, tables.observed,
                       tables.order, masks, upper, lower)
    return upper, lower, _largest_differences(tables, masks)


def _split_masks(tables: ContrastTables, seed: int, first: int, count: int) -> np.ndarray:
    """``masks[e, p]``: -1 where experiment e is in group A in permutation p, else 0."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    splits = random_splits(seed, first, count, tables.n_total, tables.n_a)
    # (experiment, permutation): a row per experiment keeps the inner loops contiguous;
    # the last row, all zeros, is the padding's.
    masks = np.zeros((tables.n_total + 1, count), dtype=np.int64)
    masks[:-1] = -splits.T.astype(np.int64)
    return masks


def _largest_differences(tables: ContrastTables, masks: np.ndarray) -> np.ndarray:
    """Largest float32 |ALE_A - ALE_B| of each permutation, as the block code finds it."""
    count = masks.shape[1]
    running = np.zeros(count, dtype=np.float32)
    capacity = max(PAIR_BATCH, count)
    perm = np.empty(capacity, dtype=np.int64)
    arg_a = np.empty(capacity, dtype=np.float32)
    arg_b = np.empty(capacity, dtype=np.float32)
    for b, ceiling in enumerate(tables.block_ceilings):
        # The block code's test, between the same blocks: once it fails, it stops.
        if not ceiling >= float(running.min()):
            break
        row, stop = int(tables.block_starts[b]), int(tables.block_starts[b + 1])
        while row < stop:
            n, row = _gather_pairs(tables.indptr, tables.experiments, tables.values,
                                   tables.total, tables.reach, masks, running, row, stop,
                                   perm, arg_a, arg_b)
            if n:
                # numpy's float32 exp, in place on contiguous arrays, as the block code.
                np.exp(arg_a[:n], out=arg_a[:n])
                np.exp(arg_b[:n], out=arg_b[:n])
                _fold_maxima(running, perm, arg_a, arg_b, n)
    return running.astype(np.float64)


#: Rows whose differences one batch of :func:`statistics_chunk` computes (with 128
#: permutations, 2 MB of int64 sums).
ROW_BATCH = 2048


@numba.njit(cache=True, nogil=True)
def _group_sums(rows, indptr, experiments, values, masks, sums):
    """``sums[i, p]``: group A's log-sum S_A at row ``rows[i]`` in permutation p (exact)."""
    count = masks.shape[1]
    for i in range(rows.size):
        r = rows[i]
        out = sums[i]
        for p in range(count):
            out[p] = 0
        for k in range(indptr[r], indptr[r + 1], NONZERO_GROUP):
            m0, m1 = masks[experiments[k]], masks[experiments[k + 1]]
            m2, m3 = masks[experiments[k + 2]], masks[experiments[k + 3]]
            v0, v1, v2, v3 = values[k], values[k + 1], values[k + 2], values[k + 3]
            for p in range(count):
                out[p] += _pick4(m0, m1, m2, m3, v0, v1, v2, v3, p)


def statistics_chunk(tables: ContrastTables, spec, seed: int, first: int,
                     count: int) -> dict:
    """Every statistic of a :class:`~gpuale.nullspecs.ContrastNullSpec`, as the block code's
    :func:`~gpuale.engines._contrast_blocks.statistics_chunk` gives them, bit for bit.

    Exceedance counts and the largest |difference| come from :func:`contrast_chunk`'s
    code. The histogram and the supra-threshold voxels need each voxel's float32
    difference, evaluated as the block code does (exact S_A, float32 exponents, numpy's
    float32 ``exp``), but only at rows that can matter: a difference never exceeds its
    row's ``reach``, so a fine histogram of one coarse bin skips the rows whose reach is
    below the bin, and the cluster statistics those whose reach is at most the
    cluster-forming threshold.

    Returns
    -------
    dict
        As the block code's, except that the supra-threshold voxels are returned for
        labelling (``picked``: permutation, column and float32 difference arrays) instead
        of ``max_size`` and ``max_mass``.
    """
    from gpuale.nullspecs import ABS_DIFFERENCE_HISTOGRAM, HISTOGRAM_BINS, abs_difference_histogram

    statistics = spec.statistics
    masks = _split_masks(tables, seed, first, count)
    out = {"upper": None, "lower": None, "histogram": None, "above": float("inf"),
           "picked": None}
    if "exceedance" in statistics:
        out["upper"] = np.empty(tables.n_voxels, dtype=np.int64)
        out["lower"] = np.empty(tables.n_voxels, dtype=np.int64)
        _count_exceedances(tables.indptr, tables.experiments, tables.values, tables.observed,
                           tables.order, masks, out["upper"], out["lower"])
    out["max_abs"] = _largest_differences(tables, masks)
    histogram = ABS_DIFFERENCE_HISTOGRAM in statistics
    clusters = "max_cluster_size" in statistics
    if not (histogram or clusters):
        return out
    threshold = np.float32(spec.cluster_forming_abs_difference) if clusters else None
    # The smallest difference that counts one by one: the lowest value of the fine bin or
    # of the coarse floor (below it, values are lumped into bin 0), or the threshold.
    if histogram:
        low_bin = spec.histogram_floor if spec.histogram_bin is None else spec.histogram_bin
        low = np.array([low_bin << 16], np.uint32).view(np.float32)[0]
    else:
        low = threshold
    if clusters:
        low = min(low, threshold)
    rows = np.flatnonzero(tables.reach >= np.float64(low)).astype(np.int64)
    if histogram:
        out["histogram"] = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
        if spec.histogram_bin is None:
            # The rows skipped: every difference below ``low``, so in a lumped bin.
            out["histogram"][0] += count * (tables.n_voxels - rows.size)
    picked = []
    sums = np.empty((min(ROW_BATCH, rows.size), count), dtype=np.int64)
    for start in range(0, rows.size, ROW_BATCH):
        batch = rows[start : start + ROW_BATCH]
        part = sums[: batch.size]
        _group_sums(batch, tables.indptr, tables.experiments, tables.values, masks, part)
        # As the block code rounds them: exact float64, then float32; numpy's float32 exp.
        diff = ((tables.total[batch, None] - part) * _INVERSE_SCALE).astype(np.float32)
        exp_a = (part * _INVERSE_SCALE).astype(np.float32)
        np.exp(diff, out=diff)
        np.exp(exp_a, out=exp_a)
        diff -= exp_a
        magnitude = np.abs(diff)
        if histogram:
            counts, smallest = abs_difference_histogram(np, magnitude, spec.histogram_bin,
                                                        spec.histogram_floor)
            out["histogram"] += counts
            out["above"] = min(out["above"], smallest)
        if clusters:
            row, permutation = np.nonzero(magnitude > threshold)
            picked.append((permutation, tables.order[batch[row]], diff[row, permutation]))
    if clusters:
        out["picked"] = tuple(
            np.concatenate([p[i] for p in picked]) if picked else np.zeros(0, dtype)
            for i, dtype in enumerate((np.int64, np.int64, np.float32))
        )
    return out


def observed_difference(tables: ContrastTables) -> np.ndarray:
    """Observed ALE_A - ALE_B (float64) at every voxel, as the block code computes it."""
    survival_b = (tables.total - tables.observed) * _INVERSE_SCALE
    survival_a = tables.observed * _INVERSE_SCALE
    np.exp(survival_b, out=survival_b)
    np.exp(survival_a, out=survival_a)
    diff = np.empty(tables.n_voxels, dtype=np.float64)
    diff[tables.order] = survival_b - survival_a
    return diff
