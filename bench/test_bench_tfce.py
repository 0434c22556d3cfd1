"""TFCE's cost per permutation beside a plain permutation (numba engine, the CPU default).

Goal (issue 14): a permutation that also gathers the largest TFCE costs at most twice a
plain one (largest ALE, cluster size and mass). Both run the same permutations on the same
cores (BENCH_CORES, default 2). JALE is not installed here; its cost is quoted from
/work/shared/METHODS-BEYOND.md as *reported* (pain data, one core): one TFCE 0.7-0.9 s, a
permutation 0.55 s more with TFCE than without.

Run with ``python -m pytest bench/test_bench_tfce.py --benchmark-only``.
"""

from __future__ import annotations

import os
import time
import warnings

import pytest
from conftest import load_example

from gpuale.analysis import run_ale
from gpuale.engines.numba_ import NumbaEngine
from gpuale.nulls import GlobalNullSpec, SerialScheduler, run_null
from gpuale.stats import analytic_null
from gpuale.tfce import z_table

CORES = int(os.environ.get("BENCH_CORES", "2"))
ITERS = {
    "semantic-children": int(os.environ.get("BENCH_ITERS_CHILDREN", "400")),
    "semantic-adults": int(os.environ.get("BENCH_ITERS_ADULTS", "100")),
}
#: JALE 0.2.10, pain data, one core (METHODS-BEYOND.md section 1): reported, not measured.
JALE_REPORTED = {"tfce_map_s": "0.7-0.9", "extra_per_permutation_s": 0.55,
                 "plain_permutation_s": 0.79}


@pytest.fixture(scope="module", params=["semantic-children", "semantic-adults"])
def specs(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_ale(load_example(request.param), n_iters=0)
    table = z_table(analytic_null(result.observed.ma_values, result.grid.n_voxels))
    plain = GlobalNullSpec(result.problem, result.threshold, 6)
    tfce = GlobalNullSpec(result.problem, result.threshold, 6, tfce_z=table)
    engine = NumbaEngine()
    for spec in (plain, tfce):  # compiled and warm before the clock runs
        engine.null_chunk(spec, 0, 0, 1)
    return request.param, plain, tfce


@pytest.mark.parametrize("kind", ["plain", "tfce"])
def test_permutations_with_and_without_tfce(benchmark, specs, kind):
    name, plain, tfce = specs
    spec = tfce if kind == "tfce" else plain
    iters = ITERS[name]

    def run():
        return run_null(spec, NumbaEngine(), seed=0, n_iters=iters, n_workers=CORES)

    null = benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    assert (null.max_tfce is not None) == (kind == "tfce")
    benchmark.extra_info.update(
        dataset=name, kind=kind, iterations=iters, cores=CORES,
        ms_per_iteration=1000 * benchmark.stats.stats.mean / iters,
        jale_reported=JALE_REPORTED,
    )


@pytest.mark.parametrize("kind", ["plain", "tfce"])
def test_permutations_one_thread_cpu_time(benchmark, specs, kind):
    """The same, on one thread, with the thread's CPU time beside the wall time: on a
    shared machine the CPU time is the steadier measure of the work."""
    name, plain, tfce = specs
    spec = tfce if kind == "tfce" else plain
    iters = ITERS[name] // 2
    cpu = []

    def run():
        start = time.thread_time()
        run_null(spec, NumbaEngine(), seed=0, n_iters=iters, scheduler=SerialScheduler())
        cpu.append(time.thread_time() - start)

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(
        dataset=name, kind=kind, iterations=iters, cores=1,
        ms_per_iteration=1000 * benchmark.stats.stats.mean / iters,
        cpu_ms_per_iteration=1000 * cpu[0] / iters,
    )
