"""The analytic null on a Neurosynth-sized data set: compiled, numpy, and NiMARE's fit.

2,000 experiments of 35 foci with N = 20 each (about the size of a Neurosynth term), where
the analytic null used to take most of an uncorrected run. ``analytic_null`` is timed
alone (compiled, and the earlier numpy version for comparison), then the whole uncorrected
run next to NiMARE's ``ALE().fit`` on the same foci (one round: on 2 cores NiMARE takes
about 1.5 minutes and 7.5 GB of memory).
"""

from __future__ import annotations

import dataclasses
import sys
import tracemalloc
import warnings
from pathlib import Path

import pytest
from synthetic import synthetic_dataset

from gpuale.analysis import run_ale
from gpuale.dataset import Dataset
from gpuale.engines.numpy_ import NumpyEngine
from gpuale.grid import load_grid
from gpuale.problem import compile_problem
from gpuale.stats import analytic_null

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

N_EXPERIMENTS = 2000
FOCI_PER_EXPERIMENT = 35
N_SUBJECTS = 20


@pytest.fixture(scope="module")
def neurosynth_like():
    dataset = synthetic_dataset(N_EXPERIMENTS, foci_per_experiment=FOCI_PER_EXPERIMENT,
                                seed=2012, prefix="ns")
    dataset = Dataset(tuple(dataclasses.replace(exp, n_subjects=N_SUBJECTS)
                            for exp in dataset.experiments))
    grid = load_grid()
    observed = NumpyEngine().observed_ale(compile_problem(dataset, grid))
    return dataset, grid, observed


def _traced_peak_mb(function) -> float:
    """Peak of numpy's allocations (MiB) while ``function`` runs."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _info(benchmark, dataset, **extra):
    benchmark.extra_info.update(
        experiments=len(dataset), foci=sum(len(exp.foci) for exp in dataset.experiments),
        n_subjects=N_SUBJECTS, **extra,
    )


def test_gpuale_analytic_null(benchmark, neurosynth_like):
    dataset, grid, observed = neurosynth_like

    def run():
        return analytic_null(observed.ma_values, grid.n_voxels, max_ale=float(observed.ale.max()))

    null = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    _info(benchmark, dataset, traced_peak_mb=_traced_peak_mb(run))
    assert null.weights.sum() > 0


def test_numpy_analytic_null(benchmark, neurosynth_like):
    """The numpy version the compiled one replaced (kept in the tests as the reference)."""
    from test_analytic_null_speed import _numpy_null

    dataset, grid, observed = neurosynth_like

    def run():
        return _numpy_null(observed.ma_values, grid.n_voxels, float(observed.ale.max()))

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    _info(benchmark, dataset, traced_peak_mb=_traced_peak_mb(run))


def test_gpuale_ale_uncorrected(benchmark, neurosynth_like):
    dataset, grid, _ = neurosynth_like

    def run():
        return run_ale(dataset, grid=grid, n_iters=0, device="cpu")

    result = benchmark.pedantic(run, rounds=2, warmup_rounds=1)
    _info(benchmark, dataset, **{k: round(v, 3) for k, v in result.timings.items()})


def test_nimare_ale_uncorrected(benchmark, neurosynth_like):
    pytest.importorskip("nimare")
    from test_reference_nimare import fit_nimare

    dataset, _, _ = neurosynth_like

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit_nimare(dataset)

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    _info(benchmark, dataset)
