"""Null specs and partials: what an engine computes, as pure data and arithmetic.

A null is described by a picklable *spec*: the data an engine needs and the statistics to
collect. An engine turns ``(spec, seed, first, count)`` into a *partial* result for
permutations ``first .. first + count - 1``; partials ``merge()`` in any order and
grouping, and ``finish()`` into the null. Nothing here runs an engine or a scheduler
(that is :mod:`gpuale.nulls`), so the engines see this module and no layer above it.

Three nulls exist:

``GlobalNullSpec``
    foci relocated at random in the mask (Eickhoff et al. 2012); per permutation the
    largest ALE, the largest cluster above the cluster-forming threshold and the largest
    cluster mass, and on request the largest TFCE (:mod:`gpuale.tfce`).
``ContrastNullSpec``
    pooled experiments split at random into groups of the observed sizes (Eickhoff et
    al. 2011); per voxel how often the permuted ALE_A - ALE_B reaches the observed one
    (both ways), and per permutation the largest ``|ALE_A - ALE_B|``; on request a histogram
    of every permuted ``|ALE_A - ALE_B|`` and the largest cluster size and mass above a
    cluster-forming ``|ALE_A - ALE_B|``.
``BalancedNullSpec``
    the null extrema of a balanced contrast's mean difference (:mod:`gpuale.balanced`).
``ScaleNullSpec``
    SCALE (Langner et al. 2014; NiMARE 0.22.1's ``SCALE``): each focus takes the position
    of a focus drawn uniformly from a database's foci; per voxel how often the permuted
    ALE reaches the observed one, and per permutation the largest ALE.

The histogram arithmetic of the contrast's cluster-forming quantile
(:func:`pooled_quantile`, :func:`abs_difference_histogram`) lives here too: engines fill
the histograms, :func:`gpuale.cluster_null.contrast_cluster_null` reads them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from gpuale.clusters import CONNECTIVITY_RANK
from gpuale.problem import Problem

__all__ = [
    "ABS_DIFFERENCE_HISTOGRAM",
    "BALANCED_NULLS",
    "CONTRAST_CLUSTER_STATISTICS",
    "CONTRAST_STATISTICS",
    "GLOBAL_STATISTICS",
    "TFCE_STATISTIC",
    "BalancedNull",
    "BalancedNullPartial",
    "BalancedNullSpec",
    "ContrastNull",
    "ContrastNullPartial",
    "ContrastNullSpec",
    "GlobalNullPartial",
    "GlobalNullSpec",
    "MonteCarloNull",
    "pooled_quantile",
    "ScaleNull",
    "ScaleNullPartial",
    "ScaleNullSpec",
]


#: Per-permutation maxima a global null collects.
GLOBAL_STATISTICS = ("max_ale", "max_cluster_size", "max_cluster_mass")


#: On request (``GlobalNullSpec.tfce_z``), also each permutation's largest TFCE
#: (:mod:`gpuale.tfce`, Frahm et al. 2022), gathered in the same pass.
TFCE_STATISTIC = "max_tfce"


#: What a contrast null collects: per-voxel exceedance counts and the per-permutation
#: largest ``|ALE_A - ALE_B|``.
CONTRAST_STATISTICS = ("exceedance", "max_abs_difference")


#: A histogram of every permuted float32 ``|ALE_A - ALE_B|`` (see ``ContrastNullSpec``).
ABS_DIFFERENCE_HISTOGRAM = "abs_difference_histogram"


#: Per permutation, the largest cluster size and mass above the cluster-forming
#: ``|ALE_A - ALE_B|`` (NiMARE's cluster-level FWE of ``ALESubtraction``).
CONTRAST_CLUSTER_STATISTICS = ("max_cluster_size", "max_cluster_mass")


#: Everything a contrast null can collect; ``max_abs_difference`` is always among them.
CONTRAST_ALL_STATISTICS = (
    CONTRAST_STATISTICS + (ABS_DIFFERENCE_HISTOGRAM,) + CONTRAST_CLUSTER_STATISTICS
)


#: Bins of an ``|ALE_A - ALE_B|`` histogram: half of a float32's 32 bits. A non-negative
#: float32's bit pattern rises with its value, so its high half (sign, exponent and 7
#: mantissa bits) bins it coarsely and, within one coarse bin, its low half exactly.
HISTOGRAM_BINS = 1 << 16


#: Split schemes of a contrast null: uniformly random splits into the observed group sizes.
SPLIT_SCHEMES = ("random",)


@dataclasses.dataclass(frozen=True, eq=False)
class GlobalNullSpec:
    """Monte Carlo null of a global ALE: foci relocated uniformly in the mask.

    Parameters
    ----------
    problem : Problem
    threshold : float
        Cluster-forming ALE threshold (ALE > threshold forms clusters).
    connectivity : {6, 18, 26}
    statistics : tuple of str
        What to collect: ``GLOBAL_STATISTICS``, and ``TFCE_STATISTIC`` with ``tfce_z``.
    tfce_z : gpuale.tfce.ZTable, optional
        The z of each ALE value (the observed data's analytic null, the same for every
        permutation) that TFCE is computed on; given, each permutation's largest TFCE is
        collected too (6-connectivity whatever ``connectivity`` is, as JALE).
    """

    problem: Problem
    threshold: float
    connectivity: int = 6
    statistics: tuple[str, ...] = GLOBAL_STATISTICS
    tfce_z: object | None = None

    kind = "global"

    def __post_init__(self) -> None:
        if self.connectivity not in CONNECTIVITY_RANK:
            raise ValueError(
                f"connectivity must be one of 6, 18, 26; got {self.connectivity!r}"
            )
        if not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold!r}")
        if self.tfce_z is not None and TFCE_STATISTIC not in self.statistics:
            object.__setattr__(self, "statistics", tuple(self.statistics) + (TFCE_STATISTIC,))
        unknown = set(self.statistics) - set(GLOBAL_STATISTICS + (TFCE_STATISTIC,))
        if unknown:
            raise ValueError(
                f"unknown statistic(s) {sorted(unknown)}; a global null collects "
                f"{GLOBAL_STATISTICS} and, with tfce_z, {TFCE_STATISTIC!r}"
            )
        if TFCE_STATISTIC in self.statistics and self.tfce_z is None:
            raise ValueError(f"{TFCE_STATISTIC!r} needs tfce_z, the z of each ALE value")

    @property
    def tfce(self) -> bool:
        """Whether each permutation's largest TFCE is collected."""
        return self.tfce_z is not None


@dataclasses.dataclass(frozen=True, eq=False)
class ContrastNullSpec:
    """Permutation null of ALE_A - ALE_B: pooled experiments split at random.

    Parameters
    ----------
    log_maps : ndarray of float32, shape (n_experiments, n_voxels)
        ``log1p(-MA)`` of every pooled experiment, group A's rows first.
    n_a : int
        Size of group A.
    split : str
        Split scheme (see ``SPLIT_SCHEMES``).
    statistics : tuple of str
        What to collect, among ``CONTRAST_ALL_STATISTICS``; always
        ``max_abs_difference`` (every chunk holds it, so a pass's permutations can be
        checked against another's). ``exceedance``: per voxel, the permutations whose
        difference is >= / <= the observed one. ``abs_difference_histogram``: counts of
        every permuted float32 ``|ALE_A - ALE_B|`` of the columns by the high half of its bits
        (``histogram_bin`` None; those whose high half is below ``histogram_floor`` all
        in bin 0), or by the low half among those whose high half is ``histogram_bin``,
        with the smallest value above that bin. ``max_cluster_size``
        and ``max_cluster_mass`` (together): per permutation the largest cluster of
        voxels with ``|ALE_A - ALE_B|`` > ``cluster_forming_abs_difference``, positive and
        negative differences labelled apart (NiMARE's ``_calculate_cluster_measures``,
        ``tail="two"``); mass sums ``|ALE_A - ALE_B|`` - threshold over a cluster.
    voxel_flat : ndarray of int64, optional
        Flat index in the volume ``shape`` of each column, ascending (the columns'
        places, for labelling clusters).
    shape : tuple of int, optional
        The volume (needed with ``voxel_flat``).
    connectivity : {6, 18, 26}
        Neighbourhood of the clusters (NiMARE: 6, faces).
    histogram_bin : int, optional
        See ``statistics``.
    histogram_floor : int
        See ``statistics``: the coarse bins below it are lumped into bin 0, so that an
        engine may skip the voxels whose differences can only fall there.
    cluster_forming_abs_difference : float, optional
        See ``statistics``; a float32 value, as the permuted differences are.
    """

    log_maps: np.ndarray
    n_a: int
    split: str = "random"
    statistics: tuple[str, ...] = CONTRAST_STATISTICS
    voxel_flat: np.ndarray | None = None
    shape: tuple[int, int, int] | None = None
    connectivity: int = 6
    histogram_bin: int | None = None
    histogram_floor: int = 0
    cluster_forming_abs_difference: float | None = None

    kind = "contrast"

    def __post_init__(self) -> None:
        n_total = self.log_maps.shape[0]
        if not 0 < self.n_a < n_total:
            raise ValueError(
                f"both groups need experiments: group A has {self.n_a} of {n_total}"
            )
        if self.split not in SPLIT_SCHEMES:
            raise ValueError(f"split must be one of {SPLIT_SCHEMES}, got {self.split!r}")
        statistics = tuple(self.statistics)
        unknown = set(statistics) - set(CONTRAST_ALL_STATISTICS)
        if unknown or len(set(statistics)) != len(statistics):
            raise ValueError(
                f"unknown or repeated statistic(s) in {statistics}; a contrast null collects "
                f"some of {CONTRAST_ALL_STATISTICS}"
            )
        if "max_abs_difference" not in statistics:
            raise ValueError("a contrast null always collects max_abs_difference")
        if self.connectivity not in CONNECTIVITY_RANK:
            raise ValueError(
                f"connectivity must be one of 6, 18, 26; got {self.connectivity!r}"
            )
        if self.histogram_bin is not None and not (
            ABS_DIFFERENCE_HISTOGRAM in statistics and 0 <= self.histogram_bin < HISTOGRAM_BINS
        ):
            raise ValueError(
                f"histogram_bin ({self.histogram_bin!r}) needs {ABS_DIFFERENCE_HISTOGRAM!r} "
                f"and lies in 0 .. {HISTOGRAM_BINS - 1}"
            )
        if self.histogram_floor and not (
            ABS_DIFFERENCE_HISTOGRAM in statistics and self.histogram_bin is None
            and 0 < self.histogram_floor < HISTOGRAM_BINS
        ):
            raise ValueError(
                f"histogram_floor ({self.histogram_floor!r}) is for a coarse "
                f"{ABS_DIFFERENCE_HISTOGRAM!r} (no histogram_bin) and lies in 0 .. "
                f"{HISTOGRAM_BINS - 1}"
            )
        clusters = [s for s in CONTRAST_CLUSTER_STATISTICS if s in statistics]
        if clusters and len(clusters) != len(CONTRAST_CLUSTER_STATISTICS):
            raise ValueError(f"{CONTRAST_CLUSTER_STATISTICS} are collected together")
        if clusters:
            threshold = self.cluster_forming_abs_difference
            if threshold is None or not (np.isfinite(threshold) and threshold >= 0):
                raise ValueError(
                    "cluster statistics need a finite cluster_forming_abs_difference >= 0, "
                    f"got {threshold!r}"
                )
            # As Python floats: numpy would compare a Python float with float32 in float32.
            if float(np.float32(threshold)) != float(threshold):
                raise ValueError(f"the cluster-forming ``|difference|`` {threshold!r} is not a "
                                 "float32 value, as the permuted differences are")
            if self.voxel_flat is None or self.shape is None:
                raise ValueError("cluster statistics need the voxels' places (voxel_flat, "
                                 "shape)")
            if self.voxel_flat.shape != (self.n_voxels,):
                raise ValueError(f"voxel_flat has shape {self.voxel_flat.shape}, expected "
                                 f"({self.n_voxels},)")
            if self.n_voxels and (np.any(np.diff(self.voxel_flat) <= 0)
                                  or self.voxel_flat[0] < 0
                                  or self.voxel_flat[-1] >= int(np.prod(self.shape))):
                raise ValueError("voxel_flat must rise strictly and lie in the volume")

    @property
    def n_total(self) -> int:
        return int(self.log_maps.shape[0])

    @property
    def n_voxels(self) -> int:
        return int(self.log_maps.shape[1])

    @property
    def per_permutation(self) -> tuple[str, ...]:
        """The per-permutation statistics of a chunk, in the order its arrays come."""
        return ("max_abs_difference",) + tuple(
            s for s in CONTRAST_CLUSTER_STATISTICS if s in self.statistics
        )

    def same_data(self, other: ContrastNullSpec) -> bool:
        """Whether ``other`` holds the same log maps and groups (engines keep their
        prepared tables across the passes of :func:`contrast_cluster_null`)."""
        return other.log_maps is self.log_maps and other.n_a == self.n_a


NullSpec = GlobalNullSpec | ContrastNullSpec


def _join_chunks(chunks: dict[int, tuple[np.ndarray, ...]], n_iters: int) -> list[np.ndarray]:
    """Per-permutation arrays of chunks keyed by their first permutation, in order."""
    firsts = sorted(chunks)
    parts = [chunks[first] for first in firsts]
    covered = 0
    for first, part in zip(firsts, parts):
        if first != covered:
            raise ValueError(f"permutations {covered}..{first - 1} are missing from the null")
        covered += part[0].size
    if covered != n_iters:
        raise ValueError(f"the null holds {covered} permutations, expected {n_iters}")
    return [np.concatenate(column) for column in zip(*parts)]


@dataclasses.dataclass(frozen=True, eq=False)
class GlobalNullPartial:
    """Maxima of some permutations: ``chunks[first] = (max_ale, max_size, max_mass)``,
    and ``max_tfce`` after them where the spec collects it."""

    chunks: dict[int, tuple[np.ndarray, ...]]

    @classmethod
    def of(cls, first: int, max_ale, max_size, max_mass,
           max_tfce=None) -> GlobalNullPartial:
        columns = (np.asarray(max_ale, dtype=np.float64), np.asarray(max_size, dtype=np.int64),
                   np.asarray(max_mass, dtype=np.float64))
        if max_tfce is not None:
            columns += (np.asarray(max_tfce, dtype=np.float64),)
        return cls({int(first): columns})

    @property
    def n_permutations(self) -> int:
        return sum(part[0].size for part in self.chunks.values())

    def merge(self, other: GlobalNullPartial) -> GlobalNullPartial:
        overlap = self.chunks.keys() & other.chunks.keys()
        if overlap:
            raise ValueError(f"chunks starting at {sorted(overlap)} were merged twice")
        return GlobalNullPartial({**self.chunks, **other.chunks})

    def finish(self, spec: GlobalNullSpec, seed: int, n_iters: int) -> MonteCarloNull:
        n_columns = len(GLOBAL_STATISTICS) + bool(spec.tfce)
        if any(len(part) != n_columns for part in self.chunks.values()):
            raise ValueError(f"every chunk of this null holds {n_columns} statistics")
        max_ale, max_size, max_mass, *tfce = _join_chunks(self.chunks, n_iters)
        return MonteCarloNull(max_ale, max_size, max_mass, int(seed), float(spec.threshold),
                              int(spec.connectivity), max_tfce=tfce[0] if tfce else None)


@dataclasses.dataclass(frozen=True, eq=False)
class ContrastNullPartial:
    """What a contrast null collects over some permutations.

    ``upper``, ``lower``: exceedance counts per voxel (None unless collected);
    ``chunks[first]``: the per-permutation arrays of ``spec.per_permutation`` (largest
    ``|difference|``, then the largest cluster size and mass when collected); ``histogram``
    (int64, ``HISTOGRAM_BINS``) and ``above`` (the smallest ``|difference|`` above
    ``spec.histogram_bin``, inf if none) of ``abs_difference_histogram``.
    """

    upper: np.ndarray | None
    lower: np.ndarray | None
    chunks: dict[int, tuple[np.ndarray, ...]]
    histogram: np.ndarray | None = None
    above: float = float("inf")

    @property
    def n_permutations(self) -> int:
        return sum(part[0].size for part in self.chunks.values())

    def merge(self, other: ContrastNullPartial) -> ContrastNullPartial:
        overlap = self.chunks.keys() & other.chunks.keys()
        if overlap:
            raise ValueError(f"chunks starting at {sorted(overlap)} were merged twice")

        def add(a, b):
            return None if a is None else a + b

        return ContrastNullPartial(add(self.upper, other.upper), add(self.lower, other.lower),
                                   {**self.chunks, **other.chunks},
                                   add(self.histogram, other.histogram),
                                   min(self.above, other.above))

    def finish(self, spec: ContrastNullSpec, seed: int, n_iters: int,
               diff: np.ndarray) -> ContrastNull:
        columns = dict(zip(spec.per_permutation, _join_chunks(self.chunks, n_iters),
                           strict=True))
        clusters = {}
        if "max_cluster_size" in columns:
            clusters = {
                "max_cluster_size": columns["max_cluster_size"],
                "max_cluster_mass": columns["max_cluster_mass"],
                "cluster_forming_abs_difference": float(spec.cluster_forming_abs_difference),
                "connectivity": int(spec.connectivity),
            }
        return ContrastNull(diff=diff, upper=self.upper, lower=self.lower,
                            max_abs=columns["max_abs_difference"], seed=int(seed), **clusters)


def contrast_partial(first: int, results: dict) -> ContrastNullPartial:
    """A chunk's partial from an engine's results: a dict of ``upper``, ``lower``,
    ``max_abs``, ``histogram``, ``above``, ``max_size`` and ``max_mass`` (None where not
    collected), as :func:`gpuale.engines._contrast_blocks.statistics_chunk` returns it."""
    columns = [np.asarray(results["max_abs"], dtype=np.float64)]
    if results.get("max_size") is not None:
        columns += [np.asarray(results["max_size"], dtype=np.int64),
                    np.asarray(results["max_mass"], dtype=np.float64)]
    return ContrastNullPartial(results.get("upper"), results.get("lower"),
                               {int(first): tuple(columns)}, results.get("histogram"),
                               float(results.get("above", float("inf"))))


@dataclasses.dataclass(frozen=True, eq=False)
class MonteCarloNull:
    """Per-permutation maxima of a Monte Carlo run (``max_tfce``: None unless collected)."""

    max_ale: np.ndarray
    max_cluster_size: np.ndarray
    max_cluster_mass: np.ndarray
    seed: int
    threshold: float
    connectivity: int
    max_tfce: np.ndarray | None = None

    @property
    def n_iters(self) -> int:
        return int(self.max_ale.size)


@dataclasses.dataclass(frozen=True, eq=False)
class ContrastNull:
    """Exceedance counts of the permutation null of ALE_A - ALE_B.

    Attributes
    ----------
    diff : ndarray (support voxels)
        Observed ALE_A - ALE_B.
    upper, lower : ndarray of int64 (support voxels)
        Permutations with a difference >= / <= the observed one.
    max_abs : ndarray of float64, shape (n_iters,)
        Largest ``|difference|`` of each permutation (voxel-level FWE).
    max_cluster_size, max_cluster_mass : ndarray, shape (n_iters,), optional
        Largest cluster size (int64) and mass (float64) of each permutation above
        ``cluster_forming_abs_difference`` (cluster-level FWE; None when not collected).
    cluster_forming_abs_difference : float, optional
        The (1 - ``voxel_thresh``) quantile of every permuted ``|difference|`` pooled over the
        mask's voxels and the permutations (NiMARE's ``ss_thresh``).
    voxel_thresh : float, optional
        The quantile's tail, NiMARE's ``voxel_thresh``.
    connectivity : int, optional
        Neighbourhood of the clusters.
    """

    diff: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    max_abs: np.ndarray
    seed: int
    max_cluster_size: np.ndarray | None = None
    max_cluster_mass: np.ndarray | None = None
    cluster_forming_abs_difference: float | None = None
    voxel_thresh: float | None = None
    connectivity: int | None = None

    @property
    def n_iters(self) -> int:
        return int(self.max_abs.size)

    @property
    def has_clusters(self) -> bool:
        """Whether the cluster-level FWE nulls were collected."""
        return self.max_cluster_size is not None


Partial = GlobalNullPartial | ContrastNullPartial


def quantile_order_statistics(n_values: int, q: float) -> tuple[int, int, float]:
    """numpy's default ("linear") ``quantile`` of n values as two order statistics.

    Returns ``(previous, next, gamma)``: the quantile lies between the ``previous``-th and
    the ``next``-th smallest value (0-based), a share ``gamma`` of the way; the same
    index arithmetic as ``np.quantile(values, q)`` (NiMARE's ``np.quantile(np.abs(
    iter_diff_values), 1 - voxel_thresh)``).
    """
    if n_values < 1:
        raise ValueError("a quantile of no values")
    # numpy: virtual index (n - 1) * q in float64, its floor and the fractional part;
    # at or beyond the last value both neighbours are the last value.
    virtual = float(n_values - 1) * float(q)
    if virtual >= n_values - 1:
        return n_values - 1, n_values - 1, virtual - math.floor(virtual)
    if virtual < 0:
        return 0, 0, virtual - math.floor(virtual)
    previous = math.floor(virtual)
    return previous, previous + 1, virtual - previous


def interpolate_quantile(previous: float, next_: float, gamma: float) -> float:
    """numpy's linear interpolation between two float32 order statistics, in float32.

    As numpy's ``_lerp`` does it for a float32 array and a Python-float quantile (the
    weight promoted weakly, so every step rounds to float32), from whichever end is
    nearer.
    """
    a, b = np.float32(previous), np.float32(next_)
    step = b - a
    if gamma >= 0.5:
        return float(b - step * (1 - gamma))
    return float(a + step * gamma)


def _bin_of_rank(histogram: np.ndarray, rank: int) -> tuple[int, int]:
    """The bin holding the ``rank``-th smallest value (0-based), and its rank within."""
    cumulative = np.cumsum(histogram)
    b = int(np.searchsorted(cumulative, rank, side="right"))
    if b >= histogram.size:
        raise ValueError(f"the histogram holds {int(cumulative[-1])} values, not {rank + 1}")
    return b, rank - (int(cumulative[b - 1]) if b else 0)


def _float32_of_bits(bits: int) -> float:
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def pooled_quantile(coarse: np.ndarray, fine: np.ndarray, above: float, fine_bin: int,
                    n_values: int, q: float) -> float:
    """The quantile q of non-negative float32 values from their two histograms (exact).

    Parameters
    ----------
    coarse : ndarray of int64, shape (HISTOGRAM_BINS,)
        Counts by the high 16 bits of the values' bit patterns.
    fine : ndarray of int64, shape (HISTOGRAM_BINS,)
        Counts by the low 16 bits of the values in coarse bin ``fine_bin``.
    above : float
        The smallest value above coarse bin ``fine_bin``.
    fine_bin : int
        The coarse bin of the quantile's lower order statistic
        (:func:`quantile_bin`).
    n_values, q : int, float
        As ``np.quantile(values, q)`` with ``values.size == n_values``.
    """
    previous, next_, gamma = quantile_order_statistics(n_values, q)
    b, within = _bin_of_rank(coarse, previous)
    if b != fine_bin:
        raise ValueError(f"the fine histogram is of bin {fine_bin}, the quantile in bin {b}")
    if int(fine.sum()) != int(coarse[b]):
        raise ValueError(f"the two passes disagree: bin {b} holds {int(coarse[b])} values "
                         f"in the first and {int(fine.sum())} in the second")
    low, _ = _bin_of_rank(fine, within)
    value_previous = _float32_of_bits((b << 16) | low)
    if next_ == previous:
        value_next = value_previous
    elif within + 1 < int(coarse[b]):
        value_next = _float32_of_bits((b << 16) | _bin_of_rank(fine, within + 1)[0])
    else:  # the next value is the smallest of a higher coarse bin
        value_next = float(above)
    return interpolate_quantile(value_previous, value_next, gamma)


def quantile_bin(coarse: np.ndarray, n_values: int, q: float) -> int:
    """The coarse bin holding the quantile's lower order statistic."""
    return _bin_of_rank(coarse, quantile_order_statistics(n_values, q)[0])[0]


def abs_difference_histogram(xp, abs_diff, histogram_bin: int | None, floor: int = 0):
    """One batch of an ``abs_difference_histogram``: ``(counts, smallest above)``.

    ``abs_diff`` holds non-negative float32 values (any shape, an array of ``xp``);
    ``counts`` (int64, ``HISTOGRAM_BINS``) bins them by the high half of their bits
    (coarse bins below ``floor`` counted in bin 0), or, with ``histogram_bin``, those of
    that coarse bin by the low half. Integer counts, so every engine and order gives the
    same histogram.
    """
    bits = abs_diff.reshape(-1).view(xp.uint32)
    high = bits >> 16
    if histogram_bin is None:
        high = high.astype(xp.int64)
        if floor:
            high[high < floor] = 0
        counts = xp.bincount(high, minlength=HISTOGRAM_BINS)
        return counts.astype(xp.int64), float("inf")
    inside = high == histogram_bin
    counts = xp.bincount((bits[inside] & 0xFFFF).astype(xp.int64), minlength=HISTOGRAM_BINS)
    higher = abs_diff.reshape(-1)[high > histogram_bin]
    above = float(higher.min()) if higher.size else float("inf")
    return counts.astype(xp.int64), above


#: The nulls of a balanced contrast (see the module docstring).
BALANCED_NULLS = ("label-permutation", "random-foci")


#: Null iterations per chunk: each is ``difference_iterations`` subsample pairs.
CHUNK = 4


@dataclasses.dataclass(frozen=True, eq=False)
class BalancedNullSpec:
    """Null extrema of the mean balanced difference (picklable; engines dispatch on
    ``kind``).

    Parameters
    ----------
    null : {"label-permutation", "random-foci"}
    n_a, n_b : int
        Group sizes (pooled experiments are numbered A first).
    target_n, difference_iterations : int
    n_prior : int
        Voxels of the prior: extrema count the 0 of every prior voxel no experiment
        reaches.
    log_maps : ndarray of float32, shape (n_a + n_b, n_columns), optional
        Label permutation: ``log1p(-MA)`` of the pooled experiments at the prior voxels
        some experiment reaches.
    problem : Problem, optional
        Random foci: the pooled experiments (their kernels and numbers of foci).
    prior : ndarray of bool, optional
        Random foci: in-mask vector of the prior.
    sample_space : ndarray of int64, optional
        Random foci: flat volume indices where a focus may be placed (the prior).
    """

    null: str
    n_a: int
    n_b: int
    target_n: int
    difference_iterations: int
    n_prior: int
    log_maps: np.ndarray | None = None
    problem: Problem | None = None
    prior: np.ndarray | None = None
    sample_space: np.ndarray | None = None

    kind = "balanced"
    #: Iterations per chunk whichever engine runs it (each is ``difference_iterations``
    #: subsample pairs): a scheduler keeps this size rather than the engine's.
    chunk_iterations = CHUNK

    def __post_init__(self) -> None:
        if self.null not in BALANCED_NULLS:
            raise ValueError(f"null must be one of {BALANCED_NULLS}, got {self.null!r}")
        if not 0 < self.target_n <= min(self.n_a, self.n_b):
            raise ValueError(f"target_n must lie in 1 .. {min(self.n_a, self.n_b)}")
        if self.difference_iterations < 1:
            raise ValueError("difference_iterations must be at least 1")
        if self.null == "label-permutation" and (
                self.log_maps is None or self.log_maps.shape[0] != self.n_a + self.n_b):
            raise ValueError("a label-permutation null needs the pooled log maps")
        if self.null == "random-foci" and (self.problem is None or self.prior is None
                                           or self.sample_space is None
                                           or self.sample_space.size == 0):
            raise ValueError("a random-foci null needs the problem, prior and sample space")


@dataclasses.dataclass(frozen=True, eq=False)
class BalancedNull:
    """Per null iteration, the smallest and largest mean balanced difference."""

    min_null: np.ndarray
    max_null: np.ndarray
    seed: int

    @property
    def n_iters(self) -> int:
        return int(self.max_null.size)


@dataclasses.dataclass(frozen=True, eq=False)
class BalancedNullPartial:
    """Extrema of some iterations: ``chunks[first] = (min_null, max_null)``."""

    chunks: dict[int, tuple[np.ndarray, np.ndarray]]

    @property
    def n_permutations(self) -> int:
        return sum(part[0].size for part in self.chunks.values())

    def merge(self, other: BalancedNullPartial) -> BalancedNullPartial:
        overlap = self.chunks.keys() & other.chunks.keys()
        if overlap:
            raise ValueError(f"chunks starting at {sorted(overlap)} were merged twice")
        return BalancedNullPartial({**self.chunks, **other.chunks})

    def finish(self, spec: BalancedNullSpec, seed: int, n_iters: int) -> BalancedNull:
        min_null, max_null = _join_chunks(self.chunks, n_iters)
        return BalancedNull(min_null, max_null, int(seed))


#: SCALE compares log-sums in fixed point, as the CUDA kernels carry them: each term
#: ``-log1p(-K)`` (the float32 log, held as float64) clamped at :data:`SCALE_MAX_LOG_TERM`
#: and rounded once to units of ``2**-SCALE_LOG_SUM_FRAC_BITS``. Integer sums are exact in
#: any order, so every engine, batch and device finds the same exceedances, ties included
#: (a permuted focus often lands where an analysed one is: both are database foci).
SCALE_LOG_SUM_FRAC_BITS = 50
SCALE_MAX_LOG_TERM = 64.0


def fixed_neg_log_kernel(kernel: np.ndarray) -> np.ndarray:
    """``-log1p(-kernel)`` in SCALE's fixed point (int64, the kernel's shape)."""
    neg_log = -np.log1p(-np.asarray(kernel)).astype(np.float64)
    return np.rint(np.minimum(neg_log, SCALE_MAX_LOG_TERM)
                   * 2.0**SCALE_LOG_SUM_FRAC_BITS).astype(np.int64)


def ale_of_fixed(neg_log_sum) -> np.ndarray:
    """float32 ALE ``1 - exp(S)`` of fixed-point ``-S`` values, as the kernels round it."""
    neg = np.asarray(neg_log_sum, dtype=np.float64) * 2.0**-SCALE_LOG_SUM_FRAC_BITS
    return (1.0 - np.exp(-neg)).astype(np.float32).astype(np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class ScaleNullSpec:
    """SCALE's null (Langner et al. 2014) as NiMARE 0.22.1's ``SCALE`` computes it.

    In permutation i, focus j of the analysed experiments (``problem``) takes the voxel
    ``pool_ijk[pool_draws(seed; i, j)]`` (:func:`gpuale.rng.pool_draws`): the position of
    a focus drawn uniformly from the whole database. Per in-mask voxel, the permutations
    whose ALE reaches the observed one are counted: ``-S >= -S_observed`` for the fixed-
    point log-sums of :func:`fixed_neg_log_kernel` (ALE rises with -S), the observed one
    computed by the same engine code from the unpermuted foci. Per permutation the
    largest ALE (voxel-level FWE).

    Parameters
    ----------
    problem : Problem
        The analysed experiments (their foci, kernels and numbers of foci).
    pool_ijk : ndarray of int32, shape (n_pool, 3)
        Voxel indices of every database focus on the analysis grid, as NiMARE's
        ``mm2vox`` gives them (rounded half to even; foci off the grid kept, not clamped:
        only the parts of their kernels inside the grid count).
    """

    problem: Problem
    pool_ijk: np.ndarray

    kind = "scale"

    def __post_init__(self) -> None:
        pool = np.ascontiguousarray(self.pool_ijk, dtype=np.int32)
        if pool.ndim != 2 or pool.shape[1] != 3 or pool.shape[0] == 0:
            raise ValueError(f"pool_ijk must have shape (n_pool > 0, 3), got {pool.shape}")
        if pool.shape[0] >= 2**32:
            raise ValueError("a SCALE pool holds fewer than 2**32 foci")
        object.__setattr__(self, "pool_ijk", pool)

    @property
    def n_pool(self) -> int:
        return int(self.pool_ijk.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class ScaleNullPartial:
    """Exceedance counts over some permutations (int64 per in-mask voxel) and
    ``chunks[first] = (max_ale,)``."""

    counts: np.ndarray
    chunks: dict[int, tuple[np.ndarray, ...]]

    @classmethod
    def of(cls, first: int, counts, max_ale) -> ScaleNullPartial:
        return cls(np.asarray(counts, dtype=np.int64),
                   {int(first): (np.asarray(max_ale, dtype=np.float64),)})

    @property
    def n_permutations(self) -> int:
        return sum(part[0].size for part in self.chunks.values())

    def merge(self, other: ScaleNullPartial) -> ScaleNullPartial:
        overlap = self.chunks.keys() & other.chunks.keys()
        if overlap:
            raise ValueError(f"chunks starting at {sorted(overlap)} were merged twice")
        return ScaleNullPartial(self.counts + other.counts, {**self.chunks, **other.chunks})

    def finish(self, spec: ScaleNullSpec, seed: int, n_iters: int) -> ScaleNull:
        (max_ale,) = _join_chunks(self.chunks, n_iters)
        return ScaleNull(counts=self.counts, max_ale=max_ale, seed=int(seed))


@dataclasses.dataclass(frozen=True, eq=False)
class ScaleNull:
    """SCALE's null: per in-mask voxel the permutations with ALE >= the observed one
    (``counts``), and each permutation's largest ALE."""

    counts: np.ndarray
    max_ale: np.ndarray
    seed: int

    @property
    def n_iters(self) -> int:
        return int(self.max_ale.size)

    def p_values(self) -> np.ndarray:
        """NiMARE's SCALE p: count / n clipped to [1/n, 1 - 1/n]."""
        n = self.n_iters
        return np.clip(self.counts / n, 1.0 / n, 1.0 - 1.0 / n)
