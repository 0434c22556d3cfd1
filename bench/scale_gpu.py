"""SCALE on one GPU at the bench sphere's size, for bench/gpu_check.sh.

A synthetic stand-in of the bench MACM (``bench/macm_whole_release.py``: 356 experiments
and 27,244 foci selected by a 6 mm sphere from Neurosynth v7's 507,891 foci; N = 20), so
that it runs on a machine without the release: the analysed foci and the pool are
in-mask voxels drawn with a fixed seed. Times ``--iters`` SCALE permutations on the CUDA
engine after a warm-up (compilation excluded), checks its counts against the numba
engine's on the first 8 permutations, and prints the projected time of 10,000.
``--dry-run`` runs the kernels on the CPU through the host shim at a small size.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from synthetic import database_experiments

from gpuale.grid import load_grid
from gpuale.nullspecs import ScaleNullSpec
from gpuale.problem import compile_problem


def _spec(n_experiments: int, n_foci: int, n_pool: int) -> ScaleNullSpec:
    grid = load_grid()
    rng = np.random.default_rng(23)
    problem = compile_problem(database_experiments(n_experiments, n_foci, rng, grid), grid)
    voxels = np.argwhere(grid.mask)
    pool = voxels[rng.integers(len(voxels), size=n_pool)].astype(np.int32)
    return ScaleNullSpec(problem, pool)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=64)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    from gpuale.engines.cuda import CudaEngine, kernel_dir
    from gpuale.engines.numba_ import NumbaEngine

    if args.dry_run:
        from gpuale import _hostshim

        spec = _spec(12, 120, 5000)
        engine = CudaEngine.on_host(_hostshim.load(kernel_dir() / "ale_null.cu").launch,
                                    max_batch=4)
        args.iters = min(args.iters, 8)
    else:
        spec = _spec(356, 27244, 507891)
        engine = CudaEngine(device_id=0)
    check = min(8, args.iters)
    first = engine.null_chunk(spec, 0, 0, check)  # warm-up: compilation, tables
    reference = NumbaEngine().null_chunk(spec, 0, 0, check)
    same = bool(np.array_equal(first.counts, reference.counts))
    start = time.perf_counter()
    engine.null_chunk(spec, 0, check, args.iters)
    seconds = time.perf_counter() - start
    result = {"device": engine.describe(), "experiments": spec.problem.n_experiments,
              "foci": spec.problem.n_foci, "pool": spec.n_pool, "iters": args.iters,
              "seconds": seconds, "per_permutation_ms": 1e3 * seconds / args.iters,
              "projected_10000_s": 10000 * seconds / args.iters,
              "counts_equal_numba_first_8": same}
    print("scale: " + json.dumps(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
