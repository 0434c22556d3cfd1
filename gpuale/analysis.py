"""ALE of one set of experiments: maps, analytic p and z, and Monte Carlo FWE."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from gpuale.clusters import cluster_table, experiment_contributions, label_clusters
from gpuale.dataset import Dataset
from gpuale.engines import get_engine, resolve_device
from gpuale.grid import Grid, load_grid
from gpuale.inference import (
    ClusterInference,
    UnreachableThresholdWarning,
    correct_fwe,
    fdr_threshold,
    smallest_fwe_p,
    threshold_interval,
    unreachable_threshold_message,
)
from gpuale.maps import TFCE_LOGP_FWE, TFCE_MAP, TFCE_THRESHOLDED, TFCE_Z_FWE
from gpuale.nulls import check_iterations, run_null
from gpuale.nullspecs import GlobalNullSpec, MonteCarloNull
from gpuale.problem import Problem, compile_problem
from gpuale.schedulers import Scheduler
from gpuale.stats import AnalyticNull, ObservedALE, analytic_null, p_to_z
from gpuale.stopping import (
    AUTO,
    DEFAULT_MAX_ITERS,
    StoppingRecord,
    StoppingRule,
    UnsettledWarning,
    cluster_size_decision,
    run_null_until_settled,
)
from gpuale.tfce import TfceInference, correct_tfce, z_table

if TYPE_CHECKING:  # imported by Grid.to_image when an image is made
    import nibabel as nib

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CLUSTER_FORMING_P",
    "DEFAULT_ITERS",
    "ALEResult",
    "run_ale",
]

#: Cluster-forming (uncorrected) p and cluster-level FWE alpha recommended by
#: Eickhoff et al. (2012, 2016).
DEFAULT_CLUSTER_FORMING_P = 0.001
DEFAULT_ALPHA = 0.05
#: Monte Carlo iterations: Eickhoff et al. (2016) and NiMARE use 5,000-10,000.
DEFAULT_ITERS = 5000
DEFAULT_SEED = 0
#: Below this many experiments ALE results are driven by single experiments
#: (Eickhoff et al. 2016, NeuroImage 137:70).
MIN_RECOMMENDED_EXPERIMENTS = 17


class FewExperimentsWarning(UserWarning):
    """Fewer experiments than Eickhoff et al. (2016) recommend."""


class MonteCarloPrecisionWarning(UserWarning):
    """A cluster's FWE p is within Monte Carlo error of alpha."""


@dataclasses.dataclass(eq=False)
class ALEResult:
    """Everything an ALE run produced. Maps are in-mask vectors; see :meth:`images`.

    Made by :func:`gpuale.run_ale`, never by hand; the fields are read.

    Parameters
    ----------
    dataset : Dataset
        The experiments analysed.
    grid : Grid
        The analysis grid and mask.
    problem : Problem
        What the engine computed on: foci as voxel indices, kernels, the mask.
    observed : ObservedALE
        The observed ALE (``ale``) and the experiments' MA values.
    analytic_null : AnalyticNull
        The analytic null histogram (Eickhoff et al. 2012).
    p, z : ndarray
        Voxel-wise analytic p and z, in-mask vectors.
    cluster_forming_p : float
        The uncorrected p that forms clusters.
    threshold : float
        The ALE value of ``cluster_forming_p`` on the analytic null.
    alpha : float
        The FWE level of the thresholded map and the cluster table.
    connectivity : int
        The cluster neighbourhood (6, 18 or 26).
    device : str
        The engine's device (``cpu``, ``gpu:0``, ...).
    montecarlo : MonteCarloNull or None
        The per-permutation maxima (None without permutations).
    inference : ClusterInference or None
        FWE p of voxels and clusters, thresholds with Monte Carlo intervals.
    fdr_q : float or None
        The FDR level, where one was asked for.
    fwhm_mm : float or None
        The fixed kernel FWHM, where one was given.
    timings : dict
        Seconds per step.
    warnings : list of str
        Warnings of the run, as run.json records them.
    stopping : StoppingRecord or None
        Where ``n_iters="auto"`` stopped and why.
    tfce : TfceInference or None
        The TFCE map and its voxel-level FWE (``tfce=True``).
    """

    dataset: Dataset
    grid: Grid
    problem: Problem
    observed: ObservedALE
    analytic_null: AnalyticNull
    p: np.ndarray
    z: np.ndarray
    cluster_forming_p: float
    threshold: float
    alpha: float
    connectivity: int
    device: str
    montecarlo: MonteCarloNull | None = None
    inference: ClusterInference | None = None
    fdr_q: float | None = None
    fwhm_mm: float | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: Where ``n_iters="auto"`` stopped and why (None for a fixed number of iterations).
    stopping: StoppingRecord | None = None
    #: TFCE map and its voxel-level FWE (``tfce=True``; :mod:`gpuale.tfce`).
    tfce: TfceInference | None = None

    @property
    def ale(self) -> np.ndarray:
        return self.observed.ale

    @property
    def significant_clusters(self) -> np.ndarray:
        """Per cluster label: cluster-size FWE p < alpha (index 0 = background, False)."""
        if self.inference is None:
            return np.zeros(1, dtype=bool)
        sig = self.inference.p_size < self.alpha
        sig[0] = False
        return sig

    def maps(self) -> dict[str, np.ndarray]:
        """Named in-mask maps (NiMARE's names for the corrected ones)."""
        maps: dict[str, np.ndarray] = {
            "ale": self.ale,
            "p": self.p.astype(np.float32),
            "z": self.z.astype(np.float32),
        }
        inf = self.inference
        if inf is not None:
            maps.update(
                {
                    "logp_level-voxel": inf.logp(inf.p_voxel),
                    "z_level-voxel": inf.z(inf.p_voxel),
                    "logp_desc-size_level-cluster": inf.logp(inf.p_cluster_size),
                    "z_desc-size_level-cluster": inf.z(inf.p_cluster_size),
                    "logp_desc-mass_level-cluster": inf.logp(inf.p_cluster_mass),
                    "z_desc-mass_level-cluster": inf.z(inf.p_cluster_mass),
                }
            )
            keep = self.significant_clusters[inf.labels]
            maps["z_thresholded"] = np.where(keep, self.z, 0.0).astype(np.float32)
            order = np.flatnonzero(self.significant_clusters)
            renumber = np.zeros(self.significant_clusters.size, dtype=np.int32)
            renumber[order] = np.arange(1, order.size + 1)
            labels = renumber[inf.labels]
            maps["cluster_labels"] = labels.astype(np.int16)
        if self.tfce is not None:
            maps.update({
                TFCE_MAP: self.tfce.tfce.astype(np.float32),
                TFCE_LOGP_FWE: ClusterInference.logp(self.tfce.p),
                TFCE_Z_FWE: self.tfce.z_fwe,
                TFCE_THRESHOLDED: self.tfce.thresholded,
            })
        if self.fdr_q is not None:
            cut = fdr_threshold(self.p, self.fdr_q)
            maps["z_fdr"] = np.where(self.p <= cut, self.z, 0.0).astype(np.float32)
        return maps

    def images(self) -> dict[str, nib.Nifti1Image]:
        """The maps as NIfTI images on the analysis grid."""
        return {
            name: self.grid.to_image(values, description=f"gpuale:{name}")
            for name, values in self.maps().items()
        }

    def clusters(self) -> list[dict]:
        """Significant clusters (cluster-size FWE p < alpha), largest first.

        One dict per cluster (:func:`gpuale.clusters.cluster_table`), its sub-peaks under
        ``subpeaks``; :func:`gpuale.clusters.peak_rows` lays them out as clusters.tsv.
        """
        if self.inference is None:
            return []
        inf = self.inference
        return cluster_table(
            self.grid, self.ale, self.z, inf.labels, inf.p_size, inf.p_mass,
            self.significant_clusters,
        )

    def contributions(self, clusters: list[dict] | None = None) -> list[dict]:
        """Per significant cluster, each experiment's contribution: NiMARE's jackknife and
        JALE's contribution table (see :func:`gpuale.clusters.experiment_contributions`)."""
        if self.inference is None:
            return []
        return experiment_contributions(
            self.problem, self.dataset, self.observed.log_sum,
            self.inference.labels, self.clusters() if clusters is None else clusters,
        )

    def cluster_size_threshold(self) -> dict[str, float] | None:
        """Cluster size needed for FWE alpha, with its 95% Monte Carlo interval."""
        if self.montecarlo is None:
            return None
        est, lo, hi = threshold_interval(self.montecarlo.max_cluster_size, self.alpha)
        return {"voxels": est, "ci95_low": lo, "ci95_high": hi}


def unreachable_message(n_iters: int, alpha: float = DEFAULT_ALPHA) -> str | None:
    """The warning for a global ALE whose cluster-level FWE alpha ``n_iters`` permutations
    cannot reach (None if they can, or without permutations). :func:`run_ale` gives it
    before any work; a caller that shows progress can give it before its bar."""
    if not n_iters:
        return None
    return unreachable_threshold_message("the cluster-level FWE threshold", n_iters, alpha,
                                         smallest_fwe_p)


def run_ale(
    dataset: Dataset,
    *,
    grid: Grid | None = None,
    fwhm_mm: float | None = None,
    n_iters: int | str = DEFAULT_ITERS,
    max_iters: int = DEFAULT_MAX_ITERS,
    seed: int = DEFAULT_SEED,
    cluster_forming_p: float = DEFAULT_CLUSTER_FORMING_P,
    alpha: float = DEFAULT_ALPHA,
    connectivity: int = 6,
    device: str = "auto",
    n_workers: int | None = None,
    fdr_q: float | None = None,
    progress: Callable[[int], None] | None = None,
    scheduler: Scheduler | None = None,
    tfce: bool = False,
) -> ALEResult:
    """Activation likelihood estimation with cluster-level FWE correction.

    Parameters
    ----------
    dataset : Dataset
    grid : Grid, optional
        Analysis mask and grid; the MNI152 2 mm brain mask by default.
    fwhm_mm : float, optional
        Fixed kernel FWHM; by default it follows each experiment's sample size.
    n_iters : int or "auto"
        Monte Carlo permutations; 0 skips FWE correction; ``"auto"`` runs them in
        checkpoints until every observed cluster's FWE decision and the cluster-size
        threshold are settled (:mod:`gpuale.stopping`), at most ``max_iters``.
    max_iters : int
        The most permutations ``n_iters="auto"`` runs.
    seed : int
        Seed of the counter-based generator (see :mod:`gpuale.rng`).
    cluster_forming_p : float
        Uncorrected p that defines clusters (ALE threshold from the analytic null).
    alpha : float
        Cluster-level FWE level for the thresholded map and the cluster table.
    connectivity : {6, 18, 26}
        Neighbourhood for clusters (6, faces, as NiMARE; 18 as SPM and the Eickhoff lab).
    device : str
        ``auto``, ``cpu``, ``gpu`` or ``gpu:N``.
    n_workers : int, optional
        CPU threads for the permutations (default: every core this process may use).
    fdr_q : float, optional
        Also write a voxel-wise FDR (Benjamini-Hochberg) thresholded map (discouraged).
    progress : callable, optional
        Called with the number of permutations finished since the last call.
    scheduler : Scheduler, optional
        Who runs the permutation chunks, e.g. a :class:`gpuale.nulls.DaskScheduler` for a
        cluster (the null is the same, bit for bit); default: this machine's cores.
    tfce : bool
        Also TFCE (Frahm et al. 2022; :mod:`gpuale.tfce`) on the z of the observed data's
        analytic null, with each permutation's largest TFCE gathered in the same pass and
        voxel-level FWE p from them; needs Monte Carlo iterations.

    Returns
    -------
    ALEResult
    """
    _check_probability("cluster_forming_p", cluster_forming_p)
    _check_probability("alpha", alpha)
    rule = None
    if n_iters == AUTO:
        check_iterations("max_iters", max_iters, minimum=1)
        rule = StoppingRule(alpha=alpha, max_iters=max_iters)
        n_iters = max_iters  # the most it may run, for the checks below
    elif isinstance(n_iters, str) or n_iters < 0:
        raise ValueError(f"n_iters must be >= 0 or {AUTO!r}, got {n_iters!r}")
    else:
        check_iterations("n_iters", n_iters)
    if fdr_q is not None:
        _check_probability("fdr_q", fdr_q)
    if tfce and not n_iters:
        raise ValueError("tfce needs Monte Carlo iterations (--iters, n_iters > 0): its FWE "
                         "p come from each permutation's largest TFCE")
    caught: list[str] = []
    if len(dataset) < MIN_RECOMMENDED_EXPERIMENTS:
        message = (
            f"only {len(dataset)} experiment{'' if len(dataset) == 1 else 's'}; ALE needs "
            f"at least "
            f"{MIN_RECOMMENDED_EXPERIMENTS} to avoid results driven by single experiments "
            "(Eickhoff et al. 2016)"
        )
        warnings.warn(message, FewExperimentsWarning, stacklevel=2)
        caught.append(message)
    # Checked before any work: the smallest FWE p is 1/n, and significance is p < alpha.
    unreachable = unreachable_message(n_iters, alpha)
    if unreachable:
        warnings.warn(unreachable, UnreachableThresholdWarning, stacklevel=2)
        caught.append(unreachable)
    resolved = resolve_device(device)
    engine = get_engine(resolved)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    grid = grid or load_grid()
    with warnings.catch_warnings(record=True) as compile_warnings:
        warnings.simplefilter("always")
        problem = compile_problem(dataset, grid, fwhm_mm=fwhm_mm)
    for w in compile_warnings:  # passed on, and kept for run.json
        warnings.warn(w.message, w.category, stacklevel=2)
        caught.append(str(w.message))
    observed = engine.observed_ale(problem)
    timings["observed_s"] = time.perf_counter() - start

    start = time.perf_counter()
    null = analytic_null(observed.ma_values, grid.n_voxels, max_ale=float(observed.ale.max()))
    try:
        threshold = null.threshold_for_p(cluster_forming_p)
    except ValueError:
        # Nothing observed reaches the cluster-forming threshold; the permutations still
        # need it, so keep every bin.
        null = analytic_null(observed.ma_values, grid.n_voxels)
        threshold = null.threshold_for_p(cluster_forming_p)
    p = null.p_values(observed.ale)
    z = p_to_z(p)
    timings["analytic_null_s"] = time.perf_counter() - start

    result = ALEResult(
        dataset=dataset, grid=grid, problem=problem, observed=observed, analytic_null=null,
        p=p, z=z, cluster_forming_p=cluster_forming_p, threshold=threshold, alpha=alpha,
        connectivity=connectivity, device=resolved, fdr_q=fdr_q, fwhm_mm=fwhm_mm,
        timings=timings,
        warnings=caught,
    )
    if n_iters:
        start = time.perf_counter()
        z_of_ale = None
        if tfce:
            try:
                z_of_ale = z_table(null)
            except ValueError:  # permuted ALE may pass the observed maximum (the cut)
                z_of_ale = z_table(analytic_null(observed.ma_values, grid.n_voxels))
        spec = GlobalNullSpec(problem, float(threshold), int(connectivity), tfce_z=z_of_ale)
        if rule is None:
            result.montecarlo = run_null(spec, engine, seed=seed, n_iters=n_iters,
                                         scheduler=scheduler, n_workers=n_workers,
                                         progress=progress)
        else:
            _, sizes, _ = label_clusters(observed.ale, grid, threshold, connectivity)
            result.montecarlo, result.stopping = run_null_until_settled(
                spec, engine, seed=seed, rule=rule, scheduler=scheduler,
                n_workers=n_workers, progress=progress,
                decide=cluster_size_decision(sizes[1:], rule, tfce=tfce))
            unsettled = result.stopping.unsettled_message()
            if unsettled:
                warnings.warn(unsettled, UnsettledWarning, stacklevel=2)
                caught.append(unsettled)
        timings["montecarlo_s"] = time.perf_counter() - start
        result.inference = correct_fwe(observed.ale, grid, result.montecarlo)
        if tfce:
            result.tfce = correct_tfce(z_of_ale(observed.ale), grid,
                                       result.montecarlo.max_tfce, alpha)
        _warn_near_alpha(result)
    return result


def _check_probability(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")


def _warn_near_alpha(result: ALEResult) -> None:
    """Warn when a cluster's FWE p is within Monte Carlo error (95%) of alpha."""
    n = result.montecarlo.n_iters
    error = 1.96 * np.sqrt(result.alpha * (1 - result.alpha) / n)
    p = result.inference.p_size[1:]
    close = np.flatnonzero(np.abs(p - result.alpha) <= error)
    for index in close:
        size = int(result.inference.cluster_size[index + 1])
        message = (
            f"a cluster of {size} voxels has cluster-level FWE p = {p[index]:.4f}, within "
            f"Monte Carlo error (+/-{error:.4f} at {n} iterations) of alpha = {result.alpha}; "
            "run more iterations before calling it (non)significant"
        )
        warnings.warn(message, MonteCarloPrecisionWarning, stacklevel=3)
        result.warnings.append(message)
