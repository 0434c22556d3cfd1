"""``gpuale compare RUN_A RUN_B``: two finished run folders, map by map, cluster by cluster
and null by null (the tolerances are :class:`gpuale.compare.Tolerances`); a SCALE run
against NiMARE's SCALE maps or a SCALE run of another seed, within Monte Carlo error
(:func:`compare_scale`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpuale.compare import (
    MAX_ALE_RTOL,
    Tolerances,
)

__all__ = ["SCALE_MIN_R", "compare_runs", "compare_scale", "compare_scale_maps",
           "is_nimare_maps"]


def _map_tolerance(name: str, tolerances: Tolerances) -> float:
    """Largest |difference| of map ``name`` between two runs that still counts as equal."""
    if name.startswith("ale"):
        return tolerances.ale
    if name.startswith(("z", "logp")):
        return tolerances.z
    if name == "p":
        return tolerances.p_rtol * 1e-3  # p near the usual threshold (.001) must agree
    return 0.0  # labels and anything else: identical


def _experiments_difference(a: list[dict], b: list[dict]) -> list[str]:
    """Experiments only in one run, or with other N or foci, in words."""
    by_a = {str(e.get("id")): e for e in a}
    by_b = {str(e.get("id")): e for e in b}
    out = []
    only_a = [k for k in by_a if k not in by_b]
    only_b = [k for k in by_b if k not in by_a]
    if only_a:
        out.append(f"{len(only_a)} experiment(s) only in A: {', '.join(only_a[:10])}")
    if only_b:
        out.append(f"{len(only_b)} experiment(s) only in B: {', '.join(only_b[:10])}")
    for key in by_a.keys() & by_b.keys():
        for field in ("n_subjects", "n_foci", "fwhm_mm"):
            if by_a[key].get(field) != by_b[key].get(field):
                out.append(f"experiment {key}: {field} {by_a[key].get(field)} in A, "
                           f"{by_b[key].get(field)} in B")
    return out


def _compare_clusters(a, b) -> dict:
    """Clusters of two runs in their order (largest first): size, peak and FWE p."""
    rows_a, rows_b = a.clusters(), b.clusters()
    pairs = []
    for k, (ra, rb) in enumerate(zip(rows_a, rows_b), start=1):
        peak_a = np.array([ra.get("peak_x"), ra.get("peak_y"), ra.get("peak_z")], float)
        peak_b = np.array([rb.get("peak_x"), rb.get("peak_y"), rb.get("peak_z")], float)
        pairs.append({
            "cluster": k,
            "size_voxels": [ra.get("size_voxels"), rb.get("size_voxels")],
            "peak_distance_mm": float(np.linalg.norm(peak_a - peak_b)),
            "p_fwe_size": [ra.get("p_fwe_size"), rb.get("p_fwe_size")],
        })
    failures = []
    if len(rows_a) != len(rows_b):
        failures.append(f"{len(rows_a)} cluster(s) in A, {len(rows_b)} in B")
    for pair in pairs:
        if pair["size_voxels"][0] != pair["size_voxels"][1] or pair["peak_distance_mm"] > 0:
            failures.append(f"cluster {pair['cluster']}: {pair['size_voxels'][0]} voxels in A, "
                            f"{pair['size_voxels'][1]} in B, peaks "
                            f"{pair['peak_distance_mm']:.1f} mm apart")
    return {"clusters_a": len(rows_a), "clusters_b": len(rows_b), "pairs": pairs,
            "identical": not failures, "failures": failures}


def _read_volume(path: Path):
    from gpuale.grid import read_volume

    img, data = read_volume(path, "map")
    return img.affine, np.asarray(data, dtype=np.float64)


def _compare_null_files(a, b) -> tuple[dict, list[str]]:
    """nulls.npz of two runs, array by array, and every difference named: a file or an
    array one run has and the other lacks, a shape, whole numbers (cluster sizes, the
    seed) not identical, floating-point values beyond :data:`MAX_ALE_RTOL` relative (the
    last bits two engines or machines may differ in)."""
    from gpuale.runfolder import NULLS_NPZ

    has_a, has_b = (run.path.joinpath(NULLS_NPZ).is_file() for run in (a, b))
    if has_a != has_b:
        return {}, [f"{NULLS_NPZ} only in {'A' if has_a else 'B'}"]
    nulls_a, nulls_b = a.nulls(), b.nulls()
    nulls, failures = {}, []
    for key in sorted(nulls_a.keys() ^ nulls_b.keys()):
        nulls[key] = {"identical": False, "only_in": "A" if key in nulls_a else "B"}
        failures.append(f"{NULLS_NPZ}: {key} only in {nulls[key]['only_in']}")
    for key in sorted(nulls_a.keys() & nulls_b.keys()):
        x, y = np.asarray(nulls_a[key]), np.asarray(nulls_b[key])
        if x.shape != y.shape:
            nulls[key] = {"shape": [list(x.shape), list(y.shape)], "identical": False,
                          "passed": False}
            failures.append(f"{NULLS_NPZ}: {key} has shape {x.shape} in A, {y.shape} in B")
            continue
        nulls[key] = {"identical": bool(np.array_equal(x, y))}
        passed = nulls[key]["identical"]
        if x.dtype.kind == "f" and y.dtype.kind == "f" and x.size:
            with np.errstate(invalid="ignore"):
                rel = np.abs(x - y) / np.maximum(np.abs(x), 1e-300)
            rel = np.where(x == y, 0.0, rel)  # equal infinities
            nulls[key]["max_rel_diff"] = float(np.max(rel))
            passed = bool(np.all(rel <= MAX_ALE_RTOL))
        nulls[key]["passed"] = passed
        if not passed:
            beyond = ("" if x.dtype.kind != "f" else
                      f" (largest relative difference {nulls[key]['max_rel_diff']:.3g}, "
                      f"beyond {MAX_ALE_RTOL:.3g})")
            failures.append(f"{NULLS_NPZ}: {key} differs{beyond}")
    return nulls, failures


def compare_runs(run_a: str | Path, run_b: str | Path,
                 tolerances: Tolerances = Tolerances()) -> dict:  # noqa: B008 (frozen)
    """Two finished run folders (two versions, two machines): map by map, experiment by
    experiment, cluster by cluster, and the nulls permutation by permutation.

    ``run_b`` may be a folder of NiMARE's SCALE maps, and two SCALE runs may differ in
    seed or iterations: both are compared within Monte Carlo error by
    :func:`compare_scale`.

    Returns
    -------
    dict
        As ``compare.json``; ``passed`` when the experiments are the same, every map both
        hold agrees within its tolerance (ALE: ``tolerances.ale``; z and -log10 p:
        ``tolerances.z``; labels: identical) and the clusters are the same.

    Raises
    ------
    NotARunFolder
        A folder holds no finished run.
    ValueError
        The runs are of different kinds (a global ALE and a contrast).
    """
    from gpuale.runfolder import MAP_SUFFIX, gpuale_map_name, map_file, open_run

    if is_nimare_maps(run_b):
        return compare_scale(run_a, run_b, tolerances)
    a, b = open_run(run_a), open_run(run_b)
    if a.kind == b.kind == "scale" and any(
            a.record.get("settings", {}).get(key) != b.record.get("settings", {}).get(key)
            for key in ("seed", "iterations")):
        return compare_scale(run_a, run_b, tolerances)  # other permutations: Monte Carlo
    if a.kind != b.kind:
        raise ValueError(f"{a.path} is a {a.kind} run and {b.path} a {b.kind} run; compare "
                         "runs of the same kind")
    failures = _experiments_difference(a.record.get("experiments") or [],
                                       b.record.get("experiments") or [])
    settings_a, settings_b = a.record.get("settings", {}), b.record.get("settings", {})
    settings_diff = {k: [settings_a.get(k), settings_b.get(k)]
                     for k in sorted(settings_a.keys() | settings_b.keys())
                     if settings_a.get(k) != settings_b.get(k) and k != "device"}
    # Versions and machines differ on purpose (two versions, two machines): reported only.
    env_a, env_b = a.record.get("environment") or {}, b.record.get("environment") or {}
    environment_diff = {k: [env_a.get(k), env_b.get(k)]
                        for k in sorted(env_a.keys() | env_b.keys())
                        if env_a.get(k) != env_b.get(k)}
    # Each map by this version's name, whichever name its folder's version wrote it under.
    names_a, names_b = ({map_file(p.name.removesuffix(MAP_SUFFIX)).removesuffix(MAP_SUFFIX)
                         for p in run.path.glob(f"*{MAP_SUFFIX}")} for run in (a, b))
    maps = {}
    for name in sorted(names_a & names_b):
        affine_a, data_a = _read_volume(a.map_path(name))
        affine_b, data_b = _read_volume(b.map_path(name))
        if data_a.shape != data_b.shape or not np.allclose(affine_a, affine_b):
            maps[name] = {"same_grid": False, "passed": False}
            failures.append(f"map {name}: on different grids")
            continue
        diff = float(np.max(np.abs(data_a - data_b), initial=0.0))
        tol = _map_tolerance(gpuale_map_name(name), tolerances)
        maps[name] = {"max_abs_diff": diff, "tolerance": tol, "passed": diff <= tol,
                      "voxels_differ": int(np.sum(np.abs(data_a - data_b) > tol))}
        if diff > tol:
            failures.append(f"map {name}: max |difference| {diff:.3g} exceeds {tol:g} "
                            f"({maps[name]['voxels_differ']} voxels)")
    for name in sorted(names_a ^ names_b):
        failures.append(f"map {name} only in {'A' if name in names_a else 'B'}")
    clusters = _compare_clusters(a, b)
    failures += clusters["failures"]
    nulls, null_failures = _compare_null_files(a, b)
    failures += null_failures
    return {
        "form": "runs",
        "a": str(a.path), "b": str(b.path),
        "kind": a.kind,
        "settings_differ": settings_diff,
        "environment_differ": environment_diff,
        "maps": maps,
        "clusters": clusters,
        "nulls": nulls,
        "failures": failures,
        "passed": not failures,
    }


# --------------------------------------------------------------------------- SCALE

#: Smallest Pearson r over the mask of two SCALE z (and -log10 p) maps drawn by different
#: generators (NiMARE's, or another seed) that counts as the same result within Monte
#: Carlo error, by default (``Tolerances.scale_r``): issue 23's goal. gpuale's and
#: NiMARE's SCALE gave r = 0.985 at 100 iterations on the whole Neurosynth release
#: (bench/RESULTS.md).
SCALE_MIN_R = Tolerances().scale_r
#: NiMARE 0.22.1's SCALE maps by file name: ``fit``'s, then ``FWECorrector``'s (which a
#: folder of NiMARE's maps may lack). The first two are needed.
SCALE_MAP_FILES = ("stat", "z", "logp", "z_level-voxel_corr-FWE_method-montecarlo",
                   "logp_level-voxel_corr-FWE_method-montecarlo")
#: What a SCALE comparison across generators cannot expect: the same permutations.
SCALE_MONTE_CARLO_NOTE = (
    "SCALE's p, z and voxel-level FWE come from permutations drawn by different generators "
    "(NiMARE's, or another seed): they agree within Monte Carlo error, judged by the "
    "correlation of the maps over the mask (--scale-r), not voxel by voxel; "
    "the observed ALE (stat) must be the same")


def is_nimare_maps(folder: str | Path) -> bool:
    """A folder of NiMARE's maps (``MetaResult.save_maps``): no run.json, a stat and a z
    map."""
    from gpuale.runfolder import MAP_SUFFIX, RUN_JSON

    folder = Path(folder)
    return (folder.is_dir() and not (folder / RUN_JSON).exists()
            and all((folder / f"{name}{MAP_SUFFIX}").is_file() for name in ("stat", "z")))


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def compare_scale_maps(maps_a: dict[str, np.ndarray], maps_b: dict[str, np.ndarray],
                       tolerances: Tolerances = Tolerances(),  # noqa: B008 (frozen)
                       alpha: float = 0.05) -> tuple[dict, list]:
    """Two SCALE results' in-mask maps (by NiMARE's file names) within Monte Carlo error.

    ``stat`` (the observed ALE) must agree within ``tolerances.ale``; ``z`` and ``logp``
    must correlate with r >= ``tolerances.scale_r`` over the mask; the voxel-level FWE maps are
    reported (their correlation, and the Dice of the voxels with FWE p < ``alpha``), not
    judged: near alpha they move with the permutations.

    Returns
    -------
    maps : dict
        Per map name: what was compared and whether it passed.
    failures : list of str
    """
    maps, failures, min_r = {}, [], tolerances.scale_r
    for name in SCALE_MAP_FILES:
        if name not in maps_a or name not in maps_b:
            side = "A" if name not in maps_a else "B"
            maps[name] = {"missing_in": side}
            if name in ("stat", "z"):
                failures.append(f"map {name} not in {side}")
            continue
        a, b = maps_a[name], maps_b[name]
        entry: dict = {"max_abs_diff": float(np.max(np.abs(a - b), initial=0.0))}
        if name == "stat":
            entry.update(tolerance=tolerances.ale,
                         passed=entry["max_abs_diff"] <= tolerances.ale)
            if not entry["passed"]:
                failures.append(f"map stat (the observed ALE): max |difference| "
                                f"{entry['max_abs_diff']:.3g} exceeds {tolerances.ale:g}")
        else:
            entry["r"] = _pearson(a, b)
            reached = (a > 0) | (b > 0)
            entry["r_where_either_above_0"] = _pearson(a[reached], b[reached])
            if name.startswith("logp_level-voxel"):
                cut = -np.log10(alpha)
                sig_a, sig_b = a > cut, b > cut
                both = int(np.sum(sig_a & sig_b))
                entry.update(fwe_alpha=alpha, significant_a=int(sig_a.sum()),
                             significant_b=int(sig_b.sum()),
                             dice=(2 * both / (sig_a.sum() + sig_b.sum())
                                   if sig_a.any() or sig_b.any() else None))
            if name in ("z", "logp"):
                entry.update(min_r=min_r, passed=entry["r"] is not None
                             and entry["r"] >= min_r)
                if not entry["passed"]:
                    failures.append(f"map {name}: r = {_fmt_r(entry['r'])} over the mask, "
                                    f"below {min_r:g} (beyond Monte Carlo error)")
        maps[name] = entry
    return maps, failures


def _fmt_r(r: float | None) -> str:
    return "undefined (a constant map)" if r is None else f"{r:.4f}"


def _scale_maps(folder: Path, grid) -> dict[str, np.ndarray]:
    from gpuale.runfolder import MAP_SUFFIX, read_map

    return {name: read_map(folder / f"{name}{MAP_SUFFIX}", grid) for name in SCALE_MAP_FILES
            if (folder / f"{name}{MAP_SUFFIX}").is_file()}


def compare_scale(run_a: str | Path, other: str | Path,
                  tolerances: Tolerances = Tolerances()) -> dict:  # noqa: B008 (frozen)
    """A gpuale SCALE run folder against NiMARE's SCALE maps (a folder that
    ``MetaResult.save_maps`` wrote, after ``FWECorrector`` or not) or against another
    SCALE run folder of another seed or number of iterations, within Monte Carlo error
    (:func:`compare_scale_maps`).

    Raises
    ------
    ValueError
        ``run_a`` is not a SCALE run (or ``other`` a run of another kind), or a map is
        on another grid than the run's.
    """
    from gpuale.rerun import _recorded_grid
    from gpuale.runfolder import open_run

    a = open_run(run_a)
    if a.kind != "scale":
        raise ValueError(f"{a.path} is a {a.kind} run; a folder of NiMARE's maps is "
                         "compared with a SCALE run (`gpuale macm --null scale`); for a "
                         "global ALE use `gpuale compare INPUT... --against nimare`")
    grid = _recorded_grid(a)
    other = Path(other)
    nimare = is_nimare_maps(other)
    b = None if nimare else open_run(other)
    if b is not None and b.kind != "scale":
        raise ValueError(f"{a.path} is a scale run and {b.path} a {b.kind} run; compare "
                         "runs of the same kind")
    maps, failures = compare_scale_maps(_scale_maps(a.path, grid),
                                        _scale_maps(other, grid), tolerances,
                                        alpha=float(a.record["settings"]["alpha"]))
    settings_a = a.record.get("settings", {})
    settings_b = {} if b is None else b.record.get("settings", {})
    if b is not None:
        failures = _experiments_difference(a.record.get("experiments") or [],
                                           b.record.get("experiments") or []) + failures
    return {
        "form": "scale",
        "a": str(a.path), "b": str(other),
        "b_is": "NiMARE's SCALE maps" if nimare else "a gpuale SCALE run",
        "kind": "scale",
        "iterations": [settings_a.get("iterations"), settings_b.get("iterations")],
        "seed": [settings_a.get("seed"), settings_b.get("seed")],
        "maps": maps,
        "note": SCALE_MONTE_CARLO_NOTE,
        "failures": failures,
        "passed": not failures,
    }
