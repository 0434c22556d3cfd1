"""Leave-one-experiment-out (jackknife) of a finished global ALE run.

For every experiment, the analysis of the run folder is run again without it, with the
settings, seed and Monte Carlo iterations run.json records, and each of the run's
significant clusters is checked: does a cluster significant at the cluster-level FWE
still overlap it? Beside the verdict, each row carries the experiment's contribution to
the cluster (NiMARE 0.22.1 ``diagnostics.Jackknife``: the mean over the cluster's voxels of
``1 - ALE_without / ALE``, from :func:`gpuale.clusters.cluster_contributions`).

The re-runs go through :func:`gpuale.analysis.run_ale`, so they use whichever engine
(and GPU) the caller picks. This module also holds what :mod:`gpuale.failsafe` shares
with it: the settings a re-run shares with the run (:class:`ALESettings`) and deciding
whether a run cluster survives in another result (:func:`cluster_survival`). Reading the
run folder back is :func:`gpuale.rerun.load_recorded_analysis`, writing into it
:func:`gpuale.output.write_derived`.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable

import numpy as np

from gpuale.analysis import ALEResult, run_ale
from gpuale.clusters import cluster_contributions
from gpuale.dataset import Dataset
from gpuale.engines import resolve_device
from gpuale.grid import Grid
from gpuale.schedulers import Scheduler

__all__ = [
    "JACKKNIFE_COLUMNS",
    "JACKKNIFE_METHOD",
    "ALESettings",
    "JackknifeResult",
    "RerunWarnings",
    "cluster_survival",
    "jackknife",
]

#: jackknife.tsv: one row per significant cluster of the run and experiment of the run.
JACKKNIFE_COLUMNS = (
    "cluster", "experiment", "label", "n_subjects", "jackknife", "survives_without",
    "p_fwe_size_without", "overlap_voxels_without",
)
JACKKNIFE_METHOD = (
    "leave-one-experiment-out: the analysis re-run without each experiment (same settings, "
    "seed and iterations); a cluster survives when a cluster significant at the "
    "cluster-level FWE overlaps it. jackknife: NiMARE 0.22.1 Jackknife contribution"
)
#: How a yes/no column reads in the TSV tables.
YES, NO = "yes", "no"


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class ALESettings:
    """The settings of one global ALE that a re-run must share with the original."""

    iterations: int
    seed: int
    cluster_forming_p: float
    alpha: float
    connectivity: int
    fwhm_mm: float | None = None

    @classmethod
    def from_record(cls, record: dict) -> ALESettings:
        """The settings run.json records (``settings``)."""
        s = record.get("settings") or {}
        return cls(iterations=int(s.get("iterations") or 0), seed=int(s.get("seed") or 0),
                   cluster_forming_p=float(s["cluster_forming_p"]), alpha=float(s["alpha"]),
                   connectivity=int(s.get("connectivity", 6)), fwhm_mm=s.get("fwhm_mm"))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def run(self, dataset: Dataset, grid: Grid, *, device: str = "auto",
            n_workers: int | None = None, progress: Callable[[int], None] | None = None,
            scheduler: Scheduler | None = None,
            caught: RerunWarnings | None = None) -> ALEResult:
        """:func:`gpuale.analysis.run_ale` with these settings.

        Warnings of the run (few experiments, FWE p near alpha) are collected into
        ``caught`` rather than repeated for every re-run.
        """
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            result = run_ale(
                dataset, grid=grid, fwhm_mm=self.fwhm_mm, n_iters=self.iterations,
                seed=self.seed, cluster_forming_p=self.cluster_forming_p, alpha=self.alpha,
                connectivity=self.connectivity, device=device, n_workers=n_workers,
                progress=progress, scheduler=scheduler,
            )
        if caught is not None:
            for w in seen:
                caught.add(w)
        return result


class RerunWarnings:
    """Warnings of many re-runs, one line per kind: its first message and how many more.

    Each re-run repeats the same kinds of warning with other numbers (its own count of
    experiments, its own clusters near alpha); one line each keeps the record readable.
    """

    def __init__(self) -> None:
        self._first: dict[str, str] = {}
        self._count: dict[str, int] = {}

    def add(self, warning: warnings.WarningMessage | str) -> None:
        """A caught warning (grouped by its category) or a message of one's own."""
        if isinstance(warning, str):
            key = message = warning
        else:
            key, message = warning.category.__name__, str(warning.message)
        self._first.setdefault(key, message)
        self._count[key] = self._count.get(key, 0) + 1

    def lines(self) -> list[str]:
        return [message + (f" (and {self._count[key] - 1} similar warnings of other "
                           "re-runs)" if self._count[key] > 1 else "")
                for key, message in self._first.items()]


# --------------------------------------------------------------------------- survival


def cluster_survival(result: ALEResult, members: np.ndarray) -> dict:
    """Whether a cluster of the original run is still significant in ``result``.

    Parameters
    ----------
    result : ALEResult
        A re-run with Monte Carlo (same grid).
    members : ndarray of int
        In-mask indices of the original cluster's voxels.

    Returns
    -------
    dict
        ``survives``: some cluster of ``result`` significant at the cluster-level FWE
        overlaps the voxels; ``p_fwe_size``: the smallest cluster-size FWE p of the
        clusters of ``result`` that overlap them (None where none does);
        ``overlap_voxels``: how many of the voxels lie in significant clusters.
    """
    inf = result.inference
    if inf is None:
        raise ValueError("the re-run has no Monte Carlo inference")
    here = inf.labels[members]
    touching = np.unique(here[here > 0])
    significant = result.significant_clusters
    overlap = int(np.count_nonzero(significant[here]))
    return {
        "survives": bool(significant[touching].any()) if touching.size else False,
        "p_fwe_size": float(inf.p_size[touching].min()) if touching.size else None,
        "overlap_voxels": overlap,
    }


# --------------------------------------------------------------------------- jackknife


@dataclasses.dataclass
class JackknifeResult:
    """Leave-one-experiment-out of a run: rows of jackknife.tsv and a summary per cluster."""

    rows: list[dict]
    clusters: list[dict]
    timings: dict[str, float]
    warnings: list[str]


def jackknife(
    dataset: Dataset,
    grid: Grid,
    labels: np.ndarray,
    settings: ALESettings,
    *,
    device: str = "auto",
    n_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    scheduler: Scheduler | None = None,
) -> JackknifeResult:
    """Each experiment left out in turn: does each cluster survive, and what it contributes.

    Parameters
    ----------
    dataset : Dataset
        All experiments of the analysis.
    grid : Grid
    labels : ndarray of int
        In-mask vector numbering the analysis's significant clusters 1, 2, ... (0 outside).
    settings : ALESettings
        Of the analysis; every re-run uses them (same seed and iterations).
    device, n_workers, scheduler
        As :func:`gpuale.analysis.run_ale`.
    progress : callable, optional
        Called with the number of permutations finished (``len(dataset)`` re-runs of
        ``settings.iterations`` each).

    Returns
    -------
    JackknifeResult
        ``rows``: one per cluster and experiment (:data:`JACKKNIFE_COLUMNS`), clusters in
        order, experiments in the dataset's order. ``clusters``: per cluster its size,
        whether it survives leaving out any one experiment (``survives_all``) and the
        experiments without which it does not (``needs``).
    """
    if len(dataset) < 2:
        raise ValueError("the jackknife needs at least two experiments")
    device = resolve_device(device)
    numbers = [int(c) for c in np.unique(labels[labels > 0])]
    if not numbers:
        raise ValueError("no significant cluster to test")
    caught = RerunWarnings()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # The contributions need only the full analysis's observed maps, not its Monte Carlo.
    observed = dataclasses.replace(settings, iterations=0).run(
        dataset, grid, device=device)
    members = {c: np.flatnonzero(labels == c) for c in numbers}
    contribution = {c: cluster_contributions(observed.problem, observed.observed.log_sum,
                                             members[c])["jackknife"] for c in numbers}
    timings["contributions_s"] = time.perf_counter() - start
    start = time.perf_counter()
    survival: dict[tuple[int, int], dict] = {}
    for e in range(len(dataset)):
        without = Dataset(tuple(x for k, x in enumerate(dataset) if k != e))
        result = settings.run(without, grid, device=device, n_workers=n_workers,
                              progress=progress, scheduler=scheduler, caught=caught)
        for c in numbers:
            survival[c, e] = cluster_survival(result, members[c])
    timings["reruns_s"] = time.perf_counter() - start
    rows, summary = [], []
    for c in numbers:
        needs = []
        for e, exp in enumerate(dataset):
            s = survival[c, e]
            rows.append({
                "cluster": c, "experiment": exp.id, "label": exp.label,
                "n_subjects": exp.n_subjects, "jackknife": float(contribution[c][e]),
                "survives_without": YES if s["survives"] else NO,
                "p_fwe_size_without": "" if s["p_fwe_size"] is None else s["p_fwe_size"],
                "overlap_voxels_without": s["overlap_voxels"],
            })
            if not s["survives"]:
                needs.append(exp.id)
        summary.append({"cluster": c, "size_voxels": int(members[c].size),
                        "survives_all": not needs, "needs": needs})
    return JackknifeResult(rows, summary, timings, caught.lines())


