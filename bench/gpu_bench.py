"""GPU throughput and CPU = GPU agreement, for bench/gpu_check.sh (and by hand).

For each data set (children, adults, a 2,000-experiment synthetic set): the CUDA engine's
time for N permutations with compilation and warm-up excluded, the CPU engine's time per
permutation beside it (fewer permutations, scaled), and the first permutations of both
compared for the same seed: max ALE to float32 rounding (the GPU's ``exp`` may differ in
the last bit), cluster size and mass exactly except where a voxel lies within float
rounding of the cluster-forming threshold.

``--dry-run`` runs the same code with the CUDA engine's kernels on the CPU through the
host shim, on a few permutations, so the script can be checked on a machine without a
GPU. Prints a markdown table; ``--json FILE`` writes the figures.

``--projection`` measures one engine's cost per permutation on a data set of the whole
Neurosynth release's size (:data:`NEUROSYNTH_STUDIES` studies, :data:`NEUROSYNTH_FOCI`
foci, N = 20 as ``--sample-size 20``; random in-mask foci, see
:func:`neurosynth_scale_dataset`) and prints the time of 10,000 permutations on 1, 2, 4
and 8 such devices (:func:`project`): the CUDA engine on a GPU, or with ``--cpu`` the
numba engine on one core of this machine (``--studies`` measures a smaller set).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from synthetic import synthetic_dataset  # noqa: E402

from gpuale.analysis import run_ale  # noqa: E402
from gpuale.compare import masses_differ  # noqa: E402
from gpuale.dataset import Dataset, Experiment  # noqa: E402
from gpuale.engines import get_engine  # noqa: E402
from gpuale.engines.cuda import CudaEngine, gpu_available, kernel_dir  # noqa: E402
from gpuale.examples import example_path  # noqa: E402
from gpuale.grid import load_grid  # noqa: E402
from gpuale.io import load_dataset  # noqa: E402
from gpuale.nulls import GlobalNullSpec, SerialScheduler, run_null  # noqa: E402

#: Largest relative difference of a permutation's max ALE between CPU and GPU: float32
#: rounding of 1 - exp(log-sum), whose exp may differ in the last bit on the GPU.
MAX_ALE_RTOL = 2.0**-23

#: The whole Neurosynth release (v7 of the database, as gpuale reads it).
NEUROSYNTH_STUDIES = 14_371
NEUROSYNTH_FOCI = 507_891
#: Permutations a whole-release analysis is projected for.
PROJECTED_ITERS = 10_000
#: Devices (GPUs, or cores with --cpu) the projection is written for.
PROJECTED_DEVICES = (1, 2, 4, 8)
#: A Dask task's round trip per chunk (submit, run, gather), measured with chunks that do
#: no work by bench/test_bench_dask.py (bench/RESULTS.md: 6.3-8.9 ms on the shared
#: 2-core VM; the larger is taken).
DASK_CHUNK_OVERHEAD_S = 0.0089
#: A run's fixed Dask cost (checking the workers, scattering the problem), measured the
#: same way with the children set's 3.2 MB problem; a bigger problem costs more to send.
DASK_RUN_OVERHEAD_S = 0.054


def _dataset(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "synthetic-2000":
            return synthetic_dataset(2000, foci_per_experiment=35, seed=7)
        return load_dataset([example_path(name)])


def environment() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.node(), "gpu": None}
    try:
        import cupy

        info["cupy"] = cupy.__version__
        if gpu_available():
            props = cupy.cuda.runtime.getDeviceProperties(0)
            info["gpu"] = props["name"].decode()
            info["driver"] = cupy.cuda.runtime.driverGetVersion()
            info["runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            info["sm_count"] = props["multiProcessorCount"]
    except ImportError:
        info["cupy"] = None
    return info


def _timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def bench_one(name: str, engine, iters: int, cpu_iters: int, compare: int) -> dict:
    dataset = _dataset(name)
    fit = run_ale(dataset, n_iters=0)
    spec = GlobalNullSpec(fit.problem, fit.threshold, 6)
    row = {"dataset": name, "experiments": len(dataset), "foci": dataset.n_foci,
           "iterations": iters}
    # Compilation (NVRTC) and the first allocations stay out of the timing.
    row["warmup_s"], _ = _timed(lambda: engine.null_chunk(spec, 0, 0, min(16, iters)))
    row["gpu_s"], gpu_null = _timed(
        lambda: run_null(spec, engine, seed=0, n_iters=iters, scheduler=SerialScheduler()))
    cpu = get_engine("cpu")
    cpu_s, cpu_null = _timed(lambda: run_null(spec, cpu, seed=0, n_iters=cpu_iters))
    row["cpu_s_per_1000"] = 1000 * cpu_s / cpu_iters
    row["gpu_s_per_1000"] = 1000 * row["gpu_s"] / iters
    row["speedup_vs_cpu"] = row["cpu_s_per_1000"] / row["gpu_s_per_1000"]
    n = min(compare, cpu_iters, iters)
    ale_gap = np.abs(gpu_null.max_ale[:n] - cpu_null.max_ale[:n]) / cpu_null.max_ale[:n]
    row["compared"] = n
    row["max_ale_max_rel_diff"] = float(ale_gap.max())
    row["max_ale_within_ulp"] = bool(ale_gap.max() <= MAX_ALE_RTOL)
    row["size_differs"] = int(np.sum(gpu_null.max_cluster_size[:n]
                                     != cpu_null.max_cluster_size[:n]))
    row["mass_differs"] = int(np.sum(masses_differ(
        gpu_null.max_cluster_mass[:n], cpu_null.max_cluster_mass[:n],
        gpu_null.max_cluster_size[:n], cpu_null.max_cluster_size[:n])))
    return row


def neurosynth_scale_dataset(n_studies: int = NEUROSYNTH_STUDIES,
                             n_foci: int = NEUROSYNTH_FOCI, seed: int = 7) -> Dataset:
    """Experiments of N = 20 (Neurosynth has no sample sizes; ``--sample-size 20``) whose
    foci, at random in-mask voxel centres, add up to ``n_foci`` (35 or 36 each for the
    whole release), scaled down in proportion for fewer studies."""
    grid = load_grid()
    rng = np.random.default_rng(seed)
    voxels = np.argwhere(grid.mask)
    total = round(n_foci * n_studies / NEUROSYNTH_STUDIES)
    per_study = np.full(n_studies, total // n_studies)
    per_study[: total - int(per_study.sum())] += 1
    picks = grid.voxel_to_mm(voxels[rng.integers(0, len(voxels), size=total)])
    bounds = np.concatenate([[0], np.cumsum(per_study)])
    return Dataset(tuple(
        Experiment(id=f"ns{e:05d}", label=f"ns {e}", n_subjects=20,
                   foci=picks[bounds[e]:bounds[e + 1]])
        for e in range(n_studies)))


def project(seconds_per_permutation: float, chunk: int, devices: int,
            iters: int = PROJECTED_ITERS, chunk_overhead_s: float = DASK_CHUNK_OVERHEAD_S,
            run_overhead_s: float = DASK_RUN_OVERHEAD_S) -> float:
    """Seconds for ``iters`` permutations spread over ``devices`` Dask workers.

    The model: chunks of ``chunk`` permutations (the engine's) are handed out as workers
    free up, so the slowest worker runs ``ceil(n_chunks / devices)`` of them, each costing
    its permutations plus one task round trip; plus the run's fixed cost. One device runs
    without Dask (no overheads). It assumes identical workers, no other load, and a
    client that merges partials faster than they arrive (a partial is three numbers per
    permutation).
    """
    n_chunks = math.ceil(iters / chunk)
    if devices == 1:
        return iters * seconds_per_permutation
    rounds = math.ceil(n_chunks / devices)
    return run_overhead_s + rounds * (chunk * seconds_per_permutation + chunk_overhead_s)


def measure_projection(engine, n_studies: int, iters: int) -> dict:
    """One engine's seconds per permutation on a Neurosynth-size set, and the projection.

    Observed ALE, analytic null and the first chunk (compilation, uploads, tables) are
    timed apart; then ``iters`` permutations in the engine's chunks, one after another.
    A CPU engine's projection takes this process's CPU time (one thread computes, so it
    is one core's time, which other jobs on a shared machine inflate far less than the
    wall time; both are recorded); the CUDA engine's the wall time.
    """
    build_s, dataset = _timed(lambda: neurosynth_scale_dataset(n_studies))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # On the measured device: the threshold it gives sets the permutations' work.
        fit_s, fit = _timed(lambda: run_ale(dataset, n_iters=0, device=engine.device))
    spec = GlobalNullSpec(fit.problem, fit.threshold, 6)
    chunk = engine.chunk_size(spec)
    warmup_s, _ = _timed(lambda: engine.null_chunk(spec, 0, 0, 1))
    cpu_start = time.process_time()
    null_s, null = _timed(
        lambda: run_null(spec, engine, seed=0, n_iters=iters, scheduler=SerialScheduler()))
    null_cpu_s = time.process_time() - cpu_start
    per_permutation = (null_s if isinstance(engine, CudaEngine) else null_cpu_s) / iters
    row = {"engine": engine.name, "device": engine.device, "studies": len(dataset),
           "foci": dataset.n_foci, "build_s": build_s, "fit_s": fit_s, "warmup_s": warmup_s,
           "iterations": iters, "null_s": null_s, "null_cpu_s": null_cpu_s,
           "s_per_permutation": per_permutation,
           "chunk": chunk, "chunk_overhead_s": DASK_CHUNK_OVERHEAD_S,
           "run_overhead_s": DASK_RUN_OVERHEAD_S,
           "mean_max_ale": float(np.mean(null.max_ale))}
    row["projected_s"] = {str(n): project(per_permutation, chunk, n)
                          for n in PROJECTED_DEVICES}
    return row


def print_projection(row: dict, unit: str) -> None:
    print(f"\nprojection: {row['engine']} engine ({row['device']}): {row['studies']:,} studies, "
          f"{row['foci']:,} foci; observed ALE + analytic null {row['fit_s']:.1f} s, first "
          f"chunk {row['warmup_s']:.1f} s; {row['iterations']} permutations in "
          f"{row['null_s']:.2f} s ({row['null_cpu_s']:.2f} s of CPU time) = "
          f"{row['s_per_permutation']:.4f} s per permutation (chunks of {row['chunk']})\n")
    print(f"| {unit}s | {PROJECTED_ITERS:,} permutations | speed-up |")
    print("| --- | --- | --- |")
    one = row["projected_s"]["1"]
    for n, seconds in row["projected_s"].items():
        print(f"| {n} | {seconds:,.0f} s ({seconds / 3600:.2f} h) | {one / seconds:.2f}x |")


def small_run() -> int:
    """A few permutations of a global and a contrast null on the GPU (for the sanitizers)."""
    from gpuale.nulls import ContrastNullSpec

    engine = CudaEngine(device_id=0)
    dataset = _dataset("semantic-children")
    fit = run_ale(dataset, n_iters=0)
    engine.null_chunk(GlobalNullSpec(fit.problem, fit.threshold, 26), 1, 0, 32)
    _, log_maps = engine.experiment_log_maps(fit.problem)
    engine.null_chunk(ContrastNullSpec(log_maps, len(dataset) // 2), 1, 0, 64)
    print("small run done")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="semantic-children,semantic-adults,synthetic-2000")
    parser.add_argument("--iters", type=int, default=10_000)
    parser.add_argument("--cpu-iters", type=int, default=64)
    parser.add_argument("--compare", type=int, default=64)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dry-run", action="store_true",
                        help="the CUDA engine through the host shim, a few permutations")
    parser.add_argument("--small", action="store_true",
                        help="only a small GPU run (children, 32 permutations and a contrast "
                        "chunk), for compute-sanitizer and ncu")
    parser.add_argument("--projection", action="store_true",
                        help="cost per permutation at the whole Neurosynth release's size "
                        "and the time of 10,000 permutations on 1, 2, 4, 8 devices")
    parser.add_argument("--cpu", action="store_true",
                        help="with --projection: the numba engine on one core of this "
                        "machine instead of the GPU")
    parser.add_argument("--studies", type=int, default=NEUROSYNTH_STUDIES,
                        help="with --projection: studies of the measured set (foci in "
                        "proportion)")
    parser.add_argument("--projection-iters", type=int, default=None,
                        help="with --projection: permutations measured (default: 2,048 "
                        "on a GPU, 8 on the CPU, 2 in a dry run)")
    args = parser.parse_args(argv)
    env = environment()
    if args.projection:
        return projection_main(args, env)
    if args.dry_run:
        from gpuale import _hostshim

        engine = CudaEngine.on_host(_hostshim.load(kernel_dir() / "ale_null.cu").launch)
        args.iters, args.cpu_iters, args.compare = 4, 4, 4
        if args.datasets == parser.get_default("datasets"):
            args.datasets = "semantic-children"
        env["mode"] = "dry run: CUDA kernels on the CPU through the host shim"
    elif args.small:
        return small_run()
    elif not gpu_available():
        print("no GPU visible to CuPy: nothing to measure (use --dry-run to check the script)")
        return 0
    else:
        engine = CudaEngine(device_id=0)
        env["mode"] = "GPU"
    rows = []
    for name in args.datasets.split(","):
        print(f"... {name}", file=sys.stderr, flush=True)
        rows.append(bench_one(name, engine, args.iters, args.cpu_iters, args.compare))
    print(f"\n{env}\n")
    print("| data set | experiments | foci | iterations | GPU s | GPU s/1000 | CPU s/1000 "
          "| GPU/CPU speed | max ALE rel. diff (n) | size / mass differ |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dataset']} | {r['experiments']} | {r['foci']} | {r['iterations']} | "
              f"{r['gpu_s']:.3f} | {r['gpu_s_per_1000']:.3f} | {r['cpu_s_per_1000']:.2f} | "
              f"{r['speedup_vs_cpu']:.1f}x | {r['max_ale_max_rel_diff']:.2e} ({r['compared']}) "
              f"| {r['size_differs']} / {r['mass_differs']} |")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    return 0


def projection_main(args, env: dict) -> int:
    """``--projection``: measure, print the table, write ``--json``."""
    if args.cpu:
        from gpuale.engines.numba_ import NumbaEngine

        engine, unit, iters = NumbaEngine(), "core", 8
        env["mode"] = "CPU: numba engine, one core (chunks one after another)"
    elif args.dry_run:
        from gpuale import _hostshim

        engine = CudaEngine.on_host(_hostshim.load(kernel_dir() / "ale_null.cu").launch)
        unit, iters = "GPU", 2
        env["mode"] = "dry run: CUDA kernels on the CPU through the host shim"
    elif not gpu_available():
        print("no GPU visible to CuPy: nothing to measure (--cpu measures the CPU engine, "
              "--dry-run checks the script)")
        return 0
    else:
        engine, unit, iters = CudaEngine(device_id=0), "GPU", 2048
        env["mode"] = "GPU"
    iters = args.projection_iters or iters
    print(f"... {args.studies} studies, {iters} permutations", file=sys.stderr, flush=True)
    row = measure_projection(engine, args.studies, iters)
    print(f"\n{env}")
    print_projection(row, unit)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "projection": row}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
