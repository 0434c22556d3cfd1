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
    random split of :class:`gpuale.nulls.ContrastNullSpec`), then subsampled as above.
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
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np

from gpuale.clusters import (
    cluster_measures,
    clusters_above,
    connectivity_structure,
    map_cluster_table,
    peak_rows,
)
from gpuale.dataset import Dataset
from gpuale.grid import Grid, gm_prior_path, load_grid, read_volume, same_space
from gpuale.problem import Problem
from gpuale.rng import (
    STREAM_BALANCED_NULL,
    STREAM_BALANCED_OBSERVED,
    STREAM_BALANCED_RELOCATE,
    STREAM_PROBABILISTIC_RELOCATE,
    STREAM_PROBABILISTIC_SCHEDULE,
    STREAM_PROBABILISTIC_SUBSET,
    keyed_words,
    random_splits,
    subsample_members,
    uniform_below,
)
from gpuale.runfolder import (
    BALANCED_CONJUNCTION,
    BALANCED_LOGP,
    BALANCED_P,
    BALANCED_PROB,
    BALANCED_STAT,
    BALANCED_Z,
    CLUSTER_LABELS,
    Z_THRESHOLDED,
)
from gpuale.stats import analytic_null, p_to_z

__all__ = [
    "BALANCED_NULLS",
    "DEFAULT_BALANCED_NULL",
    "BalancedContrastResult",
    "BalancedNull",
    "BalancedNullPartial",
    "BalancedNullSpec",
    "balanced_null_chunk",
    "balanced_p",
    "mean_balanced_difference",
    "mean_no_activation",
    "probabilistic_map",
    "resolve_target_n",
    "run_balanced_contrast",
    "save_balanced_contrast",
    "smallest_p",
    "subset_schedule",
]

#: The nulls of a balanced contrast (see the module docstring).
BALANCED_NULLS = ("label-permutation", "random-foci")
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
#: Subsample draws per matrix product: bounds memory at DRAW_BLOCK x voxels.
DRAW_BLOCK = 64
#: NiMARE enumerates every subset when there are at most this many.
EXHAUSTIVE_LIMIT = 10000
#: Null iterations per chunk: each is ``difference_iterations`` subsample pairs.
CHUNK = 4

LogMapsOf = Callable[[Problem], tuple[np.ndarray, np.ndarray]]


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


# --- The statistic -------------------------------------------------------------------------


def mean_no_activation(xp, log_maps, members: np.ndarray):
    """Mean over draws of ``prod_{e in draw} (1 - MA_e)`` per column, in blocks of draws.

    A subsample's log-sum is a 0/1 row times the log maps, so a block of
    :data:`DRAW_BLOCK` draws is one matrix product (BLAS; cuBLAS on a GPU).

    Parameters
    ----------
    xp : module
        numpy or cupy: where the products run.
    log_maps : array of float64, shape (n_experiments, n_columns)
        ``log1p(-MA)`` of a group's experiments, on ``xp``'s device.
    members : ndarray of bool, shape (n_draws, n_experiments)
        Each draw's subsample.
    """
    n_draws = members.shape[0]
    total = xp.zeros(log_maps.shape[1], dtype=xp.float64)
    for start in range(0, n_draws, DRAW_BLOCK):
        block = xp.asarray(members[start:start + DRAW_BLOCK], dtype=xp.float64)
        total += xp.exp(block @ log_maps).sum(axis=0)
    return total / n_draws


MeanOf = Callable[..., np.ndarray]


def mean_balanced_difference(xp, log_a, log_b, members_a: np.ndarray,
                             members_b: np.ndarray, mean_of: MeanOf = mean_no_activation):
    """Mean over draws of ALE(subsample of A) - ALE(subsample of B), per column.

    ``ALE_A - ALE_B = prod_B (1 - MA) - prod_A (1 - MA)``, so the difference of the
    groups' mean products (``mean_of``: :func:`mean_no_activation`, or an engine's
    compiled equal). A group whose every draw is the whole group (target n = its size)
    needs one product.

    Parameters
    ----------
    xp : module
        numpy or cupy: where the products run.
    log_a, log_b : arrays of float64, shape (n_a, n_columns), (n_b, n_columns)
        ``log1p(-MA)`` of each group's experiments, on ``xp``'s device.
    members_a, members_b : ndarray of bool, shape (n_draws, n_a), (n_draws, n_b)
        Draw ``d``'s subsamples.

    Returns
    -------
    array of float64, shape (n_columns,)
        On ``xp``'s device.
    """
    def group_mean(log_maps, members):
        if members.all():
            return xp.exp(log_maps.sum(axis=0))
        return mean_of(xp, log_maps, members)

    return group_mean(log_b, members_b) - group_mean(log_a, members_a)


def _draws(seed: int, n_a: int, n_b: int, target_n: int, iteration: int, stream: int,
           n_draws: int) -> tuple[np.ndarray, np.ndarray]:
    """Subsamples of ``target_n`` from each group (experiments numbered A first)."""
    draws = np.arange(n_draws)
    return (subsample_members(seed, n_a, target_n, iteration, stream, draws),
            subsample_members(seed, n_b, target_n, iteration, stream, draws, offset=n_a))


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


# --- The null ------------------------------------------------------------------------------


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
        from gpuale.nulls import _join_chunks

        min_null, max_null = _join_chunks(self.chunks, n_iters)
        return BalancedNull(min_null, max_null, int(seed))


def _relocated(problem: Problem, sample_space: np.ndarray, seed: int, iteration: int,
               stream: int, last: int) -> Problem:
    """The problem with every focus moved to a random voxel of the sample space."""
    words = keyed_words(seed, problem.n_foci, iteration, stream, np.array([last]))[0]
    flat = sample_space[uniform_below(words, sample_space.size)]
    ijk = np.stack(np.unravel_index(flat, problem.grid.shape), axis=1).astype(np.int32)
    return dataclasses.replace(problem, focus_ijk=ijk)


def balanced_null_chunk(xp, spec: BalancedNullSpec, seed: int, first: int, count: int,
                        log_maps_of: LogMapsOf,
                        mean_of: MeanOf = mean_no_activation) -> BalancedNullPartial:
    """Iterations ``first .. first + count - 1`` of a balanced null.

    Parameters
    ----------
    xp : module
        numpy or cupy: where the subsample products run.
    log_maps_of : callable
        The engine's ``experiment_log_maps`` (random foci: the relocated experiments'
        maps).
    mean_of : callable
        A group's mean product over draws (:func:`mean_no_activation` or an engine's
        compiled equal).
    """
    n_a, n_b = spec.n_a, spec.n_b
    out = (np.empty(count), np.empty(count))
    for b in range(count):
        i = first + b
        if spec.null == "label-permutation":
            in_a = random_splits(seed, i, 1, n_a + n_b, n_a)[0]
            order = np.concatenate([np.flatnonzero(in_a), np.flatnonzero(~in_a)])
            log = spec.log_maps[order]
        else:
            moved = _relocated(spec.problem, spec.sample_space, seed, i,
                               STREAM_BALANCED_RELOCATE, 0)
            support, log = log_maps_of(moved)
            log = log[:, spec.prior[support]]
        log = xp.asarray(log, dtype=xp.float64)
        members_a, members_b = _draws(seed, n_a, n_b, spec.target_n, i,
                                      STREAM_BALANCED_NULL, spec.difference_iterations)
        diff = mean_balanced_difference(xp, log[:n_a], log[n_a:], members_a, members_b,
                                        mean_of)
        low = float(diff.min()) if diff.size else 0.0
        high = float(diff.max()) if diff.size else 0.0
        if diff.size < spec.n_prior:  # prior voxels no experiment reaches: D = 0
            low, high = min(low, 0.0), max(high, 0.0)
        out[0][b], out[1][b] = low, high
    return BalancedNullPartial({int(first): out})


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

    from gpuale.nulls import default_workers

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
    from gpuale.contrast import pooled_log_maps
    from gpuale.engines import get_engine, resolve_device
    from gpuale.nulls import _merged_partial, check_iterations

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


#: clusters.tsv of a balanced contrast.
BALANCED_CLUSTER_COLUMNS = (
    "cluster", "peak", "direction", "size_voxels", "volume_mm3", "peak_x", "peak_y",
    "peak_z", "peak_value", "peak_diff", "com_x", "com_y", "com_z",
)


def save_balanced_contrast(result: BalancedContrastResult, out_dir: str | Path, *,
                           inputs_a: Sequence = (), inputs_b: Sequence = (),
                           command: str | None = None, force: bool = False,
                           extra: dict | None = None) -> Path:
    """Write a balanced contrast: NiMARE's maps, the thresholded z, clusters.tsv,
    nulls.npz (the extrema) and run.json (target n, draws, null)."""
    from gpuale._files import atomic_output_dir, environment, write_json
    from gpuale.output import _input_paths, groups_record, write_contrast_maps, write_table
    from gpuale.runfolder import (
        CLUSTERS_TSV,
        N_CLUSTERS_KEY,
        NULLS_NPZ,
        OUTPUTS_KEY,
        RUN_JSON,
        record_header,
    )

    with atomic_output_dir(out_dir, force=force,
                           inputs=_input_paths([*inputs_a, *inputs_b])) as tmp:
        written = write_contrast_maps(result, tmp)
        clusters = result.clusters()
        # For people: 6 significant digits (the maps and run.json keep full precision).
        write_table(tmp / CLUSTERS_TSV, peak_rows(clusters), BALANCED_CLUSTER_COLUMNS)
        nulls = {"min_difference": result.null.min_null,
                 "max_difference": result.null.max_null,
                 "seed": np.array(result.null.seed, dtype=np.uint64)}
        for name, prob in (("A", result.prob_a), ("B", result.prob_b)):
            if prob is not None:
                nulls[f"max_cluster_size_{name}"] = prob.null_max_cluster_size
        np.savez_compressed(tmp / NULLS_NPZ, **nulls)
        written += [CLUSTERS_TSV, NULLS_NPZ]
        record = {
            **record_header("contrast"),
            "command": command,
            "environment": environment(),
            "mode": "balanced",
            "groups": groups_record((("A", result.group_a, inputs_a, None),
                                     ("B", result.group_b, inputs_b, None))),
            "settings": {
                "method": "balanced ALE subtraction (NiMARE BalancedALESubtraction)",
                "target_n": result.target_n,
                "difference_iterations": result.difference_iterations,
                "iterations": result.null.n_iters,
                "null": result.null_kind,
                "n_subsamples": result.n_subsamples,
                "mask_coverage": result.mask_coverage,
                "voxel_thresh": result.voxel_thresh,
                "alpha": result.alpha,
                "low_threshold": result.low_threshold,
                "high_threshold": result.high_threshold,
                "cluster_threshold_A": None if result.prob_a is None
                else result.prob_a.cluster_threshold,
                "cluster_threshold_B": None if result.prob_b is None
                else result.prob_b.cluster_threshold,
                "seed": result.null.seed,
                "smallest_p": 1.0 / result.null.n_iters,
                "min_volume_mm3": result.min_volume_mm3,
                "connectivity": result.connectivity,
                "device": result.device,
            },
            N_CLUSTERS_KEY: len(clusters),
            "timings_s": result.timings,
            "warnings": result.warnings,
            OUTPUTS_KEY: written + [RUN_JSON],
            **(extra or {}),
        }
        write_json(tmp / RUN_JSON, record)
    return Path(out_dir)
