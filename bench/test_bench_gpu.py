"""GPU Monte Carlo throughput (needs CuPy and an NVIDIA GPU; skipped otherwise).

Time per 1,000 iterations for the children set, the adults set and a synthetic
1,000-experiment set (~15,000 foci), on the GPU and, for the same permutations, the CPU
path. Goal (issue 4): 10,000 iterations on the adults set in under 2 s on one H100.
The floor is foci x kernel-box voxels x iterations stamps (adults: 1.8e11 for 10,000
iterations) plus ~16 bytes per in-mask voxel per permutation for the labelling.
"""

from __future__ import annotations

import os

import pytest
from conftest import load_example
from synthetic import synthetic_dataset

from gpuale.analysis import run_ale
from gpuale.engines import gpu_available
from gpuale.engines.cuda import CudaEngine
from gpuale.nulls import monte_carlo_null

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device"),
]

ITERS = int(os.environ.get("BENCH_GPU_ITERS", "1000"))
CPU_ITERS = int(os.environ.get("BENCH_CPU_ITERS", "50"))


def _dataset(name):
    if name == "synthetic-1000":
        return synthetic_dataset(1000, foci_per_experiment=15, seed=3)
    return load_example(name)


@pytest.fixture(scope="module", params=["semantic-children", "semantic-adults",
                                        "synthetic-1000"])
def fitted(request):
    return request.param, run_ale(_dataset(request.param), n_iters=0)


def test_gpu_montecarlo(benchmark, fitted):
    name, result = fitted
    engine = CudaEngine()
    monte_carlo_null(result.problem, engine=engine, seed=0, n_iters=64,
                     threshold=result.threshold)  # compile and warm up

    def run():
        return monte_carlo_null(result.problem, engine=engine, seed=0, n_iters=ITERS,
                                threshold=result.threshold)

    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    benchmark.extra_info.update(dataset=name, iterations=ITERS,
                                s_per_1000=1000 * benchmark.stats.stats.mean / ITERS)


def test_cpu_montecarlo_same_data(benchmark, fitted):
    name, result = fitted

    def run():
        return monte_carlo_null(result.problem, seed=0, n_iters=CPU_ITERS,
                                threshold=result.threshold)

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(dataset=name, iterations=CPU_ITERS,
                                s_per_1000=1000 * benchmark.stats.stats.mean / CPU_ITERS)
