"""``gpuale compare RUN_A RUN_B``: two finished run folders, map by map, cluster by cluster
and null by null (the tolerances are :class:`gpuale.compare.Tolerances`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpuale.compare import (
    MAX_ALE_RTOL,
    Tolerances,
)

__all__ = ["compare_runs"]


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

    a, b = open_run(run_a), open_run(run_b)
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
