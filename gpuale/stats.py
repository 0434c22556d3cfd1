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

The combination is compiled with numba (:func:`_combine`), adding the same float64
products in the same order as the numpy definition (:func:`_combine_numpy`), so the two
agree bit for bit; numpy alone is used where numba does not import. A large null runs on
two threads, each adding the terms of one range of bins (:func:`_combine_experiments`).
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
from scipy import special

from gpuale._cores import default_workers

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this guards broken installs
    numba = None

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


def _combine_numpy(
    ale_hist: np.ndarray,
    overflow: float,
    exp_hist: np.ndarray,
    bin_centers: np.ndarray,
    inv_step: float,
    n_bins: int,
) -> tuple[np.ndarray, float]:
    """One step of the convolution, in numpy (what :func:`_combine` compiles; kept to check it).

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


# --- The analytic null, compiled ------------------------------------------------------------
# The functions below repeat the numpy ones above with the same float64 operations in the
# same order, so their results are the same bits: numba compiles without ``fastmath``, so
# LLVM fuses no multiply-add and reorders no sum.


def _njit(function):
    return numba.njit(cache=True, nogil=True)(function) if numba is not None else function


@_njit
def _nearest_bin_one(value: float, inv_step: float, n_bins: int) -> int:
    """:func:`_nearest_bin` of one float64 value."""
    scaled = value * inv_step
    floor = np.floor(scaled)
    idx = np.int64(floor) + (1 if scaled - floor >= 0.5 else 0)
    return min(max(idx, 0), n_bins - 1)


@_njit
def _dest_bin(one_minus_row: float, col_center: float, inv_step: float, n_bins: int) -> int:
    """:func:`_dest_bins` of one pair, given ``1 - c_row``."""
    return _nearest_bin_one(1.0 - one_minus_row * (1.0 - col_center), inv_step, n_bins)


def _all_experiment_bins(
    ma_values: list[tuple[np.ndarray, np.ndarray]], n_mask_voxels: int, inv_step: float,
    n_bins: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-empty bins of every experiment's :func:`experiment_histogram` (ascending)
    and their probabilities, laid end to end: (bins, probabilities, each experiment's
    start). Equal to ``idx = flatnonzero(hist > 0), hist[idx]`` bit for bit, without a
    histogram of every bin: a bin's mass is a sum of voxel counts, a whole number, so any
    order of adding gives the same bits."""
    n = len(ma_values)
    sizes = [v.size for v, _ in ma_values]
    experiment = np.repeat(np.arange(n, dtype=np.int64), sizes)
    values = np.concatenate([v for v, _ in ma_values]).astype(np.float64)
    counts = np.concatenate([c for _, c in ma_values]).astype(np.float64)
    zeros = n_mask_voxels - np.bincount(experiment, weights=counts, minlength=n)
    keys = np.concatenate([experiment * n_bins + _nearest_bin(values, inv_step, n_bins),
                           np.arange(n, dtype=np.int64) * n_bins])
    keys, where = np.unique(keys, return_inverse=True)
    probs = np.bincount(where, weights=np.concatenate([counts, zeros])) * (1.0 / n_mask_voxels)
    keys, probs = keys[probs > 0], probs[probs > 0]
    starts = np.searchsorted(keys, np.arange(n + 1, dtype=np.int64) * n_bins)
    return keys % n_bins, probs, starts


def _experiment_bins(
    values: np.ndarray, counts: np.ndarray, n_mask_voxels: int, inv_step: float, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_all_experiment_bins` of one experiment: (bins, probabilities)."""
    bins, probs, _ = _all_experiment_bins([(values, counts)], n_mask_voxels, inv_step,
                                          n_bins)
    return bins, probs


@_njit
def _stair_start(one_minus_row, e, level, lo_bound, top, bin_centers, inv_step, n_bins):
    """First ``a >= lo_bound`` with ``dest(e, a) - a < level`` (as :func:`_row_shifts`).

    ``dest - a`` is non-increasing in ``a``, so the start is unique and any search finds
    it; the exact-arithmetic prediction ``a = (e - level + 1/2) 10**5 / e`` brackets it
    in all but rare cases, where bisection over the rest of the row takes over.
    """
    guess = np.int64(np.floor((e - level + 0.5) * HISTOGRAM_INV_STEP / max(e, 1)))
    lo = min(max(guess - 2, lo_bound), top)
    hi = min(max(guess + 3, lo_bound), top)
    if lo > lo_bound and _dest_bin(one_minus_row, bin_centers[lo], inv_step, n_bins) - lo < level:
        lo = lo_bound
    if _dest_bin(one_minus_row, bin_centers[hi], inv_step, n_bins) - hi >= level:
        hi = top
    if _dest_bin(one_minus_row, bin_centers[lo], inv_step, n_bins) - lo < level:
        return lo
    # Invariant: lo is at or above the level, hi below it.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _dest_bin(one_minus_row, bin_centers[mid], inv_step, n_bins) - mid < level:
            hi = mid
        else:
            lo = mid
    return hi


@_njit
def _first_reaching(one_minus_row, d_lo, top, bin_centers, inv_step, n_bins):
    """First ``a <= top`` with ``dest(e, a) >= d_lo`` (one exists: ``dest`` rises with
    ``a`` and the caller checked ``a = top``)."""
    if _dest_bin(one_minus_row, bin_centers[0], inv_step, n_bins) >= d_lo:
        return 0
    lo, hi = 0, top  # dest(lo) < d_lo <= dest(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _dest_bin(one_minus_row, bin_centers[mid], inv_step, n_bins) >= d_lo:
            hi = mid
        else:
            lo = mid
    return hi


@_njit
def _combine_kernel(ale_hist, top, exp_idx, exp_p, bin_centers, inv_step, n_bins, out,
                    d_lo, d_hi):
    """Add ``exp_p[r] * ale_hist[a]`` into ``out[min(dest(exp_idx[r], a), cut + 1)]`` for
    every row ``r`` (outer) and ALE bin ``a <= top`` (inner), in that order, where that
    bin lies in ``d_lo .. d_hi - 1`` (``0 .. cut + 1``: all of them).

    Each row is walked stair by stair (:func:`_row_shifts`): on a stair ``dest = a +
    shift``, so the inner loop is a contiguous ``out[a + shift] += p * h[a]`` that touches
    each bin once and may be vectorised without changing any sum. Consecutive stairs
    share one bin (the shift falls by one where ``dest`` stays), and they run in order.
    The bin rises with ``a``, so a range of bins is a stretch of each row: two threads
    given adjacent ranges add the serial kernel's terms, each bin's in the same order.
    """
    cut = ale_hist.size - 1
    for r in range(exp_idx.size):
        e = exp_idx[r]
        p = exp_p[r]
        one_minus_row = 1.0 - bin_centers[e]
        last = _dest_bin(one_minus_row, bin_centers[top], inv_step, n_bins) - top
        if min(top + last, cut + 1) < d_lo:
            continue
        a0 = 0 if d_lo == 0 else _first_reaching(one_minus_row, d_lo, top, bin_centers,
                                                 inv_step, n_bins)
        shift = _dest_bin(one_minus_row, bin_centers[a0], inv_step, n_bins) - a0
        while min(a0 + shift, cut + 1) < d_hi:
            if shift > last:
                a1 = _stair_start(one_minus_row, e, shift, a0, top, bin_centers, inv_step,
                                  n_bins)
            else:
                a1 = top + 1
            # Bins up to the cut take their pairs one to one; the rest go to cut + 1.
            split = min(max(cut + 1 - shift, a0), a1)
            lo = max(a0, d_lo - shift)
            hi = min(split, d_hi - shift)
            if lo < hi:
                # Slices, not out[a + shift]: with a possibly negative index numba checks
                # for wraparound on every access, and LLVM then leaves the loop scalar.
                dest = out[lo + shift : hi + shift]
                mass = ale_hist[lo:hi]
                for i in range(mass.size):
                    dest[i] += p * mass[i]
            if d_hi > cut + 1:
                for a in range(split, a1):
                    out[cut + 1] += p * ale_hist[a]
            if a1 > top:
                break
            a0 = a1
            shift -= 1


def _combine_bins(
    ale_hist: np.ndarray,
    overflow: float,
    exp_idx: np.ndarray,
    exp_p: np.ndarray,
    bin_centers: np.ndarray,
    inv_step: float,
    n_bins: int,
) -> tuple[np.ndarray, float]:
    """:func:`_combine` of the experiment's non-empty bins ``exp_idx`` (ascending), with
    probabilities ``exp_p``."""
    if numba is None:  # pragma: no cover - see the import
        exp_hist = np.zeros(n_bins, dtype=np.float64)
        exp_hist[exp_idx] = exp_p
        return _combine_numpy(ale_hist, overflow, exp_hist, bin_centers, inv_step, n_bins)
    cut = ale_hist.size - 1
    top = int(np.flatnonzero(ale_hist > 0)[-1])
    out = np.zeros(cut + 2, dtype=np.float64)
    _combine_kernel(np.ascontiguousarray(ale_hist, dtype=np.float64), top,
                    np.ascontiguousarray(exp_idx, dtype=np.int64),
                    np.ascontiguousarray(exp_p, dtype=np.float64),
                    np.ascontiguousarray(bin_centers, dtype=np.float64), float(inv_step),
                    int(n_bins), out, 0, cut + 2)
    # Mass already above the cut stays above it whatever it is combined with.
    overflow = out[-1] + overflow * float(np.sum(exp_p))
    return out[:-1], overflow


@_njit
def _combine_steps(ale_hist, overflow, bins, probs, starts, sums, bin_centers, inv_step,
                   n_bins, first, stop, d_lo, d_hi, strips, strip_lo, has_mass):
    """Experiments ``first .. stop - 1`` of :func:`_combine_bins` in turn (``bins[starts[e]
    : starts[e + 1]]``, their probabilities, ``sums[e]`` their sum as numpy takes it), in
    place in ``ale_hist``, for the bins ``d_lo .. d_hi - 1`` (``0 .. cut + 1``: all, and
    the overflow, which is returned). ``has_mass[e]``: the part's own bins held mass
    before experiment e.

    Split between two threads at D, the low part needs only its own bins and writes the
    strip ``strip_lo .. D - 1`` of each step's input into the ring ``strips``; the high
    part copies it back into its own array before the step (no bin is reached from more
    than ``D - strip_lo`` bins below it). Plain loops, not slice assignments: numba's
    generic array code is most of what a process loads from the cache (~3x the time).
    """
    cut = ale_hist.size - 1
    out = np.empty(cut + 2, dtype=np.float64)
    own_stop = min(d_hi, cut + 1)
    lowest = strip_lo if d_lo > 0 else 0
    for e in range(first, stop):
        if strips.shape[0] > 0:
            strip = strips[e % strips.shape[0]]
            for i in range(strip.size):
                if d_lo == 0:
                    strip[i] = ale_hist[strip_lo + i]
                else:
                    ale_hist[strip_lo + i] = strip[i]
        top = own_stop - 1
        while top > lowest and not ale_hist[top] > 0:
            top -= 1
        has_mass[e] = top >= d_lo and ale_hist[top] > 0
        for a in range(d_lo, min(d_hi, cut + 2)):
            out[a] = 0.0
        if ale_hist[top] > 0:
            _combine_kernel(ale_hist, top, bins[starts[e] : starts[e + 1]],
                            probs[starts[e] : starts[e + 1]], bin_centers, inv_step, n_bins,
                            out, d_lo, d_hi)
        if d_hi > cut + 1:
            # Mass already above the cut stays above it whatever it is combined with.
            overflow = out[cut + 1] + overflow * sums[e]
        for a in range(d_lo, own_stop):
            ale_hist[a] = out[a]
    return overflow


#: Below this many ALE-bin x experiment-bin terms (~10 ms) the null runs on one thread.
_THREADED_TERMS = 3e7


def _combine_experiments(ale_hist: np.ndarray, overflow: float, bins: np.ndarray,
                         probs: np.ndarray, starts: np.ndarray, bin_centers: np.ndarray,
                         inv_step: float, n_bins: int, *, threads: int | None = None,
                         split: int | None = None, block: int = 8,
                         ring_blocks: int = 8) -> float:
    """:func:`_combine_bins` of every experiment in turn, in place in ``ale_hist``;
    returns the overflow. Large nulls run on two threads, the bins split at ``split``
    (default: where the work halves), the high thread a block of experiments behind the
    low one; every bin gets the serial kernel's terms in its order, so the same bits."""
    n, cut = starts.size - 1, ale_hist.size - 1
    # numpy's pairwise sum, as in _combine_bins (a loop in numba adds in another order)
    sums = np.array([np.sum(probs[a:b]) for a, b in zip(starts[:-1], starts[1:])],
                    dtype=np.float64)
    width = int(bins.max()) + 2 if bins.size else 2  # a row reaches <= its bin + 1 above
    rows = np.diff(starts).astype(np.float64)
    threads = default_workers() if threads is None else threads
    if split is None and threads > 1 and n >= 2 * block and rows.all():
        # Before each experiment, mass lies at most at the largest ALE possible by then.
        largest = np.concatenate([[np.flatnonzero(ale_hist)[-1:].sum()],
                                  np.maximum.reduceat(bins, starts[:-1])])
        reach = 1.0 - np.cumprod(1.0 - largest / HISTOGRAM_INV_STEP)[:-1]
        top = np.minimum(reach * HISTOGRAM_INV_STEP + 1, cut + 1)
        if rows @ top > _THREADED_TERMS:
            lo, hi = width, cut  # the low part's work minus the high part's rises with split
            while hi - lo > 1:
                mid = (lo + hi) // 2
                low = rows @ np.minimum(top, mid)
                lo, hi = (mid, hi) if low < rows @ top - low else (lo, mid)
            split = hi
    if split is None or threads < 2 or not width <= split <= cut:
        has_mass = np.zeros(n, dtype=np.bool_)
        overflow = _combine_steps(ale_hist, overflow, bins, probs, starts, sums, bin_centers,
                                  inv_step, n_bins, 0, n, 0, cut + 2, np.empty((0, 0)), 0,
                                  has_mass)
        return -1.0 if not has_mass.all() else overflow
    strips = np.empty((ring_blocks * block, width), dtype=np.float64)
    high_hist = ale_hist.copy()
    low_mass, high_mass = np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.bool_)
    blocks = range(0, n, block)
    low_done = [threading.Event() for _ in blocks]
    high_done = [threading.Event() for _ in blocks]
    failed: list[BaseException] = []

    def low() -> None:
        try:
            for b, first in enumerate(blocks):
                if b >= ring_blocks:  # its ring rows are read by then
                    high_done[b - ring_blocks].wait()
                if failed:
                    return
                _combine_steps(ale_hist, 0.0, bins, probs, starts, sums, bin_centers,
                               inv_step, n_bins, first, min(n, first + block), 0, split,
                               strips, split - width, low_mass)
                low_done[b].set()
        except BaseException as error:
            failed.append(error)
        finally:
            for done in low_done:
                done.set()

    worker = threading.Thread(target=low, name="gpuale-analytic-null", daemon=True)
    worker.start()
    try:
        for b, first in enumerate(blocks):
            low_done[b].wait()
            if failed:
                break
            overflow = _combine_steps(high_hist, overflow, bins, probs, starts, sums,
                                      bin_centers, inv_step, n_bins, first,
                                      min(n, first + block), split, cut + 2, strips,
                                      split - width, high_mass)
            high_done[b].set()
    except BaseException as error:
        failed.append(error)
    finally:
        for done in high_done:
            done.set()
        worker.join()
    if failed:
        raise failed[0]
    ale_hist[split:] = high_hist[split:]
    return -1.0 if not (low_mass | high_mass).all() else overflow


def _combine(
    ale_hist: np.ndarray,
    overflow: float,
    exp_hist: np.ndarray,
    bin_centers: np.ndarray,
    inv_step: float,
    n_bins: int,
) -> tuple[np.ndarray, float]:
    """One step of the convolution: :func:`_combine_numpy`, compiled.

    The same pairs are added in the same order (experiment bin outer, ALE bin inner), each
    as the same float64 product, so every bin is NiMARE's bit for bit; only the
    ``(n_experiment_bins, top + 1)`` matrices of destinations and masses are never built.
    """
    exp_idx = np.flatnonzero(exp_hist > 0)
    return _combine_bins(ale_hist, overflow, exp_idx, exp_hist[exp_idx], bin_centers,
                         inv_step, n_bins)


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
    if not ma_values:
        raise ValueError("the analytic null needs at least one experiment")
    max_ma = np.array(
        [v.max() if v.size else 0.0 for v, _ in ma_values], dtype=np.float32
    )
    bin_centers = histogram_bins(max_ma).astype(np.float64)
    n_bins = bin_centers.size
    inv_step = 1 / (bin_centers[1] - bin_centers[0])
    cut = n_bins - 1
    if max_ale is not None:
        cut = min(cut, int(_round_half_away(np.array([max_ale * inv_step]))[0]) + 1)

    # The first experiment's histogram starts the null whole (its mass above the cut is
    # summed as NiMARE's array is); later ones need only their non-empty bins.
    values, counts = ma_values[0]
    exp_hist = experiment_histogram(values, counts, n_mask_voxels, inv_step, n_bins)
    ale_hist = exp_hist[: cut + 1].copy()
    overflow = float(np.sum(exp_hist[cut + 1 :]))
    if numba is not None and len(ma_values) > 1:
        bins, probs, starts = _all_experiment_bins(ma_values[1:], n_mask_voxels, inv_step,
                                                   n_bins)
        overflow = _combine_experiments(ale_hist, overflow, bins, probs, starts, bin_centers,
                                        float(inv_step), int(n_bins))
        if overflow < 0:
            raise ValueError("the ALE null histogram has no mass up to its cut")
        return AnalyticNull(bin_centers=bin_centers, weights=ale_hist, overflow=overflow)
    for values, counts in ma_values[1:]:
        exp_idx, exp_p = _experiment_bins(values, counts, n_mask_voxels, inv_step, n_bins)
        ale_hist, overflow = _combine_bins(
            ale_hist, overflow, exp_idx, exp_p, bin_centers, inv_step, n_bins
        )
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
