"""GPU throughput and CPU = GPU agreement, for bench/gpu_check.sh (and by hand).

For each data set (children, adults, a 2,000-experiment synthetic set): the CUDA engine's
time for N permutations with compilation and warm-up excluded (``--iters``, 10,000; the
2,000-experiment set ``--large-iters``, 2,048, and its 10,000 scaled from them), the CPU
engine's time per permutation beside it (fewer permutations, scaled), and the first
permutations of both compared for the same seed: max ALE to float32 rounding (the GPU's
``exp`` may differ in the last bit), cluster size exactly, mass to rounding
(:func:`gpuale.compare.masses_differ`). Each data set's row is printed and written to
``--json FILE`` as soon as it is done, so a run stopped by a time limit keeps the rows it
finished.

``--dry-run`` runs the same code with the CUDA engine's kernels on the CPU through the
host shim, on a few permutations, so the script can be checked on a machine without a
GPU. Prints a markdown table; ``--json FILE`` writes the figures.

``--small [--no-pool]`` runs one batch of a global null on the GPU for compute-sanitizer
and ncu; ``--no-pool`` turns CuPy's memory pool off (every array its own ``cudaMalloc``,
whose bounds memcheck and initcheck see).

``--projection`` measures one engine's cost per permutation on a data set of the whole
Neurosynth release's size (:data:`NEUROSYNTH_STUDIES` studies, :data:`NEUROSYNTH_FOCI`
foci, N = 20 as ``--sample-size 20``; random in-mask foci, see
:func:`neurosynth_scale_dataset`) and prints the time of 10,000 permutations on 1, 2, 4
and 8 such devices (:func:`project`): the CUDA engine on a GPU, or with ``--cpu`` the
numba engine on one core of this machine (``--studies`` measures a smaller set). For
the whole release the cluster-forming threshold is taken as given
(:data:`NEUROSYNTH_THRESHOLD`, or ``--threshold``), so nothing of it is fitted on the
CPU; a smaller set's is fitted on the CPU unless ``--threshold`` gives one. Permutations
are timed in batches until ``--seconds`` have passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
from gpuale.engines import get_engine, gpu_available  # noqa: E402
from gpuale.engines.cuda import CudaEngine, kernel_dir  # noqa: E402
from gpuale.examples import example_path  # noqa: E402
from gpuale.grid import load_grid  # noqa: E402
from gpuale.io import load_dataset  # noqa: E402
from gpuale.nulls import run_null  # noqa: E402
from gpuale.nullspecs import GlobalNullSpec  # noqa: E402
from gpuale.problem import compile_problem  # noqa: E402
from gpuale.schedulers import SerialScheduler  # noqa: E402

#: Largest relative difference of a permutation's max ALE between CPU and GPU: float32
#: rounding of 1 - exp(log-sum), whose exp may differ in the last bit on the GPU.
MAX_ALE_RTOL = 2.0**-23

#: The whole Neurosynth release (v7 of the database, as gpuale reads it).
NEUROSYNTH_STUDIES = 14_371
NEUROSYNTH_FOCI = 507_891
#: The cluster-forming threshold (analytic p < 0.001) of :func:`neurosynth_scale_dataset`'s
#: whole-release set, computed once on the CPU (``run_ale(..., n_iters=0)``, 2026-12-07,
#: see bench/RESULTS.md) so that the projection measures permutations without fitting the
#: release first. It sets how many voxels the labelling sees, not the scatter's work.
NEUROSYNTH_THRESHOLD = 0.89351
#: Permutations a whole-release analysis is projected for.
PROJECTED_ITERS = 10_000
#: Goals on an H100 for 10,000 permutations (issue 21), seconds.
GOALS_S = {"semantic-children": 0.3, "semantic-adults": 1.0, "synthetic-2000": 30.0}
#: Data sets with more experiments than this run ``--large-iters`` permutations.
LARGE_EXPERIMENTS = 1000
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


def bench_one(name: str, engine, iters: int, cpu_iters: int, compare: int,
              large_iters: int | None = None) -> dict:
    """One data set's row: GPU and CPU time, and their nulls compared (``large_iters``
    permutations instead of ``iters`` for sets of over :data:`LARGE_EXPERIMENTS`)."""
    dataset = _dataset(name)
    if large_iters is not None and len(dataset) > LARGE_EXPERIMENTS:
        iters = min(iters, large_iters)
    fit = run_ale(dataset, n_iters=0, device="cpu")
    spec = GlobalNullSpec(fit.problem, fit.threshold, 6)
    row = {"dataset": name, "experiments": len(dataset), "foci": dataset.n_foci,
           "iterations": iters, "threshold": float(fit.threshold)}
    # Compilation (NVRTC) and the first allocations stay out of the timing.
    row["warmup_s"], _ = _timed(lambda: engine.null_chunk(spec, 0, 0, min(16, iters)))
    row["gpu_s"], gpu_null = _timed(
        lambda: run_null(spec, engine, seed=0, n_iters=iters, scheduler=SerialScheduler()))
    cpu = get_engine("cpu")
    cpu_s, cpu_null = _timed(lambda: run_null(spec, cpu, seed=0, n_iters=cpu_iters))
    row["cpu_s_per_1000"] = 1000 * cpu_s / cpu_iters
    row["gpu_s_per_1000"] = 1000 * row["gpu_s"] / iters
    row["speedup_vs_cpu"] = row["cpu_s_per_1000"] / row["gpu_s_per_1000"]
    # Measured when iterations == 10,000, else scaled from the measured permutations.
    row["gpu_s_per_10000"] = 10 * row["gpu_s_per_1000"]
    # Goals are for a GPU; the host shim's figures are no GPU figures.
    on_gpu = isinstance(engine, CudaEngine) and engine.on_gpu
    row["goal_s_per_10000"] = GOALS_S.get(name) if on_gpu else None
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


def measure_projection(engine, n_studies: int, threshold: float | None, seconds: float,
                       batch: int, max_iters: int | None = None) -> dict:
    """One engine's seconds per permutation on a Neurosynth-size set, and the projection.

    The set is put on the grid (:func:`gpuale.problem.compile_problem`) without fitting
    it when ``threshold``, the cluster-forming threshold, is given; with None it is
    fitted on the CPU (observed ALE and analytic null: cheap for small sets, minutes for
    the whole release, so :data:`NEUROSYNTH_THRESHOLD` is given for that). The first
    permutation (compilation,
    uploads, tables) is timed apart; then batches of ``batch`` permutations, one after
    another, until ``seconds`` have passed (at least one batch, at most ``max_iters``
    permutations). A CPU engine's projection takes this process's CPU time (one thread
    computes, so it is one core's time, which other jobs on a shared machine inflate far
    less than the wall time; both are recorded); the CUDA engine's the wall time.
    """
    build_s, dataset = _timed(lambda: neurosynth_scale_dataset(n_studies))
    source = "given (not fitted)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if threshold is None:
            compile_s, fit = _timed(lambda: run_ale(dataset, n_iters=0, device="cpu"))
            problem, threshold = fit.problem, float(fit.threshold)
            source = "fitted on the CPU"
        else:
            compile_s, problem = _timed(lambda: compile_problem(dataset, load_grid()))
    spec = GlobalNullSpec(problem, threshold, 6)
    chunk = engine.chunk_size(spec)
    warmup_s, _ = _timed(lambda: engine.null_chunk(spec, 0, 0, 1))
    cpu_start = time.process_time()
    start = time.perf_counter()
    done, max_ales = 0, []
    while done == 0 or (time.perf_counter() - start < seconds
                        and (max_iters is None or done < max_iters)):
        count = batch if max_iters is None else max(1, min(batch, max_iters - done))
        partial = engine.null_chunk(spec, 0, 1 + done, count)  # synchronises
        max_ales += [part[0] for part in partial.chunks.values()]
        done += count
    null_s = time.perf_counter() - start
    null_cpu_s = time.process_time() - cpu_start
    per_permutation = (null_s if isinstance(engine, CudaEngine) else null_cpu_s) / done
    row = {"engine": engine.name, "device": engine.device, "studies": len(dataset),
           "foci": dataset.n_foci, "build_s": build_s, "compile_problem_s": compile_s,
           "threshold": threshold, "threshold_source": source,
           "warmup_s": warmup_s, "iterations": done, "batch": batch,
           "null_s": null_s, "null_cpu_s": null_cpu_s,
           "s_per_permutation": per_permutation,
           "chunk": chunk, "chunk_overhead_s": DASK_CHUNK_OVERHEAD_S,
           "run_overhead_s": DASK_RUN_OVERHEAD_S,
           "mean_max_ale": float(np.mean(np.concatenate(max_ales)))}
    row["projected_s"] = {str(n): project(per_permutation, chunk, n)
                          for n in PROJECTED_DEVICES}
    return row


def print_projection(row: dict, unit: str) -> None:
    print(f"\nprojection: {row['engine']} engine ({row['device']}): {row['studies']:,} studies, "
          f"{row['foci']:,} foci; threshold {row['threshold']:.6g} "
          f"{row['threshold_source']}; set on the grid"
          f"{' and fitted' if row['threshold_source'].startswith('fitted') else ''} "
          f"{row['compile_problem_s']:.1f} s, first permutation "
          f"{row['warmup_s']:.1f} s; {row['iterations']} permutations in batches of "
          f"{row['batch']}: {row['null_s']:.2f} s ({row['null_cpu_s']:.2f} s of CPU time) = "
          f"{row['s_per_permutation']:.4f} s per permutation (projected in chunks of "
          f"{row['chunk']})\n")
    print(f"| {unit}s | {PROJECTED_ITERS:,} permutations | speed-up |")
    print("| --- | --- | --- |")
    one = row["projected_s"]["1"]
    for n, seconds in row["projected_s"].items():
        print(f"| {n} | {seconds:,.0f} s ({seconds / 3600:.2f} h) | {one / seconds:.2f}x |")


def small_run(no_pool: bool = False) -> int:
    """One batch of 32 permutations of a global null (26-connectivity) on the GPU, for
    compute-sanitizer and ncu: every kernel of ``kernels/ale_null.cu``, the scatter once.
    With ``no_pool`` CuPy's memory pool is off, so each array is its own ``cudaMalloc``
    and memcheck and initcheck see its bounds (inside a pooled block they see none)."""
    import cupy

    if no_pool:
        cupy.cuda.set_allocator(None)
        cupy.cuda.set_pinned_memory_allocator(None)
    engine = CudaEngine(device_id=0)
    dataset = _dataset("semantic-children")
    fit = run_ale(dataset, n_iters=0, device="cpu")
    partial = engine.null_chunk(GlobalNullSpec(fit.problem, fit.threshold, 26), 1, 0, 32)
    max_ale = np.concatenate([part[0] for part in partial.chunks.values()])
    print(f"small run done: {max_ale.size} permutations, memory pool "
          f"{'off' if no_pool else 'on'}, largest max ALE {float(max_ale.max()):.6f}")
    return 0


TABLE_HEADER = (
    "| data set | experiments | foci | iterations | GPU s | GPU s per 10,000 | goal | "
    "CPU s/1000 | GPU/CPU speed | max ALE rel. diff (n) | size / mass differ |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def format_row(r: dict) -> str:
    """A data set's row of the throughput table (markdown)."""
    scaled = "" if r["iterations"] == 10_000 else " (scaled)"
    goal = r.get("goal_s_per_10000")
    verdict = "n/a" if goal is None else (
        f"<= {goal:g} s: {'met' if r['gpu_s_per_10000'] <= goal else 'missed'}")
    return (f"| {r['dataset']} | {r['experiments']} | {r['foci']} | {r['iterations']} | "
            f"{r['gpu_s']:.3f} | {r['gpu_s_per_10000']:.3f}{scaled} | {verdict} | "
            f"{r['cpu_s_per_1000']:.2f} | {r['speedup_vs_cpu']:.1f}x | "
            f"{r['max_ale_max_rel_diff']:.2e} ({r['compared']}) | "
            f"{r['size_differs']} / {r['mass_differs']} |")


def write_json(path: Path | None, record: dict) -> None:
    """Write ``record`` to ``path`` whole (a temporary file renamed into place)."""
    if path is None:
        return
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(record, indent=2))
    os.replace(scratch, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="semantic-children,semantic-adults,synthetic-2000")
    parser.add_argument("--iters", type=int, default=10_000)
    parser.add_argument("--large-iters", type=int, default=2048,
                        help=f"permutations of data sets of more than {LARGE_EXPERIMENTS} "
                        "experiments (their time per 10,000 is scaled from these)")
    parser.add_argument("--cpu-iters", type=int, default=32)
    parser.add_argument("--compare", type=int, default=32)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dry-run", action="store_true",
                        help="the CUDA engine through the host shim, a few permutations")
    parser.add_argument("--small", action="store_true",
                        help="only a small GPU run (children, one batch of 32 permutations), "
                        "for compute-sanitizer and ncu")
    parser.add_argument("--no-pool", action="store_true",
                        help="with --small: CuPy's memory pool off (for the sanitizers)")
    parser.add_argument("--projection", action="store_true",
                        help="cost per permutation at the whole Neurosynth release's size "
                        "and the time of 10,000 permutations on 1, 2, 4, 8 devices")
    parser.add_argument("--cpu", action="store_true",
                        help="with --projection: the numba engine on one core of this "
                        "machine instead of the GPU")
    parser.add_argument("--studies", type=int, default=NEUROSYNTH_STUDIES,
                        help="with --projection: studies of the measured set (foci in "
                        "proportion)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="with --projection: the cluster-forming ALE threshold, given "
                        "(default: NEUROSYNTH_THRESHOLD for the whole release; a smaller "
                        "set's is fitted on the CPU)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="with --projection: time batches of permutations until this "
                        "many seconds have passed (at least one batch)")
    parser.add_argument("--projection-iters", type=int, default=None,
                        help="with --projection: at most this many permutations (default: "
                        "no limit on a GPU, 8 on the CPU, 2 in a dry run)")
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
        return small_run(no_pool=args.no_pool)
    elif not gpu_available():
        print("no GPU visible to CuPy: nothing to measure (use --dry-run to check the script)")
        return 0
    else:
        engine = CudaEngine(device_id=0)
        env["mode"] = "GPU"
    names = args.datasets.split(",")
    rows: list[dict] = []
    record = {"environment": env, "rows": rows, "datasets": names, "complete": False}
    write_json(args.json, record)
    print(f"\n{env}\n")
    print(TABLE_HEADER, flush=True)
    for name in names:
        print(f"... {name}", file=sys.stderr, flush=True)
        rows.append(bench_one(name, engine, args.iters, args.cpu_iters, args.compare,
                              large_iters=args.large_iters))
        print(format_row(rows[-1]), flush=True)
        write_json(args.json, record)  # each data set's row as soon as it is done
    record["complete"] = True
    write_json(args.json, record)
    return 0


def projection_main(args, env: dict) -> int:
    """``--projection``: measure, print the table, write ``--json``."""
    if args.cpu:
        from gpuale.engines.numba_ import NumbaEngine

        engine, unit, iters, batch = NumbaEngine(), "core", 8, 8
        env["mode"] = "CPU: numba engine, one core (chunks one after another)"
    elif args.dry_run:
        from gpuale import _hostshim

        engine = CudaEngine.on_host(_hostshim.load(kernel_dir() / "ale_null.cu").launch)
        unit, iters, batch = "GPU", 2, 2
        env["mode"] = "dry run: CUDA kernels on the CPU through the host shim"
    elif not gpu_available():
        print("no GPU visible to CuPy: nothing to measure (--cpu measures the CPU engine, "
              "--dry-run checks the script)")
        return 0
    else:
        engine, unit, iters, batch = CudaEngine(device_id=0), "GPU", None, 8
        env["mode"] = "GPU"
    iters = args.projection_iters or iters
    threshold = args.threshold
    if threshold is None and args.studies == NEUROSYNTH_STUDIES:
        threshold = NEUROSYNTH_THRESHOLD
    print(f"... {args.studies} studies, batches of {batch} for {args.seconds:g} s"
          + (f" (at most {iters} permutations)" if iters else ""), file=sys.stderr, flush=True)
    row = measure_projection(engine, args.studies, threshold, args.seconds, batch,
                             max_iters=iters)
    print(f"\n{env}")
    print_projection(row, unit)
    write_json(args.json, {"environment": env, "projection": row})
    return 0


if __name__ == "__main__":
    sys.exit(main())
