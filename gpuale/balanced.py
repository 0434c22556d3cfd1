"""Balanced contrast: ALE_A - ALE_B averaged over subsamples of equal size.

As NiMARE 0.22.1's ``BalancedALESubtraction`` (Frahm, Monimu, Hoffstaedter et al.). A
plain contrast compares groups of unequal sizes, and ALE grows with the number of
experiments; a balanced contrast draws ``target_n`` experiments (default: the smaller
group's size) from each group, without replacement, ``difference_iterations`` times, and
averages the differences of their ALE maps:

    D(v) = mean_d [ALE(A_d)(v) - ALE(B_d)(v)]

over the voxels of the prior (``mask_coverage``: grey matter as NiMARE, or the whole
mask); D is 0 elsewhere. Its null keeps, per iteration, the smallest and largest D of
data without a group difference, made in one of two ways:

``label-permutation`` (gpuale's default)
    the pooled experiments are split at random into groups of the observed sizes (the
    random split of :class:`gpuale.nullspecs.ContrastNullSpec`), then subsampled as above.
``random-foci`` (NiMARE's default)
    every experiment's foci are placed at random in the prior, keeping its sample size
    and number of foci, then subsampled as above.

A voxel is significant where D exceeds the (1 - alpha/2) quantile of the null maxima
(or lies below the alpha/2 quantile of the minima); its one-tailed p is the share of
maxima (minima) reaching it, at least 1/n_iters, and z is signed (+ for A > B).

Why label permutation by default: the random-foci null asks whether D is larger than
between two groups of experiments with *no* spatial convergence at all, so any voxel
where both groups converge, and where subsampling noise alone moves D, can pass it. On an
arbitrary 11/10 split of one pain dataset (no true difference) NiMARE's random-foci null
flagged 73 voxels and label permutation none (``/work/shared/METHODS-BEYOND.md``); the
question of a contrast is whether the group labels matter, which is what permuting them
tests. ``null="random-foci"`` runs NiMARE's default.

Each group also gets a probabilistic map (NiMARE's ``prob_desc-group1/2``): the share of
``n_subsamples`` distinct subsets of ``target_n`` of its experiments whose ALE (analytic
null z > the ``voxel_thresh`` quantile) lies in a cluster larger than the (1 - alpha)
quantile of the largest cluster of random-foci subsets (``n_iters`` of them); their
minimum is the conjunction map (``stat_desc-conjunction``).

Random draws follow :mod:`gpuale.rng`: every subsample, split and relocated focus is a
pure function of (seed, iteration, draw or group, experiment or focus), so any engine,
chunking or worker split gives the same null. NiMARE draws with its own generator, so
the two agree statistically, not number for number.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from itertools import combinations

import numpy as np

from gpuale.clusters import (
    cluster_measures,
    clusters_above,
    connectivity_structure,
    map_cluster_table,
)
from gpuale.dataset import Dataset
from gpuale.engines._balanced_chunk import (
    MeanOf,
    _draws,
    _relocated,
    mean_balanced_difference,
    mean_no_activation,
)
from gpuale.grid import Grid, gm_prior_path, load_grid, read_volume, same_space
from gpuale.maps import (
    BALANCED_CONJUNCTION,
    BALANCED_LOGP,
    BALANCED_P,
    BALANCED_PROB,
    BALANCED_STAT,
    BALANCED_Z,
    CLUSTER_LABELS,
    Z_THRESHOLDED,
)
from gpuale.nullspecs import BALANCED_NULLS, CHUNK, BalancedNull, BalancedNullSpec
from gpuale.problem import Problem
from gpuale.rng import (
    STREAM_BALANCED_OBSERVED,
    STREAM_PROBABILISTIC_RELOCATE,
    STREAM_PROBABILISTIC_SCHEDULE,
    STREAM_PROBABILISTIC_SUBSET,
    subsample_members,
)
from gpuale.stats import analytic_null, p_to_z

__all__ = [
    "DEFAULT_BALANCED_NULL",
    "BalancedContrastResult",
    "balanced_p",
    "probabilistic_map",
    "resolve_target_n",
    "run_balanced_contrast",
    "smallest_p",
    "subset_schedule",
]

#: gpuale's default null: label permutation (NiMARE's is random-foci; see the module
#: docstring for why).
DEFAULT_BALANCED_NULL = "label-permutation"
MASK_COVERAGES = ("gm", "brain")
#: NiMARE's defaults.
DEFAULT_N_SUBSAMPLES = 2500
DEFAULT_DIFFERENCE_ITERATIONS = 1000
DEFAULT_N_ITERS = 1000
DEFAULT_VOXEL_THRESH = 0.001
DEFAULT_ALPHA = 0.05
#: Grey-matter probability above which a voxel is in the "gm" prior (NiMARE's 0.1).
GM_THRESHOLD = 0.1
#: NiMARE enumerates every subset when there are at most this many.
EXHAUSTIVE_LIMIT = 10000

def resolve_target_n(n_a: int, n_b: int, target_n: int | None) -> int:
    """The subsample size: ``target_n``, by default the smaller group's size (NiMARE)."""
    largest = min(n_a, n_b)
    resolved = largest if target_n is None else int(target_n)
    if not 0 < resolved <= largest:
        raise ValueError(f"target_n must lie in 1 .. {largest} (the smaller group's size), "
                         f"got {resolved}")
    return resolved


def prior_voxels(grid: Grid, coverage: str) -> np.ndarray:
    """In-mask vector: which voxels form the prior (``gm`` or ``brain``).

    ``gm``: nilearn's MNI152 grey-matter template resampled to the grid (continuous
    interpolation) above 0.1, as NiMARE's ``_mask_coverage_to_mask``.

    Raises
    ------
    ValueError
        For an unknown coverage, or ``gm`` without nilearn.
    """
    if coverage not in MASK_COVERAGES:
        raise ValueError(f"mask_coverage must be one of {MASK_COVERAGES}, got {coverage!r}")
    if coverage == "brain":
        return np.ones(grid.n_voxels, dtype=bool)
    shipped = _shipped_gm_prior(grid)
    if shipped is not None:
        return shipped
    try:
        import nibabel as nib
        from nilearn import datasets
        from nilearn.image import resample_to_img
    except ImportError as exc:
        raise ValueError("mask_coverage='gm' on a grid other than the bundled one needs nilearn "
                         "(pip install nilearn) for its "
                         "grey-matter template; or use mask_coverage='brain'") from exc
    target = nib.Nifti1Image(grid.mask.astype(np.int8), grid.affine)
    gm = resample_to_img(datasets.load_mni152_gm_template(resolution=2), target,
                         interpolation="continuous", force_resample=True, copy_header=True)
    gm_values = np.asanyarray(gm.dataobj).reshape(-1)[grid.in_mask_flat]
    return gm_values > GM_THRESHOLD


def _shipped_gm_prior(grid: Grid) -> np.ndarray | None:
    """The bundled grey-matter prior on ``grid``'s voxels, if ``grid`` lies inside the
    default mask's space (outside it the bundled file holds no values).

    It is what the nilearn path below computes on the default grid, shipped so that the
    default needs no nilearn; a reference test checks it against NiMARE's."""
    default = load_grid()
    if not same_space(grid.mask.shape, grid.affine, default.mask.shape, default.affine):
        return None
    if np.any(grid.mask & ~default.mask):
        return None
    _, prior = read_volume(gm_prior_path(), "grey-matter prior")
    return np.asarray(prior).reshape(-1)[grid.in_mask_flat] != 0


def balanced_p(observed: np.ndarray, min_null: np.ndarray, max_null: np.ndarray,
               alpha: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One-tailed p and signed z of the mean balanced difference, as NiMARE.

    Significant where ``observed`` > the (1 - alpha/2) percentile of ``max_null`` (p =
    share of maxima >= it) or < the alpha/2 percentile of ``min_null`` (p = share of
    minima <= it); p is at least 1/n; elsewhere p = 1, z = 0.

    Returns
    -------
    p, z, low_threshold, high_threshold
    """
    n = max_null.size
    low = float(np.percentile(min_null, 100.0 * alpha / 2.0))
    high = float(np.percentile(max_null, 100.0 * (1.0 - alpha / 2.0)))
    p = np.ones(observed.size)
    z = np.zeros(observed.size)
    sorted_max = np.sort(max_null)
    sorted_min = np.sort(min_null)
    pos = np.flatnonzero(observed > high)
    neg = np.flatnonzero(observed < low)
    if pos.size:
        reach = n - np.searchsorted(sorted_max, observed[pos], side="left")
        p[pos] = np.maximum(1.0 / n, reach / n)
        z[pos] = p_to_z(p[pos])
    if neg.size:
        reach = np.searchsorted(sorted_min, observed[neg], side="right")
        p_neg = np.maximum(1.0 / n, reach / n)
        p[neg] = np.minimum(p[neg], p_neg)
        z[neg] = -p_to_z(p_neg)
    return p, z, low, high


def smallest_p(n_iters: int, alpha: float = DEFAULT_ALPHA) -> float:
    """The smallest p a balanced contrast can give with ``n_iters`` null iterations.

    Computed by :func:`balanced_p` itself, for a difference that no null maximum reaches,
    so that it follows its rule (NiMARE's ``p = max(1/n_iters, share of maxima)``): 1/n.
    """
    if n_iters < 1:
        raise ValueError(f"n_iters must be at least 1, got {n_iters}")
    p, _, _, _ = balanced_p(np.ones(1), np.zeros(n_iters), np.zeros(n_iters), alpha)
    return float(p[0])


class _Chunked:
    """An engine seen with balanced chunks of :data:`CHUNK` iterations (each is
    ``difference_iterations`` subsample pairs: small chunks keep the bar live)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.name = engine.name
        self.device = engine.device

    def chunk_size(self, spec) -> int:
        return CHUNK

    def concurrency(self, spec) -> str:
        return self.engine.concurrency(spec)

    def null_chunk(self, spec, seed: int, first: int, count: int):
        return self.engine.null_chunk(spec, seed, first, count)


# --- Probabilistic maps ----------------------------------------------------------------------


def subset_schedule(seed: int, group: int, n: int, k: int, n_samples: int) -> list[np.ndarray]:
    """Distinct subsets of ``k`` of ``n`` experiments, as NiMARE's
    ``generate_subset_schedule``: every leave-one-out subset when k = n - 1, every subset
    when there are at most ``n_samples`` (and at most 10,000), else ``n_samples``
    distinct random ones (sorted)."""
    if not 0 < k <= n:
        raise ValueError(f"subsets take 1 to {n} experiments, got {k}")
    if k == n - 1:
        return [np.delete(np.arange(n), i) for i in range(n)]
    total = math.comb(n, k)
    n_samples = min(int(n_samples), total)
    if n_samples == total and total <= EXHAUSTIVE_LIMIT:
        return [np.array(c, dtype=np.int64) for c in combinations(range(n), k)]
    found: set[tuple[int, ...]] = set()
    draw = 0
    while len(found) < n_samples:
        last = np.arange(draw, draw + n_samples - len(found))
        draw += last.size
        members = subsample_members(seed, n, k, group, STREAM_PROBABILISTIC_SCHEDULE, last)
        for row in members:
            if len(found) < n_samples:
                found.add(tuple(np.flatnonzero(row).tolist()))
    return [np.array(s, dtype=np.int64) for s in sorted(found)]


def _z_of(engine, problem: Problem) -> np.ndarray:
    """Analytic-null z of a problem's ALE (as ``gpuale.run_ale``)."""
    observed = engine.observed_ale(problem)
    null = analytic_null(observed.ma_values, problem.grid.n_voxels)
    return p_to_z(null.p_values(observed.ale))


def _clusters_of(z: np.ndarray, grid: Grid, cut: float, structure) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """(supra-threshold voxels, each one's cluster size) of z > cut."""
    above = np.flatnonzero(z > cut)
    if above.size == 0:
        return above, np.zeros(0, dtype=np.int64)
    sizes, _, labels = cluster_measures(grid.in_mask_flat[above], np.zeros(above.size),
                                        grid.shape, structure)
    return above, sizes[labels - 1]


@dataclasses.dataclass(frozen=True, eq=False)
class ProbabilisticMap:
    """Share of subsets in which each voxel is significant, and its cluster null."""

    prob: np.ndarray
    cluster_threshold: float
    null_max_cluster_size: np.ndarray
    n_subsets: int


def probabilistic_map(engine, problem: Problem, prior: np.ndarray, target_n: int, *,
                      group: int, seed: int, n_subsamples: int, n_iters: int,
                      voxel_thresh: float, alpha: float,
                      n_workers: int | None = None) -> ProbabilisticMap:
    """NiMARE's ``_probabilistic_map`` of one group.

    The cluster-size threshold is the (1 - alpha) percentile of the largest cluster
    (faces connectivity, z > the ``voxel_thresh`` normal quantile) of ``n_iters`` random
    subsets of ``target_n`` experiments with their foci placed at random in the prior;
    the map is the share of the subsets of :func:`subset_schedule` whose z lies in a
    cluster larger than it. Each subset is one ALE with its analytic null, on the host;
    they run on ``n_workers`` threads (default: every core), in any order with the same
    result.
    """
    from concurrent.futures import ThreadPoolExecutor

    from scipy.stats import norm

    from gpuale._cores import default_workers

    grid = problem.grid
    n = problem.n_experiments
    cut = float(norm.ppf(1.0 - voxel_thresh))
    structure = connectivity_structure(6)
    sample_space = grid.in_mask_flat[prior]

    def null_size(i: int) -> int:
        subset = np.arange(n)
        if target_n < n:
            subset = np.flatnonzero(subsample_members(
                seed, n, target_n, i, STREAM_PROBABILISTIC_SUBSET, np.array([group]))[0])
        moved = _relocated(problem.subset(subset), sample_space, seed, i,
                           STREAM_PROBABILISTIC_RELOCATE, group)
        _, cluster_sizes = _clusters_of(_z_of(engine, moved), grid, cut, structure)
        return int(cluster_sizes.max()) if cluster_sizes.size else 0

    def significant(subset: np.ndarray, threshold: float) -> np.ndarray:
        above, cluster_sizes = _clusters_of(_z_of(engine, problem.subset(subset)), grid, cut,
                                            structure)
        return above[cluster_sizes > threshold]

    with ThreadPoolExecutor(max_workers=n_workers or default_workers()) as pool:
        sizes = np.array(list(pool.map(null_size, range(n_iters))), dtype=np.int64)
        threshold = float(np.percentile(sizes, 100.0 * (1.0 - alpha)))
        subsets = subset_schedule(seed, group, n, target_n, n_subsamples)
        count = np.zeros(grid.n_voxels)
        for voxels in pool.map(lambda subset: significant(subset, threshold), subsets):
            count[voxels] += 1
    return ProbabilisticMap(count / len(subsets), threshold, sizes, len(subsets))


# --- The analysis ----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class BalancedContrastResult:
    """A balanced contrast (in-mask vectors; ``mode`` is ``"balanced"``)."""

    grid: Grid
    group_a: Dataset
    group_b: Dataset
    target_n: int
    null_kind: str
    difference_iterations: int
    n_subsamples: int
    mask_coverage: str
    voxel_thresh: float
    alpha: float
    observed: np.ndarray
    p: np.ndarray
    z: np.ndarray
    low_threshold: float
    high_threshold: float
    null: BalancedNull
    prob_a: ProbabilisticMap | None
    prob_b: ProbabilisticMap | None
    min_volume_mm3: float = 0.0
    connectivity: int = 6
    device: str = "cpu"
    timings: dict = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    mode = "balanced"

    @property
    def diff(self) -> np.ndarray:
        return self.observed

    def thresholded(self) -> tuple[np.ndarray, np.ndarray]:
        """Signed z of the significant voxels, in clusters of at least the minimum volume."""
        labels = clusters_above(self.z, self.grid, min_volume_mm3=self.min_volume_mm3,
                                connectivity=self.connectivity)
        return np.where(labels > 0, self.z, 0.0), labels

    def maps(self) -> dict[str, np.ndarray]:
        """NiMARE's maps, with the thresholded z and its cluster labels."""
        thresholded, labels = self.thresholded()
        maps = {
            BALANCED_STAT: self.observed.astype(np.float32),
            BALANCED_P: self.p.astype(np.float32),
            BALANCED_Z: self.z.astype(np.float32),
            BALANCED_LOGP: (-np.log10(self.p)).astype(np.float32),
            Z_THRESHOLDED: thresholded.astype(np.float32),
            CLUSTER_LABELS: labels.astype(np.int16),
        }
        if self.prob_a is not None and self.prob_b is not None:
            maps[BALANCED_CONJUNCTION] = np.minimum(self.prob_a.prob,
                                                    self.prob_b.prob).astype(np.float32)
            maps[BALANCED_PROB[0]] = self.prob_a.prob.astype(np.float32)
            maps[BALANCED_PROB[1]] = self.prob_b.prob.astype(np.float32)
        return maps

    def clusters(self) -> list[dict]:
        """One row per cluster of the thresholded map; peaks are local maxima of |D|."""
        thresholded, labels = self.thresholded()
        rows = map_cluster_table(self.grid, thresholded, labels, peak_by=self.observed,
                                 at_peaks={"diff": self.observed})
        for row in rows:
            row["direction"] = "A>B" if row["sign"] == "+" else "B>A"
        return rows


def run_balanced_contrast(
    group_a: Dataset,
    group_b: Dataset,
    *,
    grid: Grid | None = None,
    target_n: int | None = None,
    null: str = DEFAULT_BALANCED_NULL,
    n_iters: int = DEFAULT_N_ITERS,
    difference_iterations: int = DEFAULT_DIFFERENCE_ITERATIONS,
    n_subsamples: int = DEFAULT_N_SUBSAMPLES,
    voxel_thresh: float = DEFAULT_VOXEL_THRESH,
    alpha: float = DEFAULT_ALPHA,
    mask_coverage: str = "gm",
    probabilistic: bool = True,
    seed: int = 0,
    min_volume_mm3: float = 0.0,
    connectivity: int = 6,
    fwhm_mm: float | None = None,
    device: str = "auto",
    n_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    scheduler=None,
) -> BalancedContrastResult:
    """Balanced contrast of two groups (NiMARE's ``BalancedALESubtraction``).

    Parameters
    ----------
    group_a, group_b : Dataset
    target_n : int, optional
        Experiments per subsample (default: the smaller group's size).
    null : {"label-permutation", "random-foci"}
        The null (module docstring); NiMARE's default is random-foci.
    n_iters : int
        Null iterations (and random-foci subsets of each probabilistic map's cluster null).
    difference_iterations : int
        Subsample pairs averaged into the observed difference and each null iteration's.
    n_subsamples : int
        Distinct subsets of each probabilistic map.
    voxel_thresh, alpha : float
        Cluster-forming p of the probabilistic maps; two-tailed alpha of the extrema.
    mask_coverage : {"gm", "brain"}
        The prior: where D is computed and random foci are placed.
    probabilistic : bool
        Compute the probabilistic and conjunction maps (a run of ``n_iters`` +
        ``n_subsamples`` analytic-null ALEs per group).
    seed : int
    min_volume_mm3, connectivity :
        Clusters of the reported map.
    """
    from gpuale.engines import get_engine, resolve_device
    from gpuale.nulls import _merged_partial, check_iterations
    from gpuale.pooling import pooled_log_maps

    if null not in BALANCED_NULLS:
        raise ValueError(f"null must be one of {BALANCED_NULLS}, got {null!r}")
    if len(group_a) == 0 or len(group_b) == 0:
        raise ValueError("both groups need at least one experiment")
    for name, value in (("n_iters", n_iters), ("difference_iterations", difference_iterations),
                        ("n_subsamples", n_subsamples)):
        check_iterations(name, value, minimum=1)
    if not 0 < alpha < 1 or not 0 < voxel_thresh < 1:
        raise ValueError("alpha and voxel_thresh must lie in (0, 1)")
    n_a, n_b = len(group_a), len(group_b)
    target_n = resolve_target_n(n_a, n_b, target_n)
    notes: list[str] = []
    if 1.0 / n_iters > alpha / 2.0:
        message = (f"with {n_iters} null iterations the smallest p is 1/{n_iters}, above "
                   f"alpha/2 = {alpha / 2}, and the significance cut (the {1 - alpha / 2:g} "
                   "percentile of the null extremes) is interpolated beyond what they "
                   "resolve: voxels called significant are a Monte Carlo guess; use at "
                   f"least {math.ceil(2.0 / alpha)} iterations")
        warnings.warn(message, UserWarning, stacklevel=2)
        notes.append(message)
    grid = grid or load_grid()
    resolved = resolve_device(device)
    engine = get_engine(resolved)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    prior = prior_voxels(grid, mask_coverage)
    problem, support, log_maps = pooled_log_maps(group_a, group_b, grid, fwhm_mm, engine,
                                                 notes)
    keep = prior[support]
    columns, log_maps = support[keep], log_maps[:, keep]
    members_a, members_b = _draws(seed, n_a, n_b, target_n, 0, STREAM_BALANCED_OBSERVED,
                                  difference_iterations)
    log64 = log_maps.astype(np.float64)
    observed = np.zeros(grid.n_voxels)
    observed[columns] = mean_balanced_difference(np, log64[:n_a], log64[n_a:], members_a,
                                                 members_b, _host_mean_of(engine))
    timings["observed_s"] = time.perf_counter() - start

    start = time.perf_counter()
    n_prior = int(prior.sum())
    if null == "label-permutation":
        spec = BalancedNullSpec(null, n_a, n_b, target_n, difference_iterations, n_prior,
                                log_maps=log_maps)
    else:
        spec = BalancedNullSpec(null, n_a, n_b, target_n, difference_iterations, n_prior,
                                problem=problem, prior=prior,
                                sample_space=grid.in_mask_flat[prior])
    merged = _merged_partial(spec, _Chunked(engine), seed, n_iters, scheduler, n_workers,
                             progress)
    null_result = merged.finish(spec, seed, n_iters)
    timings["null_s"] = time.perf_counter() - start
    p, z, low, high = balanced_p(observed, null_result.min_null, null_result.max_null, alpha)

    prob_a = prob_b = None
    if probabilistic:
        start = time.perf_counter()
        settings = dict(seed=seed, n_subsamples=n_subsamples, n_iters=n_iters,
                        voxel_thresh=voxel_thresh, alpha=alpha, n_workers=n_workers)
        prob_a = probabilistic_map(engine, problem.subset(np.arange(n_a)), prior, target_n,
                                   group=0, **settings)
        prob_b = probabilistic_map(engine, problem.subset(np.arange(n_a, n_a + n_b)), prior,
                                   target_n, group=1, **settings)
        timings["probabilistic_s"] = time.perf_counter() - start
    return BalancedContrastResult(
        grid=grid, group_a=group_a, group_b=group_b, target_n=target_n, null_kind=null,
        difference_iterations=difference_iterations, n_subsamples=n_subsamples,
        mask_coverage=mask_coverage, voxel_thresh=voxel_thresh, alpha=alpha,
        observed=observed, p=p, z=z, low_threshold=low, high_threshold=high,
        null=null_result, prob_a=prob_a, prob_b=prob_b, min_volume_mm3=min_volume_mm3,
        connectivity=connectivity, device=resolved, timings=timings,
        warnings=list(dict.fromkeys(notes)),
    )


def _host_mean_of(engine) -> MeanOf:
    """The group mean product for the observed map, on the host: the numba engine's
    compiled loop where it is the engine, else the block code."""
    if getattr(engine, "name", None) == "numba":
        from gpuale.engines._numba_balanced import mean_no_activation as compiled

        return compiled
    return mean_no_activation


# --- Output ---------------------------------------------------------------------------------


