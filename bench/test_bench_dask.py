"""Permutations on a local Dask cluster next to the threaded single process.

Run with ``python -m pytest bench/test_bench_dask.py --benchmark-only`` (needs the dask
extra). Throughput: the children data set's global null (BENCH_DASK_ITERS permutations,
default 200) with the numba engine on ``ThreadScheduler(BENCH_CORES)`` and on a
``LocalCluster`` of 1 and 2 single-threaded worker processes. Overhead per chunk: the
same round trips with an engine whose chunks do no work (chunks of 1 permutation), so
the time is scheduling, transfer and merging only. A study: the children's three
task-type analyses (BENCH_DASK_STUDY_ITERS permutations each, default 200) on the same
cluster one after another and at the same time (``run_study(concurrent_analyses=)``).

Cluster start-up (a few seconds) is left out of every figure: a cluster is started once
and serves many runs. A warm-up round compiles the numba kernels in every worker.
"""

from __future__ import annotations

import os
import textwrap
import warnings

import numpy as np
import pytest
from conftest import load_example

from gpuale.analysis import run_ale
from gpuale.engines import get_engine
from gpuale.nulls import DaskScheduler, run_null
from gpuale.nullspecs import GlobalNullPartial, GlobalNullSpec
from gpuale.schedulers import SerialScheduler, ThreadScheduler

pytest.importorskip("distributed", reason="needs the dask extra")

CORES = int(os.environ.get("BENCH_CORES", "2"))
ITERS = int(os.environ.get("BENCH_DASK_ITERS", "200"))
OVERHEAD_CHUNKS = int(os.environ.get("BENCH_DASK_CHUNKS", "400"))
STUDY_ITERS = int(os.environ.get("BENCH_DASK_STUDY_ITERS", "200"))


@pytest.fixture(scope="module")
def spec() -> GlobalNullSpec:
    dataset = load_example("semantic-children")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_ale(dataset, n_iters=0)
    return GlobalNullSpec(result.problem, result.threshold, 6)


@pytest.fixture(scope="module", params=[1, 2], ids=lambda n: f"{n}worker")
def cluster_client(request):
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=request.param, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as client:
        yield request.param, client


def _record(benchmark, scheduler: str, workers: int, iters: int, chunks: int) -> None:
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        scheduler=scheduler, workers=workers, iterations=iters, chunks=chunks,
        ms_per_iteration=1000 * mean / iters, ms_per_chunk=1000 * mean / chunks,
        iterations_per_s=iters / mean,
    )


def test_threads_single_process(benchmark, spec):
    engine = get_engine("cpu")
    scheduler = ThreadScheduler(CORES)
    benchmark.pedantic(lambda: run_null(spec, engine, seed=0, n_iters=ITERS,
                                        scheduler=scheduler), rounds=3, warmup_rounds=1)
    _record(benchmark, f"threads({CORES})", CORES, ITERS, -(-ITERS // engine.chunk_size(spec)))


def test_dask_local_cluster(benchmark, spec, cluster_client):
    workers, client = cluster_client
    engine = get_engine("cpu")
    scheduler = DaskScheduler(client)
    benchmark.pedantic(lambda: run_null(spec, engine, seed=0, n_iters=ITERS,
                                        scheduler=scheduler), rounds=3, warmup_rounds=1)
    _record(benchmark, "dask", workers, ITERS, -(-ITERS // engine.chunk_size(spec)))


def _idle_engine():
    """An engine whose chunks take no time (defined here so that Dask pickles it by
    value: bench/ is not importable on workers)."""
    from gpuale.engines.numpy_ import NumpyEngine

    class IdleEngine(NumpyEngine):
        name = "idle"

        def chunk_size(self, spec) -> int:
            return 1

        def null_chunk(self, spec, seed, first, count):
            return GlobalNullPartial.of(first, np.zeros(count), np.zeros(count, np.int64),
                                        np.zeros(count))

    return IdleEngine()


@pytest.mark.parametrize("chunks", [4, OVERHEAD_CHUNKS])
def test_overhead_per_chunk_dask(benchmark, spec, cluster_client, chunks):
    """Idle chunks: the 4-chunk run is the fixed cost of a run (scattering the problem,
    about 3 MB here, to every worker); the difference to the long run, per chunk, is the
    cost of one task's round trip."""
    workers, client = cluster_client
    engine = _idle_engine()
    scheduler = DaskScheduler(client)
    benchmark.pedantic(lambda: run_null(spec, engine, seed=0, n_iters=chunks,
                                        scheduler=scheduler), rounds=3, warmup_rounds=1)
    _record(benchmark, "dask-idle", workers, chunks, chunks)


@pytest.mark.parametrize("kind", ["serial", "threads"])
def test_overhead_per_chunk_single_process(benchmark, spec, kind):
    engine = _idle_engine()
    scheduler = SerialScheduler() if kind == "serial" else ThreadScheduler(CORES)
    benchmark.pedantic(lambda: run_null(spec, engine, seed=0, n_iters=OVERHEAD_CHUNKS,
                                        scheduler=scheduler), rounds=3, warmup_rounds=1)
    _record(benchmark, f"{kind}-idle", 1 if kind == "serial" else CORES, OVERHEAD_CHUNKS,
            OVERHEAD_CHUNKS)


STUDY = """
[study]
iterations = {iters}
device = "cpu"

[inputs]
children = "example:semantic-children"

[analyses.knowledge]
type = "global"
input = "children"
where = "task_type == knowledge"

[analyses.relatedness]
type = "global"
input = "children"
where = "task_type == relatedness"

[analyses.objects]
type = "global"
input = "children"
where = "task_type == objects"
"""


@pytest.mark.parametrize("together", [1, 3], ids=["one-at-a-time", "together"])
def test_study_on_a_cluster(benchmark, cluster_client, tmp_path, together):
    """Three global analyses whose permutations go to the cluster: one after another,
    or at the same time (each computes its observed map here while another's chunks
    run). Reports are left out; every round recomputes (``force``)."""
    from gpuale.study import run_study
    from gpuale.studyfile import load_study

    workers, client = cluster_client
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(STUDY.format(iters=STUDY_ITERS)))
    study = load_study(path)
    scheduler = DaskScheduler(client)

    def run():
        run_study(study, tmp_path / "out", force=True, log=lambda m: None, report=False,
                  scheduler=scheduler, concurrent_analyses=together)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    _record(benchmark, f"dask-study({together} at once)", workers, 3 * STUDY_ITERS,
            3 * -(-STUDY_ITERS // 8))
