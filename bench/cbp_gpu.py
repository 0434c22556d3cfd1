"""Co-activation-based parcellation (CBP) on one GPU at the whole release's size, for
bench/gpu_check.sh.

A synthetic stand-in of issue 24's bench (``bench/cbp_whole_release.py``: the 1,000 voxels
nearest MNI (-40, 20, 10) over the whole Neurosynth v7 release, filters n = 20..200 step
20, so 10,000 MACM maps over the 228,483-voxel MNI mask; 5,000 experiments in some voxel's
sets; 35.3 foci per experiment in the release; N = 20), so that it runs on a machine
without the release: the pool's foci are in-mask voxels drawn with a fixed seed, and each
seed voxel's sets are the first 20, 40, ... 200 of a random order of 200 pool
experiments (the nearest experiments' overlap between seeds changes nothing the GPU
does: its cost is the pool's terms and dense matrix products).

What it times, on the CUDA engine, after a warm-up chunk (compilation, tables, cuBLAS):
whole chunks of columns (``null_chunk`` of the :class:`CoactivationSpec`: the pool's
terms on the device, every seed's maps at every filter, the sums and cross-products of
the correlations) for about ``--seconds``, then projects the maps + correlations of all
columns. It checks the GPU against the numba engine on a smaller spec of the same
generator (the pool's terms bit for bit, the maps within 2e-7) and, where scikit-learn
is installed, times the K = 2..9 clustering on the host (one and two k-means restarts,
projected linearly to the default 50). Prints a ``cbp: {...}`` line; ``--json`` writes
it. ``--dry-run`` runs the kernels on the CPU through the host shim at a small size
(its figures are not GPU figures).

Not projected: reading the release and choosing each voxel's nearest experiments (host
work, 2 and 5.5 s on the 2-core VM: bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from synthetic import database_experiments

from gpuale.engines._subsets import CoactivationSpec, pool_log_maps
from gpuale.grid import load_grid
from gpuale.problem import compile_problem

#: The whole-release job (issue 24): ROI voxels, filter sizes, pool, foci per experiment.
FULL = {"seeds": 1000, "filters": tuple(range(20, 201, 20)), "pool": 5000,
        "foci": 35.3, "n_columns": 228483}
#: The host shim's size: small enough for a few minutes on a CPU.
DRY = {"seeds": 24, "filters": (4, 8, 12), "pool": 60, "foci": 6.0}
KS = tuple(range(2, 10))
RESTARTS = 50


def _problem(n_experiments: int, foci_per_experiment: float, seed: int):
    grid = load_grid()
    n_foci = int(round(n_experiments * foci_per_experiment))
    dataset = database_experiments(n_experiments, n_foci, np.random.default_rng(seed), grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_problem(dataset, grid)


def _spec(problem, n_seeds: int, filters: tuple[int, ...], seed: int,
          chunk_columns: int = 0) -> CoactivationSpec:
    rng = np.random.default_rng(seed)
    depth = filters[-1]
    order = np.argsort(rng.random((n_seeds, problem.n_experiments)), axis=1)[:, :depth]
    counts = np.tile(np.array(filters, dtype=np.int64), (n_seeds, 1))
    return CoactivationSpec(problem, order, counts, chunk_columns)


def _correlations(partial, n_columns: int) -> np.ndarray:
    """Pearson correlations over the columns a partial holds (as
    CoactivationPartial.correlations, which insists on every column)."""
    mean = partial.sums / n_columns
    cov = partial.products / n_columns - mean[:, :, None] * mean[:, None, :]
    sd = np.sqrt(np.clip(np.einsum("fss->fs", cov), 1e-300, None))
    r = np.clip(cov / (sd[:, :, None] * sd[:, None, :]), -1.0, 1.0)
    idx = np.arange(r.shape[1])
    r[:, idx, idx] = 1.0
    return r


def _check(engine, size: dict, dry: bool) -> dict:
    """The GPU against the numba engine on a smaller spec of the same generator."""
    from gpuale.engines import _cuda_subsets
    from gpuale.engines.cuda import _cupy_launcher
    from gpuale.engines.numba_ import NumbaEngine

    filters = size["filters"]
    problem = _problem(max(filters[-1] + 20, size["pool"] // 20), size["foci"], seed=31)
    spec = _spec(problem, 8, filters, seed=32)
    first, count = spec.n_columns // 2, 512 if dry else 2048
    numba = NumbaEngine()
    want = numba.subset_ale_maps(spec, first, count)
    got = engine.subset_ale_maps(spec, first, count)
    pool = pool_log_maps(problem, first, count, numba.experiment_log_maps)
    dense = np.zeros((problem.n_experiments, count), dtype=np.float32)
    for e in range(problem.n_experiments):
        span = slice(pool.indptr[e], pool.indptr[e + 1])
        dense[e, pool.indices[span]] = pool.values[span]
    xp = engine._xp()
    launch = engine._host_launch if dry else _cupy_launcher()
    with engine._on_device():
        terms = _cuda_subsets.pool_log_terms(
            xp, launch, _cuda_subsets.RankTables.of(xp, problem), problem, first, count,
            block_size=engine._launch_shape["block_size"],
            max_grid=engine._launch_shape["max_grid"])
        terms = terms if isinstance(terms, np.ndarray) else terms.get()
    return {"check_pool": problem.n_experiments, "check_seeds": spec.n_seeds,
            "check_columns": count,
            "terms_equal_numba": bool(np.array_equal(terms, dense)),
            "maps_equal_numba_bitwise": bool(np.array_equal(got, want)),
            "maps_max_abs_diff": float(np.abs(got.astype(np.float64) - want).max())}


def _clustering(r: np.ndarray) -> dict:
    try:
        from gpuale.partitions import cluster_all

        cluster_all(r[:1, :8, :8], (2,), seed=0, restarts=1)  # imports scikit-learn
    except ImportError as error:
        return {"clustering": f"not timed: {error} (scikit-learn is the parcellate extra)"}
    seconds = []
    for restarts in (1, 2):
        start = time.perf_counter()
        cluster_all(r, KS, seed=0, restarts=restarts)
        seconds.append(time.perf_counter() - start)
    per_restart = max(seconds[1] - seconds[0], 0.0)
    return {"clustering_1_restart_s": seconds[0], "clustering_2_restarts_s": seconds[1],
            "clustering_projected_s": seconds[0] + (RESTARTS - 1) * per_restart}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="time whole chunks for about this long (at least one)")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    from gpuale.engines.cuda import CudaEngine, kernel_dir

    if args.dry_run:
        from gpuale import _hostshim

        size, chunk = DRY, 2048
        engine = CudaEngine.on_host(_hostshim.load(kernel_dir() / "ale_null.cu").launch)
        args.seconds = min(args.seconds, 1.0)
    else:
        size, chunk = FULL, 0
        engine = CudaEngine(device_id=0)
    start = time.perf_counter()
    problem = _problem(size["pool"], size["foci"], seed=29)
    spec = _spec(problem, size["seeds"], size["filters"], seed=30, chunk_columns=chunk)
    setup = time.perf_counter() - start
    engine.null_chunk(spec, 0, 0, 1024)  # warm-up: compilation, tables, cuBLAS
    first, partial, start = 0, None, time.perf_counter()
    while first < spec.n_columns and (partial is None
                                      or time.perf_counter() - start < args.seconds):
        count = min(spec.chunk_columns, spec.n_columns - first)
        part = engine.null_chunk(spec, 0, first, count)  # host arrays: synchronised
        partial = part if partial is None else partial.merge(part)
        first += count
    seconds = time.perf_counter() - start
    per_column = seconds / first
    result = {"device": engine.describe(), "dry_run": bool(args.dry_run),
              "seeds": spec.n_seeds, "filters": list(size["filters"]),
              "maps": spec.n_seeds * spec.n_filters, "pool": problem.n_experiments,
              "foci": problem.n_foci, "columns": spec.n_columns,
              "chunk_columns": spec.chunk_columns, "block_columns": spec.block_columns,
              "setup_s": setup, "columns_timed": first, "seconds": seconds,
              "per_1000_columns_ms": 1e6 * per_column,
              "maps_and_correlation_projected_s": per_column * spec.n_columns}
    if not args.dry_run:
        result["note"] = ("synthetic stand-in of the whole-release CBP; reading the release "
                          "and choosing the sets (host, ~8 s on the 2-core VM) not included")
    result.update(_check(engine, size, args.dry_run))
    result.update(_clustering(_correlations(partial, first)))
    if "clustering_projected_s" in result:
        result["whole_job_projected_s"] = (result["maps_and_correlation_projected_s"]
                                           + result["clustering_projected_s"])
    print("cbp: " + json.dumps(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    ok = result["terms_equal_numba"] and result["maps_max_abs_diff"] <= 2e-7
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
