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
"""

from __future__ import annotations

import argparse
import json
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
from gpuale.engines import get_engine  # noqa: E402
from gpuale.engines.cuda import CudaEngine, gpu_available, kernel_dir  # noqa: E402
from gpuale.examples import example_path  # noqa: E402
from gpuale.io import load_dataset  # noqa: E402
from gpuale.nulls import GlobalNullSpec, SerialScheduler, run_null  # noqa: E402

#: Largest relative difference of a permutation's max ALE between CPU and GPU: float32
#: rounding of 1 - exp(log-sum), whose exp may differ in the last bit on the GPU.
MAX_ALE_RTOL = 2.0**-23


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
    row["mass_differs"] = int(np.sum(~np.isclose(gpu_null.max_cluster_mass[:n],
                                                 cpu_null.max_cluster_mass[:n], rtol=1e-9)))
    return row


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
    args = parser.parse_args(argv)
    env = environment()
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


if __name__ == "__main__":
    sys.exit(main())
