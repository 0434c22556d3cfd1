"""Contrast (subtraction) analysis of two groups of experiments (Eickhoff et al. 2011).

The observed statistic is ``ALE_A - ALE_B``. Its null comes from pooling the experiments
and splitting them at random into groups of the original sizes
(:class:`gpuale.nullspecs.ContrastNullSpec`, computed by an engine); this module turns the
null's exceedance counts into p and z (whole-brain as NiMARE's ``ALESubtraction``, or
gated by the groups' significant main effects as GingerALE), thresholds them into
clusters and holds the result.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable

import numpy as np

from gpuale.cluster_null import contrast_cluster_null
from gpuale.clusters import clusters_above, map_cluster_table
from gpuale.dataset import Dataset, foci_text
from gpuale.engines import get_engine, resolve_device
from gpuale.grid import Grid, load_grid
from gpuale.inference import (
    ClusterInference,
    UnreachableThresholdWarning,
    smallest_fwe_p,
    unreachable_threshold_message,
)
from gpuale.io.duplicates import experiment_key
from gpuale.nulls import check_iterations, run_null
from gpuale.nullspecs import ContrastNull, ContrastNullSpec
from gpuale.pooling import _kept, pooled_log_maps
from gpuale.schedulers import Scheduler
from gpuale.stats import clip_permutation_p, fwe_p_values, p_to_z

__all__ = [
    "ContrastResult",
    "MainEffect",
    "MainEffectMismatch",
    "OverlapError",
    "check_main_effect",
    "check_overlap",
    "contrast_cluster_inference",
    "gated_p",
    "run_contrast",
    "smallest_p",
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


def smallest_p(mode: str, n_iters: int) -> float:
    """The smallest p a contrast in ``mode`` can give with ``n_iters`` random splits.

    Computed by :func:`whole_brain_p` or :func:`gated_p` themselves, for a voxel whose
    observed difference no split reaches (the most extreme counts), so that it follows
    their rules: both clip p at 1/n, so this is 1/n (and 1 for n = 1, where the
    whole-brain clip to [1/n, 1 - 1/n] leaves only 1). With the strict threshold
    ``p < p_threshold`` a contrast needs ``1/n < p_threshold``: more than 1,000 splits
    for p < 0.001, more than 20 for the gated P > 0.95.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    null = ContrastNull(diff=np.ones(1), upper=np.zeros(1, np.int64),
                        lower=np.full(1, n_iters, np.int64), max_abs=np.zeros(n_iters), seed=0)
    if mode == "gated":
        p, _ = gated_p(null, np.ones(1, bool), np.ones(1, bool))
    else:
        p, _ = whole_brain_p(null)
    return float(p[0])


def unreachable_message(mode: str, n_iters: int, p_threshold: float | None = None, *,
                        cluster_fwe: bool = False, alpha: float = 0.05) -> str | None:
    """The warning for a contrast whose threshold ``n_iters`` splits cannot reach (None
    if they can, and for a balanced contrast, thresholded by its null extrema).

    :func:`run_contrast` gives it before any work; a caller that shows progress can give
    it before its progress bar (the same words: the command line prints it once).
    """
    if mode not in MODES:
        return None
    # With cluster-level FWE the reported map is cut at cluster FWE p < alpha (p_threshold
    # only sets the cluster-forming quantile, which every number of splits reaches).
    if cluster_fwe:
        return unreachable_threshold_message(
            "the contrast's cluster-level FWE alpha", n_iters, alpha, smallest_fwe_p)
    p_threshold = DEFAULT_P_THRESHOLD[mode] if p_threshold is None else p_threshold
    return unreachable_threshold_message(f"the {mode} contrast's threshold", n_iters,
                                         p_threshold, functools.partial(smallest_p, mode))


def contrast_cluster_inference(diff: np.ndarray, grid: Grid, null: ContrastNull,
                               ) -> ClusterInference:
    """Cluster-level FWE of an observed difference map, as NiMARE 0.22.1's
    ``ALESubtraction.correct_fwe_montecarlo(vfwe_only=False)``.

    Clusters are voxels with ``|ALE_A - ALE_B|`` > the null's cluster-forming threshold,
    compared in float32 as NiMARE thresholds its float32 map, positive and negative
    differences labelled apart; a cluster's mass sums ``|difference|`` - threshold over its
    voxels. Corrected p is the share of permutations whose largest cluster reaches it
    (:func:`~gpuale.stats.fwe_p_values`); voxels outside every cluster get the p of size
    0 (1 - 1/n), as in NiMARE.

    Parameters
    ----------
    diff : ndarray
        Observed ALE_A - ALE_B, in-mask vector of ``grid``.
    grid : Grid
    null : ContrastNull
        With the cluster nulls (:func:`gpuale.cluster_null.contrast_cluster_null`).

    Returns
    -------
    ClusterInference
        ``labels`` numbers the clusters of both signs together by decreasing size (then
        mass, then first voxel).
    """
    from gpuale.clusters import cluster_measures, connectivity_structure

    if not null.has_clusters:
        raise ValueError("the contrast null has no cluster statistics (run with "
                         "cluster_fwe=True)")
    values = np.asarray(diff).astype(np.float32)
    cut = np.float32(null.cluster_forming_abs_difference)
    structure = connectivity_structure(null.connectivity)
    found = []
    for sign in (np.float32(1), np.float32(-1)):
        above = np.flatnonzero(sign * values > cut)  # negation is exact in float32
        if above.size == 0:
            continue
        excess = np.abs(values[above]).astype(np.float64) - np.float64(cut)
        sizes, masses, raw = cluster_measures(grid.in_mask_flat[above], excess, grid.shape,
                                              structure)
        for label in range(1, sizes.size + 1):
            members = above[raw == label]
            found.append((int(sizes[label - 1]), float(masses[label - 1]), members))
    found.sort(key=lambda item: (-item[0], -item[1], int(item[2][0])))
    labels = np.zeros(values.size, dtype=np.int32)
    for number, (_, _, members) in enumerate(found, start=1):
        labels[members] = number
    sizes = np.array([0] + [f[0] for f in found], dtype=np.int64)
    masses = np.array([0.0] + [f[1] for f in found], dtype=np.float64)
    return ClusterInference.from_null(np.abs(np.asarray(diff, dtype=np.float64)),
                                      null.max_abs, labels, sizes, masses, null)


# --- The analysis -------------------------------------------------------------------------

#: Modes: NiMARE's whole-brain two-sided test, and Eickhoff et al.'s (2011) test gated by
#: the groups' significant main effects.
MODES = ("whole-brain", "gated")
#: NiMARE's BalancedALESubtraction (:mod:`gpuale.balanced`): its own result and outputs.
BALANCED_MODE = "balanced"
#: Default thresholds of the contrast map: p < 0.001 two-sided (whole brain); P(A>B) >
#: 0.95 within the main effects (gated, Eickhoff et al. 2011 / GingerALE).
DEFAULT_P_THRESHOLD = {"whole-brain": 0.001, "gated": 0.05}
#: Smallest reported contrast or conjunction cluster, in mm^3 (GingerALE offers a minimum
#: volume; 200 mm^3 = 25 voxels of 2 mm is a common choice in published ALE contrasts).
DEFAULT_MIN_VOLUME_MM3 = 200.0
OVERLAP_POLICIES = ("error", "keep", "drop")


@dataclasses.dataclass(frozen=True, eq=False)
class MainEffect:
    """A group's corrected main effect: z and where it is significant (in-mask vectors).

    ``experiments``: what the run folder's run.json records of the experiments it was run
    on (dicts with ``id``, ``n_subjects``, ``n_foci``), checked against the group by
    :func:`check_main_effect`; None when computed for the contrast itself.
    """

    z: np.ndarray
    significant: np.ndarray
    source: str
    experiments: tuple[dict, ...] | None = None
    #: The gate's kernel and thresholds (:data:`MAIN_EFFECT_SETTINGS` of its run.json's
    #: ``settings``; None where the run records none).
    settings: dict | None = None

    @classmethod
    def from_result(cls, result) -> MainEffect:
        thresholded = result.maps()["z_thresholded"]
        settings = {"fwhm_mm": result.fwhm_mm, "cluster_forming_p": result.cluster_forming_p,
                    "alpha": result.alpha, "connectivity": result.connectivity,
                    "iterations": (result.montecarlo.n_iters if result.montecarlo is not None
                                   else 0),
                    "seed": result.montecarlo.seed if result.montecarlo is not None else None}
        return cls(z=result.z, significant=thresholded > 0, source="computed",
                   settings=settings)



#: What run.json and the report keep of each gate of a gated contrast: its kernel and
#: thresholds, and how many permutations gave them.
MAIN_EFFECT_SETTINGS = ("fwhm_mm", "cluster_forming_p", "alpha", "connectivity",
                        "iterations", "seed")


#: Of those, what must equal the contrast's own (``mismatched_main_effects``): they decide
#: where the gate is open (the iterations and seed only move it within Monte Carlo error).
MAIN_EFFECT_MUST_MATCH = ("fwhm_mm", "cluster_forming_p", "alpha", "connectivity")


MISMATCHED_MAIN_EFFECTS = ("error", "warn")


class MainEffectSettingsWarning(UserWarning):
    """A gated contrast's given main effect was made with other settings than its own."""


def main_effect_settings_difference(main: MainEffect, expected: dict) -> str | None:
    """How a given main effect's kernel and thresholds differ from the contrast's own
    (None: they do not, or the run records none)."""
    if main.settings is None:
        return None
    differ = []
    for key in MAIN_EFFECT_MUST_MATCH:
        theirs, ours = main.settings.get(key), expected.get(key)
        if theirs is None and ours is None:
            continue
        if theirs is None or ours is None or not math.isclose(float(theirs), float(ours),
                                                                rel_tol=1e-9):
            shown = {None: "from sample sizes"} if key == "fwhm_mm" else {}
            differ.append(f"{key} {shown.get(theirs, theirs)} there, "
                          f"{shown.get(ours, ours)} here")
    return "; ".join(differ) or None


def check_main_effect_settings(main: MainEffect | None, expected: dict, name: str,
                               policy: str) -> str | None:
    """A given main effect made with another kernel or thresholds than the contrast's own:
    an error (``policy="error"``), or a warning whose text is returned (``"warn"``)."""
    if main is None:
        return None
    difference = main_effect_settings_difference(main, expected)
    if difference is None:
        return None
    message = (f"the main effect given for group {name} ({main.source}) was made with other "
               f"settings than this contrast's: {difference}")
    if policy == "error":
        raise MainEffectSettingsMismatch(f"{message}; make it with the contrast's settings, "
                                         f"or {MAIN_EFFECT_SETTINGS_HINT}")
    warnings.warn(message, MainEffectSettingsWarning, stacklevel=3)
    return message


#: How to accept main effects made with other settings (see MainEffectMismatch).
MAIN_EFFECT_SETTINGS_HINT = "pass mismatched_main_effects='warn' to gate with them anyway"


class MainEffectSettingsMismatch(ValueError):
    """A main-effect run folder was made with another kernel or thresholds than the
    contrast's own."""

    option = "main_effect_settings"
    hint = MAIN_EFFECT_SETTINGS_HINT


#: The end of a :class:`MainEffectMismatch` message, in Python words.
MAIN_EFFECT_HINT = "pass each group's own `gpuale global` run as main_a and main_b"


class MainEffectMismatch(ValueError):
    """A main-effect run folder was run on other experiments than its group."""

    option = "main_effect"
    hint = MAIN_EFFECT_HINT


def _describe_experiment(exp: dict) -> str:
    return f"{exp['id']!r} (N = {exp['n_subjects']}, {foci_text(exp['n_foci'])})"


def _whole(value) -> int | None:
    return None if value is None else int(value)


def _main_effect_difference(recorded: tuple[dict, ...], group: Dataset,
                            name: str) -> str | None:
    """How a run's recorded experiments differ from a group's (None: they do not)."""
    # Experiments are compared by id, sample size and number of foci, in any order (the
    # ALE does not depend on it); repeated ids (allowed in Sleuth files) are compared as
    # multisets.
    # N is None where the input states none (a fixed kernel FWHM needs none).
    mine = [{"id": e.id, "n_subjects": e.n_subjects, "n_foci": int(e.n_foci)}
            for e in group]
    theirs = [{"id": str(e.get("id")), "n_subjects": _whole(e.get("n_subjects", -1)),
               "n_foci": int(e.get("n_foci", -1))} for e in recorded]
    unmatched = list(theirs)
    for exp in mine:
        if exp in unmatched:
            unmatched.remove(exp)
            continue
        same_id = [e for e in unmatched if e["id"] == exp["id"]]
        if same_id:
            other = same_id[0]
            return (f"experiment {exp['id']!r} has N = {exp['n_subjects']} and "
                    f"{foci_text(exp['n_foci'])} in group {name} but N = "
                    f"{other['n_subjects']} and {foci_text(other['n_foci'])} there")
        return f"experiment {_describe_experiment(exp)} of group {name} is not in it"
    if unmatched:
        return (f"it has experiment {_describe_experiment(unmatched[0])}, which group {name} "
                "does not")
    return None


def check_main_effect(main: MainEffect, group: Dataset, name: str,
                      other: Dataset | None = None, other_name: str = "") -> None:
    """Check that a main effect from a run folder was run on exactly the group's experiments.

    Parameters
    ----------
    main : MainEffect
        Nothing is checked when it records no experiments (computed for the contrast).
    group : Dataset
        The group as given (before an ``overlap`` policy drops shared experiments).
    name : str
        The group's name in messages ("A").
    other, other_name : Dataset and str, optional
        The other group, to say when the folders look swapped.

    Raises
    ------
    MainEffectMismatch
        Naming the folder, the group and the first differing experiment.
    """
    if main.experiments is None:
        return
    difference = _main_effect_difference(main.experiments, group, name)
    if difference is None:
        return
    swapped = ""
    if other is not None and _main_effect_difference(main.experiments, other, other_name) \
            is None:
        swapped = (f"; it is the run of group {other_name}'s experiments: are the two main "
                   "effects swapped?")
    raise MainEffectMismatch(
        f"the main effect given for group {name} ({main.source}) is a global ALE of other "
        f"experiments than group {name} ({len(main.experiments)} in the run, "
        f"{len(group)} in the group): {difference}{swapped}; {MAIN_EFFECT_HINT}"
    )


#: The end of an :class:`OverlapError` message, in Python words.
OVERLAP_HINT = 'keep them in both groups (overlap="keep") or drop them from both (overlap="drop")'


class OverlapError(ValueError):
    """An experiment is in both groups of a contrast; the ``overlap`` argument says what to
    do (``option`` and ``hint`` let the CLI say it with its flag)."""

    option = "overlap"
    hint = OVERLAP_HINT


def check_overlap(group_a: Dataset, group_b: Dataset, policy: str) -> tuple[Dataset, Dataset]:
    """Find experiments in both groups: the same sample size and foci, whatever their
    labels (:func:`gpuale.io.duplicates.experiment_key`). A label shared by experiments
    with different foci is not an overlap: one paper often reports a contrast for each
    group, and real files repeat labels."""
    if policy not in OVERLAP_POLICIES:
        raise ValueError(f"overlap must be one of {OVERLAP_POLICIES}, got {policy!r}")

    b_keys = {experiment_key(exp): exp for exp in group_b}
    shared = [(a, b_keys.get(experiment_key(a))) for a in group_a]
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
    #: Warnings raised while running (unreachable threshold, foci outside the mask), for
    #: run.json and the report.
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: Cluster-level FWE (whole-brain only): the reported map keeps the clusters formed
    #: at the null's cluster-forming ``|difference|`` whose cluster-size FWE p < ``alpha``.
    cluster_fwe: bool = False
    alpha: float = 0.05

    @functools.cached_property
    def _cluster_inference(self) -> ClusterInference:
        return contrast_cluster_inference(self.diff, self.grid, self.null)

    def cluster_inference(self) -> ClusterInference:
        """Cluster-level FWE of the difference (:func:`contrast_cluster_inference`).

        Raises
        ------
        ValueError
            The contrast was run without ``cluster_fwe``.
        """
        return self._cluster_inference

    def _full(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        out = np.full(self.grid.n_voxels, fill, dtype=np.float64)
        out[self.support] = values
        return out

    @property
    def diff(self) -> np.ndarray:
        return self._full(self.null.diff)

    def thresholded(self) -> np.ndarray:
        """Signed z where p < threshold, in clusters of at least the minimum volume.

        With ``cluster_fwe``: signed z in the clusters whose cluster-size FWE p < alpha
        (numbered from 1 by decreasing size); the minimum volume does not apply, the
        cluster-level test takes its place.
        """
        if self.cluster_fwe:
            inference = self.cluster_inference()
            significant = inference.p_size < self.alpha
            significant[0] = False
            renumber = np.zeros(significant.size, dtype=np.int32)
            renumber[significant] = np.arange(1, int(significant.sum()) + 1)
            labels = renumber[inference.labels]
            return np.where(labels > 0, self._full(self.z), 0.0), labels
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
        maps = {
            "ale_A": self.ale_a,
            "ale_B": self.ale_b,
            "stat_desc-AminusB": self.diff.astype(np.float32),
            "p_desc-AminusB": self._full(self.p, fill=1.0).astype(np.float32),
            "z_desc-AminusB": self._full(self.z).astype(np.float32),
            "logp_desc-AminusB_level-voxel": (-np.log10(p_voxel)).astype(np.float32),
            "z_thresholded": thresholded.astype(np.float32),
            "cluster_labels": labels.astype(np.int16),
        }
        if self.null.has_clusters:
            # NiMARE's names (p_desc-group1MinusGroup2Size_level-cluster, ...) with this
            # module's AminusB; z two-sided, signed as the voxel-level z.
            inference = self.cluster_inference()
            sign = np.sign(self._full(self.z))
            for kind, p in (("Size", inference.p_cluster_size),
                            ("Mass", inference.p_cluster_mass)):
                maps[f"p_desc-AminusB{kind}_level-cluster"] = p.astype(np.float32)
                maps[f"z_desc-AminusB{kind}_level-cluster"] = (
                    p_to_z(p / 2.0) * sign).astype(np.float32)
                maps[f"logp_desc-AminusB{kind}_level-cluster"] = (
                    -np.log10(p)).astype(np.float32)
        return maps

    def clusters(self) -> list[dict]:
        """One row per cluster of the thresholded map (see :func:`map_cluster_table`).

        The peak is the cluster's voxel of largest ``|ALE_A - ALE_B|`` (``peak_diff``) and its
        sub-peaks the local maxima of ``|ALE_A - ALE_B|`` over the whole map, in decreasing
        ``|difference|``; not of z, which saturates at the permutation floor so that most of a
        cluster ties. ``peak_value`` is the thresholded map's z there, and ``z_capped``
        ("yes"/"no") whether its p is the smallest the random splits can give (1/n), where
        z says only "at least this" (so a sub-peak's z may exceed the peak's).
        """
        thresholded, labels = self.thresholded()
        diff = self.diff
        rows = map_cluster_table(self.grid, thresholded, labels, peak_by=diff,
                                 at_peaks={"diff": diff, "p": self._full(self.p, fill=1.0)})
        floor = smallest_p(self.mode, self.null.n_iters)
        for row in rows:
            row["direction"] = "A>B" if row["sign"] == "+" else "B>A"
            for peak in (row, *row["subpeaks"]):
                peak["z_capped"] = "yes" if peak.pop("peak_p") <= floor * (1 + 1e-9) else "no"
        if self.cluster_fwe:
            inference = self.cluster_inference()
            for row in rows:
                # Any voxel of the cluster: they share their cluster's p.
                voxel = np.flatnonzero(labels == row["cluster"])[0]
                row["p_fwe_size"] = float(inference.p_cluster_size[voxel])
                row["p_fwe_mass"] = float(inference.p_cluster_mass[voxel])
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
    device: str = "auto",
    n_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    scheduler: Scheduler | None = None,
    cluster_fwe: bool = False,
    alpha: float = 0.05,
    target_n: int | None = None,
    balanced_null: str | None = None,
    difference_iterations: int | None = None,
    n_subsamples: int | None = None,
    mask_coverage: str = "gm",
    main_effect_cluster_p: float = 0.001,
    mismatched_main_effects: str = "error",
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
        Random splits of the pooled experiments (NiMARE's default is 5,000; not
        ``"auto"``, a ValueError: the cluster-forming threshold of ``cluster_fwe`` is a
        quantile of all of them, so no decision settles to stop at). With n
        splits the smallest p is 1/n (:func:`smallest_p`); when that cannot pass
        ``p_threshold`` an :class:`~gpuale.inference.UnreachableThresholdWarning` names the
        splits needed, before any is computed.
    p_threshold : float, optional
        Threshold of the reported map, ``p < p_threshold`` (default 0.001 whole-brain,
        0.05 gated).
    min_volume_mm3 : float
        Smallest reported cluster.
    main_a, main_b : MainEffect, optional
        Significant main effects for ``gated`` mode (from run folders, each checked to be
        a run of exactly its group's experiments: :func:`check_main_effect`); computed
        with :func:`gpuale.run_ale` (same seed and iterations) when not given.
    min_z : bool
        In ``gated`` mode, report the smaller of the main-effect and contrast z.
    overlap : {"error", "keep", "drop"}
        What to do with an experiment found in both groups.
    scheduler : Scheduler, optional
        Who runs the permutation chunks (of the main effects too), e.g. a
        :class:`gpuale.nulls.DaskScheduler`; default: this machine's cores.
    cluster_fwe : bool
        Whole-brain only: cluster-level FWE as NiMARE 0.22.1's
        ``ALESubtraction.correct_fwe_montecarlo(vfwe_only=False)``. Clusters form where
        ``|ALE_A - ALE_B|`` exceeds the (1 - ``p_threshold``) quantile of every permuted
        ``|difference|`` pooled over the mask and the splits; the null keeps each split's
        largest cluster size and mass (:func:`gpuale.nulls.contrast_cluster_null`, three
        passes over the same splits, a little over three times the time). Adds
        cluster-size and cluster-mass FWE p, z and logp maps, and the reported map keeps
        the clusters with cluster-size FWE p < ``alpha`` (no minimum volume).
    alpha : float
        Cluster-level FWE alpha (with ``cluster_fwe``); with ``mode="balanced"``, the
        two-tailed alpha of the null extrema; with ``mode="gated"``, that of the main
        effects' cluster-level FWE.
    main_effect_cluster_p : float
        ``gated``: the cluster-forming p of the main effects (computed ones use it).
    mismatched_main_effects : {"error", "warn"}
        ``gated``: a given main effect whose kernel (``fwhm_mm``), cluster-forming p,
        alpha or connectivity differ from the contrast's (``fwhm_mm``,
        ``main_effect_cluster_p``, ``alpha``, ``connectivity``) is a
        :class:`MainEffectMismatch`, or with ``"warn"`` a warning kept in the result.
    target_n, balanced_null, difference_iterations, n_subsamples, mask_coverage :
        ``mode="balanced"``: NiMARE's ``BalancedALESubtraction``, run by
        :func:`gpuale.balanced.run_balanced_contrast` (which returns a
        :class:`~gpuale.balanced.BalancedContrastResult`; ``n_iters`` null iterations).

    grid : Grid, optional
        Analysis mask and grid; the MNI152 2 mm brain mask by default.
    fwhm_mm : float, optional
        Fixed kernel FWHM; by default it follows each experiment's sample size.
    connectivity : {6, 18, 26}
        Neighbourhood for clusters (6, faces, as NiMARE).
    device : str
        ``auto``, ``cpu``, ``gpu`` or ``gpu:N``.
    n_workers : int, optional
        CPU threads for the permutations (default: every core this process may use).
    progress : callable, optional
        Called with the number of permutations finished since the last call.

    Returns
    -------
    ContrastResult
        Or a :class:`~gpuale.balanced.BalancedContrastResult` for ``mode="balanced"``.

    Raises
    ------
    MainEffectMismatch
        A main-effect folder was run on other experiments than its group.
    OverlapError
        An experiment is in both groups and ``overlap="error"``.
    """
    if isinstance(n_iters, str):
        # Not gpuale.stopping's rule: a contrast's cluster-forming threshold is a quantile
        # of every permuted difference, so more permutations move the threshold and with
        # it the observed clusters; no decision settles, at any number of permutations,
        # that a fixed-statistic sequential test (Besag & Clifford 1991) could stop on.
        raise ValueError(f"n_iters must be a whole number, got {n_iters!r}: a contrast runs a "
                         "fixed number of permutations (\"auto\", the stopping rule, is for "
                         "run_ale; a contrast's cluster-forming threshold is estimated from "
                         "all of its permutations)")
    check_iterations("n_iters", n_iters, minimum=1)
    if mode == BALANCED_MODE:
        from gpuale import balanced

        unused = [name for name, value in (
            ("p_threshold", p_threshold), ("main_a", main_a), ("main_b", main_b),
            ("min_z", min_z), ("cluster_fwe", cluster_fwe)) if value]
        if unused:
            # Not silently ignored: a balanced contrast is thresholded by its null extrema.
            raise ValueError(f"{', '.join(unused)} do(es) not apply to a balanced contrast, "
                             "which is thresholded by its null extrema at alpha")
        group_a, group_b = check_overlap(group_a, group_b, overlap)
        return balanced.run_balanced_contrast(
            group_a, group_b, grid=grid, target_n=target_n,
            null=balanced_null or balanced.DEFAULT_BALANCED_NULL, n_iters=n_iters,
            difference_iterations=difference_iterations
            or balanced.DEFAULT_DIFFERENCE_ITERATIONS,
            n_subsamples=n_subsamples or balanced.DEFAULT_N_SUBSAMPLES,
            mask_coverage=mask_coverage, seed=seed, alpha=alpha,
            min_volume_mm3=min_volume_mm3, connectivity=connectivity, fwhm_mm=fwhm_mm,
            device=device, n_workers=n_workers, progress=progress, scheduler=scheduler)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES + (BALANCED_MODE,)}, got {mode!r}")
    if len(group_a) == 0 or len(group_b) == 0:
        raise ValueError("both groups need at least one experiment")
    if n_iters < 1:
        raise ValueError(f"n_iters must be at least 1, got {n_iters}")
    p_threshold = DEFAULT_P_THRESHOLD[mode] if p_threshold is None else p_threshold
    if not 0 < p_threshold < 1:
        raise ValueError(f"p_threshold must lie in (0, 1), got {p_threshold}")
    if mismatched_main_effects not in MISMATCHED_MAIN_EFFECTS:
        raise ValueError(f"mismatched_main_effects must be one of {MISMATCHED_MAIN_EFFECTS}, "
                         f"got {mismatched_main_effects!r}")
    settings_notes = []
    if mode == "gated":
        # Main effects of the groups as given: the runs the user made of each group.
        if main_a is not None:
            check_main_effect(main_a, group_a, "A", group_b, "B")
        if main_b is not None:
            check_main_effect(main_b, group_b, "B", group_a, "A")
        # ... made with the contrast's kernel and thresholds (else the gates differ from
        # what the methods say), before anything is computed.
        expected = {"fwhm_mm": fwhm_mm, "cluster_forming_p": main_effect_cluster_p,
                    "alpha": alpha, "connectivity": connectivity}
        for main, name in ((main_a, "A"), (main_b, "B")):
            note = check_main_effect_settings(main, expected, name, mismatched_main_effects)
            if note:
                settings_notes.append(note)
    if cluster_fwe and mode != "whole-brain":
        raise ValueError("cluster-level FWE (cluster_fwe) is defined for whole-brain "
                         f"contrasts only, not {mode!r} ones (NiMARE's ALESubtraction)")
    if cluster_fwe and not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    notes: list[str] = list(settings_notes)
    # Before anything is computed, so that nobody waits for a result that cannot come.
    unreachable = unreachable_message(mode, n_iters, p_threshold, cluster_fwe=cluster_fwe,
                                      alpha=alpha)
    if unreachable:
        warnings.warn(unreachable, UnreachableThresholdWarning, stacklevel=2)
        notes.append(unreachable)
    group_a, group_b = check_overlap(group_a, group_b, overlap)
    grid = grid or load_grid()
    resolved = resolve_device(device)
    engine = get_engine(resolved)
    timings = {}
    start = time.perf_counter()
    problem, support, log_maps = pooled_log_maps(group_a, group_b, grid, fwhm_mm, engine,
                                                 notes)
    sums = log_maps.astype(np.float64)
    ale_a = np.zeros(grid.n_voxels, np.float32)
    ale_b = np.zeros(grid.n_voxels, np.float32)
    ale_a[support] = (1.0 - np.exp(sums[: len(group_a)].sum(axis=0))).astype(np.float32)
    ale_b[support] = (1.0 - np.exp(sums[len(group_a) :].sum(axis=0))).astype(np.float32)
    timings["log_maps_s"] = time.perf_counter() - start

    if mode == "gated" and (main_a is None or main_b is None):
        from gpuale.analysis import run_ale

        start = time.perf_counter()
        with _kept(notes):
            main_a = main_a or MainEffect.from_result(run_ale(
                group_a, grid=grid, fwhm_mm=fwhm_mm, n_iters=n_iters, seed=seed,
                device=device, n_workers=n_workers, connectivity=connectivity,
                scheduler=scheduler, cluster_forming_p=main_effect_cluster_p, alpha=alpha))
            main_b = main_b or MainEffect.from_result(run_ale(
                group_b, grid=grid, fwhm_mm=fwhm_mm, n_iters=n_iters, seed=seed,
                device=device, n_workers=n_workers, connectivity=connectivity,
                scheduler=scheduler, cluster_forming_p=main_effect_cluster_p, alpha=alpha))
        timings["main_effects_s"] = time.perf_counter() - start

    start = time.perf_counter()
    if cluster_fwe:
        spec = ContrastNullSpec(log_maps, len(group_a), voxel_flat=grid.in_mask_flat[support],
                                shape=tuple(int(n) for n in grid.shape),
                                connectivity=connectivity)
        null = contrast_cluster_null(spec, engine, seed=seed, n_iters=n_iters,
                                     voxel_thresh=p_threshold, n_mask_voxels=grid.n_voxels,
                                     scheduler=scheduler, n_workers=n_workers,
                                     progress=progress)
    else:
        null = run_null(ContrastNullSpec(log_maps, len(group_a)), engine, seed=seed,
                        n_iters=n_iters, scheduler=scheduler, n_workers=n_workers,
                        progress=progress)
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
        warnings=list(dict.fromkeys(notes)), cluster_fwe=cluster_fwe, alpha=alpha,
    )


