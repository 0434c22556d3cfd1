"""Voxel-wise inference: the analytic ALE null, p and z values, FWE p from null maxima.

The analytic null follows Eickhoff et al. (2012) as NiMARE 0.22.1 computes it, step for
step, so that p and z agree with NiMARE to float precision:

* each experiment's MA values over the mask are binned on a grid of width 1e-5 (nearest
  bin centre, ties away from zero; MA = 0 goes to bin 0);
* the ALE null histogram is the sequential combination of those histograms, experiment
  by experiment in analysis order: bins a and b put mass p_a p_b at the bin nearest to
  ``1 - (1 - c_a)(1 - c_b)``;
* p of an ALE value is the upper-tail mass from its bin (nearest, ties away from zero).

One shortcut is exact: a combined score is never below either input (``1-(1-a)(1-b) >=
b``), so mass above the largest observed ALE bin never comes back down. gpuale tracks the
bins up to that cut individually and everything above it as one overflow mass, which
leaves every p of an observed value unchanged and skips most of the work.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import special

__all__ = [
    "HISTOGRAM_STEP",
    "LOG_SCALE",
    "AnalyticNull",
    "ObservedALE",
    "ale_from_log_sum",
    "clip_permutation_p",
    "quantize_log_maps",
    "analytic_null",
    "fwe_p_values",
    "p_to_z",
]

#: Bin width of MA and ALE histograms (Eickhoff et al. 2012; NiMARE's INV_STEP_SIZE).
HISTOGRAM_INV_STEP = 100000
HISTOGRAM_STEP = 1 / HISTOGRAM_INV_STEP

@dataclasses.dataclass(frozen=True, eq=False)
class AnalyticNull:
    """The analytic null of the ALE statistic.

    Attributes
    ----------
    bin_centers : ndarray of float64
        The full bin grid (as NiMARE's ``histogram_bins``).
    weights : ndarray of float64
        Null mass of bins ``0 .. cut``; ``overflow`` holds the mass of all bins above.
    overflow : float
        Mass above bin ``cut``.
    """

    bin_centers: np.ndarray
    weights: np.ndarray
    overflow: float

    @property
    def cut(self) -> int:
        return int(self.weights.size - 1)

    @property
    def inv_step(self) -> float:
        return 1 / (self.bin_centers[1] - self.bin_centers[0])

    def upper_tail(self) -> np.ndarray:
        """P(ALE >= bin centre) for bins ``0 .. cut`` (normalised as NiMARE does)."""
        total = np.concatenate([self.weights, [self.overflow]])
        dist = total / np.sum(total)
        tail = np.cumsum(dist[::-1])[::-1]
        tail /= np.max(tail)
        return tail

    def p_values(self, ale: np.ndarray) -> np.ndarray:
        """One-sided p of each ALE value (NiMARE's ``nullhist_to_p``)."""
        ale = np.asarray(ale)
        tail = self.upper_tail()
        smallest = np.min(tail[tail != 0])
        p = np.ones(ale.shape, dtype=np.float64)
        pos = ale > 0
        bins = _round_half_away(ale[pos] * self.inv_step)
        bins = np.minimum(bins, self.bin_centers.size - 1)
        if bins.size and bins.max() > self.cut:
            raise ValueError(
                "an ALE value lies above the null's cut; compute the null with "
                "max_ale >= the largest value you look up"
            )
        p[pos] = tail[bins]
        return np.maximum(smallest, np.minimum(p, 1.0))

    def threshold_for_p(self, p: float) -> float:
        """The cluster-forming ALE threshold for an uncorrected p (NiMARE's choice).

        The centre of the last bin whose upper-tail probability still exceeds ``p``.
        """
        if not 0 < p < 1:
            raise ValueError(f"p must lie in (0, 1), got {p}")
        total = np.concatenate([self.weights, [self.overflow]])
        tail = np.cumsum(total[::-1])[::-1]
        tail /= tail[0]
        below = np.flatnonzero(tail[:-1] <= p)
        if below.size == 0:
            raise ValueError(
                f"the null's cut (ALE {self.bin_centers[self.cut]:.5f}) lies below the "
                f"threshold for p = {p}; recompute the null with a higher max_ale"
            )
        return float(self.bin_centers[max(0, below[0] - 1)])


def _round_half_away(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves away from zero (NiMARE's ``_round2``)."""
    rounded = np.round(values)
    half = np.abs(values - rounded) == 0.5
    rounded[half] = np.sign(values[half]) * np.ceil(np.abs(values[half]))
    return rounded.astype(np.int64)


def _nearest_bin(values: np.ndarray, inv_step: float, n_bins: int) -> np.ndarray:
    # The fraction is taken by subtraction, as NiMARE does, because 0.49999999999999994
    # + 0.5 is exactly 1.0 in float64.
    scaled = values * inv_step
    floor = np.floor(scaled)
    idx = floor.astype(np.int64) + (scaled - floor >= 0.5)
    return np.clip(idx, 0, n_bins - 1)


def histogram_bins(max_ma: np.ndarray) -> np.ndarray:
    """NiMARE's bin grid: from 0 to the largest possible ALE (maxima rounded up), +1 bin."""
    max_ma = np.asarray(max_ma, dtype=np.float32)
    rounded = np.ceil(max_ma * HISTOGRAM_INV_STEP) / HISTOGRAM_INV_STEP
    max_possible = 1.0 - np.prod(1.0 - rounded, axis=0)
    return np.round(np.arange(0, max_possible + (1.5 * HISTOGRAM_STEP), HISTOGRAM_STEP), 5)


def experiment_histogram(
    values: np.ndarray, counts: np.ndarray, n_mask_voxels: int, inv_step: float, n_bins: int
) -> np.ndarray:
    """Probability of each bin for one experiment's MA values over the mask.

    ``values``/``counts`` are the distinct non-zero MA values and how many in-mask voxels
    hold each; the remaining voxels hold 0.
    """
    hist = np.zeros(n_bins, dtype=np.float64)
    np.add.at(hist, _nearest_bin(values.astype(np.float64), inv_step, n_bins), counts)
    hist[0] += n_mask_voxels - int(np.sum(counts))
    hist *= 1.0 / n_mask_voxels
    return hist


def _dest_bins(
    rows: np.ndarray, cols: np.ndarray, bin_centers: np.ndarray, inv_step: float, n_bins: int
) -> np.ndarray:
    """Bin of ``1 - (1 - c_row)(1 - c_col)``, with NiMARE's floating-point steps."""
    score = 1.0 - (1.0 - bin_centers[rows]) * (1.0 - bin_centers[cols])
    return _nearest_bin(score, inv_step, n_bins)


def _row_shifts(
    exp_idx: np.ndarray, top: int, bin_centers: np.ndarray, inv_step: float, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where ``dest(e, a) - a`` steps down, for every experiment bin ``e``.

    For a fixed experiment bin, ``dest(e, a)`` rises by 0 or 1 as ``a`` rises by 1 (the
    score rises by ``(1 - c_e) * step``, a little under one bin), so ``dest - a`` is a
    non-increasing staircase with unit steps. In exact arithmetic ``dest - a`` is
    ``e - e a / 10**5`` rounded, which predicts where each stair starts; the prediction is
    bracketed and the start found by bisection on the exact floating-point expression
    (a handful of steps, more only where a bracket fails), so the staircase is exact.

    Returns
    -------
    row, level, start : ndarrays
        Stair ``level`` of experiment bin ``exp_idx[row]`` starts at ``a = start``.
    """
    n_rows = exp_idx.size
    first = _dest_bins(exp_idx, np.zeros(n_rows, np.int64), bin_centers, inv_step, n_bins)
    last = _dest_bins(exp_idx, np.full(n_rows, top), bin_centers, inv_step, n_bins) - top
    n_steps = first - last
    row = np.repeat(np.arange(n_rows), n_steps)
    level = first[row] - (np.arange(row.size) - np.repeat(np.cumsum(n_steps) - n_steps, n_steps))
    # Find the first a with dest(e, a) - a < level: invariant lo holds >= level, hi holds <.
    e = exp_idx[row]

    def shift_below(a):
        return _dest_bins(e, a, bin_centers, inv_step, n_bins) - a < level

    guess = np.floor((e - level + 0.5) * HISTOGRAM_INV_STEP / np.maximum(e, 1)).astype(np.int64)
    lo = np.clip(guess - 2, 0, top)
    hi = np.clip(guess + 3, 0, top)
    bad = shift_below(lo) & (lo > 0) | ~shift_below(hi)
    lo[bad] = 0
    hi[bad] = top
    while True:
        open_ = hi - lo > 1
        if not open_.any():
            break
        mid = (lo + hi) // 2
        below = shift_below(mid)
        hi = np.where(open_ & below, mid, hi)
        lo = np.where(open_ & ~below, mid, lo)
    return row, level - 1, hi


def _combine(
    ale_hist: np.ndarray,
    overflow: float,
    exp_hist: np.ndarray,
    bin_centers: np.ndarray,
    inv_step: float,
    n_bins: int,
) -> tuple[np.ndarray, float]:
    """One step of the convolution.

    Adds ``p_e * h_a`` into bin ``dest(e, a)`` for every pair in NiMARE's order (experiment
    bin outer, ALE bin inner): ``bincount`` sums its input in order, so every bin equals
    NiMARE's bit for bit. Pairs whose ALE bin is empty add 0.0 and change nothing.
    """
    cut = ale_hist.size - 1
    top = int(np.flatnonzero(ale_hist > 0)[-1])
    exp_idx = np.flatnonzero(exp_hist > 0)
    row, _, start = _row_shifts(exp_idx, top, bin_centers, inv_step, n_bins)
    first = _dest_bins(exp_idx, np.zeros(exp_idx.size, np.int64), bin_centers, inv_step, n_bins)
    # Stairs of all rows laid end to end: each row starts a new run at a = 0, each stair
    # at its start; the shift falls by one at every stair of the row.
    n_stairs = np.bincount(row, minlength=exp_idx.size)
    run_row = np.concatenate([np.arange(exp_idx.size), row])
    run_start = np.concatenate([np.zeros(exp_idx.size, np.int64), start])
    order = np.lexsort((run_start, run_row))
    run_row, run_start = run_row[order], run_start[order]
    rank_in_row = np.arange(run_row.size) - np.repeat(
        np.cumsum(n_stairs + 1) - (n_stairs + 1), n_stairs + 1
    )
    run_shift = first[run_row] - rank_in_row
    run_end = np.append(run_start[1:], top + 1)
    run_end[np.append(run_row[1:] != run_row[:-1], True)] = top + 1
    dest = np.repeat(run_shift, run_end - run_start).reshape(exp_idx.size, top + 1)
    dest += np.arange(top + 1)
    # dest <= a + max shift, so only the last columns can pass the cut.
    tail = dest[:, max(0, cut + 1 - int(first.max())) :]
    np.minimum(tail, cut + 1, out=tail)
    mass = exp_hist[exp_idx][:, None] * ale_hist[None, : top + 1]
    out = np.bincount(dest.ravel(), weights=mass.ravel(), minlength=cut + 2)
    # Mass already above the cut stays above it whatever it is combined with.
    overflow = out[-1] + overflow * float(np.sum(exp_hist[exp_idx]))
    return out[:-1], overflow


def _combine_pairwise(
    ale_hist: np.ndarray,
    overflow: float,
    exp_hist: np.ndarray,
    bin_centers: np.ndarray,
    inv_step: float,
    n_bins: int,
) -> tuple[np.ndarray, float]:
    """:func:`_combine` evaluated pair by pair (the definition; used to check it)."""
    cut = ale_hist.size - 1
    ale_idx = np.flatnonzero(ale_hist > 0)
    exp_idx = np.flatnonzero(exp_hist > 0)
    rows = np.repeat(exp_idx, ale_idx.size)
    cols = np.tile(ale_idx, exp_idx.size)
    dest = np.minimum(_dest_bins(rows, cols, bin_centers, inv_step, n_bins), cut + 1)
    mass = exp_hist[rows] * ale_hist[cols]
    out = np.bincount(dest, weights=mass, minlength=cut + 2)
    overflow = out[-1] + overflow * float(np.sum(exp_hist[exp_idx]))
    return out[:-1], overflow


def analytic_null(
    ma_values: list[tuple[np.ndarray, np.ndarray]],
    n_mask_voxels: int,
    *,
    max_ale: float | None = None,
) -> AnalyticNull:
    """The analytic ALE null from each experiment's MA values.

    Parameters
    ----------
    ma_values : list of (values, counts)
        Per experiment, in analysis order: the distinct non-zero float32 MA values over the
        mask and the number of voxels holding each.
    n_mask_voxels : int
    max_ale : float, optional
        The largest ALE value that will be looked up; bins above it are lumped together.
        By default every bin is kept.

    Returns
    -------
    AnalyticNull
    """
    max_ma = np.array(
        [v.max() if v.size else 0.0 for v, _ in ma_values], dtype=np.float32
    )
    bin_centers = histogram_bins(max_ma).astype(np.float64)
    n_bins = bin_centers.size
    inv_step = 1 / (bin_centers[1] - bin_centers[0])
    cut = n_bins - 1
    if max_ale is not None:
        cut = min(cut, int(_round_half_away(np.array([max_ale * inv_step]))[0]) + 1)

    ale_hist: np.ndarray | None = None
    overflow = 0.0
    for values, counts in ma_values:
        exp_hist = experiment_histogram(values, counts, n_mask_voxels, inv_step, n_bins)
        if ale_hist is None:
            ale_hist = exp_hist[: cut + 1].copy()
            overflow = float(np.sum(exp_hist[cut + 1 :]))
            continue
        ale_hist, overflow = _combine(ale_hist, overflow, exp_hist, bin_centers, inv_step, n_bins)
    assert ale_hist is not None
    return AnalyticNull(bin_centers=bin_centers, weights=ale_hist, overflow=overflow)


def p_to_z(p: np.ndarray) -> np.ndarray:
    """One-sided z for p, computed in log space (as NiMARE 0.22.1's ``p_to_z``)."""
    p = np.clip(np.asarray(p, dtype=np.float64), np.nextafter(0.0, 1.0), 1.0)
    return np.maximum(-special.ndtri_exp(np.log(p)), 0.0)


def clip_permutation_p(p: np.ndarray, n_iters: int, *, upper: bool = True) -> np.ndarray:
    """Clip permutation p to ``[1/n, 1 - 1/n]`` as NiMARE does (``upper=False``: only below).

    No permutation p is 0: with n permutations the smallest p that can be claimed is 1/n.
    """
    smallest = 1.0 / n_iters
    if upper:
        p = np.minimum(p, 1.0 - smallest)
    return np.maximum(smallest, p)


def fwe_p_values(observed: np.ndarray, null_maxima: np.ndarray) -> np.ndarray:
    """Share of permutations whose maximum reaches the observed value.

    ``p = #{null >= observed} / n``, clipped to ``[1/n, 1 - 1/n]`` as NiMARE does.
    """
    null = np.sort(np.asarray(null_maxima, dtype=np.float64))
    n = null.size
    if n == 0:
        raise ValueError("the null distribution is empty")
    idx = np.searchsorted(null, np.asarray(observed, dtype=np.float64), side="left")
    return clip_permutation_p(1.0 - idx / n, n)


# --- ALE from log-sums ----------------------------------------------------------------------


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


#: Contrasts hold ``log1p(-MA)`` in integer units of 2**-40 (as float64), so every group
#: log-sum is an integer below 2**53: matrix products are then exact in any summation
#: order, on BLAS and cuBLAS alike, and ties between permuted and observed sums are real.
LOG_SCALE = 2.0**40


def quantize_log_maps(log_maps: np.ndarray) -> np.ndarray:
    """``log1p(-MA)`` in integer units of 2**-40 (a float64 array of whole numbers).

    Raises
    ------
    ValueError
        If a group sum could reach 2**53, where float64 stops being exact.
    """
    quantized = np.rint(np.asarray(log_maps, dtype=np.float64) * LOG_SCALE)
    if quantized.size and np.abs(quantized).sum(axis=0).max() >= 2.0**53:
        raise ValueError("too many experiments for exact group sums")
    return quantized
