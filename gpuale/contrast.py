"""Contrast (subtraction) analysis of two groups of experiments (Eickhoff et al. 2011).

The observed statistic is ``ALE_A - ALE_B``. Its null comes from pooling the experiments
and splitting them at random into groups of the original sizes; the split of
permutation ``i`` depends only on (seed, i) (Philox, counter ``(experiment, i, 1, 0)``;
the first ``n_A`` experiments by key form group A).

The fast formulation: every experiment's ``L = log1p(-MA)`` is computed once; a batch of
splits is a 0/1 matrix G, so the group log-sums of a batch are one matrix product
``G @ L`` (BLAS on the CPU, cuBLAS through CuPy on the GPU), chunked over voxels. Each
voxel keeps two exceedance counts and each permutation its largest |difference|, so
memory does not grow with the number of iterations and no null map is ever stored.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import time
from collections.abc import Callable

import numpy as np

from gpuale.clusters import clusters_above, map_cluster_table
from gpuale.dataset import Dataset
from gpuale.grid import Grid, load_grid, read_volume
from gpuale.problem import Problem, compile_problem
from gpuale.rng import STREAM_CONTRAST_SPLIT, philox4x32
from gpuale.stats import fwe_p_values, p_to_z

__all__ = [
    "ContrastNull",
    "ContrastResult",
    "MainEffect",
    "run_contrast",
    "contrast_counts",
    "experiment_log_maps",
    "random_splits",
    "whole_brain_p",
]

#: Voxels per chunk of the L matrix, and permutations per batch of splits.
VOXEL_CHUNK = 4096
SPLIT_BATCH = 128


def random_splits(seed: int, first: int, count: int, n_total: int, n_a: int) -> np.ndarray:
    """Group-A membership of each pooled experiment in permutations ``first..first+count``.

    Returns
    -------
    ndarray of bool, shape (count, n_total)
        Exactly ``n_a`` True per row.
    """
    perm = np.arange(first, first + count, dtype=np.uint64)
    counter = np.zeros((count, n_total, 4), dtype=np.uint32)
    counter[..., 0] = np.arange(n_total, dtype=np.uint32)[None, :]
    counter[..., 1] = perm[:, None]
    counter[..., 2] = STREAM_CONTRAST_SPLIT
    words = philox4x32(counter, seed)
    keys = (words[..., 1].astype(np.uint64) << np.uint64(32)) | words[..., 0].astype(np.uint64)
    order = np.argsort(keys, axis=1, kind="stable")
    in_a = np.zeros((count, n_total), dtype=bool)
    np.put_along_axis(in_a, order[:, :n_a], True, axis=1)
    return in_a


def experiment_log_maps(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """``log1p(-MA)`` of every experiment over the voxels any experiment reaches.

    Returns
    -------
    support : ndarray of int64
        In-mask voxel indices with a non-zero MA in some experiment.
    log_maps : ndarray of float32, shape (n_experiments, support.size)
        float32 ``log1p(-MA)`` (exact: that is how it is computed), 0 where MA = 0.
    """
    from gpuale.backends.numpy_ import NumpyBackend

    backend = NumpyBackend()
    rows = []
    for e in range(problem.n_experiments):
        log_sum = backend.observed_ale(problem.subset([e])).log_sum
        touched = np.flatnonzero(log_sum)
        rows.append((touched, log_sum[touched].astype(np.float32)))
    support = np.unique(np.concatenate([touched for touched, _ in rows]))
    log_maps = np.zeros((problem.n_experiments, support.size), dtype=np.float32)
    for e, (touched, values) in enumerate(rows):
        log_maps[e, np.searchsorted(support, touched)] = values
    return support, log_maps


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
        Largest |difference| of each permutation (voxel-level FWE).
    """

    diff: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    max_abs: np.ndarray
    seed: int

    @property
    def n_iters(self) -> int:
        return int(self.max_abs.size)


#: ``log1p(-MA)`` is held in integer units of 2**-40 (as float64), so every group log-sum
#: is an integer below 2**53: matrix products are then exact in any summation order, on
#: BLAS and cuBLAS alike, and ties between permuted and observed sums are real ties.
LOG_SCALE = 2.0**40


def quantize_log_maps(log_maps: np.ndarray) -> np.ndarray:
    """``log1p(-MA)`` in integer units of 2**-40 (a float64 array of whole numbers)."""
    quantized = np.rint(np.asarray(log_maps, dtype=np.float64) * LOG_SCALE)
    if quantized.size and np.abs(quantized).sum(axis=0).max() >= 2.0**53:
        raise ValueError("too many experiments for exact group sums")
    return quantized


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


class _Chunk:
    """One block of voxels: its quantized log maps, pooled log-sum and observed sums."""

    def __init__(self, xp, log_maps: np.ndarray, columns: np.ndarray,
                 observed_split: np.ndarray):
        self.columns = xp.asarray(columns)
        self.log = xp.asarray(quantize_log_maps(log_maps[:, columns]))
        self.total = self.log.sum(axis=0)[None, :]
        self.observed = xp.asarray(observed_split) @ self.log
        # |ALE_A - ALE_B| <= max(ALE_A, ALE_B) <= ALE of the pool, whatever the split.
        self.ceiling = float(1.0 - np.exp(float(self.total.min()) / LOG_SCALE))

    def count(self, xp, splits, upper, lower):
        """Add one batch's exceedances; return the group-A log-sums."""
        sum_a = splits @ self.log
        upper[self.columns] += xp.count_nonzero(sum_a <= self.observed[None, :], axis=0)
        lower[self.columns] += xp.count_nonzero(sum_a >= self.observed[None, :], axis=0)
        return sum_a

    def largest_difference(self, xp, sum_a):
        diff = _ale_difference(xp, sum_a, self.total, xp.float32)
        return xp.maximum(diff.max(axis=1), -diff.min(axis=1))

    def observed_difference(self, xp):
        return _ale_difference(xp, self.observed[None, :], self.total, xp.float64)[0]


def contrast_counts(
    log_maps: np.ndarray,
    n_a: int,
    *,
    seed: int,
    n_iters: int,
    xp=np,
    n_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ContrastNull:
    """Permutation null of ALE_A - ALE_B for pooled experiments (group A first).

    ALE_A - ALE_B = exp(S_pool - S_A) - exp(S_A) falls strictly as the group-A log-sum
    S_A rises (S_pool is the same for every split), so a permuted difference reaches the
    observed one exactly when its S_A is at most the observed S_A: the exceedance counts
    need no exponentials. The largest |difference| of each permutation (voxel-level FWE)
    is evaluated in float32, and only where it can occur: voxels are visited by falling
    pooled ALE, which bounds |ALE_A - ALE_B|, and the search stops once that bound is
    below every permutation's maximum so far.

    Parameters
    ----------
    log_maps : ndarray, shape (n_experiments, n_voxels)
        ``log1p(-MA)`` per pooled experiment, group A's rows first.
    n_a : int
        Size of group A.
    seed, n_iters : int
    xp : module
        ``numpy`` or ``cupy``: where the matrix products run.
    n_workers : int, optional
        CPU threads (default: every core this process may use).
    progress : callable, optional
    """
    n_total, n_voxels = log_maps.shape
    if not 0 < n_a < n_total:
        raise ValueError(f"both groups need experiments: group A has {n_a} of {n_total}")
    observed_split = np.zeros(n_total)
    observed_split[:n_a] = 1.0
    upper = xp.zeros(n_voxels, dtype=xp.int64)
    lower = xp.zeros(n_voxels, dtype=xp.int64)
    max_abs = np.zeros(n_iters, dtype=np.float64)
    by_pooled_ale = np.argsort(log_maps.astype(np.float64).sum(axis=0), kind="stable")
    chunks = [
        _Chunk(xp, log_maps, by_pooled_ale[a : a + VOXEL_CHUNK], observed_split)
        for a in range(0, n_voxels, VOXEL_CHUNK)
    ]
    # numpy releases the GIL in BLAS and ufuncs, so threads share the voxel chunks; each
    # chunk owns its voxels' counts. A GPU takes them one after the other.
    threads = 1 if xp is not np else (n_workers or _cpu_count())
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        for first in range(0, n_iters, SPLIT_BATCH):
            count = min(SPLIT_BATCH, n_iters - first)
            splits = xp.asarray(random_splits(seed, first, count, n_total, n_a),
                                dtype=xp.float64)
            batch_max = xp.zeros(count, dtype=xp.float32)
            rest = 0
            # synchronize: one scalar per chunk while the maxima are still open
            while rest < len(chunks) and chunks[rest].ceiling >= float(batch_max.min()):
                sum_a = chunks[rest].count(xp, splits, upper, lower)
                xp.maximum(batch_max, chunks[rest].largest_difference(xp, sum_a),
                           out=batch_max)
                rest += 1
            step = functools.partial(_Chunk.count, xp=xp, splits=splits, upper=upper,
                                     lower=lower)
            for _ in pool.map(step, chunks[rest:]):
                pass
            max_abs[first : first + count] = _to_host(batch_max)
            if progress is not None:
                progress(count)
    diff_obs = xp.zeros(n_voxels, dtype=xp.float64)
    for chunk in chunks:
        diff_obs[chunk.columns] = chunk.observed_difference(xp)
    # synchronize: the counts come back once, at the end
    return ContrastNull(
        diff=_to_host(diff_obs), upper=_to_host(upper), lower=_to_host(lower),
        max_abs=max_abs, seed=int(seed),
    )


def _to_host(array) -> np.ndarray:
    return array.get() if hasattr(array, "get") else np.asarray(array)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def whole_brain_p(null: ContrastNull) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p and signed z at every voxel, as NiMARE's ``ALESubtraction``.

    ``p = 2 min(upper, lower) / n`` clipped to [1/n, 1 - 1/n]; the sign is that of
    ``lower - upper`` (positive where A > B); ``z`` is the two-sided normal quantile.
    """
    n = null.n_iters
    smallest = 1.0 / n
    p = 2.0 * np.minimum(null.upper, null.lower) / n
    p = np.maximum(smallest, np.minimum(p, 1.0 - smallest))
    sign = np.sign(null.lower - null.upper)
    z = p_to_z(p / 2.0) * sign
    return p, z


def gated_p(
    null: ContrastNull, significant_a: np.ndarray, significant_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided p where a group's main effect is significant (Eickhoff et al. 2011).

    A > B is tested only where A's corrected main effect is significant and the observed
    difference is positive (p = upper / n); B > A likewise. Elsewhere p = 1 and z = 0.
    """
    n = null.n_iters
    smallest = 1.0 / n
    p = np.ones(null.diff.size)
    sign = np.zeros(null.diff.size)
    a_wins = significant_a & (null.diff > 0)
    b_wins = significant_b & (null.diff < 0)
    p[a_wins] = np.maximum(smallest, null.upper[a_wins] / n)
    p[b_wins] = np.maximum(smallest, null.lower[b_wins] / n)
    sign[a_wins] = 1
    sign[b_wins] = -1
    return p, p_to_z(p) * sign


# --- The analysis -------------------------------------------------------------------------

#: Modes: NiMARE's whole-brain two-sided test, and Eickhoff et al.'s (2011) test gated by
#: the groups' significant main effects.
MODES = ("whole-brain", "gated")
#: Default thresholds of the contrast map: p < 0.001 two-sided (whole brain); P(A>B) >
#: 0.95 within the main effects (gated, Eickhoff et al. 2011 / GingerALE).
DEFAULT_P_THRESHOLD = {"whole-brain": 0.001, "gated": 0.05}
#: Smallest reported contrast or conjunction cluster, in mm^3 (GingerALE offers a minimum
#: volume; 200 mm^3 = 25 voxels of 2 mm is a common choice in published ALE contrasts).
DEFAULT_MIN_VOLUME_MM3 = 200.0
OVERLAP_POLICIES = ("error", "keep", "drop")


@dataclasses.dataclass(frozen=True, eq=False)
class MainEffect:
    """A group's corrected main effect: z and where it is significant (in-mask vectors)."""

    z: np.ndarray
    significant: np.ndarray
    source: str

    @classmethod
    def from_result(cls, result) -> MainEffect:
        thresholded = result.maps()["z_thresholded"]
        return cls(z=result.z, significant=thresholded > 0, source="computed")

    @classmethod
    def from_run_dir(cls, path, grid: Grid) -> MainEffect:
        """Read ``z.nii.gz`` and ``z_thresholded.nii.gz`` of a ``gpuale global`` run."""
        from pathlib import Path

        path = Path(path)
        maps = {}
        for name in ("z", "z_thresholded"):
            file = path / f"{name}.nii.gz"
            if not file.is_file():
                raise ValueError(
                    f"{str(path)!r} is not a finished `gpuale global` run with Monte Carlo: "
                    f"{file.name} is missing"
                )
            maps[name] = read_map(file, grid)
        return cls(z=maps["z"], significant=maps["z_thresholded"] > 0, source=str(path))


def read_map(path, grid: Grid) -> np.ndarray:
    """A NIfTI map on the analysis grid, as an in-mask vector (never resampled)."""
    img, data = read_volume(path, "map")
    data = data.astype(np.float64)
    if data.shape != grid.shape or not np.allclose(img.affine, grid.affine, atol=1e-4):
        raise ValueError(
            f"{str(path)!r} is on another grid (shape {data.shape}) than the analysis "
            f"(shape {grid.shape}, mask {grid.source}); gpuale does not resample maps"
        )
    return data.reshape(-1)[grid.in_mask_flat]


def check_overlap(group_a: Dataset, group_b: Dataset, policy: str) -> tuple[Dataset, Dataset]:
    """Find experiments in both groups (same id, or same sample size and foci)."""
    if policy not in OVERLAP_POLICIES:
        raise ValueError(f"overlap must be one of {OVERLAP_POLICIES}, got {policy!r}")

    def key(exp):
        return (exp.n_subjects, np.round(exp.foci, 6).tobytes())

    b_ids = {exp.id: exp for exp in group_b}
    b_keys = {key(exp): exp for exp in group_b}
    shared = [(a, b_ids.get(a.id) or b_keys.get(key(a))) for a in group_a]
    shared = [(a, b) for a, b in shared if b is not None]
    if not shared or policy == "keep":
        return group_a, group_b
    if policy == "error":
        a, b = shared[0]
        raise ValueError(
            f"experiment {a.id!r} ({a.source}) is in both groups (as {b.id!r}, {b.source}); "
            f"{len(shared)} shared in all. Pass --overlap keep or --overlap drop"
        )
    drop_a = {a.id for a, _ in shared}
    drop_b = {b.id for _, b in shared}
    kept_a = tuple(exp for exp in group_a if exp.id not in drop_a)
    kept_b = tuple(exp for exp in group_b if exp.id not in drop_b)
    if not kept_a or not kept_b:
        raise ValueError("dropping the shared experiments leaves a group empty")
    return Dataset(kept_a), Dataset(kept_b)


@dataclasses.dataclass(eq=False)
class ContrastResult:
    """ALE_A - ALE_B with permutation p and signed z (in-mask vectors)."""

    grid: Grid
    mode: str
    group_a: Dataset
    group_b: Dataset
    ale_a: np.ndarray
    ale_b: np.ndarray
    null: ContrastNull
    support: np.ndarray
    p: np.ndarray
    z: np.ndarray
    p_threshold: float
    min_volume_mm3: float
    connectivity: int
    main_a: MainEffect | None = None
    main_b: MainEffect | None = None
    min_z: bool = False
    device: str = "cpu"
    timings: dict = dataclasses.field(default_factory=dict)

    def _full(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        out = np.full(self.grid.n_voxels, fill, dtype=np.float64)
        out[self.support] = values
        return out

    @property
    def diff(self) -> np.ndarray:
        return self._full(self.null.diff)

    def thresholded(self) -> np.ndarray:
        """Signed z where p < threshold, in clusters of at least the minimum volume."""
        z = self._full(self.z)
        p = self._full(self.p, fill=1.0)
        keep = p < self.p_threshold
        if self.min_z and self.main_a is not None:
            # Report the weaker of the main effect and the contrast (Eickhoff et al. 2011).
            z = np.where(z > 0, np.minimum(z, self.main_a.z), z)
            z = np.where(z < 0, np.maximum(z, -self.main_b.z), z)
        values = np.where(keep, z, 0.0)
        labels = clusters_above(values, self.grid, min_volume_mm3=self.min_volume_mm3,
                                connectivity=self.connectivity)
        return np.where(labels > 0, values, 0.0), labels

    def maps(self) -> dict[str, np.ndarray]:
        thresholded, labels = self.thresholded()
        p_voxel = fwe_p_values(np.abs(self.diff), self.null.max_abs)
        return {
            "ale_A": self.ale_a,
            "ale_B": self.ale_b,
            "stat_desc-AminusB": self.diff.astype(np.float32),
            "p_desc-AminusB": self._full(self.p, fill=1.0).astype(np.float32),
            "z_desc-AminusB": self._full(self.z).astype(np.float32),
            "logp_desc-AminusB_level-voxel": (-np.log10(p_voxel)).astype(np.float32),
            "z_thresholded": thresholded.astype(np.float32),
            "cluster_labels": labels.astype(np.int16),
        }

    def clusters(self) -> list[dict]:
        thresholded, labels = self.thresholded()
        rows = map_cluster_table(self.grid, thresholded, labels)
        for row in rows:
            row["direction"] = "A>B" if row["sign"] == "+" else "B>A"
        return rows


def run_contrast(
    group_a: Dataset,
    group_b: Dataset,
    *,
    mode: str = "whole-brain",
    grid: Grid | None = None,
    n_iters: int = 5000,
    seed: int = 0,
    p_threshold: float | None = None,
    min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
    connectivity: int = 6,
    main_a: MainEffect | None = None,
    main_b: MainEffect | None = None,
    min_z: bool = False,
    overlap: str = "error",
    fwhm_mm: float | None = None,
    device: str = "cpu",
    n_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ContrastResult:
    """Contrast of two groups of experiments (Eickhoff et al. 2011).

    Parameters
    ----------
    group_a, group_b : Dataset
    mode : {"whole-brain", "gated"}
        ``whole-brain`` tests every voxel two-sided, as NiMARE's ``ALESubtraction``;
        ``gated`` tests A > B only where A's main effect is significant (B > A likewise),
        one-sided, as GingerALE.
    n_iters, seed : int
        Random splits of the pooled experiments (NiMARE's default is 5,000).
    p_threshold : float, optional
        Threshold of the reported map (default 0.001 whole-brain, 0.05 gated).
    min_volume_mm3 : float
        Smallest reported cluster.
    main_a, main_b : MainEffect, optional
        Significant main effects for ``gated`` mode (from run folders); computed with
        :func:`gpuale.run_ale` (same seed and iterations) when not given.
    min_z : bool
        In ``gated`` mode, report the smaller of the main-effect and contrast z.
    overlap : {"error", "keep", "drop"}
        What to do with an experiment found in both groups.
    """
    from gpuale.backends import resolve_device

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if len(group_a) == 0 or len(group_b) == 0:
        raise ValueError("both groups need at least one experiment")
    if n_iters < 1:
        raise ValueError(f"n_iters must be at least 1, got {n_iters}")
    p_threshold = DEFAULT_P_THRESHOLD[mode] if p_threshold is None else p_threshold
    if not 0 < p_threshold < 1:
        raise ValueError(f"p_threshold must lie in (0, 1), got {p_threshold}")
    group_a, group_b = check_overlap(group_a, group_b, overlap)
    grid = grid or load_grid()
    resolved = resolve_device(device)
    timings = {}
    start = time.perf_counter()
    pooled = Dataset(
        tuple(dataclasses.replace(e, id=f"A:{e.id}") for e in group_a)
        + tuple(dataclasses.replace(e, id=f"B:{e.id}") for e in group_b)
    )
    problem = compile_problem(pooled, grid, fwhm_mm=fwhm_mm)
    support, log_maps = experiment_log_maps(problem)
    sums = log_maps.astype(np.float64)
    ale_a = np.zeros(grid.n_voxels, np.float32)
    ale_b = np.zeros(grid.n_voxels, np.float32)
    ale_a[support] = (1.0 - np.exp(sums[: len(group_a)].sum(axis=0))).astype(np.float32)
    ale_b[support] = (1.0 - np.exp(sums[len(group_a) :].sum(axis=0))).astype(np.float32)
    timings["log_maps_s"] = time.perf_counter() - start

    if mode == "gated" and (main_a is None or main_b is None):
        from gpuale.analysis import run_ale

        start = time.perf_counter()
        main_a = main_a or MainEffect.from_result(run_ale(
            group_a, grid=grid, fwhm_mm=fwhm_mm, n_iters=n_iters, seed=seed, device=device,
            n_workers=n_workers, connectivity=connectivity))
        main_b = main_b or MainEffect.from_result(run_ale(
            group_b, grid=grid, fwhm_mm=fwhm_mm, n_iters=n_iters, seed=seed, device=device,
            n_workers=n_workers, connectivity=connectivity))
        timings["main_effects_s"] = time.perf_counter() - start

    start = time.perf_counter()
    xp = np
    if resolved != "cpu":
        import cupy as xp  # noqa: N813
    null = contrast_counts(log_maps, len(group_a), seed=seed, n_iters=n_iters, xp=xp,
                           n_workers=n_workers, progress=progress)
    timings["permutations_s"] = time.perf_counter() - start
    if mode == "gated":
        p, z = gated_p(null, main_a.significant[support], main_b.significant[support])
    else:
        p, z = whole_brain_p(null)
    return ContrastResult(
        grid=grid, mode=mode, group_a=group_a, group_b=group_b, ale_a=ale_a, ale_b=ale_b,
        null=null, support=support, p=p, z=z, p_threshold=p_threshold,
        min_volume_mm3=min_volume_mm3, connectivity=connectivity, main_a=main_a,
        main_b=main_b, min_z=min_z, device=resolved, timings=timings,
    )
