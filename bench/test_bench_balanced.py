"""Balanced contrast null iterations: gpuale next to NiMARE's BalancedALESubtraction.

Children knowledge (21) vs relatedness (16), target n = 16, grey-matter prior, NiMARE's
default ``difference_iterations=1000``: one null iteration is 1,000 subsample pairs. Both
nulls (label permutation, random foci) are timed per iteration: gpuale's engine chunk
(numpy products in subsample blocks) against NiMARE's ``_null_balanced_extrema`` on the
same data, one core each (NiMARE runs its loop on one).

Run with ``python -m pytest bench/test_bench_balanced.py --benchmark-only``;
``BENCH_BALANCED_ITERS`` sets the iterations per round (default 3).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import load_example

from gpuale.balanced import prior_voxels
from gpuale.dataset import Dataset
from gpuale.engines import get_engine
from gpuale.grid import load_grid
from gpuale.nullspecs import BalancedNullSpec
from gpuale.problem import compile_problem

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ITERS = int(os.environ.get("BENCH_BALANCED_ITERS", "3"))
DRAWS = 1000
NULLS = ("label-permutation", "random-foci")


def _children_groups():
    children = load_example("semantic-children")
    return [Dataset(tuple(e for e in children if e.metadata.get("task_type") == task))
            for task in ("knowledge", "relatedness")]


@pytest.fixture(scope="module")
def gpuale_specs():
    group_a, group_b = _children_groups()
    grid = load_grid()
    pooled = Dataset(tuple(dataclasses.replace(e, id=f"A:{e.id}") for e in group_a)
                     + tuple(dataclasses.replace(e, id=f"B:{e.id}") for e in group_b))
    problem = compile_problem(pooled, grid)
    prior = prior_voxels(grid, "gm")
    engine = get_engine("cpu")
    support, log_maps = engine.experiment_log_maps(problem)
    log_maps = log_maps[:, prior[support]]
    n_a, n_b = len(group_a), len(group_b)
    common = (n_a, n_b, min(n_a, n_b), DRAWS, int(prior.sum()))
    return engine, {
        "label-permutation": BalancedNullSpec("label-permutation", *common, log_maps=log_maps),
        "random-foci": BalancedNullSpec("random-foci", *common, problem=problem, prior=prior,
                                        sample_space=grid.in_mask_flat[prior]),
    }


@pytest.mark.parametrize("null", NULLS)
def test_gpuale_balanced_null(benchmark, gpuale_specs, null):
    engine, specs = gpuale_specs
    spec = specs[null]
    benchmark.pedantic(lambda: engine.null_chunk(spec, 0, 0, ITERS), rounds=2,
                       warmup_rounds=1)
    benchmark.extra_info.update(iterations=ITERS, draws=DRAWS, engine=engine.name,
                                s_per_iteration=benchmark.stats.stats.mean / ITERS)


@pytest.fixture(scope="module")
def nimare_inputs():
    pytest.importorskip("nimare")
    from nimare.meta.cbma.ale import (
        ALE,
        BalancedALESubtraction,
        _masked_prior_columns,
        _study_metadata_from_coordinates,
    )
    from test_reference_nimare import nimare_dataset

    group_a, group_b = _children_groups()
    datasets = nimare_dataset(group_a), nimare_dataset(group_b, prefix="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ma, meta = [], []
        for dataset in datasets:
            fitted = ALE(null_method="approximate").fit(dataset)
            ma.append(fitted.estimator._collect_ma_maps())
            meta.append(_study_metadata_from_coordinates(
                fitted.estimator.inputs_["coordinates"]))
        estimators = {}
        for null in NULLS:
            estimator = BalancedALESubtraction(difference_iterations=DRAWS, null_method=null)
            estimator.masker = datasets[0].masker
            estimators[null] = estimator
        prior_img, prior_masked = _masked_prior_columns(datasets[0].masker, "gm")
    sample_space = np.vstack(np.where(prior_img)).T.astype(np.int32)
    estimator = estimators["random-foci"]
    prior_ma = [estimator._to_prior_dense(m, prior_masked) for m in ma]
    return estimators, meta, prior_masked, sample_space, prior_ma, min(len(group_a),
                                                                        len(group_b))


@pytest.mark.parametrize("null", NULLS)
def test_nimare_balanced_null(benchmark, nimare_inputs, null):
    estimators, meta, prior_masked, sample_space, prior_ma, target_n = nimare_inputs
    estimator = estimators[null]
    rng = np.random.RandomState(0)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(ITERS):
                estimator._null_balanced_extrema(
                    *meta[0], *meta[1], prior_masked, target_n, rng,
                    sample_space=sample_space, prior_ma1=prior_ma[0], prior_ma2=prior_ma[1])

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(iterations=ITERS, draws=DRAWS,
                                s_per_iteration=benchmark.stats.stats.mean / ITERS)
