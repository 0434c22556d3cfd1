"""Monte Carlo throughput: milliseconds per iteration, gpuale (CPU) next to NiMARE.

Both use the same number of cores (BENCH_CORES, default 2). Goal (issue 3): at least 3x
NiMARE's throughput on the CPU, with lower peak memory.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
from conftest import peak_rss_mb

from gpuale.analysis import run_ale
from gpuale.nulls import monte_carlo_null

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

pytest.importorskip("nimare")

CORES = int(os.environ.get("BENCH_CORES", "2"))
#: Iterations per dataset: enough that process start-up is a small part of the time.
ITERS = {
    "semantic-children": int(os.environ.get("BENCH_ITERS_CHILDREN", "1000")),
    "semantic-adults": int(os.environ.get("BENCH_ITERS_ADULTS", "300")),
}


@pytest.fixture(scope="module", params=["semantic-children", "semantic-adults"])
def fitted(request):
    from conftest import load_example
    from test_reference_nimare import fit_nimare

    dataset = load_example(request.param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = run_ale(dataset, n_iters=0)
        estimator, theirs = fit_nimare(dataset)
    return request.param, ours, theirs


def test_gpuale_montecarlo(benchmark, fitted):
    name, ours, _ = fitted

    iters = ITERS[name]

    def run():
        return monte_carlo_null(ours.problem, seed=0, n_iters=iters, threshold=ours.threshold,
                                n_workers=CORES)

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(
        dataset=name, iterations=iters, cores=CORES,
        ms_per_iteration=1000 * benchmark.stats.stats.mean / iters,
        peak_rss_mb=peak_rss_mb("gpuale-mc", name, str(iters), str(CORES)),
    )


def test_nimare_montecarlo(benchmark, fitted):
    from nimare.correct import FWECorrector

    name, _, theirs = fitted
    iters = ITERS[name]

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            FWECorrector(method="montecarlo", n_iters=iters, n_cores=CORES).transform(theirs)

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(
        dataset=name, iterations=iters, cores=CORES,
        ms_per_iteration=1000 * benchmark.stats.stats.mean / iters,
        peak_rss_mb=peak_rss_mb("nimare-mc", name, str(iters), str(CORES)),
    )
