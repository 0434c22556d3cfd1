"""Stopping the permutations once the answer is settled (``--iters auto``).

A fixed number of Monte Carlo permutations is a guess: too few and a cluster's FWE
decision, or the cluster-size threshold, is a coin toss; too many and the run spends most
of its time confirming what was clear long before. Here the permutations run in
geometric *checkpoints* (looks) and stop at the first look where

1. every observed cluster's FWE decision is settled: its exceedance count ``x`` of ``n``
   (permutations whose largest cluster reaches the cluster's size, the count behind its
   FWE p) has a Clopper-Pearson interval, at error level ``eps / K`` for ``K`` looks,
   that excludes ``alpha`` (Besag & Clifford 1991; Gandy 2009). Across the ``K`` looks
   each cluster's decision then differs from the infinitely-many-permutations one with
   probability at most ``eps``;
2. the cluster-size threshold (the ``1 - alpha`` quantile of the null's largest cluster
   sizes) is known to a stated precision: the half-width of its distribution-free
   interval (order statistics, :func:`gpuale.inference.threshold_interval`) is at most
   ``threshold_precision`` times the threshold. The interval's confidence is ``1 - 0.05 /
   K`` at each look, 95% over all of them: the width of an interval is itself random,
   and an unadjusted 95% interval that happens to come out narrow at an early look would
   stop the rule there by luck.

With TFCE (``--tfce``) the max-TFCE threshold, the cut of the TFCE map's voxel-level FWE,
must reach the same precision, since its p come from the same permutations.

The decision covers the cluster-size FWE p, which decides what :func:`gpuale.analysis.
run_ale` calls significant; the cluster-mass and voxel-level p are reported from the same
permutations. A permutation's draws depend only on (seed, permutation, focus)
(:mod:`gpuale.rng`), so the checkpoints run as segments of permutations ``[n_k,
n_{k+1})`` whose partials merge: a run that stops at ``n`` holds exactly the first ``n``
permutations of a fixed run with the same seed.

A study (``gpuale run --iters auto``, ``iterations = "auto"``) applies the rule to its
global analyses, at most ``max_iters`` each. Contrasts run a fixed number
(:func:`gpuale.contrast.run_contrast` refuses ``"auto"``): with cluster-level FWE their
cluster-forming threshold is a quantile of every permuted difference, so each added
permutation moves the threshold and with it the observed clusters; there is no fixed
statistic whose exceedance count a sequential test could settle.

References
----------
Besag J, Clifford P (1991). Sequential Monte Carlo p-values. Biometrika 78:301-304.
Gandy A (2009). Sequential implementation of Monte Carlo tests with uniformly bounded
resampling risk. Journal of the American Statistical Association 104:1504-1511.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from gpuale.inference import threshold_interval
from gpuale.nulls import _merged_partial
from gpuale.nullspecs import GlobalNullSpec, MonteCarloNull
from gpuale.schedulers import ProgressCallback, Scheduler

if TYPE_CHECKING:
    from gpuale.engines import Engine

__all__ = [
    "AUTO",
    "DEFAULT_EPS",
    "DEFAULT_MAX_ITERS",
    "DEFAULT_THRESHOLD_PRECISION",
    "Look",
    "StoppingRecord",
    "StoppingRule",
    "UnsettledWarning",
    "clopper_pearson",
    "cluster_size_decision",
    "exceedance_counts",
    "run_null_until_settled",
    "zero_exceedance_bound",
]

#: The ``n_iters`` (``--iters``) that asks for the stopping rule.
AUTO = "auto"
#: Chance, per cluster, that the rule settles a decision other than the one infinitely
#: many permutations would give (METHODS-BEYOND.md section 5 uses 0.001 on NiMARE's pain
#: data: all six clusters settled at 500 permutations).
DEFAULT_EPS = 0.001
#: The most permutations the rule runs (Eickhoff et al. 2016 use 5,000-10,000).
DEFAULT_MAX_ITERS = 10_000
#: Largest half-width of the cluster-size threshold's 95% interval, as a share of it.
DEFAULT_THRESHOLD_PRECISION = 0.1
#: Confidence of the threshold's interval over all looks (that of the report's "Monte
#: Carlo 95% interval"), ``1 - 0.05 / K`` at each of the K looks.
THRESHOLD_CONFIDENCE = 0.95
#: Each checkpoint runs this many times the permutations of the one before.
GROWTH = 2.0

SETTLED = "settled"
MAX_REACHED = "max_iters reached"


class UnsettledWarning(UserWarning):
    """The stopping rule reached its largest number of permutations unsettled."""


# --- Pure statistics ------------------------------------------------------------------------


def clopper_pearson(
    successes: np.ndarray | int, n: int, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Clopper-Pearson (exact binomial) interval of a proportion.

    Parameters
    ----------
    successes : int or ndarray of int
        Successes (here: exceedances) among ``n`` trials.
    n : int
        Trials (permutations), at least 1.
    level : float
        Error level: the interval misses the true proportion with probability at most
        ``level`` (``level / 2`` on each side).

    Returns
    -------
    low, high : ndarray of float64
        ``Beta(level/2; x, n-x+1)`` and ``Beta(1-level/2; x+1, n-x)`` quantiles; 0 for
        ``x = 0`` and 1 for ``x = n``.
    """
    from scipy import stats as sp_stats  # imported when needed: it costs ~0.35 s

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")
    x = np.asarray(successes, dtype=np.float64)
    if np.any((x < 0) | (x > n)):
        raise ValueError(f"successes must lie in 0 .. {n}")
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(x > 0, sp_stats.beta.ppf(level / 2, x, n - x + 1), 0.0)
        high = np.where(x < n, sp_stats.beta.ppf(1 - level / 2, x + 1, n - x), 1.0)
    return low, high


def zero_exceedance_bound(level: float, alpha: float) -> int:
    """The fewest permutations that settle a cluster no permutation reaches.

    With 0 exceedances of ``n`` the Clopper-Pearson upper bound is ``1 - (level/2)^(1/n)``,
    below ``alpha`` exactly when ``n > ln(level/2) / ln(1 - alpha)``; e.g. 180 for level
    0.0002 and alpha 0.05 (METHODS-BEYOND.md section 5).
    """
    if not 0.0 < level < 1.0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"level and alpha must lie strictly between 0 and 1, got {level!r}, "
                         f"{alpha!r}")
    return math.floor(math.log(level / 2) / math.log1p(-alpha)) + 1


def exceedance_counts(observed: np.ndarray, null_maxima: np.ndarray) -> np.ndarray:
    """Per observed value, the permutations whose maximum reaches it (``null >= value``),
    the count behind :func:`gpuale.stats.fwe_p_values`."""
    null = np.sort(np.asarray(null_maxima, dtype=np.float64))
    below = np.searchsorted(null, np.asarray(observed, dtype=np.float64), side="left")
    return (null.size - below).astype(np.int64)


# --- The rule -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoppingRule:
    """When to stop the permutations (see the module's docstring).

    Parameters
    ----------
    alpha : float
        The analysis's cluster-level FWE alpha (a decision is ``p < alpha``).
    eps : float
        Per cluster, the largest chance of settling the other decision, spent evenly over
        the looks (``eps / K`` each).
    max_iters : int
        The last checkpoint.
    threshold_precision : float, optional
        Largest half-width of the cluster-size threshold's 95% interval, as a share of
        the threshold (voxels; at least one voxel); None: no condition on the threshold.
    growth : float
        Ratio of successive checkpoints.
    """

    alpha: float = 0.05
    eps: float = DEFAULT_EPS
    max_iters: int = DEFAULT_MAX_ITERS
    threshold_precision: float | None = DEFAULT_THRESHOLD_PRECISION
    growth: float = GROWTH

    def __post_init__(self) -> None:
        for name in ("alpha", "eps"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
        if isinstance(self.max_iters, bool) or not isinstance(self.max_iters, int | np.integer) \
                or self.max_iters < 1:
            raise ValueError(f"max_iters must be a whole number >= 1, got {self.max_iters!r}")
        if self.threshold_precision is not None and not self.threshold_precision > 0:
            raise ValueError("threshold_precision must be > 0 (or None), got "
                             f"{self.threshold_precision!r}")
        if not self.growth > 1:
            raise ValueError(f"growth must be > 1, got {self.growth!r}")

    def _schedule(self, first: int) -> tuple[int, ...]:
        looks = []
        n = min(first, self.max_iters)
        while n < self.max_iters:
            looks.append(n)
            n = max(n + 1, math.ceil(n * self.growth))
        return tuple(looks) + (int(self.max_iters),)

    @property
    def checkpoints(self) -> tuple[int, ...]:
        """The looks: from the fewest permutations that can settle a cluster no
        permutation reaches (at level ``eps / K``), growing by ``growth``, to
        ``max_iters``; ``K`` is their number (the smallest ``K`` whose schedule has at
        most ``K`` looks)."""
        k = 1
        while True:
            looks = self._schedule(zero_exceedance_bound(self.eps / k, self.alpha))
            if len(looks) <= k:
                return looks
            k += 1

    @property
    def n_looks(self) -> int:
        return len(self.checkpoints)

    @property
    def per_look_level(self) -> float:
        """The Clopper-Pearson error level of each look, ``eps / K``."""
        return self.eps / self.n_looks

    @property
    def threshold_confidence(self) -> float:
        """Confidence of the threshold's interval at each look, ``1 - 0.05 / K``."""
        return 1.0 - (1.0 - THRESHOLD_CONFIDENCE) / self.n_looks

    def describe(self) -> str:
        """The rule in words (run.json)."""
        text = (
            "stop at the first checkpoint where every observed cluster's cluster-size FWE "
            f"decision (p < {self.alpha:g}) is settled: the Clopper-Pearson interval of its "
            f"exceedance rate at level eps/K = {self.eps:g}/{self.n_looks} excludes alpha "
            "(Besag & Clifford 1991; Gandy 2009)"
        )
        if self.threshold_precision is not None:
            text += (
                ", and the cluster-size threshold's distribution-free interval (confidence "
                f"1 - 0.05/{self.n_looks} per look, 95% over all) lies within "
                f"+/-{self.threshold_precision:.0%} of it"
            )
        return text


@dataclasses.dataclass(frozen=True)
class Look:
    """What the rule saw at one checkpoint.

    Attributes
    ----------
    n : int
        Permutations so far.
    n_clusters : int
        Observed clusters the decision covers.
    n_unsettled : int
        Those whose interval still holds alpha.
    threshold : tuple of float
        Cluster-size threshold, with its interval (low, high) at the rule's
        ``threshold_confidence``.
    threshold_settled : bool
        Whether the threshold met the precision target.
    tfce_threshold : tuple of float or None
        With TFCE: the max-TFCE threshold (the voxel-level FWE cut of the TFCE map) with
        its interval, held to the same precision, since the TFCE p come from the same
        permutations.
    tfce_threshold_settled : bool
        Whether it met the precision target (True without TFCE).
    """

    n: int
    n_clusters: int
    n_unsettled: int
    threshold: tuple[float, float, float]
    threshold_settled: bool
    tfce_threshold: tuple[float, float, float] | None = None
    tfce_threshold_settled: bool = True

    @property
    def settled(self) -> bool:
        return self.n_unsettled == 0 and self.threshold_settled and self.tfce_threshold_settled

    def record(self) -> dict:
        estimate, low, high = self.threshold
        record = {"n": self.n, "clusters": self.n_clusters, "unsettled": self.n_unsettled,
                  "cluster_size_threshold": {"voxels": estimate, "low": low, "high": high},
                  "threshold_settled": self.threshold_settled}
        if self.tfce_threshold is not None:
            estimate, low, high = self.tfce_threshold
            record["max_tfce_threshold"] = {"tfce": estimate, "low": low, "high": high}
            record["tfce_threshold_settled"] = self.tfce_threshold_settled
        return record


@dataclasses.dataclass(frozen=True)
class StoppingRecord:
    """Where the rule stopped and why."""

    rule: StoppingRule
    looks: tuple[Look, ...]

    @property
    def stopped_at(self) -> int:
        return self.looks[-1].n

    @property
    def settled(self) -> bool:
        return self.looks[-1].settled

    @property
    def reason(self) -> str:
        return SETTLED if self.settled else MAX_REACHED

    def record(self) -> dict:
        """run.json's ``stopping`` entry."""
        rule = self.rule
        return {
            "rule": rule.describe(),
            "statistic": "cluster size",
            "eps": rule.eps,
            "alpha": rule.alpha,
            "looks": rule.n_looks,
            "per_look_level": rule.per_look_level,
            "threshold_precision": rule.threshold_precision,
            "threshold_confidence_per_look": rule.threshold_confidence,
            "max_iters": rule.max_iters,
            "checkpoints": list(rule.checkpoints),
            "stopped_at": self.stopped_at,
            "reason": self.reason,
            "history": [look.record() for look in self.looks],
        }

    def unsettled_message(self) -> str | None:
        """The warning of a rule that ran out of permutations (None if it settled)."""
        if self.settled:
            return None
        last = self.looks[-1]
        parts = []
        if last.n_unsettled:
            parts.append(f"{last.n_unsettled} cluster(s) whose FWE p is still too close to "
                         f"alpha = {self.rule.alpha:g} to call, so their decisions may "
                         "change with more permutations")
        if not last.threshold_settled:
            estimate, low, high = last.threshold
            parts.append(f"a cluster-size threshold of {estimate:.0f} voxels known only to "
                         f"[{low:.0f}, {high:.0f}]"
                         + ("" if last.n_unsettled else
                            " (every cluster's decision is settled; the reported threshold "
                            "is the imprecise part)"))
        if not last.tfce_threshold_settled:
            estimate, low, high = last.tfce_threshold
            parts.append(f"a max-TFCE threshold of {estimate:.4g} known only to "
                         f"[{low:.4g}, {high:.4g}], so TFCE p near alpha may change")
        return (f"--iters auto stopped at max_iters = {self.stopped_at:,} unsettled: "
                f"{' and '.join(parts)} (raise --max-iters)")


# --- Deciding and running ---------------------------------------------------------------------


def cluster_size_decision(
    cluster_sizes: np.ndarray, rule: StoppingRule, *, tfce: bool = False
) -> Callable[[MonteCarloNull], Look]:
    """The decision of a global ALE: its observed clusters' sizes against the null.

    With ``tfce`` the max-TFCE threshold must also reach the rule's precision (TFCE values
    are continuous: no one-voxel floor).

    Parameters
    ----------
    cluster_sizes : ndarray
        Sizes of the observed clusters, one per cluster (the labels' ``sizes[1:]`` of
        :func:`gpuale.clusters.label_clusters`).
    rule : StoppingRule
    """
    sizes = np.asarray(cluster_sizes, dtype=np.float64)
    level = rule.per_look_level

    def decide(null: MonteCarloNull) -> Look:
        n = null.n_iters
        exceed = exceedance_counts(sizes, null.max_cluster_size)
        low, high = clopper_pearson(exceed, n, level)
        unsettled = int(np.count_nonzero((low <= rule.alpha) & (high >= rule.alpha)))
        threshold = threshold_interval(null.max_cluster_size, rule.alpha,
                                       rule.threshold_confidence)
        estimate, lo, hi = threshold
        precise = rule.threshold_precision is None or (
            # At least one voxel: under 10 voxels a 10% half-width is below one, and a
            # quantile between two sizes would then never settle.
            max(hi - estimate, estimate - lo) <= max(rule.threshold_precision * estimate, 1.0)
        )
        tfce_threshold, tfce_precise = None, True
        if tfce:
            tfce_threshold = threshold_interval(null.max_tfce, rule.alpha,
                                                rule.threshold_confidence)
            t_estimate, t_low, t_high = tfce_threshold
            tfce_precise = rule.threshold_precision is None or (
                max(t_high - t_estimate, t_estimate - t_low)
                <= rule.threshold_precision * t_estimate
            )
        return Look(n=n, n_clusters=int(sizes.size), n_unsettled=unsettled,
                    threshold=threshold, threshold_settled=bool(precise),
                    tfce_threshold=tfce_threshold, tfce_threshold_settled=bool(tfce_precise))

    return decide


def run_null_until_settled(
    spec: GlobalNullSpec,
    engine: Engine,
    *,
    seed: int,
    rule: StoppingRule,
    decide: Callable[[MonteCarloNull], Look],
    scheduler: Scheduler | None = None,
    n_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[MonteCarloNull, StoppingRecord]:
    """Run a global null checkpoint by checkpoint until ``decide`` says it is settled.

    Each checkpoint runs permutations ``[previous, checkpoint)`` as
    :func:`gpuale.nulls.run_null` runs a null (same chunks, scheduler and engine) and
    merges their partial with the earlier ones', so the null holds permutations
    ``0 .. stopped_at - 1``, bit for bit those of a fixed run.

    Parameters
    ----------
    spec, engine, seed, scheduler, n_workers
        As :func:`gpuale.nulls.run_null`.
    rule : StoppingRule
    decide : callable
        The null so far -> its :class:`Look` (e.g. :func:`cluster_size_decision`).
    progress : callable, optional
        Called with the permutations just finished; if it has a ``set_total`` method, that
        is called with each checkpoint before it runs (a progress bar's target).

    Returns
    -------
    null : MonteCarloNull
    record : StoppingRecord
    """
    set_total = getattr(progress, "set_total", None)
    merged = None
    looks: list[Look] = []
    done = 0
    null = None
    for checkpoint in rule.checkpoints:
        if set_total is not None:
            set_total(checkpoint)
        segment = _merged_partial(spec, engine, seed, checkpoint, scheduler, n_workers,
                                  progress, start=done)
        merged = segment if merged is None else merged.merge(segment)
        done = checkpoint
        null = merged.finish(spec, seed, done)
        looks.append(decide(null))
        if looks[-1].settled:
            break
    return null, StoppingRecord(rule, tuple(looks))
