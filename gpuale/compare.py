"""``gpuale compare``: gpuale against NiMARE 0.22.1, two engines against each other, or two
finished run folders, on the user's own data and machine.

Three forms:

- :func:`compare_with_nimare`: NiMARE 0.22.1 (the ``bench`` extra) and gpuale on exactly
  the same experiments (NiMARE is handed gpuale's parse, Talairach foci already in MNI, so
  both see the same numbers). The uncorrected maps must agree within stated tolerances;
  with Monte Carlo iterations the significant cluster sets, their peaks and the two nulls'
  FWE thresholds are compared within Monte Carlo error (the generators differ).
- :func:`compare_devices`: the same analysis with the same seed on two engines (``cpu``,
  ``gpu``, ``numpy``, ``numba``, ...); a permutation depends only on the seed and its
  number, so the nulls are compared permutation by permutation.
- :func:`gpuale.compare_folders.compare_runs`: two finished run folders, map by map,
  experiment by experiment, cluster by cluster.

Each tool's (or engine's) analysis runs in a fresh Python process (``python -m
gpuale.compare``) so that its wall time (imports, loading and compilation included) and its
peak memory (resident set of the process and its children, sampled from /proc as
``bench/_tasks.py`` does) are those of the whole process, measured side by side.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gpuale._memory import PeakMemory
from gpuale.runfolder import REPORT_HTML

__all__ = [
    "COMPARE_JSON",
    "ENGINE_ALIASES",
    "COMPARE_FILES",
    "NIMARE_MISSING",
    "AnalysisSettings",
    "PeakMemory",
    "SideFailed",
    "Tolerances",
    "compare_devices",
    "compare_maps",
    "compare_with_nimare",
    "masses_differ",
    "resolve_engine",
]

#: The NiMARE release whose numbers gpuale reproduces.
NIMARE_VERSION = "0.22.1"
NIMARE_MISSING = (
    f"gpuale compare --against nimare runs NiMARE {NIMARE_VERSION}, which is not installed: "
    "pip install 'gpuale[bench]' (in a clone of gpuale: pip install '.[bench]')"
)
#: Largest relative difference of a permutation's max ALE between two engines: float32
#: rounding of 1 - exp(log-sum), whose exp may differ in the last bit on a GPU
#: (bench/gpu_bench.py's MAX_ALE_RTOL).
MAX_ALE_RTOL = 2.0**-23
#: Cluster masses are float64 sums of float32 ALE excesses in an engine's own order: a
#: permutation's largest mass may differ by this share of itself ...
MASS_RTOL = 1e-9
#: ... plus this much per voxel of the permutation's largest cluster, which the largest
#: mass's cluster cannot outnumber: on a GPU each voxel's excess is rounded to 2^-40
#: (``MASS_FRAC_BITS`` of gpuale.engines.cuda) before the sum, by at most 2^-41. Without
#: it a small-mass cluster fails on rounding alone (a relative 1e-9 of a mass of 1e-4 is
#: 1e-13, below one rounding step).
MASS_ATOL_PER_VOXEL = 2.0**-40
#: Engine names ``--devices`` takes beside gpuale's devices (``cpu``, ``gpu``, ``gpu:N``).
ENGINE_ALIASES = {"numpy": "cpu-numpy", "numba": "cpu-numba"}
MONTE_CARLO_NOTE = (
    "The two tools draw their permutations from different generators (NiMARE: numpy's; "
    "gpuale: Philox), so their nulls are two Monte Carlo samples of the same distribution: "
    "FWE thresholds are judged to agree when their distribution-free 95% Monte Carlo "
    "intervals overlap, and cluster sets may differ where a cluster's FWE p is within Monte "
    "Carlo error of alpha. Only the uncorrected maps decide the exit status."
)


class SideFailed(ValueError):
    """One side's process of a comparison failed; the message ends with its stderr."""


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Largest differences of the uncorrected maps that still count as the same result.

    Attributes
    ----------
    ale : float
        Largest |ALE_a - ALE_b|.
    z : float
        Largest |z_a - z_b|.
    p_rtol : float
        Voxels whose p differs from the p-set threshold by at most this fraction of it
        may fall on either side (NiMARE stores p as float32: relative precision 6e-8).
    scale_r : float
        Smallest correlation over the mask of two SCALE z (and logp) maps from different
        permutations (NiMARE's, another seed) that counts as agreement within Monte
        Carlo error (issue 23's 0.95; fewer iterations need a lower one).
    """

    ale: float = 1e-6
    z: float = 1e-3
    p_rtol: float = 1e-6
    scale_r: float = 0.95


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
    """One global ALE analysis, as both sides of a comparison run it."""

    inputs: tuple[str, ...]
    iters: int = 0
    seed: int = 0
    cluster_p: float = 0.001
    alpha: float = 0.05
    fwhm: float | None = None
    sample_size: int | None = None
    space: str | None = None
    tal_transform: str = "lancaster_other"
    where: str | None = None
    workers: int | None = None
    allow_duplicates: bool = False
    experiment_column: str | None = None
    sample_size_column: str | None = None

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "inputs": list(self.inputs)}

    @classmethod
    def from_json(cls, payload: dict) -> AnalysisSettings:
        return cls(**{**payload, "inputs": tuple(payload["inputs"])})


# --------------------------------------------------------------------------- the workers


def _load(settings: AnalysisSettings):
    from gpuale.examples import resolve_input
    from gpuale.io import load_dataset

    return load_dataset(
        [resolve_input(value) for value in settings.inputs], space=settings.space,
        tal_transform=settings.tal_transform, sample_size=settings.sample_size,
        where=settings.where, allow_duplicates=settings.allow_duplicates,
        experiment_column=settings.experiment_column,
        sample_size_column=settings.sample_size_column,
        need_sample_size=settings.fwhm is None,  # a fixed kernel FWHM needs no N
    )


def _run_gpuale(settings: AnalysisSettings, device: str) -> dict[str, np.ndarray]:
    from gpuale.analysis import run_ale

    result = run_ale(
        _load(settings), n_iters=settings.iters, seed=settings.seed,
        cluster_forming_p=settings.cluster_p, alpha=settings.alpha, fwhm_mm=settings.fwhm,
        device=device, n_workers=settings.workers,
    )
    arrays = {"ale": result.ale, "p": result.p, "z": result.z,
              "n_experiments": np.array(len(result.dataset))}
    timings = dict(result.timings)
    if result.montecarlo is not None:
        mc = result.montecarlo
        arrays.update(significant=result.maps()["cluster_labels"] > 0, max_ale=mc.max_ale,
                      max_cluster_size=mc.max_cluster_size,
                      max_cluster_mass=mc.max_cluster_mass)
    arrays["timings"] = np.array(json.dumps(timings))
    arrays["engine"] = np.array(_engine_words(device))
    return arrays


def _engine_words(device: str) -> str:
    from gpuale.engines import get_engine

    engine = get_engine(device)
    return f"{engine.name} ({engine.describe()})"


def nimare_dataset(dataset, prefix: str = "e"):
    """NiMARE's Dataset of gpuale's experiments, in gpuale's order.

    NiMARE's own Sleuth reader merges experiments with identical labels, so it is handed
    gpuale's parse (foci already in MNI). The ids sort as gpuale orders the experiments,
    which fixes the order of NiMARE's null convolution and so its bits.
    """
    from nimare.dataset import Dataset as NimareDataset

    studies = {}
    for index, exp in enumerate(dataset):
        # No N (a fixed kernel FWHM needs none): no sample_sizes, as NiMARE reads them.
        metadata = {} if exp.n_subjects is None else {"sample_sizes": [exp.n_subjects]}
        studies[f"{prefix}{index:04d}"] = {"contrasts": {"0": {
            "coords": {"space": "MNI", "x": exp.foci[:, 0].tolist(),
                       "y": exp.foci[:, 1].tolist(), "z": exp.foci[:, 2].tolist()},
            "metadata": metadata,
        }}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NimareDataset(studies)


def _run_nimare(settings: AnalysisSettings) -> dict[str, np.ndarray]:
    import nimare
    from nimare.correct import FWECorrector
    from nimare.meta.cbma.ale import ALE

    dataset = _load(settings)
    timings = {}
    start = time.perf_counter()
    estimator = ALE(kernel__fwhm=settings.fwhm) if settings.fwhm else ALE()
    result = estimator.fit(nimare_dataset(dataset))
    timings["fit_s"] = time.perf_counter() - start
    arrays = {name: result.get_map(key, return_type="array")
              for name, key in (("ale", "stat"), ("p", "p"), ("z", "z"))}
    arrays["n_experiments"] = np.array(len(dataset))
    if settings.iters:
        start = time.perf_counter()
        estimator.random_state = settings.seed
        corrected = FWECorrector(
            method="montecarlo", n_iters=settings.iters, voxel_thresh=settings.cluster_p,
            n_cores=settings.workers or os.cpu_count() or 1,
        ).transform(result)
        timings["montecarlo_s"] = time.perf_counter() - start
        name = next(k for k in corrected.maps if k.startswith("logp_desc-size_level-cluster"))
        logp = corrected.get_map(name, return_type="array")
        # gpuale calls a cluster significant when its p < alpha; NiMARE stores -log10 p.
        arrays["significant"] = logp > -np.log10(settings.alpha) + 1e-6
        nulls = corrected.estimator.null_distributions_
        for ours, theirs in (("max_ale", "values_level-voxel_corr-fwe_method-montecarlo"),
                             ("max_cluster_size",
                              "values_desc-size_level-cluster_corr-fwe_method-montecarlo"),
                             ("max_cluster_mass",
                              "values_desc-mass_level-cluster_corr-fwe_method-montecarlo")):
            arrays[ours] = np.asarray(nulls[theirs])
    arrays["timings"] = np.array(json.dumps(timings))
    arrays["engine"] = np.array(f"NiMARE {nimare.__version__}")
    return arrays


def _worker(tool: str, settings_json: str, out_npz: str) -> None:
    """One side of a comparison in this (fresh) process; prints its peak memory as JSON."""
    monitor = PeakMemory()
    monitor.start()
    warnings.simplefilter("ignore")
    settings = AnalysisSettings.from_json(json.loads(settings_json))
    if tool == "nimare":
        arrays = _run_nimare(settings)
    else:
        arrays = _run_gpuale(settings, tool.removeprefix("gpuale:"))
    np.savez(out_npz, **arrays)
    monitor.stop.set()
    monitor.join()
    print(json.dumps({"peak_rss_mb": monitor.peak_kib / 1024 or None}))


@dataclasses.dataclass
class _Side:
    """What one worker process produced."""

    label: str
    arrays: dict[str, np.ndarray]
    wall_s: float
    peak_rss_mb: float | None

    @property
    def timings(self) -> dict[str, float]:
        return json.loads(str(self.arrays["timings"]))

    def performance(self) -> dict:
        return {"engine": str(self.arrays["engine"]), "wall_s": self.wall_s,
                "peak_rss_mb": self.peak_rss_mb, "phases_s": self.timings}


def _run_side(label: str, tool: str, settings: AnalysisSettings, scratch: Path) -> _Side:
    """Run one side in a fresh process and time the whole process."""
    out_npz = scratch / f"{label}.npz"
    command = [sys.executable, "-m", "gpuale.compare", tool, json.dumps(settings.to_json()),
               str(out_npz)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise SideFailed(f"the {label} run failed (exit {done.returncode}):\n{tail}")
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    with np.load(out_npz) as data:
        arrays = {key: data[key] for key in data.files}
    return _Side(label, arrays, wall, peak)


# --------------------------------------------------------------------------- comparisons


def compare_maps(ale_a: np.ndarray, ale_b: np.ndarray, z_a: np.ndarray, z_b: np.ndarray,
                 p_a: np.ndarray, p_b: np.ndarray, p_threshold: float,
                 tolerances: Tolerances = Tolerances()) -> dict:
    """Uncorrected maps of two runs: max |dALE|, max |dz| and the ``p < p_threshold`` sets.

    Voxels in only one of the p sets are excused when either p lies within
    ``tolerances.p_rtol * p_threshold`` of the threshold (float rounding decides them).

    Returns
    -------
    dict
        The figures, ``passed`` and ``failures`` (one sentence per tolerance exceeded).
    """
    if ale_a.shape != ale_b.shape:
        raise ValueError(f"the maps have {ale_a.size} and {ale_b.size} in-mask voxels")
    d_ale = float(np.max(np.abs(ale_a.astype(np.float64) - ale_b), initial=0.0))
    d_z = float(np.max(np.abs(z_a.astype(np.float64) - z_b), initial=0.0))
    set_a, set_b = p_a < p_threshold, p_b < p_threshold
    differ = set_a != set_b
    margin = tolerances.p_rtol * p_threshold
    near = (np.abs(p_a - p_threshold) <= margin) | (np.abs(p_b - p_threshold) <= margin)
    beyond = int(np.sum(differ & ~near))
    failures = []
    if d_ale > tolerances.ale:
        failures.append(f"max |dALE| = {d_ale:.3g} exceeds {tolerances.ale:g}")
    if d_z > tolerances.z:
        failures.append(f"max |dz| = {d_z:.3g} exceeds {tolerances.z:g}")
    if beyond:
        failures.append(f"{beyond} voxel(s) are in only one p < {p_threshold:g} set")
    return {
        "max_abs_diff_ale": d_ale,
        "max_abs_diff_z": d_z,
        "max_rel_diff_p": float(np.max(np.abs(p_a - p_b) / np.maximum(np.abs(p_b), 1e-300),
                                       initial=0.0)),
        "p_set": {"threshold": p_threshold, "voxels_a": int(set_a.sum()),
                  "voxels_b": int(set_b.sum()), "in_one_only": int(differ.sum()),
                  "in_one_only_near_threshold": int(np.sum(differ & near)),
                  "identical": not differ.any()},
        "tolerances": dataclasses.asdict(tolerances),
        "passed": not failures,
        "failures": failures,
    }


def _peaks_mm(grid, significant: np.ndarray, ale: np.ndarray) -> np.ndarray:
    """The largest-ALE voxel (mm) of each face-connected significant cluster."""
    from scipy import ndimage

    labels, n = ndimage.label(grid.to_volume(significant.astype(np.float32)) > 0)
    if n == 0:
        return np.zeros((0, 3))
    volume = grid.to_volume(ale.astype(np.float64), fill=-np.inf)
    index = ndimage.maximum_position(volume, labels, range(1, n + 1))
    return grid.voxel_to_mm(np.array(index))


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum() + b.sum())
    return 2.0 * int((a & b).sum()) / total if total else None


def _threshold(null: np.ndarray, alpha: float) -> dict:
    from gpuale.inference import threshold_interval

    est, lo, hi = threshold_interval(null, alpha)
    return {"estimate": est, "ci95_low": lo, "ci95_high": hi}


def _compare_montecarlo(a: _Side, b: _Side, alpha: float) -> dict:
    """Cluster sets, peaks and FWE thresholds of two Monte Carlo runs with unrelated
    generators, judged within Monte Carlo error."""
    from gpuale.grid import load_grid

    grid = load_grid()
    sig_a, sig_b = a.arrays["significant"], b.arrays["significant"]
    peaks_a = _peaks_mm(grid, sig_a, a.arrays["ale"])
    peaks_b = _peaks_mm(grid, sig_b, b.arrays["ale"])
    distances = [float(np.min(np.linalg.norm(peaks_b - p, axis=1))) if len(peaks_b) else None
                 for p in peaks_a]
    thresholds = {}
    for name, null in (("max_ale", "max_ale"), ("cluster_size_voxels", "max_cluster_size")):
        ours = _threshold(a.arrays[null], alpha)
        theirs = _threshold(b.arrays[null], alpha)
        overlap = ours["ci95_low"] <= theirs["ci95_high"] and theirs["ci95_low"] <= ours[
            "ci95_high"]
        thresholds[name] = {a.label: ours, b.label: theirs, "intervals_overlap": overlap}
    return {
        "iterations": {a.label: int(a.arrays["max_ale"].size),
                       b.label: int(b.arrays["max_ale"].size)},
        "significant_voxels": {a.label: int(sig_a.sum()), b.label: int(sig_b.sum())},
        "dice": _dice(sig_a, sig_b),
        "clusters": {a.label: len(peaks_a), b.label: len(peaks_b)},
        f"peak_distance_mm_{a.label}_to_nearest_{b.label}": distances,
        "fwe_thresholds": thresholds,
        "agree_within_monte_carlo_error": all(t["intervals_overlap"]
                                              for t in thresholds.values()),
        "note": MONTE_CARLO_NOTE,
    }


def _check_nimare() -> str:
    """NiMARE's version; a clear error naming the bench extra when it is missing."""
    if importlib.util.find_spec("nimare") is None:
        raise ValueError(NIMARE_MISSING)
    from importlib.metadata import version

    found = version("nimare")
    if found != NIMARE_VERSION:
        warnings.warn(f"NiMARE {found} is installed; gpuale reproduces NiMARE "
                      f"{NIMARE_VERSION}, so differences may be NiMARE's changes", stacklevel=3)
    return found


def compare_with_nimare(settings: AnalysisSettings,
                        tolerances: Tolerances = Tolerances(),
                        log: Callable[[str], None] = lambda message: None) -> dict:
    """gpuale (on the CPU) and NiMARE 0.22.1 on the same experiments, each in a fresh process.

    Returns
    -------
    dict
        The comparison as ``compare.json`` holds it; ``passed`` is whether the uncorrected
        maps agree within ``tolerances``.

    Raises
    ------
    ValueError
        NiMARE is not installed (the ``bench`` extra), or an input cannot be read.
    """
    nimare_version = _check_nimare()
    _load(settings)  # a bad input is the user's error, before any process starts
    with tempfile.TemporaryDirectory(prefix="gpuale-compare-") as scratch:
        log("running gpuale (cpu) in a fresh process ...")
        ours = _run_side("gpuale", "gpuale:cpu", settings, Path(scratch))
        log(f"running NiMARE {nimare_version} in a fresh process ...")
        theirs = _run_side("nimare", "nimare", settings, Path(scratch))
    maps = compare_maps(ours.arrays["ale"], theirs.arrays["ale"], ours.arrays["z"],
                        theirs.arrays["z"], ours.arrays["p"], theirs.arrays["p"],
                        settings.cluster_p, tolerances)
    record = {
        "form": "against-nimare",
        "a": "gpuale", "b": "nimare",
        "settings": settings.to_json(),
        "n_experiments": int(ours.arrays["n_experiments"]),
        "uncorrected": maps,
        "performance": {"gpuale": ours.performance(), "nimare": theirs.performance(),
                        "wall_ratio_b_over_a": theirs.wall_s / ours.wall_s},
        "passed": maps["passed"],
    }
    if settings.iters:
        record["montecarlo"] = _compare_montecarlo(ours, theirs, settings.alpha)
    return record


def resolve_engine(name: str) -> str:
    """A ``--devices`` entry as a device string ``run_ale`` takes (numpy -> cpu-numpy)."""
    from gpuale.engines import resolve_device

    name = name.strip().lower()
    return resolve_device(ENGINE_ALIASES.get(name, name))


def masses_differ(mass_a: np.ndarray, mass_b: np.ndarray, size_a: np.ndarray,
                  size_b: np.ndarray) -> np.ndarray:
    """Which permutations' largest cluster masses differ beyond rounding.

    Two engines' masses of one permutation agree within ``MASS_RTOL`` of the larger
    plus ``MASS_ATOL_PER_VOXEL`` per voxel of the larger of the two largest clusters
    (``size_a``, ``size_b``): the tolerance is the permutation's, not a relative one of
    each mass alone, which a mass of a few voxels barely over the threshold fails on the
    GPU's fixed-point rounding alone.

    Returns
    -------
    ndarray of bool
    """
    mass_a, mass_b = np.asarray(mass_a, np.float64), np.asarray(mass_b, np.float64)
    voxels = np.maximum(np.asarray(size_a), np.asarray(size_b)).astype(np.float64)
    tolerance = (MASS_RTOL * np.maximum(np.abs(mass_a), np.abs(mass_b))
                 + MASS_ATOL_PER_VOXEL * voxels)
    return ~(np.abs(mass_a - mass_b) <= tolerance)


def _compare_nulls(a: _Side, b: _Side) -> dict:
    """Two engines' nulls with the same seed, permutation by permutation."""
    n = min(a.arrays["max_ale"].size, b.arrays["max_ale"].size)
    ale_a, ale_b = a.arrays["max_ale"][:n], b.arrays["max_ale"][:n]
    rel = np.abs(ale_a - ale_b) / np.maximum(np.abs(ale_a), 1e-300)
    size_differs = int(np.sum(a.arrays["max_cluster_size"][:n]
                              != b.arrays["max_cluster_size"][:n]))
    mass_differs = int(np.sum(masses_differ(
        a.arrays["max_cluster_mass"][:n], b.arrays["max_cluster_mass"][:n],
        a.arrays["max_cluster_size"][:n], b.arrays["max_cluster_size"][:n])))
    failures = []
    if rel.max(initial=0.0) > MAX_ALE_RTOL:
        failures.append(f"{int(np.sum(rel > MAX_ALE_RTOL))} permutation(s) differ in max ALE "
                        f"by more than 2^-23 (largest relative difference {rel.max():.3g})")
    if size_differs:
        failures.append(f"{size_differs} permutation(s) differ in max cluster size")
    if mass_differs:
        failures.append(f"{mass_differs} permutation(s) differ in max cluster mass "
                        f"(rtol {MASS_RTOL:g}, plus 2^-40 per voxel of the largest cluster)")
    sig_a, sig_b = a.arrays["significant"], b.arrays["significant"]
    if (sig_a != sig_b).any():
        failures.append(f"{int(np.sum(sig_a != sig_b))} voxel(s) are significant in only one run")
    return {
        "permutations_compared": int(n),
        "max_ale_identical": bool(np.array_equal(ale_a, ale_b)),
        "max_ale_max_rel_diff": float(rel.max(initial=0.0)),
        "max_ale_rtol": MAX_ALE_RTOL,
        "max_cluster_mass_rtol": MASS_RTOL,
        "max_cluster_mass_atol_per_voxel": MASS_ATOL_PER_VOXEL,
        "max_cluster_size_differs": size_differs,
        "max_cluster_mass_differs": mass_differs,
        "significant_identical": not (sig_a != sig_b).any(),
        "passed": not failures,
        "failures": failures,
    }


def compare_devices(settings: AnalysisSettings, devices: Sequence[str],
                    tolerances: Tolerances = Tolerances(),
                    log: Callable[[str], None] = lambda message: None) -> dict:
    """The same analysis and seed on two engines, each in a fresh process.

    Parameters
    ----------
    devices : two str
        ``cpu``, ``gpu``, ``gpu:N``, ``numpy`` or ``numba`` (the two CPU engines).

    Returns
    -------
    dict
        As ``compare.json``; ``passed``: the uncorrected maps agree within ``tolerances``
        and the nulls permutation by permutation (max ALE within 2^-23 relative, cluster
        sizes identical, masses within 1e-9 relative plus 2^-40 per voxel of the
        permutation's largest cluster: :func:`masses_differ`).
    """
    if len(devices) != 2:
        raise ValueError(f"--devices takes two engines, e.g. cpu,gpu; got {len(devices)}")
    resolved = [resolve_engine(d) for d in devices]
    labels = list(devices)
    if labels[0] == labels[1]:
        labels = [f"{labels[0]}-1", f"{labels[1]}-2"]
    _load(settings)
    with tempfile.TemporaryDirectory(prefix="gpuale-compare-") as scratch:
        sides = []
        for label, device in zip(labels, resolved):
            log(f"running gpuale on {label} in a fresh process ...")
            sides.append(_run_side(label, f"gpuale:{device}", settings, Path(scratch)))
    a, b = sides
    maps = compare_maps(a.arrays["ale"], b.arrays["ale"], a.arrays["z"], b.arrays["z"],
                        a.arrays["p"], b.arrays["p"], settings.cluster_p, tolerances)
    record = {
        "form": "devices",
        "a": a.label, "b": b.label,
        "devices": dict(zip(labels, resolved)),
        "settings": settings.to_json(),
        "n_experiments": int(a.arrays["n_experiments"]),
        "uncorrected": maps,
        "performance": {a.label: a.performance(), b.label: b.performance(),
                        "wall_ratio_b_over_a": b.wall_s / a.wall_s},
        "passed": maps["passed"],
    }
    if settings.iters:
        nulls = _compare_nulls(a, b)
        record["nulls"] = nulls
        record["passed"] = maps["passed"] and nulls["passed"]
        for side in (a, b):
            mc = side.timings.get("montecarlo_s")
            record["performance"][side.label]["permutations_per_s"] = (
                settings.iters / mc if mc else None)
    return record


def _main(argv: list[str]) -> None:
    try:
        _worker(*argv)
    except BaseException:
        traceback.print_exc()
        raise SystemExit(1) from None


if __name__ == "__main__":
    _main(sys.argv[1:])


COMPARE_JSON = "compare.json"


#: The comparison's page has a run report's name, so it opens like one.
COMPARE_HTML = REPORT_HTML


#: What a comparison writes: a folder holding only these is a comparison's, which
#: ``force`` may replace.
COMPARE_FILES = frozenset({COMPARE_JSON, COMPARE_HTML})
