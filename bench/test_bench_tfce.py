"""TFCE's cost per permutation beside a plain permutation (numba engine, the CPU default).

Goal (issue 14): a permutation that also gathers the largest TFCE costs at most twice a
plain one (largest ALE, cluster size and mass). Both run the same permutations on the same
cores (BENCH_CORES, default 2). JALE's cost per permutation is quoted from
/work/shared/METHODS-BEYOND.md as *reported* (pain data, one core): one TFCE 0.7-0.9 s, a
permutation 0.55 s more with TFCE than without. One TFCE map is also timed beside JALE's
own ``compute_tfce`` where JALE is importable (``test_one_tfce_map_beside_jale``).

Run with ``python -m pytest bench/test_bench_tfce.py --benchmark-only``.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pytest
from conftest import load_example

from gpuale.analysis import run_ale
from gpuale.engines.numba_ import NumbaEngine
from gpuale.nulls import run_null
from gpuale.nullspecs import GlobalNullSpec
from gpuale.schedulers import SerialScheduler
from gpuale.stats import analytic_null
from gpuale.tfce import tfce_definition, tfce_volume, z_table

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


@pytest.fixture(scope="module")
def children_z():
    """The children data's observed z volume, as TFCE sees it (the analytic null's z)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_ale(load_example("semantic-children"), n_iters=0)
    table = z_table(analytic_null(result.observed.ma_values, result.grid.n_voxels))
    return result.grid, table(result.observed.ale)


@pytest.mark.parametrize("tool", ["gpuale", "jale"])
def test_one_tfce_map_beside_jale(benchmark, children_z, tool):
    """One TFCE map of the same z volume: JALE 0.2.10's own ``compute_tfce`` (100
    labellings) beside gpuale's union-find, and the two maps compared.

    JALE pins numpy 1.26 and other old packages, so it is not an extra; its TFCE module
    imports beside gpuale's stack when installed without them:
    ``pip install --no-deps jale==0.2.10``.
    """
    grid, z = children_z
    volume = grid.to_volume(z)
    if tool == "jale":
        compute = pytest.importorskip(
            "jale.core.utils.compute",
            reason="JALE not installed (pip install --no-deps jale==0.2.10)").compute_tfce

        def run():
            return compute(volume)
    else:
        def run():
            return tfce_volume(volume)

    tfce = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    reference = tfce_definition(volume)  # the definition, 100 scipy labellings
    np.testing.assert_allclose(tfce, reference, rtol=1e-9, atol=1e-9)
    benchmark.extra_info.update(tool=tool, max_z=float(volume.max()),
                                ms_per_map=1000 * benchmark.stats.stats.mean)
