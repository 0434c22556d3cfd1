"""Inference from permutation nulls: FWE-corrected maps and Monte Carlo intervals.

The nulls themselves (each permutation relocates every focus to a random in-mask voxel,
Eickhoff et al. 2012, and keeps the largest ALE, the largest cluster above the
cluster-forming threshold and the largest cluster mass) come from :mod:`gpuale.nullspecs`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np

from gpuale.clusters import label_clusters
from gpuale.grid import Grid
from gpuale.nullspecs import MonteCarloNull
from gpuale.stats import fwe_p_values, p_to_z

__all__ = [
    "ClusterInference",
    "UnreachableThresholdWarning",
    "correct_fwe",
    "fdr_threshold",
    "iterations_to_reach",
    "smallest_fwe_p",
    "threshold_interval",
    "unreachable_threshold_message",
]


# --- Reachable thresholds ---------------------------------------------------------------------


class UnreachableThresholdWarning(UserWarning):
    """A permutation test cannot reach its threshold with the iterations it was given.

    With n permutations the smallest p a test can report is about 1/n (p is clipped there,
    as NiMARE does), and gpuale's thresholds are strict (``p < threshold``), so below a
    certain n nothing can pass however strong the effect.
    """


def smallest_fwe_p(n_iters: int) -> float:
    """The smallest FWE p that :func:`gpuale.stats.fwe_p_values` gives with ``n_iters``.

    Computed by that function itself for an observation above every null value, so that
    this stays true if its clipping changes.
    """
    return float(fwe_p_values(np.array([np.inf]), np.zeros(n_iters))[0])


def iterations_to_reach(
    threshold: float, smallest_p: Callable[[int], float], *, limit: int = 10**9
) -> int:
    """The fewest iterations with which some p can lie below ``threshold`` (strictly).

    Parameters
    ----------
    threshold : float
        The test's threshold; a p passes when ``p < threshold``.
    smallest_p : callable
        The smallest p the test can give with n iterations; never increasing in n.
    limit : int
        Give up beyond this many iterations.

    Raises
    ------
    ValueError
        No n up to ``limit`` reaches the threshold.
    """
    # Doubling, then bisection: exact whatever smallest_p's rounding, in ~60 evaluations.
    high = 1
    while not smallest_p(high) < threshold:
        if high >= limit:
            raise ValueError(f"no number of iterations up to {limit:,} reaches p < {threshold}")
        high = min(2 * high, limit)
    low = high // 2  # fails (or is 0)
    while high - low > 1:
        middle = (low + high) // 2
        if smallest_p(middle) < threshold:
            high = middle
        else:
            low = middle
    return high


def unreachable_threshold_message(
    test: str, n_iters: int, threshold: float, smallest_p: Callable[[int], float]
) -> str | None:
    """The warning for a test whose threshold ``n_iters`` cannot reach (None if it can).

    ``test`` names the test and its threshold in words, e.g. "the contrast's threshold".
    """
    smallest = smallest_p(n_iters)
    if smallest < threshold:
        return None
    needed = iterations_to_reach(threshold, smallest_p)
    return (
        f"{test} (p < {threshold:g}) cannot be reached with {n_iters:,} iterations: the "
        f"smallest p they can give is {smallest:.3g}, so nothing can pass however strong the "
        f"effect; it needs at least {needed:,} iterations, and several times that to resolve "
        "p near the threshold"
    )


def _binom_ppf(level: float, n: int, p: float) -> float:
    """``scipy.stats.binom.ppf`` for 0 < level < 1: the ufunc it calls there, from
    scipy.special (imported already), without importing scipy.stats (~0.35 s of a
    run's fixed cost). Falls back to scipy.stats where scipy lacks that ufunc."""
    try:
        from scipy.special._ufuncs import _binom_ppf
    except ImportError:  # pragma: no cover - a scipy without it
        from scipy import stats as sp_stats

        return float(sp_stats.binom.ppf(level, n, p))
    return float(_binom_ppf(level, n, p))


def threshold_interval(
    null_maxima: np.ndarray, alpha: float, confidence: float = 0.95
) -> tuple[float, float, float]:
    """The FWE threshold (the 1 - alpha quantile of the null) with a Monte Carlo interval.

    A distribution-free interval from order statistics: the number of null values below
    the true quantile is Binomial(n, 1 - alpha).

    Returns
    -------
    estimate, low, high : float
    """
    null = np.sort(np.asarray(null_maxima, dtype=np.float64))
    n = null.size
    q = 1.0 - alpha
    tail = (1.0 - confidence) / 2.0
    k = min(n - 1, int(np.ceil(q * n)) - 1)
    lo = int(_binom_ppf(tail, n, q)) - 1
    hi = int(_binom_ppf(1.0 - tail, n, q))
    return float(null[max(k, 0)]), float(null[max(lo, 0)]), float(null[min(hi, n - 1)])


@dataclasses.dataclass(frozen=True, eq=False)
class ClusterInference:
    """FWE-corrected maps and the clusters of the observed map.

    All maps are in-mask vectors. ``labels`` numbers the supra-threshold clusters by
    decreasing size (0 = background); ``cluster_size``, ``cluster_mass``, ``p_size``
    and ``p_mass`` have one entry per label (index 0 unused).
    """

    p_voxel: np.ndarray
    p_cluster_size: np.ndarray
    p_cluster_mass: np.ndarray
    labels: np.ndarray
    cluster_size: np.ndarray
    cluster_mass: np.ndarray
    p_size: np.ndarray
    p_mass: np.ndarray

    @classmethod
    def from_null(cls, voxel_values: np.ndarray, voxel_maxima: np.ndarray,
                  labels: np.ndarray, sizes: np.ndarray, masses: np.ndarray,
                  null) -> ClusterInference:
        """The FWE p of each voxel against ``voxel_maxima`` and of each cluster against
        the null's ``max_cluster_size`` and ``max_cluster_mass``."""
        p_size = fwe_p_values(sizes, null.max_cluster_size)
        p_mass = fwe_p_values(masses, null.max_cluster_mass)
        return cls(
            p_voxel=fwe_p_values(voxel_values, voxel_maxima),
            p_cluster_size=p_size[labels],
            p_cluster_mass=p_mass[labels],
            labels=labels,
            cluster_size=sizes,
            cluster_mass=masses,
            p_size=p_size,
            p_mass=p_mass,
        )

    @staticmethod
    def logp(p: np.ndarray) -> np.ndarray:
        return (-np.log10(p)).astype(np.float32)

    @staticmethod
    def z(p: np.ndarray) -> np.ndarray:
        return p_to_z(p).astype(np.float32)


def correct_fwe(ale: np.ndarray, grid: Grid, null: MonteCarloNull) -> ClusterInference:
    """Voxel-level and cluster-level (size, mass) FWE p of the observed ALE map.

    Corrected p = share of permutations whose maximum reaches the observed value, clipped
    to [1/n, 1 - 1/n] (as NiMARE); voxels outside every cluster get the p of size 0.
    """
    labels, sizes, masses = label_clusters(ale, grid, null.threshold, null.connectivity)
    return ClusterInference.from_null(ale, null.max_ale, labels, sizes, masses, null)


def fdr_threshold(p: np.ndarray, q: float) -> float:
    """Benjamini-Hochberg: the largest p that survives FDR q (0 if none does).

    Eickhoff et al. (2016) discourage FDR for ALE: it controls false voxels, not false
    clusters, and it is not valid for the spatially smooth ALE maps' claims of location.
    """
    warnings.warn(
        "FDR-corrected ALE maps are discouraged (Eickhoff et al. 2016, NeuroImage 137:70); "
        "report cluster-level FWE",
        UserWarning,
        stacklevel=2,
    )
    p = np.sort(np.asarray(p, dtype=np.float64))
    n = p.size
    passing = np.flatnonzero(p <= q * np.arange(1, n + 1) / n)
    return float(p[passing[-1]]) if passing.size else 0.0
