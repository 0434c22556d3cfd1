"""Contrast (subtraction) analysis of two groups of experiments (Eickhoff et al. 2011).

The observed statistic is ``ALE_A - ALE_B``. Its null comes from pooling the experiments
and splitting them at random into groups of the original sizes
(:class:`gpuale.nulls.ContrastNullSpec`, computed by an engine); this module turns the
null's exceedance counts into p and z (whole-brain as NiMARE's ``ALESubtraction``, or
gated by the groups' significant main effects as GingerALE), thresholds them into
clusters and holds the result.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from gpuale.clusters import clusters_above, map_cluster_table
from gpuale.dataset import Dataset
from gpuale.engines import get_engine, resolve_device
from gpuale.grid import Grid, load_grid
from gpuale.nulls import ContrastNull, ContrastNullSpec, run_null
from gpuale.problem import compile_problem
from gpuale.stats import clip_permutation_p, fwe_p_values, p_to_z

__all__ = [
    "ContrastResult",
    "MainEffect",
    "OverlapError",
    "check_overlap",
    "gated_p",
    "run_contrast",
    "whole_brain_p",
]


def whole_brain_p(null: ContrastNull) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p and signed z at every voxel, as NiMARE's ``ALESubtraction``.

    ``p = 2 min(upper, lower) / n`` clipped to [1/n, 1 - 1/n]; the sign is that of
    ``lower - upper`` (positive where A > B); ``z`` is the two-sided normal quantile.
    """
    n = null.n_iters
    p = clip_permutation_p(2.0 * np.minimum(null.upper, null.lower) / n, n)
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
    p = np.ones(null.diff.size)
    sign = np.zeros(null.diff.size)
    a_wins = significant_a & (null.diff > 0)
    b_wins = significant_b & (null.diff < 0)
    p[a_wins] = clip_permutation_p(null.upper[a_wins] / n, n, upper=False)
    p[b_wins] = clip_permutation_p(null.lower[b_wins] / n, n, upper=False)
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
        """The z map and significant voxels of a finished ``gpuale global`` run folder."""
        from gpuale.runfolder import read_main_effect

        z, significant = read_main_effect(path, grid)
        return cls(z=z, significant=significant, source=str(path))


#: The end of an :class:`OverlapError` message, in Python words.
OVERLAP_HINT = 'keep them in both groups (overlap="keep") or drop them from both (overlap="drop")'


class OverlapError(ValueError):
    """An experiment is in both groups of a contrast; the ``overlap`` argument says what to
    do (``option`` and ``hint`` let the CLI say it with its flag)."""

    option = "overlap"
    hint = OVERLAP_HINT


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
        raise OverlapError(
            f"experiment {a.id!r} ({a.source}) is in both groups (as {b.id!r}, {b.source}); "
            f"{len(shared)} shared in all; {OVERLAP_HINT}"
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
    engine = get_engine(resolved)
    timings = {}
    start = time.perf_counter()
    pooled = Dataset(
        tuple(dataclasses.replace(e, id=f"A:{e.id}") for e in group_a)
        + tuple(dataclasses.replace(e, id=f"B:{e.id}") for e in group_b)
    )
    problem = compile_problem(pooled, grid, fwhm_mm=fwhm_mm)
    support, log_maps = engine.experiment_log_maps(problem)
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
    null = run_null(ContrastNullSpec(log_maps, len(group_a)), engine, seed=seed,
                    n_iters=n_iters, n_workers=n_workers, progress=progress)
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
