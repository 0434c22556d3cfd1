"""Fail-safe N of a finished global ALE run (Acar et al. 2018, PLoS One 13:e0208177).

How many null studies could sit in the file drawer before a cluster stops being
significant? Null studies are made up from the real ones: each takes its number of foci
from one real experiment and its sample size from another, both drawn uniformly with
replacement (as NeuroStat/GenerateNull resamples them), and places its foci uniformly at
random over the mask's voxels. For a number ``n`` of them, the analysis of the run folder
is repeated on the real experiments plus null studies 1..n (a full ALE with cluster-level
FWE, same settings, seed and iterations); a cluster of the run survives when a
significant cluster overlaps it (as in :mod:`gpuale.jackknife`). The fail-safe N of a
cluster is the smallest ``n`` at which it no longer survives, found by bisection: probes
at a minimum and a maximum number, then halving the bracket until it is exact. The
bracket is always the fewest null studies found to lose the cluster (by any evaluation so
far, those made for other clusters included) and the most below that found to keep it.

Bisection assumes that a cluster, once lost, stays lost as null studies are added
(monotone in ``n``). The null studies are nested (study ``j`` is the same whatever ``n``)
and every re-run uses the same seed, which makes that close to true, but Monte Carlo error
near alpha can break it. Then the answer is the lowest crossing found (lost with ``n``,
kept with ``n - 1``), never a number above one already found to lose the cluster;
failsafe.json lists every evaluated ``n``, and a warning names any cluster whose
evaluations are not monotone.

Every random draw is a pure function of (seed, null study, slot): the counter of a draw is
``(study j, slot, STREAM_FAILSAFE_NULL_STUDIES, 0)`` with slot 0 the focus-count donor,
slot 1 the sample-size donor and slot 2 + f the voxel of focus f (see :mod:`gpuale.rng`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np

from gpuale.dataset import Dataset, Experiment
from gpuale.engines import resolve_device
from gpuale.grid import Grid
from gpuale.jackknife import (
    ALESettings,
    RerunWarnings,
    cluster_survival,
)
from gpuale.rng import STREAM_FAILSAFE_NULL_STUDIES, philox4x32, uniform_below
from gpuale.schedulers import Scheduler

__all__ = [
    "DEFAULT_MAXIMUM_PER_EXPERIMENT",
    "DEFAULT_MINIMUM_PER_EXPERIMENT",
    "FAILSAFE_COLUMNS",
    "FAILSAFE_METHOD",
    "FailsafeResult",
    "failsafe_n",
    "max_evaluations",
    "null_studies",
]

#: Default probes, per experiment of the meta-analysis: the minimum (k null studies, as
#: many as the real ones) and the maximum (5 k), beyond which a cluster is reported as
#: "more than the maximum". gpuale's choice, not Acar et al.'s; set them to what matters
#: for the field (e.g. the number of studies likely left unpublished).
DEFAULT_MINIMUM_PER_EXPERIMENT = 1
DEFAULT_MAXIMUM_PER_EXPERIMENT = 5
#: The most null studies fail-safe N adds (`--max`): a million, far beyond any literature;
#: beyond it a typo would be a memory error, not an answer.
MAX_NULL_STUDIES = 1_000_000
#: failsafe.tsv: one row per significant cluster of the run.
FAILSAFE_COLUMNS = (
    "cluster", "size_voxels", "fsn", "significant_with", "not_significant_with",
    "fsn_per_experiment", "result",
)
FAILSAFE_METHOD = (
    "fail-safe N (Acar et al. 2018): null studies with focus counts and sample sizes "
    "resampled from the real experiments and foci uniform over the mask's voxels are added "
    "until the cluster is no longer overlapped by a cluster significant at the "
    "cluster-level FWE; bisection between a minimum and a maximum number"
)
#: failsafe.tsv's ``result``: the bisection closed on the fail-safe N, or the cluster was
#: still significant with the maximum number of null studies.
EXACT, ABOVE_MAXIMUM = "exact", "above maximum"
NULL_ID_PREFIX = "failsafe-null-"


def null_studies(dataset: Dataset, grid: Grid, count: int, seed: int) -> list[Experiment]:
    """Null studies 0 .. count - 1 for a meta-analysis of ``dataset`` (see the module).

    Study ``j`` depends only on (seed, j), the real experiments' focus counts and sample
    sizes and the mask, so the first ``n`` of ``count`` studies are those of ``n``.

    Returns
    -------
    list of Experiment
        Ids ``failsafe-null-0001``, ...; foci at the centres of in-mask voxels (MNI mm).
    """
    if not 0 <= count <= MAX_NULL_STUDIES:
        raise ValueError(f"the number of null studies must be from 0 to "
                         f"{MAX_NULL_STUDIES:,}, got {count:,}")
    if count == 0:
        return []
    studies = np.arange(count, dtype=np.uint32)
    counter = np.zeros((count, 2, 4), dtype=np.uint32)
    counter[..., 0] = studies[:, None]
    counter[..., 1] = np.arange(2, dtype=np.uint32)[None, :]
    counter[..., 2] = STREAM_FAILSAFE_NULL_STUDIES
    donors = uniform_below(philox4x32(counter, seed), len(dataset))
    focus_counts = np.array([exp.n_foci for exp in dataset], dtype=np.int64)[donors[:, 0]]
    # A donor's N, None where the run had none (a fixed FWHM needs none).
    sample_sizes = [dataset[int(d)].n_subjects for d in donors[:, 1]]
    # One counter per focus of every study: (study, 2 + focus, stream, 0).
    owner = np.repeat(studies, focus_counts)
    slot = 2 + (np.arange(owner.size) - np.repeat(np.cumsum(focus_counts) - focus_counts,
                                                 focus_counts))
    counter = np.zeros((owner.size, 4), dtype=np.uint32)
    counter[:, 0] = owner
    counter[:, 1] = slot
    counter[:, 2] = STREAM_FAILSAFE_NULL_STUDIES
    choice = uniform_below(philox4x32(counter, seed), grid.n_voxels)
    ijk = np.stack(np.unravel_index(grid.in_mask_flat[choice], grid.shape), axis=1)
    mm = grid.voxel_to_mm(ijk)
    bounds = np.concatenate([[0], np.cumsum(focus_counts)])
    return [
        Experiment(id=f"{NULL_ID_PREFIX}{j + 1:04d}", label=f"fail-safe N null study {j + 1}",
                   n_subjects=sample_sizes[j], foci=mm[bounds[j]:bounds[j + 1]],
                   space="MNI", source=f"fail-safe N null study {j + 1} (seed {seed})")
        for j in range(count)
    ]


def max_evaluations(n_clusters: int, minimum: int, maximum: int) -> int:
    """The most re-runs :func:`failsafe_n` makes: the two probes, then per cluster at most
    ``ceil(log2(maximum))`` halvings (an upper bound, for progress bars)."""
    probes = (minimum > 0) + 1
    return probes + n_clusters * max(1, math.ceil(math.log2(max(maximum, 2))))


@dataclasses.dataclass
class FailsafeResult:
    """Fail-safe N per cluster (rows of failsafe.tsv) and every evaluated number."""

    rows: list[dict]
    evaluations: list[dict]
    null_studies: list[dict]
    timings: dict[str, float]
    warnings: list[str]


def failsafe_n(
    dataset: Dataset,
    grid: Grid,
    labels: np.ndarray,
    settings: ALESettings,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    n_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    scheduler: Scheduler | None = None,
) -> FailsafeResult:
    """The fail-safe N of each significant cluster of an analysis (Acar et al. 2018).

    Parameters
    ----------
    dataset : Dataset
        The real experiments.
    grid : Grid
    labels : ndarray of int
        In-mask vector numbering the analysis's significant clusters 1, 2, ... (0 outside).
    settings : ALESettings
        Of the analysis; every re-run uses them (same seed and iterations).
    minimum, maximum : int, optional
        Null studies of the first probes (default: 1 and 5 times the number of
        experiments); ``0 <= minimum < maximum``. A cluster still significant with
        ``maximum`` is reported as above it.
    seed : int, optional
        Seed of the null studies (default: ``settings.seed``).
    device, n_workers, scheduler
        As :func:`gpuale.analysis.run_ale`.
    progress : callable, optional
        Called with the number of permutations finished.

    Returns
    -------
    FailsafeResult
        ``rows``: per cluster, :data:`FAILSAFE_COLUMNS`: ``fsn`` (blank above the maximum),
        ``not_significant_with`` (the fewest null studies with which it was found not
        significant: ``fsn``), ``significant_with`` (the most below that with which it was
        found significant: ``fsn - 1``; 0 is the run itself).
        ``evaluations``: per evaluated number of null studies, each cluster's survival and
        smallest overlapping FWE p. ``null_studies``: the focus count and sample size of
        each null study used.
    """
    k = len(dataset)
    minimum = DEFAULT_MINIMUM_PER_EXPERIMENT * k if minimum is None else int(minimum)
    maximum = DEFAULT_MAXIMUM_PER_EXPERIMENT * k if maximum is None else int(maximum)
    if maximum > MAX_NULL_STUDIES:
        raise ValueError(f"the most null studies tried ({maximum:,}) is more than "
                         f"{MAX_NULL_STUDIES:,}, the most gpuale adds")
    if not 0 <= minimum < maximum:
        raise ValueError(f"the numbers of null studies must satisfy 0 <= minimum < maximum, "
                         f"got minimum {minimum} and maximum {maximum}")
    seed = settings.seed if seed is None else int(seed)
    device = resolve_device(device)
    numbers = [int(c) for c in np.unique(labels[labels > 0])]
    if not numbers:
        raise ValueError("no significant cluster to test")
    members = {c: np.flatnonzero(labels == c) for c in numbers}
    start = time.perf_counter()
    nulls = null_studies(dataset, grid, maximum, seed)
    timings = {"null_studies_s": time.perf_counter() - start, "reruns_s": 0.0}
    caught = RerunWarnings()
    # n = 0 is the run itself: each of its clusters is significant by definition.
    cache: dict[int, dict[int, dict]] = {
        0: {c: {"survives": True, "p_fwe_size": None} for c in numbers}}
    seconds: dict[int, float] = {}

    def survives(n: int, cluster: int) -> bool:
        if n not in cache:
            began = time.perf_counter()
            result = settings.run(Dataset(tuple(dataset) + tuple(nulls[:n])), grid,
                                  device=device, n_workers=n_workers, progress=progress,
                                  scheduler=scheduler, caught=caught)
            cache[n] = {c: cluster_survival(result, members[c]) for c in numbers}
            seconds[n] = time.perf_counter() - began
            timings["reruns_s"] += seconds[n]
        return cache[n][cluster]["survives"]

    def bracket(cluster: int) -> tuple[int, int | None]:
        # Every evaluation so far counts, those made for other clusters too: the fewest
        # null studies found to lose the cluster, and the most below that found to keep it.
        lost = [n for n in cache if not cache[n][cluster]["survives"]]
        if not lost:
            return max(cache), None
        high = min(lost)
        return max(n for n in cache if n < high), high

    brackets = {}
    for c in numbers:
        if minimum > 0:
            survives(minimum, c)
        low, high = bracket(c)
        if high is None:
            survives(maximum, c)
            low, high = bracket(c)
        while high is not None and high - low > 1:
            survives((low + high) // 2, c)
            low, high = bracket(c)
        brackets[c] = (low, high)
    rows = []
    for c in numbers:
        low, high = brackets[c]
        rows.append({
            "cluster": c, "size_voxels": int(members[c].size),
            "fsn": "" if high is None else high,
            "significant_with": low,
            "not_significant_with": "" if high is None else high,
            "fsn_per_experiment": "" if high is None else high / k,
            "result": ABOVE_MAXIMUM if high is None else EXACT,
        })
        for message in _monotonicity_warnings(c, cache):
            caught.add(message)
    evaluations = [
        {"n_null_studies": n, "seconds": seconds.get(n),
         "clusters": {str(c): cache[n][c] for c in numbers}}
        for n in sorted(cache)
    ]
    used = max(cache)
    described = [{"id": s.id, "n_foci": s.n_foci, "n_subjects": s.n_subjects}
                 for s in nulls[:used]]
    return FailsafeResult(rows, evaluations, described, timings, caught.lines())


def _monotonicity_warnings(cluster: int, cache: dict[int, dict[int, dict]]) -> list[str]:
    """A warning where a cluster was significant with more null studies than some count
    with which it was not (bisection's assumption broken by Monte Carlo error)."""
    ordered = sorted(cache)
    lost = [n for n in ordered if not cache[n][cluster]["survives"]]
    back = [n for n in ordered if cache[n][cluster]["survives"] and lost and n > lost[0]]
    if not back:
        return []
    return [f"cluster {cluster} was not significant with {lost[0]} null studies but "
            f"significant again with {back[-1]}: its significance is not monotone in the "
            "number of null studies here (Monte Carlo error near alpha); its fail-safe N is "
            "the lowest crossing found, and more iterations make it steadier"]


